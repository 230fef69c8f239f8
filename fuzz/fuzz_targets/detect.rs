//! Protocol detection must never panic, and must be stable: once the bytes seen so far decide
//! a protocol, more bytes never change the decision (detection stops reading at the first
//! decision, so a decision that could flip would depend on TCP segmentation).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_proxy::detect::{classify, Classification, MAX_DETECT_BYTES};

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(MAX_DETECT_BYTES)];
    let whole = classify(data);
    for end in 0..data.len() {
        if let Classification::Done(decided) = classify(&data[..end]) {
            assert_eq!(whole, Classification::Done(decided), "decision changed after {end} bytes");
            break;
        }
    }
});
