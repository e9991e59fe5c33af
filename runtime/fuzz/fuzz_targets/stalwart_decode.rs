//! Fuzz target for the Stalwart v0.16 decoder: bytes from `stwt.agora` come
//! from any node on the cluster, so no input may make the decoder panic or
//! allocate beyond the record's own size, and whatever it accepts must be
//! what the encoder writes.

#![no_main]

use herald::codec::stalwart::{self, Decoded, Record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(Decoded {
        node_id,
        events,
        error: None,
    }) = stalwart::decode(data)
    else {
        return;
    };
    let record = Record { node_id, events };
    let again = stalwart::encode(&record).expect("every decoded event has a wire form");
    // The decoder accepts over-long LEB128 integers (as Stalwart does) and the
    // encoder writes the shortest form, so re-encoding gives back the input
    // exactly unless the input held an over-long integer, which only makes it
    // longer. Either way the re-encoded record must decode to the same events.
    if again != data {
        assert!(
            again.len() < data.len(),
            "re-encoding changed a canonical record:\n in  {data:02x?}\n out {again:02x?}"
        );
    }
    let redecoded = stalwart::decode(&again).expect("re-encoded record has a node id");
    assert_eq!(redecoded.error, None);
    assert_eq!(redecoded.node_id, record.node_id);
    assert_eq!(redecoded.events, record.events);
});
