//! Kernel states that decode from arbitrary bytes: encoding one and decoding it again gives the
//! same state, and so does carrying it through a snapshot.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(kernel) = tabi_libos::decode_state(data) else {
        return;
    };
    let bytes = tabi_libos::encode_state(&kernel).expect("a decoded state encodes");
    let again = tabi_libos::decode_state(&bytes).expect("an encoded state decodes");
    assert_eq!(again, kernel);
    let contents = tabi_snapshot::Contents {
        identity: tabi_snapshot::Identity::default(),
        module: None,
        entry: "_start",
        budget: None,
        points: 1,
        globals: &[],
        tables: &[],
        memories: vec![],
        stack: &[],
        kernel: &bytes,
        mounts: &[],
    };
    let mut out = Vec::new();
    tabi_snapshot::write(&mut out, &contents, None).expect("writes to a Vec");
    let s = tabi_snapshot::read(&mut &out[..], &tabi_snapshot::Limits::default(), None)
        .expect("a written snapshot reads back");
    assert_eq!(s.kernel, kernel);
});
