#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| kernex_fuzz::archive(data));
