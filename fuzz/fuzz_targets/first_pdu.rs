//! cargo-fuzz target: see [`dicomgate_fuzz::first_pdu`] for the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dicomgate_fuzz::first_pdu(data));
