//! Long-running fuzzing of the frame decoder on stable Rust: random bytes
//! and mutations of valid frames of every kind, for a given time, counting
//! iterations and panics (each input runs under `catch_unwind`).
//!
//! ```sh
//! cargo run --release -p raft-transport-quic --example fuzz_frames -- 600 [seed] [corpus-dir]
//! ```
//! With a corpus directory it also writes 64 valid frames there, as seeds
//! for the libFuzzer target in `raft-transport-quic/fuzz`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use raft_transport_quic::frame::{decode_frame, FrameError};

#[path = "../tests/common/samples.rs"]
mod samples;

use samples::{mutate, valid_frame, Rng};

fn decode_all(input: &[u8]) -> Result<usize, FrameError> {
    let (mut frames, mut rest) = (0, input);
    while !rest.is_empty() {
        rest = decode_frame(rest, 1 << 20)?.1;
        frames += 1;
    }
    Ok(frames)
}

fn main() {
    let mut arguments = std::env::args().skip(1);
    let seconds: u64 = arguments.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let seed: u64 = arguments.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    if let Some(directory) = arguments.next() {
        std::fs::create_dir_all(&directory).expect("corpus directory");
        let mut rng = Rng(seed);
        for i in 0..64 {
            std::fs::write(format!("{directory}/seed-{i}"), valid_frame(&mut rng)).expect("corpus file");
        }
    }
    // Panics are counted, not printed for every input.
    std::panic::set_hook(Box::new(|_| {}));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut rng = Rng(seed);
    let (mut iterations, mut panics, mut accepted, mut rejected) = (0u64, 0u64, 0u64, 0u64);
    while Instant::now() < deadline {
        for _ in 0..1_000 {
            let input = match rng.below(4) {
                0 => {
                    let length = rng.below(256);
                    (0..length).map(|_| rng.next() as u8).collect()
                }
                1 => {
                    let mut frames = valid_frame(&mut rng);
                    frames.extend(valid_frame(&mut rng));
                    mutate(&mut rng, frames)
                }
                _ => {
                    let frame = valid_frame(&mut rng);
                    mutate(&mut rng, frame)
                }
            };
            match catch_unwind(AssertUnwindSafe(|| decode_all(&input))) {
                Ok(Ok(_)) => accepted += 1,
                Ok(Err(_)) => rejected += 1,
                Err(_) => {
                    panics += 1;
                    eprintln!("PANIC on input {input:02x?}");
                }
            }
            iterations += 1;
        }
    }
    println!(
        "fuzz_frames: {iterations} inputs in {seconds} s (seed {seed}): {accepted} decoded, {rejected} rejected with an error, {panics} panics"
    );
    if panics > 0 {
        std::process::exit(1);
    }
}
