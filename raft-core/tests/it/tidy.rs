//! Architecture invariants, checked like any other test.
//!
//! Architecture Invariant: the protocol engine (`src/protocol/`) does no
//! I/O, reads no clock, spawns nothing and iterates no randomly ordered
//! collection, so a seed replays bit for bit.

use std::path::{Path, PathBuf};

/// Source text that must not appear in the engine, with the reason.
const FORBIDDEN_IN_ENGINE: &[(&str, &str)] = &[
    ("tokio", "the engine is runtime-agnostic: the runtime drives it"),
    ("std::time", "time arrives as ticks"),
    ("Instant", "time arrives as ticks"),
    ("SystemTime", "time arrives as ticks"),
    ("std::net", "the engine does no I/O"),
    ("std::fs", "the engine does no I/O"),
    ("std::io", "the engine does no I/O"),
    ("std::thread", "the engine spawns nothing"),
    ("spawn", "the engine spawns nothing"),
    ("HashMap", "iteration order would depend on a random seed; use BTreeMap"),
    ("HashSet", "iteration order would depend on a random seed; use BTreeSet"),
    ("rand::", "randomness comes from the seeded generator in the config"),
    ("println!", "the engine reports through its outputs, not stdout"),
];

fn rust_files(directory: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![directory.to_path_buf()];
    while let Some(path) = pending.pop() {
        for entry in std::fs::read_dir(&path).expect("readable source directory") {
            let path = entry.expect("readable entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The part of a file that is compiled into the library: everything before
/// its `#[cfg(test)]` module, without comments.
fn library_code(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    code.lines().map(|line| line.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

#[test]
fn engine_does_no_io_reads_no_clock_and_spawns_nothing() {
    let engine = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/protocol");
    let files = rust_files(&engine);
    assert!(files.len() > 5, "expected the engine's source files under {}", engine.display());
    let mut problems = Vec::new();
    for file in files {
        if file.file_name().is_some_and(|n| n.to_string_lossy().ends_with("tests.rs")) {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("readable source file");
        let code = library_code(&text);
        for (pattern, reason) in FORBIDDEN_IN_ENGINE {
            if code.contains(pattern) {
                problems.push(format!("{}: uses `{pattern}`: {reason}", file.display()));
            }
        }
    }
    assert!(problems.is_empty(), "architecture invariants broken:\n{}", problems.join("\n"));
}

#[test]
fn tidy_check_has_teeth() {
    let sample =
        "use std::time::Instant;\n// tokio in a comment is fine\n#[cfg(test)]\nmod tests { use tokio; }";
    let code = library_code(sample);
    assert!(code.contains("std::time"));
    assert!(!code.contains("tokio"));
}
