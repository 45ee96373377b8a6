//! libFuzzer target: any bytes, decoded as a stream of frames, must give
//! frames or a typed error, never a panic, and valid Messages frames must
//! re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raft_transport_quic::frame::{decode_frame, encode_messages, Frame};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while !rest.is_empty() {
        let Ok((frame, after)) = decode_frame(rest, 1 << 20) else {
            return;
        };
        if let Frame::Messages(messages) = &frame {
            let consumed = &rest[..rest.len() - after.len()];
            let encoded = encode_messages(messages, 1 << 20).expect("a decoded batch re-encodes");
            // Postcard's encoding is canonical except for over-long varints,
            // so only check that the re-encoding decodes to the same frame.
            let (again, _) = decode_frame(&encoded, 1 << 20).expect("a re-encoded batch decodes");
            assert_eq!(again, frame, "round trip of {consumed:02x?}");
        }
        rest = after;
    }
});
