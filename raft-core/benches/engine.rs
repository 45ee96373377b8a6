//! Engine-only throughput: three engines in one thread, storage that
//! acknowledges at once, messages handed over directly. `proposers` clients
//! each keep one proposal outstanding; a proposal counts once the leader has
//! handed its entry out for applying. This measures the protocol logic alone.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use raft_core::protocol::{Config, Engine};
use raft_core::types::{LogIndex, Membership, NodeId, Role};
use raft_core::Message;

struct Bench {
    engines: Vec<Engine>,
    network: VecDeque<Message>,
    /// Indexes of outstanding proposals, in proposal order.
    outstanding: VecDeque<LogIndex>,
}

impl Bench {
    fn new() -> Self {
        let membership = Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]);
        let engines = (1..=3)
            .map(|id| {
                let mut config = Config::new(NodeId(id));
                config.max_uncommitted_bytes = u64::MAX / 4;
                Engine::bootstrap(config, membership.clone()).expect("valid")
            })
            .collect();
        let mut bench = Bench { engines, network: VecDeque::new(), outstanding: VecDeque::new() };
        bench.engines[0].campaign_now();
        while bench.engines[0].role() != Role::Leader || bench.engines[0].commit_index() < LogIndex(2) {
            bench.pump();
        }
        for _ in 0..3 {
            bench.pump();
        }
        bench
    }

    /// One round: every engine hands out its work, which is done at once.
    /// Returns how many of the leader's entries were handed out for applying.
    fn pump(&mut self) -> u64 {
        let mut applied_on_leader = 0;
        for (position, engine) in self.engines.iter_mut().enumerate() {
            if !engine.has_ready() {
                continue;
            }
            let ready = engine.ready();
            self.network.extend(ready.messages);
            if let Some(id) = ready.persist_id {
                engine.persisted(id);
            }
            if let Some(last) = ready.committed_entries.last() {
                engine.applied(last.index);
                if position == 0 {
                    applied_on_leader = last.index.get();
                }
            }
        }
        while let Some(message) = self.network.pop_front() {
            let to = message.to.get() as usize - 1;
            let _ = self.engines[to].step(message);
        }
        applied_on_leader
    }

    /// Runs until `total` proposals committed with `proposers` outstanding.
    fn run(&mut self, proposers: usize, total: u64) -> Duration {
        let payload = Bytes::from_static(b"");
        let start = Instant::now();
        let mut done = 0;
        while done < total {
            while self.outstanding.len() < proposers {
                let (_, index) = self.engines[0].propose(payload.clone(), None).expect("leader");
                self.outstanding.push_back(index);
            }
            let applied = self.pump();
            while self.outstanding.front().is_some_and(|i| i.get() <= applied) {
                self.outstanding.pop_front();
                done += 1;
            }
            // Heartbeats keep flowing as in a real cluster.
            if done % 4096 < proposers as u64 {
                for engine in &mut self.engines {
                    engine.tick();
                }
            }
        }
        start.elapsed()
    }
}

fn engine_throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine_3_nodes");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    for proposers in [1usize, 64, 256] {
        let per_iteration = 20_000u64;
        group.throughput(Throughput::Elements(per_iteration));
        group.bench_with_input(BenchmarkId::new("proposers", proposers), &proposers, |b, &proposers| {
            b.iter_custom(|iterations| {
                let mut bench = Bench::new();
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    total += bench.run(proposers, per_iteration);
                    // Bound the engines' in-memory logs as a snapshot policy would.
                    for engine in &mut bench.engines {
                        let applied = engine.status().applied_index;
                        if let Some(meta) = engine.snapshot_meta_at(applied) {
                            let _ = engine.snapshot_created(meta);
                        }
                    }
                }
                total
            });
        });
    }
    group.finish();
}

criterion_group!(benches, engine_throughput);
criterion_main!(benches);
