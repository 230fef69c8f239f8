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
    bytes_hash(&message.encode_to_vec())
}

/// The content hash of an encoded message.
pub fn bytes_hash(encoded: &[u8]) -> u64 {
    fnv1a(encoded, FNV_OFFSET)
}

/// One hash of several, in order (the outbound version: its Services' hashes by key).
pub fn combine(hashes: impl IntoIterator<Item = u64>) -> u64 {
    hashes
        .into_iter()
        .fold(FNV_OFFSET, |hash, part| fnv1a(&part.to_le_bytes(), hash))
}

/// How a hash is written in versions.
pub fn hex(hash: u64) -> String {
    format!("{hash:016x}")
}

/// A hash written by [`hex`]; `None` for anything else (an empty version, another format).
pub fn parse_hex(text: &str) -> Option<u64> {
    (text.len() == 16)
        .then(|| u64::from_str_radix(text, 16).ok())
        .flatten()
}

/// The version a proxy sees for a view made of these parts.
pub fn version(inbound: u64, outbound: u64) -> String {
    hex(combine([inbound, outbound]))
}
