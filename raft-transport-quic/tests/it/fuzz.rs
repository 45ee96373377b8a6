//! Property-based fuzzing of the frame decoder: random bytes and random
//! mutations of valid frames never panic; valid frames round-trip. The
//! long-running version is `cargo run --release --example fuzz_frames`, and
//! a libFuzzer target lives in `raft-transport-quic/fuzz`.

use proptest::prelude::*;
use raft_transport_quic::frame::{decode_frame, Frame, FrameError};

#[path = "../common/samples.rs"]
mod samples;

use samples::{message, mutate, valid_frame, Rng};

/// Decodes every frame in `input`, as the stream reader would, stopping at
/// the first error.
fn decode_all(input: &[u8]) -> Result<Vec<Frame>, FrameError> {
    let mut frames = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let (frame, after) = decode_frame(rest, 1 << 20)?;
        frames.push(frame);
        rest = after;
    }
    Ok(frames)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn random_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_all(&input);
    }

    #[test]
    fn mutated_frames_never_panic(seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let frame = valid_frame(&mut rng);
        prop_assert!(decode_all(&frame).is_ok());
        let _ = decode_all(&mutate(&mut rng, frame));
    }

    #[test]
    fn message_batches_round_trip(seed in any::<u64>(), count in 0usize..20) {
        let mut rng = Rng(seed);
        let messages: Vec<_> = (0..count).map(|_| message(&mut rng)).collect();
        let frame = raft_transport_quic::frame::encode_messages(&messages, 1 << 20).unwrap();
        prop_assert_eq!(decode_all(&frame).unwrap(), vec![Frame::Messages(messages)]);
    }
}
