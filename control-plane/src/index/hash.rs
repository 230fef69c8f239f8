//! Content hashes and versions. FNV-1a over the protobuf encoding: stable across processes
//! and releases (unlike std's SipHash keys), so a restarted control plane derives the same
//! versions from the same state. Encodings are deterministic because the views hold no maps
//! and every list is sorted.

use prost::Message;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(bytes: &[u8], mut hash: u64) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

pub fn content_hash(message: &impl Message) -> u64 {
    fnv1a(&message.encode_to_vec(), FNV_OFFSET)
}

/// The version a proxy sees for a view made of these parts.
pub fn version(inbound: u64, outbound: u64) -> String {
    let combined = fnv1a(
        &outbound.to_le_bytes(),
        fnv1a(&inbound.to_le_bytes(), FNV_OFFSET),
    );
    format!("{combined:016x}")
}
