//! The tokio runtime: drives one [`Engine`] against a [`LogStore`], a
//! [`SnapshotStore`], a [`StateMachine`] and a [`Transport`].
//!
//! Three tasks share the work:
//! - the **driver** owns the engine. It waits for any input (a client
//!   command, a message, a tick, a completion), drains every other input
//!   already queued (so one `ready()` covers a whole batch of proposals),
//!   and dispatches the batch: messages to the transport, writes to the
//!   storage task, committed entries to the apply task;
//! - the **storage task** executes writes one after another, merging those
//!   already queued into one durable write (group commit), and reports each
//!   back so the engine can send the acknowledgements it held;
//! - the **apply task** applies committed entries, answers reads and builds
//!   snapshots, so a slow state machine never delays heartbeats. It also
//!   carries out the replicated checkpoint operations (named snapshots kept
//!   until deleted, and rollback to them) in log order: see
//!   [`checkpoints`].
//!
//! [`RaftNode`] is the cloneable handle clients use.

mod apply;
pub mod checkpoints;
mod driver;
mod error;
mod proposals;
mod storage;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use checkpoints::{CheckpointError, CheckpointLimits};
pub use error::{ClientError, StartError};

use crate::message::Message;
use crate::protocol::{Config, Engine, EngineStats, MembershipChange};
use crate::state_machine::StateMachine;
use crate::storage::{CheckpointInfo, CheckpointStore, LogStore, SnapshotReader, SnapshotStore};
use crate::transport::Transport;
use crate::types::{CheckpointOp, ClientRequestId, LogIndex, Membership, NodeId, Role, SnapshotMeta, Term};

/// When the runtime takes a snapshot of the state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Take a snapshot once the engine holds more than this many log entries
    /// (this also bounds the engine's memory).
    pub max_log_entries: u64,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy { max_log_entries: 50_000 }
    }
}

/// Settings of one runtime.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// The engine's settings.
    pub engine: Config,
    /// Real time per engine tick. With the engine's defaults (10-tick
    /// election timeout, 1-tick heartbeat), 15 ms gives 150–300 ms election
    /// timeouts and 15 ms heartbeats.
    pub tick_interval: Duration,
    /// The most client commands queued for the driver; past it, callers wait.
    pub max_queued_commands: usize,
    /// The most messages queued from the transport; past it, messages are dropped.
    pub inbox_capacity: usize,
    /// The most inputs the driver handles before producing one batch.
    pub max_inputs_per_batch: usize,
    /// When to take snapshots.
    pub snapshot_policy: SnapshotPolicy,
    /// How long a client request may wait before failing with a timeout.
    /// The driver checks deadlines once per tick, on a clock it refreshes
    /// every tick, so a request fails up to two `tick_interval`s late. A
    /// write already committed and queued for the state machine is answered
    /// when it is applied.
    pub request_timeout: Duration,
    /// Bounds of the retained checkpoints.
    pub checkpoint_limits: CheckpointLimits,
}

impl RuntimeConfig {
    /// Defaults for node `id`.
    pub fn new(id: NodeId) -> Self {
        RuntimeConfig {
            engine: Config::new(id),
            tick_interval: Duration::from_millis(15),
            max_queued_commands: 65_536,
            inbox_capacity: 65_536,
            max_inputs_per_batch: 4_096,
            snapshot_policy: SnapshotPolicy::default(),
            request_timeout: Duration::from_secs(5),
            checkpoint_limits: CheckpointLimits::default(),
        }
    }
}

/// How a read is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadConsistency {
    /// Linearizable, confirmed by a quorum (ReadIndex).
    Linearizable,
    /// Linearizable while the leader's lease holds (needs `lease_reads`).
    Lease,
    /// From this node's state machine as it is, possibly stale.
    Stale,
}

/// The outcome of a committed proposal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The term of the entry.
    pub term: Term,
    /// Its index.
    pub index: LogIndex,
    /// The state machine's response.
    pub response: Bytes,
}

/// What observers see of a node; published on every change of role, term or
/// leader and at least once per tick.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStatus {
    /// This node.
    pub id: NodeId,
    /// Its role (`None` before the first batch).
    pub role: Option<Role>,
    /// Its term.
    pub term: Term,
    /// The leader it knows of.
    pub leader: NodeId,
    /// The commit index.
    pub commit_index: LogIndex,
    /// The applied index.
    pub applied_index: LogIndex,
    /// The last log index.
    pub last_index: LogIndex,
    /// The latest snapshot's index.
    pub snapshot_index: LogIndex,
    /// The configuration in force.
    pub membership: Membership,
    /// On a leader: each peer's match index.
    pub peers: Vec<(NodeId, LogIndex)>,
    /// The engine's counters of dropped messages, elections and snapshots.
    pub stats: EngineStats,
    /// Set once the node stopped, with the reason if it failed.
    pub stopped: Option<String>,
}

/// A request's deadline on the node's [`CoarseClock`], in milliseconds since
/// the node started.
type Deadline = u64;

/// The clock request deadlines are measured on: milliseconds since the node
/// started, published by the driver on every tick, so that a client reads it
/// with one atomic load. Reading the system clock for every request showed
/// as 2% of the runtime benchmark's time.
#[derive(Debug)]
struct CoarseClock {
    start: Instant,
    now_ms: AtomicU64,
}

impl CoarseClock {
    fn new() -> Self {
        CoarseClock { start: Instant::now(), now_ms: AtomicU64::new(0) }
    }

    /// Reads the system clock, publishes the reading and returns it.
    fn refresh(&self) -> Deadline {
        let now = millis(self.start.elapsed());
        self.now_ms.store(now, Ordering::Relaxed);
        now
    }

    /// The deadline of a request that starts now and may last `timeout`.
    /// The published time lags by up to one tick (`slack`), which is added
    /// so that a request does not fail early.
    fn deadline(&self, timeout: Duration, slack: Duration) -> Deadline {
        self.now_ms.load(Ordering::Relaxed).saturating_add(millis(timeout)).saturating_add(millis(slack))
    }
}

/// Whole milliseconds of `duration`, saturating (a configured timeout too
/// large to represent means "never", not a panic).
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A client request for the driver. Requests that wait for an answer carry
/// their deadline: the driver answers [`ClientError::Timeout`] once it has
/// passed (checked every tick), so a waiting client needs no timer of its
/// own. Registering and cancelling one tokio timer per request took a lock
/// on the shared timer wheel twice per request, which showed up as about a
/// tenth of the runtime benchmark's time with many clients.
#[derive(Debug)]
enum Command {
    Propose {
        data: Bytes,
        client: Option<ClientRequestId>,
        reply: oneshot::Sender<Result<Committed, ClientError>>,
        deadline: Deadline,
    },
    Read {
        query: Bytes,
        consistency: ReadConsistency,
        reply: oneshot::Sender<Result<Bytes, ClientError>>,
        deadline: Deadline,
    },
    ChangeMembership {
        change: MembershipChange,
        reply: oneshot::Sender<Result<Committed, ClientError>>,
        deadline: Deadline,
    },
    TransferLeadership {
        target: NodeId,
        reply: oneshot::Sender<Result<(), ClientError>>,
        deadline: Deadline,
    },
    TriggerSnapshot {
        reply: oneshot::Sender<Result<SnapshotMeta, ClientError>>,
        deadline: Deadline,
    },
    Checkpoint {
        op: CheckpointOp,
        reply: oneshot::Sender<Result<Committed, ClientError>>,
        deadline: Deadline,
    },
    Campaign,
    Shutdown,
}

/// How a node starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartMode {
    /// Restart from whatever the stores hold (an empty store joins a cluster
    /// when a leader adds it).
    Restart,
    /// Bootstrap a new cluster with this membership; refused if the stores
    /// already hold state.
    Bootstrap(Membership),
}

/// The pluggable parts a runtime runs against.
pub struct Parts {
    /// The durable log.
    pub log_store: Arc<dyn LogStore>,
    /// Snapshot files.
    pub snapshot_store: Arc<dyn SnapshotStore>,
    /// Named checkpoints.
    pub checkpoint_store: Arc<dyn CheckpointStore>,
    /// The replicated state machine.
    pub state_machine: Box<dyn StateMachine>,
    /// Outgoing messages.
    pub transport: Arc<dyn Transport>,
    /// Incoming messages (the receiving end of the transport's [`crate::transport::Inbox`]).
    pub inbox: mpsc::Receiver<Message>,
}

/// A cloneable handle to a running node.
#[derive(Clone)]
pub struct RaftNode {
    id: NodeId,
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<NodeStatus>,
    driver: Arc<tokio::sync::Mutex<Option<JoinHandle<()>>>>,
    request_timeout: Duration,
    /// The clock deadlines are set on, and the lag it may have.
    clock: Arc<CoarseClock>,
    tick_interval: Duration,
    catalog: checkpoints::Catalog,
    checkpoint_store: Arc<dyn CheckpointStore>,
    checkpoint_limits: CheckpointLimits,
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("id", &self.id)
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

impl RaftNode {
    /// Starts a node: reads the stores, restores the state machine from the
    /// latest snapshot, and spawns the driver, storage and apply tasks on the
    /// current tokio runtime.
    pub async fn start(config: RuntimeConfig, mode: StartMode, parts: Parts) -> Result<RaftNode, StartError> {
        let id = config.engine.id;
        let request_timeout = config.request_timeout;
        let tick_interval = config.tick_interval;
        let clock = Arc::new(CoarseClock::new());
        let (commands, command_receiver) = mpsc::channel(config.max_queued_commands.max(1));
        let initial = NodeStatus { id, ..NodeStatus::default() };
        let (status_sender, status) = watch::channel(initial);
        let catalog = checkpoints::Catalog::default();
        let checkpoint_store = Arc::clone(&parts.checkpoint_store);
        let checkpoint_limits = config.checkpoint_limits.clone();
        let driver = driver::Driver::start(
            config,
            mode,
            parts,
            command_receiver,
            status_sender,
            Arc::clone(&clock),
            catalog.clone(),
        )
        .await?;
        let handle = tokio::spawn(driver.run());
        Ok(RaftNode {
            id,
            commands,
            status,
            driver: Arc::new(tokio::sync::Mutex::new(Some(handle))),
            request_timeout,
            clock,
            tick_interval,
            catalog,
            checkpoint_store,
            checkpoint_limits,
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Proposes a command; resolves once it is committed and applied here,
    /// with the state machine's response.
    pub async fn propose(
        &self,
        data: Bytes,
        client: Option<ClientRequestId>,
    ) -> Result<Committed, ClientError> {
        self.request(|reply, deadline| Command::Propose { data, client, reply, deadline }).await
    }

    /// Reads through the state machine's `query` with the given consistency.
    pub async fn read(&self, query: Bytes, consistency: ReadConsistency) -> Result<Bytes, ClientError> {
        self.request(|reply, deadline| Command::Read { query, consistency, reply, deadline }).await
    }

    /// Changes the membership; resolves once the change is committed (for a
    /// joint change: once the joint configuration is committed; the leader
    /// then moves to the final one by itself).
    pub async fn change_membership(&self, change: MembershipChange) -> Result<Committed, ClientError> {
        self.request(|reply, deadline| Command::ChangeMembership { change, reply, deadline }).await
    }

    /// Hands leadership to `target`; resolves once this node sent TimeoutNow
    /// and stepped down, or fails.
    pub async fn transfer_leadership(&self, target: NodeId) -> Result<(), ClientError> {
        self.request(|reply, deadline| Command::TransferLeadership { target, reply, deadline }).await
    }

    /// Takes a snapshot now.
    pub async fn trigger_snapshot(&self) -> Result<SnapshotMeta, ClientError> {
        self.request(|reply, deadline| Command::TriggerSnapshot { reply, deadline }).await
    }

    /// Creates the checkpoint `name`: commits a checkpoint entry; every
    /// replica that applies it keeps the state machine's snapshot at exactly
    /// that index until it is deleted. Resolves once the checkpoint is
    /// durable on this node (the leader), with its figures.
    ///
    /// Fails with [`CheckpointError::AlreadyExists`] for a name in use,
    /// [`CheckpointError::TooMany`] or [`CheckpointError::TooLarge`] past
    /// the [`CheckpointLimits`], and like [`RaftNode::propose`] otherwise.
    pub async fn checkpoint(&self, name: &str) -> Result<CheckpointInfo, ClientError> {
        checkpoints::validate_name(name)?;
        if self.status.borrow().role == Some(Role::Leader) {
            // Early answers on the leader; the applied entry decides for good.
            if self.catalog.contains(name) {
                return Err(CheckpointError::AlreadyExists(name.to_string()).into());
            }
            let limits = &self.checkpoint_limits;
            let count = self.catalog.count();
            if count >= limits.max_count {
                return Err(CheckpointError::TooMany { count, max_count: limits.max_count }.into());
            }
            let total_bytes = self.catalog.total_bytes();
            if total_bytes >= limits.max_total_bytes {
                return Err(CheckpointError::TooLarge {
                    total_bytes,
                    max_total_bytes: limits.max_total_bytes,
                }
                .into());
            }
        }
        let created_unix_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, millis);
        let op = CheckpointOp::Create { name: name.to_string(), created_unix_ms };
        let committed = self.request(|reply, deadline| Command::Checkpoint { op, reply, deadline }).await?;
        self.catalog.ready_at(name, committed.index).ok_or_else(|| {
            ClientError::Checkpoint(CheckpointError::Storage(format!(
                "checkpoint {name:?} was committed at index {} but is not durable here",
                committed.index
            )))
        })
    }

    /// Rolls the state machine back to the checkpoint `name`: commits a
    /// rollback entry; every replica that applies it restores the
    /// checkpoint's state atomically (through
    /// [`StateMachine::restore_checkpoint`], which may keep some state out
    /// of the rollback), and entries committed after it apply on top.
    /// Resolves once applied here. Fails with [`CheckpointError::NotFound`]
    /// for an unknown name. Not retried internally: a rollback entry carries
    /// no request id, so a timed-out rollback may still apply.
    pub async fn rollback(&self, name: &str) -> Result<Committed, ClientError> {
        checkpoints::validate_name(name)?;
        let op = CheckpointOp::Rollback { name: name.to_string() };
        self.request(|reply, deadline| Command::Checkpoint { op, reply, deadline }).await
    }

    /// Deletes the checkpoint `name` on every replica (a committed entry).
    pub async fn delete_checkpoint(&self, name: &str) -> Result<Committed, ClientError> {
        checkpoints::validate_name(name)?;
        let op = CheckpointOp::Delete { name: name.to_string() };
        self.request(|reply, deadline| Command::Checkpoint { op, reply, deadline }).await
    }

    /// The checkpoints durable on this node, by name, as of its applied
    /// index.
    pub fn list_checkpoints(&self) -> Vec<CheckpointInfo> {
        self.catalog.list()
    }

    /// Opens a checkpoint durable on this node, to read its bytes (the state
    /// machine's snapshot format), for example to export it.
    pub async fn open_checkpoint(&self, name: &str) -> Result<Box<dyn SnapshotReader>, ClientError> {
        checkpoints::validate_name(name)?;
        if !self.catalog.is_ready(name) {
            return Err(CheckpointError::NotFound(name.to_string()).into());
        }
        self.checkpoint_store
            .open(name)
            .await
            .map_err(|error| ClientError::Checkpoint(CheckpointError::Storage(error.to_string())))
    }

    /// The index of the last rollback this node applied since it started.
    pub fn last_rollback_index(&self) -> Option<LogIndex> {
        self.catalog.last_rollback_index()
    }

    /// Starts an election now (tests and operators).
    pub async fn campaign(&self) -> Result<(), ClientError> {
        self.commands.send(Command::Campaign).await.map_err(|_| ClientError::Shutdown)
    }

    /// A watch of the node's status.
    pub fn status(&self) -> watch::Receiver<NodeStatus> {
        self.status.clone()
    }

    /// Stops the node: pending requests fail, queued writes finish.
    pub async fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown).await;
        if let Some(handle) = self.driver.lock().await.take() {
            let _ = handle.await;
        }
    }

    /// Sends a request to the driver and waits for its answer. The deadline
    /// starts now, before the request may wait for room in the command
    /// queue; the driver answers with a timeout once it has passed.
    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ClientError>>, Deadline) -> Command,
    ) -> Result<T, ClientError> {
        let deadline = self.clock.deadline(self.request_timeout, self.tick_interval);
        let (reply, response) = oneshot::channel();
        self.commands.send(make(reply, deadline)).await.map_err(|_| ClientError::Shutdown)?;
        response.await.unwrap_or(Err(ClientError::Shutdown))
    }
}

/// Builds an engine from the stores' durable state.
async fn restore_engine(
    config: &RuntimeConfig,
    mode: &StartMode,
    log_store: &dyn LogStore,
) -> Result<Engine, StartError> {
    let state = log_store.read_state().await?;
    match mode {
        StartMode::Restart => Ok(Engine::restore(config.engine.clone(), state)?),
        StartMode::Bootstrap(membership) => {
            let empty =
                state.hard_state.term == Term(0) && state.entries.is_empty() && state.snapshot.is_none();
            if !empty {
                let last_index = state.entries.last().map_or(LogIndex(0), |e| e.index);
                return Err(StartError::AlreadyInitialized { term: state.hard_state.term, last_index });
            }
            Ok(Engine::bootstrap(config.engine.clone(), membership.clone())?)
        }
    }
}
