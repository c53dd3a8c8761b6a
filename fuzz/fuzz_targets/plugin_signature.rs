#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rotor::fuzz::plugin_signature(data));
