//! The checkpoint record decoder on arbitrary bytes: it must return a record or a typed error,
//! never panic, never allocate without bound (SPEC I5: a corrupt record is reported, not taken
//! as "start over"). A record that decodes must encode back to bytes that decode to it again.
#![no_main]

use ferry_checkpoint::envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(record) = envelope::decode(bytes) {
        let again = envelope::encode(&record).expect("a decoded record encodes");
        let back = envelope::decode(&again).expect("an encoded record decodes");
        assert_eq!(back, record);
    }
});
