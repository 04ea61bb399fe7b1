//! Fuzzes the frame decoder: length prefix, AEAD open, header checks, postcard decode.
//! `fuzz_entry` also seals the input as an authentic frame's plaintext, so the postcard
//! decoder behind the MAC is reached too; it asserts that such a frame can only fail
//! as `decode`. Any panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlab_server::transport::{frame, KeyRing};
use std::sync::OnceLock;

fn keys() -> &'static KeyRing {
    static KEYS: OnceLock<KeyRing> = OnceLock::new();
    KEYS.get_or_init(|| KeyRing::from_keys(&[frame::FUZZ_KEY]).expect("one key"))
}

fuzz_target!(|data: &[u8]| {
    let _ = frame::fuzz_entry(keys(), data);
});
