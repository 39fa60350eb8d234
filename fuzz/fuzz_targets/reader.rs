//! Fuzz the image reader: no input may panic, hang or allocate without bound.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cpr_format::__private::fuzz_reader(data);
});
