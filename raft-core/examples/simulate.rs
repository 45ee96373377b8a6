//! The deterministic simulator's command line (run it through
//! `cargo xtask sim`, which builds it in release).
//!
//! ```text
//! simulate --seed S [--verbose | --messages] [--bug NAME] [--steps N]
//! simulate --seeds N [--start S] [--threads T] [--bug NAME] [--steps N]
//! simulate --bugs [--max-seeds N] [--start S] [--threads T] [--steps N]
//! ```
//!
//! `--history` (with `--seed`) prints the client history at the end.
//! `--end-to-end-only` switches the per-step safety checks off, leaving the
//! liveness phase and the linearizability check of the client history.
//!
//! `--seed` runs one seed and prints its trace; `--seeds` runs a batch on
//! every core and prints progress and a summary; `--bugs` switches on each
//! injected protocol bug in turn and reports how many seeds it took to catch
//! it. The exit status is non-zero on any failure (or an uncaught bug).

use std::cell::RefCell;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use raft_core::protocol::InjectedBugs;
use raft_core::testing::sim::{self, SimOptions, SimReport, Verbosity, Violation, BUG_NAMES, KV_BUG_NAMES};

/// What the command line asked for.
#[derive(Clone, Debug)]
struct Arguments {
    mode: Mode,
    start_seed: u64,
    threads: usize,
    bug: Option<String>,
    fault_steps: Option<u64>,
    max_seeds: u64,
    verbosity: Verbosity,
    /// Only the end-to-end checks (liveness, linearizability).
    end_to_end_only: bool,
    /// Print the client history of a single seed.
    print_history: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    OneSeed(u64),
    Batch(u64),
    Bugs,
}

const USAGE: &str = "usage:
  simulate --seed S [--verbose | --messages] [--bug NAME] [--steps N]
  simulate --seeds N [--start S] [--threads T] [--bug NAME] [--steps N]
  simulate --bugs [--max-seeds N] [--start S] [--threads T] [--steps N]
  --end-to-end-only: skip the per-step safety checks (liveness and linearizability only)
  --history: with --seed, print the client history at the end
bugs: vote_without_log_check, commit_previous_terms, apply_before_commit, forget_vote,
      count_self_vote_early, lead_before_own_write (engine);
      rollback_keeps_data, snapshot_drops_checkpoints (state machine)";

fn parse_arguments() -> Result<Arguments, String> {
    let mut arguments = Arguments {
        mode: Mode::Batch(100),
        start_seed: 0,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        bug: None,
        fault_steps: None,
        max_seeds: 200,
        verbosity: Verbosity::Events,
        end_to_end_only: false,
        print_history: false,
    };
    let mut words = std::env::args().skip(1);
    let number = |word: Option<String>, flag: &str| -> Result<u64, String> {
        let word = word.ok_or(format!("{flag} needs a value"))?;
        word.parse().map_err(|_| format!("{flag}: not a number: {word}"))
    };
    while let Some(word) = words.next() {
        match word.as_str() {
            "--seed" => arguments.mode = Mode::OneSeed(number(words.next(), "--seed")?),
            "--seeds" => arguments.mode = Mode::Batch(number(words.next(), "--seeds")?),
            "--bugs" => arguments.mode = Mode::Bugs,
            "--start" => arguments.start_seed = number(words.next(), "--start")?,
            "--threads" => arguments.threads = number(words.next(), "--threads")?.max(1) as usize,
            "--steps" => arguments.fault_steps = Some(number(words.next(), "--steps")?),
            "--max-seeds" => arguments.max_seeds = number(words.next(), "--max-seeds")?,
            "--bug" => arguments.bug = Some(words.next().ok_or("--bug needs a name")?),
            "--verbose" => arguments.verbosity = Verbosity::Events,
            "--messages" => arguments.verbosity = Verbosity::Messages,
            "--quiet" => arguments.verbosity = Verbosity::Quiet,
            "--end-to-end-only" => arguments.end_to_end_only = true,
            "--history" => arguments.print_history = true,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument: {other}")),
        }
    }
    Ok(arguments)
}

fn main() -> ExitCode {
    let arguments = match parse_arguments() {
        Ok(arguments) => arguments,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("{message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let bugs = match arguments.bug.as_deref().map(|name| (name, sim::injected_bug(name))) {
        None => InjectedBugs::default(),
        Some((_, Some(bugs))) => bugs,
        Some((name, None)) if sim::kv_bug(name).is_some() => InjectedBugs::default(),
        Some((name, None)) => {
            eprintln!("unknown bug {name}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    install_quiet_panic_hook();
    let succeeded = match arguments.mode {
        Mode::OneSeed(seed) => run_one(&arguments, seed, bugs),
        Mode::Batch(count) => run_batch(&arguments, count, bugs),
        Mode::Bugs => run_bug_hunts(&arguments),
    };
    if succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

thread_local! {
    /// Where the last panic on this thread happened: the payload that
    /// `catch_unwind` returns does not say.
    static LAST_PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Panics are caught per seed and reported with the seed; the default hook
/// would print each one in the middle of the progress output.
fn install_quiet_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line()));
        LAST_PANIC_LOCATION.with(|last| *last.borrow_mut() = location);
    }));
}

fn options_for(arguments: &Arguments, seed: u64, bugs: InjectedBugs, verbosity: Verbosity) -> SimOptions {
    let mut options = SimOptions::new(seed);
    options.bugs = bugs;
    options.kv_bugs = arguments.bug.as_deref().and_then(sim::kv_bug).unwrap_or_default();
    options.verbosity = verbosity;
    options.per_step_checks = !arguments.end_to_end_only;
    if let Some(steps) = arguments.fault_steps {
        options.fault_steps = steps;
    }
    options
}

/// Runs one seed, adding the panic location to a panic's report.
fn run_seed(options: &SimOptions) -> Result<SimReport, Violation> {
    sim::run_seed(options).map_err(|mut violation| {
        if violation.property == sim::Property::Panic {
            if let Some(location) = LAST_PANIC_LOCATION.with(|last| last.borrow_mut().take()) {
                violation.details = format!("{} (at {location})", violation.details);
            }
        }
        violation
    })
}

fn replay_command(arguments: &Arguments, seed: u64) -> String {
    let mut command = format!("cargo xtask sim --seed {seed}");
    if let Some(bug) = &arguments.bug {
        command.push_str(&format!(" --bug {bug}"));
    }
    if let Some(steps) = arguments.fault_steps {
        command.push_str(&format!(" --steps {steps}"));
    }
    if arguments.end_to_end_only {
        command.push_str(" --end-to-end-only");
    }
    command
}

fn run_one(arguments: &Arguments, seed: u64, bugs: InjectedBugs) -> bool {
    let options = options_for(arguments, seed, bugs, arguments.verbosity);
    let started = Instant::now();
    if arguments.print_history {
        let (result, history) = sim::run_with_history(&options);
        for record in history.records() {
            println!("history: {record}");
        }
        if let Err(violation) = &result {
            println!("seed {seed} FAILED: {violation}");
        }
        return result.is_ok();
    }
    match run_seed(&options) {
        Ok(report) => {
            println!("seed {seed} passed in {:.2?}: {report:#?}", started.elapsed());
            true
        }
        Err(violation) => {
            println!("seed {seed} FAILED: {violation}");
            println!("replay: {}", replay_command(arguments, seed));
            false
        }
    }
}

/// Totals of a batch.
#[derive(Default)]
struct BatchTotals {
    failures: Vec<(u64, Violation)>,
    steps: u64,
    operations: u64,
    checkpoint_operations: u64,
    rollbacks: u64,
}

fn run_batch(arguments: &Arguments, count: u64, bugs: InjectedBugs) -> bool {
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let totals = Mutex::new(BatchTotals::default());
    println!(
        "running {count} seeds from {} on {} threads{}",
        arguments.start_seed,
        arguments.threads,
        arguments.bug.as_ref().map_or(String::new(), |b| format!(" with bug {b}"))
    );
    std::thread::scope(|scope| {
        for _ in 0..arguments.threads {
            scope.spawn(|| loop {
                let offset = next.fetch_add(1, Ordering::Relaxed);
                if offset >= count {
                    break;
                }
                let seed = arguments.start_seed + offset;
                let result = run_seed(&options_for(arguments, seed, bugs, Verbosity::Quiet));
                let mut totals = totals.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                match result {
                    Ok(report) => {
                        totals.steps += report.total_steps;
                        totals.operations += report.operations as u64;
                        totals.checkpoint_operations += report.checkpoint_operations as u64;
                        totals.rollbacks += report.rollbacks as u64;
                    }
                    Err(violation) => {
                        println!(
                            "seed {seed} FAILED: {violation}\n  replay: {}",
                            replay_command(arguments, seed)
                        );
                        totals.failures.push((seed, violation));
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            });
        }
        report_progress(&done, count, &totals, started);
    });
    let totals = totals.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
    print_summary(arguments, count, &totals, started.elapsed());
    totals.failures.is_empty()
}

fn report_progress(done: &AtomicU64, count: u64, totals: &Mutex<BatchTotals>, started: Instant) {
    let mut last_report = Instant::now();
    loop {
        let finished = done.load(Ordering::Relaxed);
        if finished >= count {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            let failures = totals.lock().map_or(0, |t| t.failures.len());
            let rate = finished as f64 / started.elapsed().as_secs_f64();
            println!("  {finished}/{count} seeds, {failures} failed, {rate:.1} seeds/s");
        }
    }
}

fn print_summary(arguments: &Arguments, count: u64, totals: &BatchTotals, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    println!(
        "{count} seeds in {seconds:.1} s: {:.1} seeds/s, {:.0} steps/s, {} operations checked \
         ({} checkpoint operations, {} rollbacks that succeeded), {} failed",
        count as f64 / seconds,
        totals.steps as f64 / seconds,
        totals.operations,
        totals.checkpoint_operations,
        totals.rollbacks,
        totals.failures.len()
    );
    let mut failures = totals.failures.clone();
    failures.sort_by_key(|(seed, _)| *seed);
    for (seed, violation) in failures {
        println!("  seed {seed}: {}  (replay: {})", violation.property, replay_command(arguments, seed));
    }
}

fn run_bug_hunts(arguments: &Arguments) -> bool {
    let results = Mutex::new(Vec::new());
    let next = AtomicU64::new(0);
    let names: Vec<&str> = BUG_NAMES.iter().chain(&KV_BUG_NAMES).copied().collect();
    std::thread::scope(|scope| {
        for _ in 0..arguments.threads.min(names.len()) {
            scope.spawn(|| loop {
                let position = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(name) = names.get(position) else {
                    break;
                };
                let bugs = sim::injected_bug(name).unwrap_or_default();
                let mut template = options_for(arguments, 0, bugs, Verbosity::Quiet);
                template.kv_bugs = sim::kv_bug(name).unwrap_or_default();
                let started = Instant::now();
                let found = (0..arguments.max_seeds).find_map(|offset| {
                    let options = SimOptions { seed: arguments.start_seed + offset, ..template.clone() };
                    run_seed(&options).err().map(|violation| (offset + 1, options.seed, violation))
                });
                let elapsed = started.elapsed();
                match &found {
                    Some((tries, seed, violation)) => println!(
                        "{name}: caught after {tries} seed(s) in {elapsed:.1?} (seed {seed}: {})\n  replay: cargo xtask sim --seed {seed} --bug {name}",
                        violation
                    ),
                    None => println!("{name}: NOT caught in {} seeds ({elapsed:.1?})", arguments.max_seeds),
                }
                results.lock().unwrap_or_else(|p| p.into_inner()).push((position, found.is_some()));
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.iter().all(|(_, caught)| *caught)
}
