//! cargo-fuzz target: see [`dicomgate_fuzz::tls_handshake`] for the input layout and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dicomgate_fuzz::tls_handshake(data));
