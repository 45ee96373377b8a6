//! Figure 16 of the Raft paper ("In Search of an Understandable Consensus
//! Algorithm", §9.3) reproduced with raft-core's pure engine: the time to
//! detect a crashed leader and elect a new one in a five-server cluster.
//!
//! ```text
//! cargo xtask figure16 [--trials 1000] [--tick-us 100] [--variant both|engine|paper]
//!                      [--threads 2] [--seed S] [--out target/figure16]
//!                      [--model disk|network] [--lan-delay-us 100-500] [--disk-us 11000-15000]
//!                      [--request-delay-us LOW-HIGH] [--answer-delay-us LOW-HIGH]
//! ```
//!
//! The paper's method, followed here: a five-server cluster with a
//! broadcast time of about 15 ms; the leader's heartbeat interval is half
//! the minimum election timeout; before each crash the servers' logs have
//! different lengths (so some candidates cannot win), the leader sends a
//! synchronized heartbeat broadcast, and it is crashed at a uniformly random
//! moment within its heartbeat interval after it. The downtime runs from
//! the crash until a surviving server becomes leader, so it includes the
//! followers' detection of the crash (up to an election timeout after the
//! last heartbeat).
//!
//! The model: five `Engine`s driven by an event-driven loop with
//! microsecond time. Each engine ticks every `--tick-us` (100 µs by
//! default, so a range such as 150–151 ms is expressible) from its own
//! random phase. Each trial has its own seed, so a run repeats bit for bit
//! whatever the thread count.
//!
//! Where the time goes (`--model disk`, the default): a LAN and a disk.
//! Every message takes a one-way delay drawn uniformly from 0.1–0.5 ms
//! (`--lan-delay-us`), in order on each link. Every batch the engine hands
//! out with a `persist_id` is a synced write to that server's disk, which
//! completes after a latency drawn uniformly from 11–15 ms (`--disk-us`);
//! only then is `Engine::persisted` called, so the messages the engine
//! holds until the write is durable (a voter's answer waits for its vote, a
//! follower's acknowledgement for its entries) leave only then, and a
//! candidate counts its own vote only then (its vote requests leave at
//! once, beside the write of its term and vote). Writes on one server
//! are serialised: batches handed out while a write is in progress are
//! merged into the next one, one sync for all, as raft-core's runtime does
//! (`runtime/storage.rs`). Messages that wait for nothing (vote requests,
//! heartbeats and their answers, pre-votes and their answers) cross the LAN
//! alone.
//!
//! Why this model and these numbers: the paper gives only the broadcast
//! time, "roughly 15ms" for five servers, measured with LogCabin, the
//! authors' implementation, on their cluster. §5.6 of the paper says what
//! such a time is made of: "Raft's RPCs typically require the recipient to
//! persist information to stable storage, so the broadcast time may range
//! from 0.5ms to 20ms, depending on storage technology". A LAN round trip
//! is well under a millisecond, so nearly all of the 15 ms is the
//! recipient's synced write, and a network-only model misplaces it: it
//! makes every message travel for 4.5–8.5 ms, where on a LAN a request
//! arrives in a fraction of a millisecond and the recipient's disk then
//! holds the answer. The LAN delay is a typical one-way time within one
//! data centre. The disk latency is of the order of a synced write on a
//! rotational disk (one or two rotations, 8–17 ms at 7,200 rpm; the paper
//! does not name its disks), its range chosen, before any election was
//! run, so that the broadcast time the program measures from the model
//! (the leader sends AppendEntries to the four others, each persists on an
//! idle disk and answers, the last answer arrives) is the paper's 15 ms:
//! mean 14.8 ms, median 15.0 ms. The spread of ±2 ms is an assumption: the
//! paper reports none. The candidate's write runs while its vote requests
//! travel and the voters write their votes, so an election has one synced
//! write on its critical path (BENCHMARKS.md has the results and what they
//! say about the paper's setup).
//!
//! `--model network` is the earlier model, kept for comparison: every
//! message takes 4.5–8.5 ms one way and disks are instantaneous (a batch is
//! durable as soon as the engine hands it out), which puts the same
//! broadcast time entirely on the wire. `--lan-delay-us` and `--disk-us`
//! override either model's figures (`--disk-us 0-0`: instantaneous).
//!
//! Two variants run by default. `engine` is raft-node's configuration:
//! pre-vote and CheckQuorum on. Pre-vote adds a round trip to every
//! election; CheckQuorum makes a follower that heard from the leader less
//! than a minimum election timeout ago ignore vote requests (leader
//! stickiness), so an early candidate can be ignored by followers whose
//! timers have not run out. `paper` switches both off: the algorithm the
//! paper measured.
//!
//! `--request-delay-us` and `--answer-delay-us` are for sensitivity checks
//! only: they set a request's one-way delay (vote requests, AppendEntries,
//! heartbeats) and its answer's separately, for example to split a
//! network-only model's broadcast time unevenly. The defaults are the
//! experiment above.
//!
//! Output: a Markdown table (median, mean, p90, p99, worst per range, the
//! mean time from the crash to the first survivor's campaign, and the mean
//! number of candidacies per finished trial: more than one means several
//! servers stood, in one term or in successive ones) on stdout and in
//! `OUT/figure16.md`, and the CDFs as SVG in `OUT/figure16-<variant>.svg`,
//! with the paper's reported figures marked.

#[path = "support/svg.rs"]
mod svg;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use raft_core::message::{Message, MessageBody};
use raft_core::protocol::{Config, Engine, PersistId};
use raft_core::types::{Membership, NodeId, Role, Term};

/// Servers in the cluster, as in the paper.
const SERVERS: usize = 5;
/// The default model's one-way LAN delay is uniform in this range (µs).
const LAN_DELAY_MICROS: (u64, u64) = (100, 500);
/// The default model's synced disk write takes a time uniform in this
/// range (µs).
const DISK_MICROS: (u64, u64) = (11_000, 15_000);
/// The network-only model (`--model network`): the one-way delay is
/// uniform in this range (µs) and disks are instantaneous.
const NETWORK_DELAY_MICROS: (u64, u64) = (4_500, 8_500);
/// The timeout ranges of the paper's top graph (randomness varied).
const TOP_RANGES_MS: [(u64, u64); 6] =
    [(150, 150), (150, 151), (150, 155), (150, 175), (150, 200), (150, 300)];
/// The timeout ranges of the paper's bottom graph (timeout scaled).
const BOTTOM_RANGES_MS: [(u64, u64); 5] = [(12, 24), (25, 50), (50, 100), (100, 200), (150, 300)];
/// The paper's reported figures: 150–155 ms median 287 ms; 150–200 ms
/// worst of 1000 trials 513 ms; 12–24 ms mean 35 ms.
const PAPER_MEDIAN_150_155_MS: f64 = 287.0;
const PAPER_WORST_150_200_MS: f64 = 513.0;
const PAPER_MEAN_12_24_MS: f64 = 35.0;

/// Which protocol options the engines run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    /// raft-node's settings: pre-vote and CheckQuorum on.
    Engine,
    /// The algorithm the paper measured: neither.
    Paper,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Engine => "engine",
            Variant::Paper => "paper",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Variant::Engine => "raft-node's engine settings (pre-vote, CheckQuorum)",
            Variant::Paper => "the paper's algorithm (no pre-vote, no CheckQuorum)",
        }
    }
}

struct Options {
    trials: usize,
    tick_micros: u64,
    variants: Vec<Variant>,
    threads: usize,
    seed: u64,
    out: PathBuf,
    /// A trial that has not elected a leader after this long is recorded
    /// as unfinished. 10 s is the paper's own bound for its no-randomness
    /// case ("longer than 10 seconds"); with the disk model some ranges
    /// never elect, and a longer cap only makes the run slower.
    cap_ms: u64,
    /// The one-way delay of requests and of answers, and the disk's
    /// latency (µs, uniform).
    delays: Delays,
}

/// Where the time goes, in µs, each uniform in its range: the one-way
/// delay of requests (vote requests, AppendEntries, heartbeats, ...) and of
/// their answers, and a synced disk write (`(0, 0)`: instantaneous disks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Delays {
    request_micros: (u64, u64),
    answer_micros: (u64, u64),
    disk_micros: (u64, u64),
}

impl Delays {
    /// The default model: a LAN and a disk.
    const DISK: Delays = Delays {
        request_micros: LAN_DELAY_MICROS,
        answer_micros: LAN_DELAY_MICROS,
        disk_micros: DISK_MICROS,
    };
    /// The earlier model: the whole broadcast time on the wire.
    const NETWORK: Delays = Delays {
        request_micros: NETWORK_DELAY_MICROS,
        answer_micros: NETWORK_DELAY_MICROS,
        disk_micros: (0, 0),
    };

    /// Whether batches are durable as soon as they are handed out.
    fn instant_disk(&self) -> bool {
        self.disk_micros.1 == 0
    }

    /// How the model reads in the report.
    fn describe(&self) -> String {
        let ms = |micros: (u64, u64)| {
            format!("{:.1}–{:.1} ms", micros.0 as f64 / 1000.0, micros.1 as f64 / 1000.0)
        };
        let network = if self.request_micros == self.answer_micros {
            format!("one-way delay uniform {}", ms(self.request_micros))
        } else {
            format!(
                "one-way delay uniform {} for requests and {} for answers",
                ms(self.request_micros),
                ms(self.answer_micros)
            )
        };
        let disk = if self.instant_disk() {
            "instantaneous disks".to_string()
        } else {
            format!("each synced write {} on a serialised disk", ms(self.disk_micros))
        };
        let model = match *self {
            Delays::DISK => " (the default model: LAN and disk)",
            Delays::NETWORK => " (`--model network`: the earlier network-only model)",
            _ => " (a sensitivity check, not the experiment's default)",
        };
        format!("{network}, {disk}{model}")
    }
}

/// Parses "LOW-HIGH" (µs).
fn parse_range(text: &str) -> Option<(u64, u64)> {
    let (low, high) = text.split_once('-')?;
    let (low, high) = (low.parse().ok()?, high.parse().ok()?);
    (low <= high).then_some((low, high))
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        trials: 1_000,
        tick_micros: 100,
        variants: vec![Variant::Engine, Variant::Paper],
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        seed: 16,
        out: PathBuf::from("target/figure16"),
        cap_ms: 10_000,
        delays: Delays::DISK,
    };
    // A model first, then any override, whatever the order on the line.
    let mut overrides: Vec<(String, (u64, u64))> = Vec::new();
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        let mut value = || arguments.next().ok_or_else(|| format!("{argument} needs a value"));
        let number = |text: String| text.parse::<u64>().map_err(|_| format!("{argument} takes a number"));
        match argument.as_str() {
            "--trials" => options.trials = number(value()?)? as usize,
            "--tick-us" => options.tick_micros = number(value()?)?.max(1),
            "--threads" => options.threads = (number(value()?)? as usize).max(1),
            "--seed" => options.seed = number(value()?)?,
            "--cap-ms" => options.cap_ms = number(value()?)?,
            "--out" => options.out = PathBuf::from(value()?),
            "--model" => {
                options.delays = match value()?.as_str() {
                    "disk" => Delays::DISK,
                    "network" => Delays::NETWORK,
                    other => return Err(format!("unknown model {other:?}: disk or network")),
                }
            }
            "--lan-delay-us" | "--request-delay-us" | "--answer-delay-us" | "--disk-us" => {
                let range =
                    parse_range(&value()?).ok_or_else(|| format!("{argument} takes LOW-HIGH in µs"))?;
                overrides.push((argument.clone(), range));
            }
            "--variant" => {
                options.variants = match value()?.as_str() {
                    "both" => vec![Variant::Engine, Variant::Paper],
                    "engine" => vec![Variant::Engine],
                    "paper" => vec![Variant::Paper],
                    other => return Err(format!("unknown variant {other:?}: both, engine or paper")),
                }
            }
            "--help" | "-h" => {
                return Err("usage: figure16 [--trials 1000] [--tick-us 100] [--variant both|engine|paper] \
                            [--threads N] [--seed S] [--cap-ms 10000] [--out DIR] \
                            [--model disk|network] [--lan-delay-us 100-500] [--disk-us 11000-15000] \
                            [--request-delay-us LOW-HIGH] [--answer-delay-us LOW-HIGH]"
                    .into())
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    for (argument, range) in overrides {
        let delays = &mut options.delays;
        match argument.as_str() {
            "--lan-delay-us" => (delays.request_micros, delays.answer_micros) = (range, range),
            "--request-delay-us" => delays.request_micros = range,
            "--answer-delay-us" => delays.answer_micros = range,
            _ => delays.disk_micros = range,
        }
    }
    Ok(options)
}

fn main() {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    if let Err(message) = run(&options) {
        eprintln!("figure16 failed: {message}");
        std::process::exit(1);
    }
}

/// Every range once, in the paper's order (150–300 ms belongs to both
/// graphs and runs once).
fn all_ranges() -> Vec<(u64, u64)> {
    let mut ranges = TOP_RANGES_MS.to_vec();
    ranges.extend(BOTTOM_RANGES_MS.iter().filter(|r| !TOP_RANGES_MS.contains(r)));
    ranges
}

/// The outcome of one crash.
#[derive(Clone, Copy, Debug)]
struct Trial {
    /// Crash to a new leader, or `None` when the cap was reached.
    downtime_micros: Option<u64>,
    /// Terms the election took (1 = the first candidate won).
    elections: u64,
    /// Crash to the first survivor's campaign (pre-vote or vote): how long
    /// the crash took to detect.
    detection_micros: Option<u64>,
    /// Candidacies the survivors started (several in one term split it).
    candidacies: u64,
    /// Whether the leader was crashed: `false` when the setup before the
    /// crash did not finish (no first leader, or no commit, in time).
    crashed: bool,
}

/// One range's trials, in trial order.
struct RangeResult {
    range_ms: (u64, u64),
    trials: Vec<Trial>,
}

impl RangeResult {
    /// Downtimes of the finished trials in ms, sorted.
    fn sorted_ms(&self) -> Vec<f64> {
        let mut values: Vec<f64> =
            self.trials.iter().filter_map(|t| t.downtime_micros).map(|us| us as f64 / 1000.0).collect();
        values.sort_by(f64::total_cmp);
        values
    }

    fn unfinished(&self) -> usize {
        self.trials.iter().filter(|t| t.downtime_micros.is_none()).count()
    }

    /// The mean downtime of the finished trials (NaN if none finished).
    fn mean_ms(&self) -> f64 {
        let values = self.sorted_ms();
        values.iter().sum::<f64>() / values.len() as f64
    }

    /// The mean time from the crash to the first campaign, in ms, over
    /// every trial (finished or not; NaN if there is none).
    fn mean_detection_ms(&self) -> f64 {
        let values: Vec<f64> =
            self.trials.iter().filter_map(|t| t.detection_micros).map(|us| us as f64 / 1000.0).collect();
        values.iter().sum::<f64>() / values.len() as f64
    }

    /// The mean number of candidacies per finished trial (NaN if none
    /// finished).
    fn mean_candidacies(&self) -> f64 {
        let finished: Vec<&Trial> = self.trials.iter().filter(|t| t.downtime_micros.is_some()).collect();
        finished.iter().map(|t| t.candidacies).sum::<u64>() as f64 / finished.len() as f64
    }
}

fn run(options: &Options) -> Result<(), String> {
    std::fs::create_dir_all(&options.out).map_err(|e| format!("creating {}: {e}", options.out.display()))?;
    let broadcast = broadcast_time_ms(options.seed, options.delays);
    let mut report = String::new();
    let delays = options.delays.describe();
    let _ = writeln!(
        report,
        "Five servers; {delays} (broadcast time: mean {:.1} ms, p50 {:.1} ms); \
         tick {} µs; heartbeat interval half the minimum timeout; {} trials per range; seed {}.\n",
        broadcast.0, broadcast.1, options.tick_micros, options.trials, options.seed
    );
    for &variant in &options.variants {
        let started = Instant::now();
        let mut results = Vec::new();
        for (index, range_ms) in all_ranges().into_iter().enumerate() {
            let range_started = Instant::now();
            let trials = run_range(options, variant, index as u64, range_ms);
            let result = RangeResult { range_ms, trials };
            let sorted = result.sorted_ms();
            eprintln!(
                "{:<6} {:>3}–{:<3} ms: median {:>7.1} ms, worst {:>8.1} ms, {} unfinished ({:.1} s)",
                variant.name(),
                range_ms.0,
                range_ms.1,
                quantile(&sorted, 0.5),
                sorted.last().copied().unwrap_or(0.0),
                result.unfinished(),
                range_started.elapsed().as_secs_f64()
            );
            results.push(result);
        }
        let _ = writeln!(report, "{}", table(variant, &results, options.cap_ms));
        let svg_path = options.out.join(format!("figure16-{}.svg", variant.name()));
        std::fs::write(&svg_path, plot(variant, &results))
            .map_err(|e| format!("writing {}: {e}", svg_path.display()))?;
        eprintln!(
            "{}: {:.1} s, wrote {}",
            variant.name(),
            started.elapsed().as_secs_f64(),
            svg_path.display()
        );
    }
    print!("{report}");
    let report_path = options.out.join("figure16.md");
    std::fs::write(&report_path, &report).map_err(|e| format!("writing {}: {e}", report_path.display()))?;
    Ok(())
}

/// Runs one range's trials on `options.threads` threads.
fn run_range(options: &Options, variant: Variant, range_index: u64, range_ms: (u64, u64)) -> Vec<Trial> {
    let threads = options.threads.min(options.trials.max(1));
    let unfinished =
        Trial { downtime_micros: None, elections: 0, detection_micros: None, candidacies: 0, crashed: false };
    let mut trials = vec![unfinished; options.trials];
    std::thread::scope(|scope| {
        let chunk = options.trials.div_ceil(threads).max(1);
        for (part_index, part) in trials.chunks_mut(chunk).enumerate() {
            scope.spawn(move || {
                for (offset, slot) in part.iter_mut().enumerate() {
                    let trial = (part_index * chunk + offset) as u64;
                    let seed = options.seed ^ (range_index << 40) ^ (trial << 8) ^ variant as u64;
                    *slot = run_trial(options, variant, range_ms, seed);
                }
            });
        }
    });
    trials
}

/// SplitMix64: the example's own seeded generator (the engine's is private).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + ((u128::from(self.next_u64()) * u128::from(high - low + 1)) >> 64) as u64
    }
}

/// The mean and median broadcast time the model gives: a leader sends
/// AppendEntries to four followers, each persists the entries on an idle
/// disk (unless disks are instantaneous) and answers, and the last answer
/// returns.
fn broadcast_time_ms(seed: u64, delays: Delays) -> (f64, f64) {
    let mut rng = Rng::new(seed);
    let (request, answer, disk) = (delays.request_micros, delays.answer_micros, delays.disk_micros);
    let mut samples: Vec<f64> = (0..100_000)
        .map(|_| {
            (0..SERVERS - 1)
                .map(|_| {
                    let write = if delays.instant_disk() { 0 } else { rng.between(disk.0, disk.1) };
                    rng.between(request.0, request.1) + write + rng.between(answer.0, answer.1)
                })
                .max()
                .unwrap_or(0) as f64
                / 1000.0
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    (samples.iter().sum::<f64>() / samples.len() as f64, quantile(&samples, 0.5))
}

/// A message on the wire, ordered by arrival time, then by send order.
struct InFlight {
    arrival_micros: u64,
    sequence: u64,
    message: Message,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.arrival_micros, self.sequence) == (other.arrival_micros, other.sequence)
    }
}

impl Eq for InFlight {}

impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.arrival_micros, self.sequence).cmp(&(other.arrival_micros, other.sequence))
    }
}

struct Server {
    engine: Engine,
    alive: bool,
    next_tick_micros: u64,
    /// The synced write in progress: when it completes, and the newest
    /// batch it makes durable.
    disk_write: Option<(u64, PersistId)>,
    /// The newest batch handed out while the disk was busy: the batches
    /// queued behind the write in progress, merged into the next one.
    disk_queued: Option<PersistId>,
}

/// The next thing to happen in the world.
#[derive(Clone, Copy)]
enum Event {
    /// A server's synced write completes.
    Durable { server: usize, at_micros: u64 },
    /// The first message on the wire arrives.
    Delivery { at_micros: u64 },
    /// A server's clock ticks.
    Tick { server: usize, at_micros: u64 },
}

impl Event {
    fn at_micros(self) -> u64 {
        match self {
            Event::Durable { at_micros, .. }
            | Event::Delivery { at_micros }
            | Event::Tick { at_micros, .. } => at_micros,
        }
    }
}

/// Five servers, the network between them and the clock.
struct World {
    now_micros: u64,
    tick_micros: u64,
    servers: Vec<Server>,
    wire: BinaryHeap<Reverse<InFlight>>,
    sequence: u64,
    /// Per link (from, to): the latest arrival scheduled, so each link
    /// delivers in order as TCP would.
    link_arrival_micros: Vec<u64>,
    rng: Rng,
    /// Draws the disk latencies: a stream of its own, so that the network
    /// draws are those of the network-only model when disks are
    /// instantaneous.
    disk_rng: Rng,
    /// AppendEntries carrying entries to these servers are lost: how the
    /// trial gives the followers logs of different lengths.
    starve_entries: [bool; SERVERS],
    /// When the leader last sent heartbeats to every follower at once.
    last_heartbeat_micros: Option<u64>,
    delays: Delays,
    /// Set at the crash: the first campaign after it is recorded.
    watch_campaigns: bool,
    first_campaign_micros: Option<u64>,
}

impl World {
    fn new(
        config_for: impl Fn(NodeId) -> Config,
        tick_micros: u64,
        delays: Delays,
        mut rng: Rng,
        disk_rng: Rng,
    ) -> World {
        let membership = Membership::with_voters((1..=SERVERS as u64).map(NodeId));
        let servers = (1..=SERVERS as u64)
            .map(|id| Server {
                engine: Engine::bootstrap(config_for(NodeId(id)), membership.clone())
                    .expect("a valid configuration and membership"),
                alive: true,
                // Servers' clocks are not in phase.
                next_tick_micros: rng.between(0, tick_micros - 1),
                disk_write: None,
                disk_queued: None,
            })
            .collect();
        World {
            now_micros: 0,
            tick_micros,
            servers,
            wire: BinaryHeap::new(),
            sequence: 0,
            link_arrival_micros: vec![0; SERVERS * SERVERS],
            rng,
            disk_rng,
            starve_entries: [false; SERVERS],
            last_heartbeat_micros: None,
            delays,
            watch_campaigns: false,
            first_campaign_micros: None,
        }
    }

    /// The next event: a disk completion first, then a delivery, then a
    /// tick, when several fall at the same microsecond.
    fn next_event(&self) -> Option<Event> {
        let live = || self.servers.iter().enumerate().filter(|(_, s)| s.alive);
        let durable = live()
            .filter_map(|(server, s)| s.disk_write.map(|(at_micros, _)| Event::Durable { server, at_micros }))
            .min_by_key(|e| e.at_micros());
        let delivery = self.wire.peek().map(|Reverse(m)| Event::Delivery { at_micros: m.arrival_micros });
        let tick = live()
            .min_by_key(|(_, s)| s.next_tick_micros)
            .map(|(server, s)| Event::Tick { server, at_micros: s.next_tick_micros });
        // `min_by_key` keeps the first of equal keys: the order above.
        [durable, delivery, tick].into_iter().flatten().min_by_key(|e| e.at_micros())
    }

    /// Processes the next event (a disk completion, a delivery or a tick).
    fn step(&mut self) {
        match self.next_event() {
            None => {}
            Some(Event::Durable { server: index, at_micros }) => {
                self.now_micros = at_micros;
                let server = &mut self.servers[index];
                let Some((_, id)) = server.disk_write.take() else { return };
                server.engine.persisted(id);
                // The batches queued meanwhile go to disk as one write.
                if let Some(queued) = server.disk_queued.take() {
                    self.start_write(index, queued);
                }
                self.drain(index);
            }
            Some(Event::Delivery { at_micros }) => {
                let Some(Reverse(in_flight)) = self.wire.pop() else { return };
                self.now_micros = at_micros;
                let index = (in_flight.message.to.get() - 1) as usize;
                if self.servers[index].alive {
                    // Stale or irrelevant messages are refused by the
                    // engine; that is part of normal operation.
                    let _ = self.servers[index].engine.step(in_flight.message);
                    self.drain(index);
                }
            }
            Some(Event::Tick { server: index, at_micros: at }) => {
                self.now_micros = at;
                let server = &mut self.servers[index];
                server.next_tick_micros += self.tick_micros;
                // Campaigns start on a timer, so only ticks can start the
                // first.
                let campaigns =
                    |engine: &Engine| engine.stats().pre_votes_started + engine.stats().elections_started;
                let before = campaigns(&server.engine);
                server.engine.tick();
                if self.watch_campaigns
                    && self.first_campaign_micros.is_none()
                    && campaigns(&server.engine) > before
                {
                    self.first_campaign_micros = Some(at);
                }
                self.drain(index);
            }
        }
    }

    /// Starts a synced write on an idle disk; `id` is the newest batch it
    /// makes durable.
    fn start_write(&mut self, index: usize, id: PersistId) {
        let (low, high) = self.delays.disk_micros;
        let done = self.now_micros + self.disk_rng.between(low, high);
        self.servers[index].disk_write = Some((done, id));
    }

    /// Does everything the engine asks: sends its messages, hands its
    /// writes to the disk (or makes them durable at once if disks are
    /// instantaneous), applies committed entries.
    fn drain(&mut self, index: usize) {
        while self.servers[index].engine.has_ready() {
            let ready = self.servers[index].engine.ready();
            let heartbeats =
                ready.messages.iter().filter(|m| matches!(m.body, MessageBody::Heartbeat(_))).count();
            if heartbeats == SERVERS - 1 && self.servers[index].engine.role() == Role::Leader {
                self.last_heartbeat_micros = Some(self.now_micros);
            }
            for message in ready.messages {
                self.send(message);
            }
            if let Some(id) = ready.persist_id {
                if self.delays.instant_disk() {
                    self.servers[index].engine.persisted(id);
                } else if self.servers[index].disk_write.is_some() {
                    self.servers[index].disk_queued = Some(id);
                } else {
                    self.start_write(index, id);
                }
            }
            if let Some(last) = ready.committed_entries.last() {
                self.servers[index].engine.applied(last.index);
            }
        }
    }

    fn send(&mut self, message: Message) {
        let (from, to) = ((message.from.get() - 1) as usize, (message.to.get() - 1) as usize);
        if self.starve_entries[to]
            && matches!(&message.body, MessageBody::AppendEntries(a) if !a.entries.is_empty())
        {
            return;
        }
        let answer = matches!(
            message.body,
            MessageBody::RequestVoteResponse(_)
                | MessageBody::AppendEntriesResponse(_)
                | MessageBody::HeartbeatResponse(_)
                | MessageBody::InstallSnapshotResponse(_)
                | MessageBody::ReadIndexResponse(_)
        );
        let range = if answer { self.delays.answer_micros } else { self.delays.request_micros };
        let delay = self.rng.between(range.0, range.1);
        let link = from * SERVERS + to;
        let arrival = (self.now_micros + delay).max(self.link_arrival_micros[link]);
        self.link_arrival_micros[link] = arrival;
        self.sequence += 1;
        self.wire.push(Reverse(InFlight { arrival_micros: arrival, sequence: self.sequence, message }));
    }

    /// Runs events up to and including `time_micros`, then sets the clock
    /// there.
    fn run_to(&mut self, time_micros: u64) {
        while self.next_event().is_some_and(|e| e.at_micros() <= time_micros) {
            self.step();
        }
        self.now_micros = self.now_micros.max(time_micros);
    }

    /// Runs events until `done` holds (checked after each event) or the
    /// clock passes `limit_micros`. Returns whether `done` held.
    fn run_until(&mut self, limit_micros: u64, done: impl Fn(&World) -> bool) -> bool {
        while !done(self) {
            if self.now_micros > limit_micros {
                return false;
            }
            self.step();
        }
        true
    }

    /// The live leader with the highest term.
    fn leader(&self) -> Option<usize> {
        self.servers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.alive && s.engine.role() == Role::Leader)
            .max_by_key(|(_, s)| s.engine.term())
            .map(|(index, _)| index)
    }
}

fn run_trial(options: &Options, variant: Variant, range_ms: (u64, u64), seed: u64) -> Trial {
    let tick_micros = options.tick_micros;
    let ticks = |ms: u64| (ms * 1000).div_ceil(tick_micros).max(1);
    let min_timeout_ticks = ticks(range_ms.0).max(2);
    let random_ticks = ticks(range_ms.1) - ticks(range_ms.0).min(ticks(range_ms.1));
    let heartbeat_ticks = (min_timeout_ticks / 2).max(1);
    let heartbeat_micros = heartbeat_ticks * tick_micros;
    let mut rng = Rng::new(seed);
    let engine_seed = rng.next_u64();
    let config_for = |id: NodeId| {
        let mut config = Config::new(id);
        config.election_timeout_ticks = min_timeout_ticks;
        config.election_timeout_random_ticks = Some(random_ticks);
        config.heartbeat_interval_ticks = heartbeat_ticks;
        config.pre_vote = variant == Variant::Engine;
        config.check_quorum = variant == Variant::Engine;
        config.random_seed = engine_seed ^ id.get().wrapping_mul(0x9E37_79B9);
        config
    };
    let disk_rng = Rng::new(engine_seed ^ 0xD15C_D15C_D15C_D15C);
    let mut world = World::new(config_for, tick_micros, options.delays, Rng::new(rng.next_u64()), disk_rng);
    let unfinished =
        Trial { downtime_micros: None, elections: 0, detection_micros: None, candidacies: 0, crashed: false };

    // A first leader, with every server caught up.
    let first = rng.between(0, SERVERS as u64 - 1) as usize;
    world.servers[first].engine.campaign_now();
    world.drain(first);
    let settled = |w: &World| {
        w.leader().is_some_and(|l| {
            let last = w.servers[l].engine.last_index();
            w.servers.iter().all(|s| s.engine.commit_index() >= last)
        })
    };
    if !world.run_until(60_000_000, settled) {
        return unfinished;
    }
    world.run_to(world.now_micros + range_ms.1 * 1000);
    let Some(leader) = world.leader() else { return unfinished };

    // Logs of different lengths: one entry reaches three followers, the
    // next only two, so two followers cannot win the election.
    let mut followers: Vec<usize> = (0..SERVERS).filter(|&i| i != leader).collect();
    for i in (1..followers.len()).rev() {
        followers.swap(i, rng.between(0, i as u64) as usize);
    }
    world.starve_entries[followers[3]] = true;
    let _ = world.servers[leader].engine.propose(Bytes::from_static(b"a"), None);
    world.drain(leader);
    let delays = options.delays;
    world.run_to(
        world.now_micros + delays.request_micros.1 + 2 * delays.disk_micros.1 + delays.answer_micros.1,
    );
    world.starve_entries[followers[2]] = true;
    let Ok((_, index)) = world.servers[leader].engine.propose(Bytes::from_static(b"b"), None) else {
        return unfinished;
    };
    world.drain(leader);
    let limit = world.now_micros + 10_000_000;
    if !world.run_until(limit, |w| w.servers[leader].engine.commit_index() >= index) {
        return unfinished;
    }

    // The synchronized heartbeat broadcast, then the crash at a uniformly
    // random moment within the heartbeat interval.
    let after = world.now_micros;
    let limit = after + 10 * heartbeat_micros;
    if !world.run_until(limit, |w| w.last_heartbeat_micros.is_some_and(|t| t > after)) {
        return unfinished;
    }
    let heartbeat_at = world.last_heartbeat_micros.unwrap_or(world.now_micros);
    world.run_to(heartbeat_at + rng.between(0, heartbeat_micros - 1));
    let crashed_term: Term = world.servers[leader].engine.term();
    world.servers[leader].alive = false;
    let crashed_at = world.now_micros;
    world.watch_campaigns = true;
    let candidacies = |w: &World| -> u64 {
        w.servers.iter().filter(|s| s.alive).map(|s| s.engine.stats().elections_started).sum()
    };
    let candidacies_before = candidacies(&world);
    let elected = world.run_until(crashed_at + options.cap_ms * 1000, |w| {
        w.leader().is_some_and(|l| w.servers[l].engine.term() > crashed_term)
    });
    // Unfinished trials keep their detection time and terms; the highest
    // term a survivor reached counts the elections.
    let new_term = match world.leader() {
        Some(l) if elected => world.servers[l].engine.term(),
        _ => world.servers.iter().filter(|s| s.alive).map(|s| s.engine.term()).max().unwrap_or(crashed_term),
    };
    Trial {
        downtime_micros: elected.then(|| world.now_micros - crashed_at),
        elections: new_term.get().saturating_sub(crashed_term.get()),
        detection_micros: world.first_campaign_micros.map(|at| at - crashed_at),
        candidacies: candidacies(&world) - candidacies_before,
        crashed: true,
    }
}

/// The value at `q` (0..=1) of sorted values (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn table(variant: Variant, results: &[RangeResult], cap_ms: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}:\n", variant.description());
    let _ = writeln!(
        out,
        "| election timeout | trials | median ms | mean ms | p90 ms | p99 ms | worst ms | > 1 election \
         | first campaign ms | candidacies | paper |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for result in results {
        let sorted = result.sorted_ms();
        let (low, high) = result.range_ms;
        let paper = match (low, high) {
            (150, 155) => {
                // Unfinished trials count as longer than any finished one.
                let mut all = sorted.clone();
                all.resize(result.trials.len(), f64::INFINITY);
                verdict("median", quantile(&all, 0.5), PAPER_MEDIAN_150_155_MS)
            }
            (150, 200) => {
                let worst = sorted.last().copied().unwrap_or(f64::INFINITY);
                let worst = if result.unfinished() > 0 { f64::INFINITY } else { worst };
                verdict("worst", worst, PAPER_WORST_150_200_MS)
            }
            (12, 24) => {
                let mean = if result.unfinished() > 0 { f64::INFINITY } else { result.mean_ms() };
                verdict("mean", mean, PAPER_MEAN_12_24_MS)
            }
            (150, 150) => "more than 10 s (100 trials)".to_string(),
            _ => String::new(),
        };
        let multiple = result.trials.iter().filter(|t| t.elections > 1).count();
        let unfinished = match result.unfinished() {
            0 => String::new(),
            n => match result.trials.iter().filter(|t| !t.crashed).count() {
                0 => format!(" ({n} over {} s)", cap_ms / 1000),
                setup => format!(
                    " ({n} unfinished: {} over {} s, {setup} with no leader to crash)",
                    n - setup,
                    cap_ms / 1000
                ),
            },
        };
        // A figure over no finished trial prints as a dash.
        let number = |value: f64, decimals: usize| {
            if value.is_finite() {
                format!("{value:.decimals$}")
            } else {
                "–".to_string()
            }
        };
        let _ = writeln!(
            out,
            "| {low}–{high} ms | {}{unfinished} | {} | {} | {} | {} | {} | {:.1}% | {} | {} | {paper} |",
            result.trials.len(),
            number(quantile(&sorted, 0.5), 1),
            number(result.mean_ms(), 1),
            number(quantile(&sorted, 0.9), 1),
            number(quantile(&sorted, 0.99), 1),
            number(sorted.last().copied().unwrap_or(f64::NAN), 1),
            100.0 * multiple as f64 / result.trials.len().max(1) as f64,
            number(result.mean_detection_ms(), 1),
            number(result.mean_candidacies(), 2),
        );
    }
    out
}

/// "median 287 ms; ours 250.1: within" and the like; an infinite figure
/// (unfinished trials decide it) reads "unbounded".
fn verdict(what: &str, ours_ms: f64, paper_ms: f64) -> String {
    let outcome = if ours_ms <= paper_ms { "within" } else { "above" };
    if ours_ms.is_finite() {
        format!("{what} {paper_ms:.0} ms; ours {ours_ms:.1}: {outcome}")
    } else {
        format!("{what} {paper_ms:.0} ms; ours unbounded (unfinished trials): {outcome}")
    }
}

fn plot(variant: Variant, results: &[RangeResult]) -> String {
    let series_of = |ranges: &[(u64, u64)]| -> Vec<svg::Series> {
        ranges
            .iter()
            .enumerate()
            .filter_map(|(index, range)| {
                let result = results.iter().find(|r| r.range_ms == *range)?;
                let mut label = format!("{}–{} ms", range.0, range.1);
                if result.unfinished() > 0 {
                    label.push_str(&format!(" ({} unfinished)", result.unfinished()));
                }
                Some(svg::Series {
                    label,
                    points: svg::cdf_points(&result.sorted_ms(), 400),
                    color: svg::palette(index),
                    dashed: false,
                    dots: false,
                })
            })
            .collect()
    };
    let top_series = series_of(&TOP_RANGES_MS);
    let worst_top = top_series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(1_000.0, f64::max);
    let top = svg::Chart {
        title: format!("Randomness varied: {}", variant.description()),
        x_label: "time without leader (ms, log scale)".into(),
        y_label: "cumulative percent of trials".into(),
        x_scale: svg::Scale::Log10,
        x_range: (100.0, 10f64.powf(worst_top.log10().ceil())),
        y_range: (0.0, 100.0),
        series: top_series,
        markers: vec![
            svg::Marker {
                x: PAPER_MEDIAN_150_155_MS,
                y: 50.0,
                label: "paper 150–155: median 287".into(),
                color: svg::palette(2),
            },
            svg::Marker {
                x: PAPER_WORST_150_200_MS,
                y: 100.0,
                label: "paper 150–200: worst 513".into(),
                color: svg::palette(4),
            },
        ],
    };
    let bottom = svg::Chart {
        title: format!("Timeout scaled: {}", variant.description()),
        x_label: "time without leader (ms)".into(),
        y_label: "cumulative percent of trials".into(),
        x_scale: svg::Scale::Linear,
        x_range: (0.0, 600.0),
        y_range: (0.0, 100.0),
        series: series_of(&BOTTOM_RANGES_MS),
        markers: vec![svg::Marker {
            x: PAPER_MEAN_12_24_MS,
            y: 50.0,
            label: "paper 12–24: mean 35 (at 50%)".into(),
            color: svg::palette(0),
        }],
    };
    svg::document(&[top, bottom])
}
