//! `cargo xtask chaos`: builds raft-node and raft-chaos (debug by default:
//! the nodes then run with debug assertions, which catch more; `--release`
//! for long runs at higher load) and runs `raft-chaos run`, passing every
//! other argument through. The report lands in `target/chaos/<seed>/`
//! unless `--out` says otherwise.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use crate::{run, workspace_root};

/// Builds both binaries, then runs the chaos test with `arguments`.
pub fn chaos(arguments: &[String]) -> ExitCode {
    let release = arguments.iter().any(|argument| argument == "--release");
    let mut passed: Vec<String> = arguments.iter().filter(|a| *a != "--release").cloned().collect();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut build = Command::new(&cargo);
    build.current_dir(workspace_root()).args([
        "build",
        "--quiet",
        "-p",
        "raft-node",
        "--bin",
        "raft-node",
        "-p",
        "raft-chaos",
        "--bin",
        "raft-chaos",
    ]);
    if release {
        build.arg("--release");
    }
    if run(build) != ExitCode::SUCCESS {
        return ExitCode::FAILURE;
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), PathBuf::from);
    let target = if target.is_relative() { workspace_root().join(target) } else { target };
    let binaries = target.join(if release { "release" } else { "debug" });
    if !passed.iter().any(|a| a == "--out" || a.starts_with("--out=")) {
        let seed = passed
            .iter()
            .position(|a| a == "--seed")
            .and_then(|at| passed.get(at + 1).cloned())
            .or_else(|| passed.iter().find_map(|a| a.strip_prefix("--seed=").map(str::to_string)))
            .unwrap_or_else(|| "1".to_string());
        passed.push("--out".into());
        passed.push(target.join("chaos").join(seed).display().to_string());
    }
    let mut command = Command::new(binaries.join("raft-chaos"));
    command
        .current_dir(workspace_root())
        .arg("run")
        .arg("--raft-node")
        .arg(binaries.join("raft-node"))
        .args(&passed);
    run(command)
}
