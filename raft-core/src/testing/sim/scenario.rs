//! The parameters of one run, all drawn from the seed: cluster size, engine
//! settings, fault rates, client load. Different seeds explore different
//! corners (tiny messages and windows, lease reads, no pre-vote, frequent
//! snapshots, heavy loss) instead of one fixed setting.

use super::rng::SimRng;
use crate::protocol::Config;
use crate::types::NodeId;

/// Everything the seed decides before the run starts.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Voters of the bootstrapped cluster (3 or 5).
    pub initial_voters: u64,
    /// The most members (voters and learners) the cluster may grow to.
    pub max_members: usize,
    /// Steps between two ticks of a node's clock.
    pub steps_per_tick: u64,
    /// Chance per tick that a node's clock skips or doubles a tick (clock
    /// drift); zero when lease reads are on, whose safety assumes bounded drift.
    pub clock_glitch_per_mille: u64,
    /// Chance per step that a node syncs its disk.
    pub sync_per_mille: u64,
    /// A node snapshots its state machine every this many applied entries.
    pub snapshot_every_entries: u64,
    /// Chance per step that a running node crashes.
    pub crash_per_mille: u64,
    /// The most nodes down at once.
    pub max_down: usize,
    /// How long a crashed node stays down, in steps.
    pub down_steps: (u64, u64),
    /// How long a network phase (partition, loss) lasts, in steps.
    pub phase_steps: (u64, u64),
    /// Mean steps between membership changes.
    pub membership_interval_steps: u64,
    /// Chance that a newly elected leader is crashed or cut off soon after
    /// its election, before its first entries spread (leader churn, which
    /// builds the divergent logs of the Raft paper's Figure 8).
    pub leader_churn_per_mille: u64,
    /// Chance per step that the leader is asked to transfer leadership.
    pub transfer_per_mille: u64,
    /// Number of clients.
    pub clients: u64,
    /// Number of keys the clients share.
    pub keys: u64,
    /// How long a client waits between operations, in steps.
    pub think_steps: (u64, u64),
    /// How long a client tries one operation before giving up, in steps.
    pub op_timeout_steps: u64,
    /// How long a client waits for one attempt before retrying, in steps.
    pub attempt_timeout_steps: u64,
    /// Chance that a read uses a lease (when leases are on).
    pub lease_read_per_mille: u64,
    /// Chance that a client's next operation is a checkpoint create,
    /// rollback or delete instead of a read or a write.
    pub checkpoint_per_mille: u64,
    /// The engine settings shared by every node.
    pub engine: Config,
}

impl Scenario {
    /// Draws a scenario from `rng`.
    pub fn generate(rng: &mut SimRng) -> Scenario {
        let engine = engine_template(rng);
        let election_timeout_ticks = engine.election_timeout_ticks;
        let steps_per_tick = rng.between(2, 4);
        let election_timeout_steps = election_timeout_ticks * steps_per_tick;
        Scenario {
            initial_voters: if rng.chance(500) { 3 } else { 5 },
            max_members: 7,
            steps_per_tick,
            clock_glitch_per_mille: if engine.lease_reads { 0 } else { rng.between(0, 50) },
            sync_per_mille: rng.between(200, 900),
            snapshot_every_entries: rng.between(4, 40),
            crash_per_mille: rng.between(1, 6),
            max_down: rng.between(1, 3) as usize,
            down_steps: (election_timeout_steps / 2, election_timeout_steps * 8),
            phase_steps: (election_timeout_steps, election_timeout_steps * 12),
            membership_interval_steps: election_timeout_steps * rng.between(3, 15),
            leader_churn_per_mille: if rng.chance(700) { rng.between(300, 950) } else { 0 },
            transfer_per_mille: rng.between(0, 5),
            clients: rng.between(2, 5),
            keys: rng.between(1, 5),
            think_steps: (0, rng.between(2, 20)),
            op_timeout_steps: election_timeout_steps * 12,
            attempt_timeout_steps: election_timeout_steps * 3,
            lease_read_per_mille: if engine.lease_reads { 500 } else { 0 },
            checkpoint_per_mille: rng.between(30, 100),
            engine,
        }
    }

    /// The engine configuration of node `id` in its `incarnation`.
    pub fn engine_config(&self, id: NodeId, seed: u64, incarnation: u64) -> Config {
        let mut config = self.engine.clone();
        config.id = id;
        config.random_seed = super::kv::hash_words(&[seed, id.0, incarnation]);
        config
    }
}

/// Engine settings: mostly small bounds, so that windows fill, messages
/// split, snapshots are chunked and transfers happen often.
fn engine_template(rng: &mut SimRng) -> Config {
    let mut config = Config::new(NodeId(1));
    config.election_timeout_ticks = rng.between(6, 14);
    config.heartbeat_interval_ticks = rng.between(1, 3);
    config.pre_vote = rng.chance(800);
    config.check_quorum = rng.chance(800);
    config.lease_reads = config.check_quorum && rng.chance(400);
    config.lease_drift_margin_ticks = 2;
    // One entry per message lets a follower acknowledge an entry of an
    // earlier term before the new leader's blank entry (Figure 8).
    config.max_entries_per_message = if rng.chance(400) { 1 } else { rng.between(2, 8) as usize };
    config.max_bytes_per_message = rng.between(40, 400);
    config.max_inflight_messages = rng.between(1, 6) as usize;
    config.max_inflight_bytes = rng.between(100, 4_000);
    config.max_uncommitted_bytes = rng.between(200, 4_000);
    config.max_pending_reads = rng.between(4, 64) as usize;
    config.max_apply_backlog_entries = rng.between(2, 64);
    config.snapshot_chunk_bytes = rng.between(8, 128);
    config.snapshot_trailing_entries = rng.between(0, 12);
    config.promotion_max_lag_entries = rng.between(2, 20);
    config.snapshot_chunks_in_flight = rng.between(1, 4) as usize;
    config.eager_commit_updates = rng.chance(500);
    config
}
