//! The node task: one tokio task owns the `Node` (quinn's `ConnectionDriver`).
//!
//! It `select!`s over peer input, client commands, the fsyncs in flight and
//! `sleep_until(poll_timeout())`, handles every queued input (up to [`BATCH`])
//! while buffering the outputs, then **group-commits**: the batches applied since
//! the last group was taken become one group, synced with one fsync on a blocking
//! thread.
//!
//! The commit is **pipelined**: while a group's fsync runs the node goes on
//! handling inputs, and their batches collect into the next group, which is taken
//! as soon as fewer than the sync depth ([`Driver::with_sync_depth`]) are in
//! flight. Every buffered output is tagged with the group it may depend on — the
//! one collecting when it was produced if that has batches, else the last one
//! taken — and is released only once that group *and every earlier one* are
//! durable (groups finish in order). So an ack or a client reply never leaves for
//! a write that is not on disk, one fsync is shared by every write of a group, and
//! a write arriving during another write's fsync no longer waits for it to start
//! its own. Requests that acknowledge nothing (a coordinator's replica writes and
//! reads, forwards: `Message::may_precede_durability`) leave at once, so a write's
//! fsyncs on the coordinator and on the replicas run in parallel rather than one
//! after another. If a sync fails, [`Driver::run`] returns the error before
//! releasing anything that waited for it and the process stops serving.
//!
//! HTTP handlers never touch the `Node`: they submit [`Command`]s through a
//! bounded channel ([`Handle`]) and read a [`ClusterView`] snapshot published on a
//! watch channel whenever membership or reachability changes.

use crate::metrics::Metrics;
use crate::peer_stream::{Dir, PeerTap};
use ringlab_core::gossip::Status;
use ringlab_core::store::StorageError;
use ringlab_core::{
    Admin, ClientOp, ClientReply, ClientReq, Event, Input, Message, Node, NodeId, Output,
    RequestError, Storage, Time,
};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// A group commit to run on a blocking thread.
pub type SyncFn = Box<dyn FnOnce() -> Result<(), StorageError> + Send>;

/// A group commit taken out of the storage: the job, and what kind of sync it is
/// (for the sync-duration metric: a checkpoint stops applies while it runs, so its
/// duration is a stall, where a log write's is only latency).
pub struct SyncTask {
    /// Commits the group (one fsync).
    pub run: SyncFn,
    /// Whether this is a checkpoint rather than a log write.
    pub checkpoint: bool,
}

/// What a sync job reports: its outcome and how long the fsync itself took.
type SyncDone = (Result<(), StorageError>, Duration, bool);

/// A group commit running.
struct Flight {
    /// The storage's applied-batch count when the group was taken (for the
    /// group-size histogram).
    batches: u64,
    /// `None`: the storage had nothing to sync (it counts as durable at once).
    job: Option<tokio::task::JoinHandle<SyncDone>>,
}

/// The oldest flight's outcome, with the fsync's duration and kind when there was
/// one. Cancel-safe: the flight stays queued until the caller pops it.
async fn oldest_flight(
    flights: &mut VecDeque<Flight>,
) -> (Result<(), StorageError>, Option<(Duration, bool)>) {
    match flights.front_mut().and_then(|f| f.job.as_mut()) {
        Some(job) => match job.await {
            Ok((r, took, checkpoint)) => (r, Some((took, checkpoint))),
            Err(e) => (Err(StorageError(format!("sync task failed: {e}"))), None),
        },
        None => (Ok(()), None),
    }
}

/// An output that waits for a group commit.
enum Held {
    Send(NodeId, Message),
    Reply(ClientReq, ClientResult),
}

/// Inputs handled before one group commit, at most.
pub const BATCH: usize = 256;

/// Inputs handled while every sync slot is busy, at most, before the node waits
/// for the oldest fsync: bounds the next group and the outputs it holds, so a slow
/// disk turns into a full request queue (429) rather than unbounded memory.
pub const MAX_AHEAD: usize = 4 * BATCH;

/// Default for [`Driver::with_sync_depth`].
pub const SYNC_DEPTH: usize = 2;

/// A storage the driver can group-commit: batches are applied with deferred
/// durability and made durable together by [`DurableStorage::sync`].
pub trait DurableStorage: Storage + Send + 'static {
    /// Whether batches were applied since the last group was taken.
    fn pending_sync(&self) -> bool;
    /// Takes the pending group, as what [`DurableStorage::finish_sync`] needs
    /// committed (one fsync) in a job to run on a blocking thread; `None` when
    /// nothing is pending. Only called while [`DurableStorage::can_start_sync`].
    fn start_sync(&mut self) -> Result<Option<SyncTask>, StorageError>;
    /// Records the outcome of the oldest job not finished; an error means stop
    /// serving.
    fn finish_sync(&mut self, result: Result<(), StorageError>) -> Result<(), StorageError>;
    /// Whether another group may be taken while the jobs not finished run.
    fn can_start_sync(&self) -> bool {
        true
    }
    /// Whether batches may be applied while the jobs not finished run.
    fn can_apply(&self) -> bool {
        true
    }
    /// Hints held for other nodes.
    fn hint_count(&self) -> usize;
    /// Batches applied since open.
    fn commits(&self) -> u64;
    /// A clean shutdown: leave the storage so the next open has nothing to replay.
    fn close(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
}

impl DurableStorage for crate::storage::RedbStorage {
    fn pending_sync(&self) -> bool {
        crate::storage::RedbStorage::pending_sync(self)
    }
    fn start_sync(&mut self) -> Result<Option<SyncTask>, StorageError> {
        Ok(
            crate::storage::RedbStorage::start_sync(self)?.map(|job| SyncTask {
                checkpoint: job.is_checkpoint(),
                run: Box::new(move || job.commit()),
            }),
        )
    }
    fn finish_sync(&mut self, result: Result<(), StorageError>) -> Result<(), StorageError> {
        crate::storage::RedbStorage::finish_sync(self, result)
    }
    fn can_start_sync(&self) -> bool {
        crate::storage::RedbStorage::can_start_sync(self)
    }
    fn can_apply(&self) -> bool {
        crate::storage::RedbStorage::can_apply(self)
    }
    fn hint_count(&self) -> usize {
        crate::storage::RedbStorage::hint_count(self)
    }
    fn commits(&self) -> u64 {
        crate::storage::RedbStorage::commits(self)
    }
    fn close(&mut self) -> Result<(), StorageError> {
        self.checkpoint()
    }
}

/// In-memory storage: every batch is "durable" at once (tests only).
impl DurableStorage for ringlab_core::MemStorage {
    fn pending_sync(&self) -> bool {
        false
    }
    fn start_sync(&mut self) -> Result<Option<SyncTask>, StorageError> {
        Ok(None)
    }
    fn finish_sync(&mut self, result: Result<(), StorageError>) -> Result<(), StorageError> {
        result
    }
    fn hint_count(&self) -> usize {
        ringlab_core::MemStorage::hint_count(self)
    }
    fn commits(&self) -> u64 {
        self.commits
    }
}

/// Where the node's messages go (the transport, or a test double).
pub trait PeerSink: Send + 'static {
    /// Queues `msg` for `to`; never blocks (drops when the peer's queue is full).
    fn send(&self, to: NodeId, msg: &Message);
    /// Records the peer address of `id`.
    fn set_addr(&self, id: NodeId, peer_addr: String);
}

impl PeerSink for crate::transport::Transport {
    fn send(&self, to: NodeId, msg: &Message) {
        crate::transport::Transport::send(self, to, msg);
    }
    fn set_addr(&self, id: NodeId, peer_addr: String) {
        crate::transport::Transport::set_addr(self, id, peer_addr);
    }
}

impl From<crate::transport::Incoming> for NetInput {
    fn from(i: crate::transport::Incoming) -> Self {
        match i {
            crate::transport::Incoming::Message { from, msg } => NetInput::Message { from, msg },
            crate::transport::Incoming::Peer(h) => NetInput::Peer {
                id: h.id,
                peer_addr: h.peer_addr,
            },
        }
    }
}

/// The peer sink of a single-node cluster: it has no peers, so nothing is ever sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoPeers;

impl PeerSink for NoPeers {
    fn send(&self, to: NodeId, _: &Message) {
        tracing::warn!(to = %to, "no transport: message to a peer dropped");
    }
    fn set_addr(&self, _: NodeId, _: String) {}
}

/// What arrives from the network.
#[derive(Debug)]
pub enum NetInput {
    /// An authenticated message.
    Message {
        /// Sender, as authenticated by the handshake.
        from: NodeId,
        /// Payload.
        msg: Message,
    },
    /// A peer completed a handshake: its id and peer address.
    Peer {
        /// Its id.
        id: NodeId,
        /// Its peer address.
        peer_addr: String,
    },
}

/// One input taken from the queues for the current batch.
enum Queued {
    Net(NetInput),
    Cmd(Command),
}

impl Queued {
    fn is_answer(&self) -> bool {
        matches!(self, Queued::Net(NetInput::Message { msg, .. }) if msg.is_answer())
    }
}

/// The answer to a client command.
pub type ClientResult = Result<ClientReply, RequestError>;

/// A request to the node task.
#[derive(Debug)]
pub enum Command {
    /// A client operation; the reply comes back on `reply`.
    Client {
        /// The operation.
        op: ClientOp,
        /// Where to answer.
        reply: oneshot::Sender<ClientResult>,
    },
    /// An administrator's command.
    Admin(Admin),
}

/// Why a command could not be queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The queue is full: the node is overloaded (HTTP 429).
    #[error("the node is overloaded: too many requests queued")]
    Overloaded,
    /// The node task has stopped.
    #[error("the node is shutting down")]
    Stopped,
}

/// One member as `/cluster` shows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MemberView {
    /// Id name.
    pub id: String,
    /// Peer (transport) address.
    pub peer_addr: String,
    /// HTTP address.
    pub http_addr: String,
    /// Zone.
    pub zone: String,
    /// `up`, `unreachable`, `dead`, `joining`, `leaving`, `left` or `removed`.
    pub status: String,
    /// Restart generation.
    pub generation: u64,
    /// This node's φ-accrual suspicion of the member (Hayashibara et al.): how
    /// unlikely the silence since its last heartbeat is, −log10 of the chance it
    /// is still alive; the detector suspects it above `phi_threshold`. Only for
    /// members this node monitors (each node watches a few), as of the last
    /// refresh (≤ 0.5 s old); capped at 1000.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phi: Option<f64>,
}

/// This node's view of the cluster, for `/cluster` and `/health`.
#[derive(Clone, Debug, Serialize, PartialEq, Default)]
pub struct ClusterView {
    /// This node.
    pub node: String,
    /// Version of the ring in use (0: none yet).
    pub ring_version: u64,
    /// N.
    pub n: usize,
    /// Owner of partition 0, 1, …, Q−1 (empty without a ring).
    pub partitions: Vec<String>,
    /// Every known member.
    pub nodes: Vec<MemberView>,
    /// A pending ring being moved to, if any.
    pub pending_ring_version: Option<u64>,
    /// This node's own membership status.
    pub self_status: String,
}

/// A cheap, cloneable handle to the node task.
#[derive(Clone, Debug)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    view: watch::Receiver<Arc<ClusterView>>,
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
    events: broadcast::Sender<Arc<EventLine>>,
    peers: broadcast::Sender<Arc<String>>,
}

/// One core event as the live stream (`GET /events`) sends it.
#[derive(Debug)]
pub struct EventLine {
    /// [`Event::kind`], for filtering without parsing.
    pub kind: &'static str,
    /// `{"at_ms": node time, "node": id, "kind": …, "event": the core's `Event`}`:
    /// the event in its serde form, so a client can decode it with the core's types.
    pub json: String,
}

/// Events buffered per live-stream subscriber; a slower one skips ahead and is told
/// how many it missed (the node never waits for it).
pub const EVENT_BUFFER: usize = 1024;

impl Handle {
    /// Queues a client operation without waiting; the receiver yields its result.
    pub fn submit(&self, op: ClientOp) -> Result<oneshot::Receiver<ClientResult>, SubmitError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Command::Client { op, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SubmitError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => SubmitError::Stopped,
            })?;
        Ok(rx)
    }

    /// Sends an administrator's command (waits for queue room).
    pub async fn admin(&self, admin: Admin) -> Result<(), SubmitError> {
        self.tx
            .send(Command::Admin(admin))
            .await
            .map_err(|_| SubmitError::Stopped)
    }

    /// The latest cluster snapshot.
    pub fn view(&self) -> Arc<ClusterView> {
        self.view.borrow().clone()
    }

    /// A live feed of this node's core events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EventLine>> {
        self.events.subscribe()
    }

    /// A live feed of the messages this node sends and receives from now on, one
    /// JSON line each, sampled (see [`crate::peer_stream`]).
    pub fn subscribe_peers(&self) -> broadcast::Receiver<Arc<String>> {
        self.peers.subscribe()
    }

    /// Client commands waiting for the node task.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// Wall-clock milliseconds at start plus a monotonic offset: times the core
/// persists (hint `stored_at`) keep increasing across restarts, and a clock step
/// during the run cannot move time backwards.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base: u64,
    start: Instant,
}

impl Clock {
    /// Starts the clock now.
    pub fn new() -> Self {
        let base = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Clock {
            base,
            start: Instant::now(),
        }
    }

    /// The current time.
    pub fn now(&self) -> Time {
        Time(self.base + self.start.elapsed().as_millis() as u64)
    }

    /// The instant `t` corresponds to.
    pub fn instant(&self, t: Time) -> Instant {
        self.start + Duration::from_millis(t.0.saturating_sub(self.base))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Owns the node; run it with [`Driver::run`].
pub struct Driver<S: DurableStorage, P: PeerSink, I: Into<NetInput> + Send + 'static> {
    node: Node<S>,
    net: P,
    net_rx: mpsc::Receiver<I>,
    net_open: bool,
    cmd_rx: mpsc::Receiver<Command>,
    cmd_open: bool,
    clock: Clock,
    metrics: Arc<Metrics>,
    view_tx: watch::Sender<Arc<ClusterView>>,
    next_req: u64,
    waiting: HashMap<ClientReq, oneshot::Sender<ClientResult>>,
    /// Outputs waiting for a group to be durable: (group, output), in order.
    held: VecDeque<(u64, Held)>,
    /// Group commits running, oldest first.
    flights: VecDeque<Flight>,
    /// Groups taken (numbered from 1) and groups durable: every group up to
    /// `durable` is on disk.
    taken: u64,
    durable: u64,
    /// Group commits allowed in flight at once.
    depth: usize,
    /// Inputs handled since the last group was taken.
    ahead: usize,
    /// Peer addresses learned from handshakes of nodes not (yet) in the membership.
    handshaken: HashMap<NodeId, String>,
    membership_hash: Option<u64>,
    reachability_changed: bool,
    /// The storage's applied-batch count when the last finished group was taken.
    batches_at_sync: u64,
    last_gauges: Option<Instant>,
    events_tx: broadcast::Sender<Arc<EventLine>>,
    peer_tap: PeerTap,
}

impl<S: DurableStorage, P: PeerSink, I: Into<NetInput> + Send + 'static> Driver<S, P, I> {
    /// Wraps `node`; `queue` bounds the client command queue.
    pub fn new(
        node: Node<S>,
        net: P,
        net_rx: mpsc::Receiver<I>,
        clock: Clock,
        metrics: Arc<Metrics>,
        queue: usize,
    ) -> (Self, Handle) {
        let (tx, cmd_rx) = mpsc::channel(queue.max(1));
        let (view_tx, view) = watch::channel(Arc::new(ClusterView::default()));
        let (events_tx, _) = broadcast::channel(EVENT_BUFFER);
        let batches_at_sync = node.storage().commits();
        let peer_tap = PeerTap::new(node.id());
        let peers = peer_tap.sender();
        let mut driver = Driver {
            node,
            net,
            net_rx,
            net_open: true,
            cmd_rx,
            cmd_open: true,
            clock,
            metrics: metrics.clone(),
            view_tx,
            next_req: 1,
            waiting: HashMap::new(),
            held: VecDeque::new(),
            flights: VecDeque::new(),
            taken: 0,
            durable: 0,
            depth: SYNC_DEPTH,
            ahead: 0,
            handshaken: HashMap::new(),
            membership_hash: None,
            reachability_changed: true,
            batches_at_sync,
            last_gauges: None,
            events_tx: events_tx.clone(),
            peer_tap,
        };
        driver.publish();
        let handle = Handle {
            tx,
            view,
            metrics,
            events: events_tx,
            peers,
        };
        (driver, handle)
    }

    /// Group commits allowed in flight at once (at least 1; 1 means a group is taken
    /// only when the previous one is durable, though inputs are still handled during
    /// its fsync). The storage may allow fewer ([`DurableStorage::can_start_sync`]).
    pub fn with_sync_depth(mut self, depth: usize) -> Self {
        self.depth = depth.max(1);
        self
    }

    /// The node (for start-up decisions such as bootstrapping the ring).
    pub fn node(&self) -> &Node<S> {
        &self.node
    }

    /// Feeds an administrator's command before [`Driver::run`] (bootstrap, join).
    pub fn admin(&mut self, admin: Admin) {
        self.input(Input::Admin(admin));
    }

    /// Runs until `shutdown` completes (Ok) or storage fails to sync (Err: stop serving).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        loop {
            self.start_syncs()?;
            self.publish();
            let deadline = match self.node.poll_timeout() {
                Some(t) => self.clock.instant(t),
                None => Instant::now() + Duration::from_secs(3600),
            };
            let storage = self.node.storage();
            // Inputs wait while a checkpoint holds the transaction, and once the
            // group that cannot be taken yet has grown to MAX_AHEAD inputs.
            let accepting =
                storage.can_apply() && (self.ahead < MAX_AHEAD || !storage.pending_sync());
            let mut queue: Vec<Queued> = Vec::new();
            tokio::select! {
                biased;
                _ = &mut shutdown => {
                    // Every record in flight must be on disk (or failed) before the
                    // checkpoint: it commits them and starts the log over.
                    while !self.flights.is_empty() {
                        let r = oldest_flight(&mut self.flights).await;
                        self.finish_flight(r)?;
                    }
                    if let Err(e) = self.node.storage_mut().close() {
                        tracing::warn!(error = %e, "checkpoint at shutdown failed (the next start replays the log)");
                    }
                    return Ok(());
                }
                r = oldest_flight(&mut self.flights), if !self.flights.is_empty() => {
                    self.finish_flight(r)?;
                    continue;
                }
                m = self.net_rx.recv(), if self.net_open && accepting => match m {
                    Some(m) => queue.push(Queued::Net(m.into())),
                    None => self.net_open = false,
                },
                c = self.cmd_rx.recv(), if self.cmd_open && accepting => match c {
                    Some(c) => queue.push(Queued::Cmd(c)),
                    None => self.cmd_open = false,
                },
                _ = tokio::time::sleep_until(deadline.into()), if accepting => self.input(Input::Timeout),
            }
            // Take whatever else is queued, for one group commit.
            while queue.len() < BATCH {
                let mut any = false;
                if self.net_open {
                    if let Ok(m) = self.net_rx.try_recv() {
                        queue.push(Queued::Net(m.into()));
                        any = true;
                    }
                }
                if self.cmd_open {
                    if let Ok(c) = self.cmd_rx.try_recv() {
                        queue.push(Queued::Cmd(c));
                        any = true;
                    }
                }
                if !any {
                    break;
                }
            }
            // Acks and replies first: they change no storage, so the client replies
            // they complete leave as soon as the groups before them are durable
            // (see `input`) instead of waiting for this batch's fsync too. Inputs
            // from different peers and clients have no order between them to keep.
            let (first, rest): (Vec<Queued>, Vec<Queued>) =
                queue.into_iter().partition(Queued::is_answer);
            for q in first.into_iter().chain(rest) {
                match q {
                    Queued::Net(m) => self.on_net(m),
                    Queued::Cmd(c) => self.on_command(c),
                }
            }
            if self
                .node
                .poll_timeout()
                .is_some_and(|t| t <= self.clock.now())
            {
                self.input(Input::Timeout);
            }
        }
    }

    fn on_net(&mut self, m: NetInput) {
        match m {
            NetInput::Message { from, msg } => {
                let clock = &self.clock;
                self.peer_tap
                    .record(|| clock.now().as_millis(), Dir::In, from, &msg);
                self.input(Input::Message { from, msg })
            }
            NetInput::Peer { id, peer_addr } => {
                if id != self.node.id() {
                    self.net.set_addr(id, peer_addr.clone());
                    self.handshaken.insert(id, peer_addr);
                }
            }
        }
    }

    fn on_command(&mut self, c: Command) {
        match c {
            Command::Client { op, reply } => {
                let req = ClientReq(self.next_req);
                self.next_req += 1;
                self.waiting.insert(req, reply);
                self.input(Input::Client { req, op });
            }
            Command::Admin(a) => {
                tracing::info!(admin = ?a, "admin command");
                self.input(Input::Admin(a));
            }
        }
    }

    /// Handles one input and drains its outputs: what may depend on unsynced
    /// state is held for its group (see the module doc), the rest leaves now.
    fn input(&mut self, input: Input) {
        self.node.handle_input(self.clock.now(), input);
        self.ahead += 1;
        // This input's outputs may depend on every batch applied so far: the group
        // collecting, if it has any, else the last one taken.
        let group = self.taken + u64::from(self.node.storage().pending_sync());
        while let Some(out) = self.node.poll_output() {
            match out {
                // Replica writes/reads and forwards leave now, so the replicas'
                // fsyncs overlap ours; everything that acknowledges waits for it.
                Output::Send { to, msg } if msg.may_precede_durability() => self.send(to, &msg),
                Output::Send { to, msg } => self.hold(group, Held::Send(to, msg)),
                Output::Reply { req, result } => self.hold(group, Held::Reply(req, result)),
                Output::Event(e) => self.on_event(e),
            }
        }
    }

    /// Sends `out` now if `group` is durable, else queues it behind the others.
    fn hold(&mut self, group: u64, out: Held) {
        if group <= self.durable && self.held.is_empty() {
            self.emit(out);
        } else {
            self.held.push_back((group, out));
        }
    }

    fn send(&mut self, to: NodeId, msg: &Message) {
        let clock = &self.clock;
        self.peer_tap
            .record(|| clock.now().as_millis(), Dir::Out, to, msg);
        self.net.send(to, msg);
    }

    fn emit(&mut self, out: Held) {
        match out {
            Held::Send(to, msg) => self.send(to, &msg),
            Held::Reply(req, result) => {
                if let Some(tx) = self.waiting.remove(&req) {
                    // The client may have gone away; its answer is then dropped.
                    let _ = tx.send(result);
                }
            }
        }
    }

    /// Takes pending groups while the storage and the depth allow, each as a job on
    /// a blocking thread (the fsync blocks; the node's other tasks go on).
    fn start_syncs(&mut self) -> anyhow::Result<()> {
        loop {
            let storage = self.node.storage_mut();
            if !storage.pending_sync()
                || self.flights.len() >= self.depth
                || !storage.can_start_sync()
            {
                return Ok(());
            }
            let batches = storage.commits();
            let job = match storage.start_sync() {
                Ok(job) => job,
                Err(e) => return Err(self.sync_failed(e)),
            };
            self.taken += 1;
            self.ahead = 0;
            if !self.flights.is_empty() {
                self.metrics.add("storage_syncs_overlapped", 1);
            }
            self.flights.push_back(Flight {
                batches,
                job: job.map(|task| {
                    tokio::task::spawn_blocking(move || {
                        let start = Instant::now();
                        let r = (task.run)();
                        (r, start.elapsed(), task.checkpoint)
                    })
                }),
            });
        }
    }

    /// The oldest group commit ended with `result`: record it, and release what
    /// waited for it.
    fn finish_flight(
        &mut self,
        (result, timing): (Result<(), StorageError>, Option<(Duration, bool)>),
    ) -> anyhow::Result<()> {
        if let Some((took, checkpoint)) = timing {
            self.metrics.sync(took, checkpoint);
        }
        let flight = self.flights.pop_front().expect("a flight finished");
        if flight.job.is_some() {
            if let Err(e) = self.node.storage_mut().finish_sync(result) {
                return Err(self.sync_failed(e));
            }
        }
        self.durable += 1;
        self.metrics
            .group_commit(flight.batches.saturating_sub(self.batches_at_sync));
        self.batches_at_sync = flight.batches;
        while self.held.front().is_some_and(|(g, _)| *g <= self.durable) {
            let (_, out) = self.held.pop_front().expect("checked");
            self.emit(out);
        }
        Ok(())
    }

    fn sync_failed(&self, e: StorageError) -> anyhow::Error {
        tracing::error!(error = %e, "storage sync failed: stopping (no unsynced write is acknowledged)");
        anyhow::anyhow!("storage sync failed: {e}")
    }

    /// Updates the address book, the `/cluster` snapshot and the gauges.
    fn publish(&mut self) {
        let hash = self.node.membership().hash();
        let changed = self.membership_hash != Some(hash);
        if changed {
            self.membership_hash = Some(hash);
            for m in self.node.membership().members() {
                if m.id == self.node.id() {
                    continue;
                }
                if let Some(peer) = m.addr.split_whitespace().next() {
                    // Placeholder entries carry the bare id name, not an address.
                    if peer.contains(':') {
                        self.net.set_addr(m.id, peer.to_owned());
                    }
                }
            }
        }
        let stale = self
            .last_gauges
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(500));
        // Rebuilt on every change, and at the gauge refresh so φ stays current.
        if changed || self.reachability_changed || stale {
            self.reachability_changed = false;
            let view = self.cluster_view();
            let unreachable = view
                .nodes
                .iter()
                .filter(|m| m.status == "unreachable" || m.status == "dead")
                .count();
            self.metrics.set("unreachable_peers", unreachable as i64);
            self.metrics.set("members", view.nodes.len() as i64);
            self.metrics.set("ring_version", view.ring_version as i64);
            self.view_tx.send_replace(Arc::new(view));
        }
        let storage = self.node.storage();
        self.metrics
            .set("hints_pending", storage.hint_count() as i64);
        self.metrics
            .set("coordinating", self.node.coordinating() as i64);
        if stale {
            self.last_gauges = Some(Instant::now());
            self.metrics.set("objects", storage.object_count() as i64);
            self.metrics
                .set_counter("gossip_rounds", self.node.gossip_rounds());
        }
    }

    fn cluster_view(&self) -> ClusterView {
        let node = &self.node;
        let me = node.id();
        let ring = node.ring();
        let (phi_cfg, now) = (node.config().phi(), self.clock.now());
        let nodes = node
            .membership()
            .members()
            .map(|m| {
                let mut parts = m.addr.split_whitespace();
                let (peer_addr, http_addr) = match (parts.next(), parts.next()) {
                    (Some(p), Some(h)) => (p.to_owned(), h.to_owned()),
                    _ => (
                        self.handshaken.get(&m.id).cloned().unwrap_or_default(),
                        String::new(),
                    ),
                };
                let view = node.detector().view(m.id);
                let status = match m.status {
                    Status::Up if m.id != me && view.is_some_and(|v| v.reported_dead) => "dead",
                    Status::Up if m.id != me && !node.detector().is_reachable(m.id) => {
                        "unreachable"
                    }
                    s => s.name(),
                };
                let phi = (m.id != me)
                    .then(|| node.detector().phi(m.id, now, &phi_cfg))
                    .flatten()
                    .map(|p| (p.min(1000.0) * 100.0).round() / 100.0);
                MemberView {
                    id: m.id.name(),
                    peer_addr,
                    http_addr,
                    zone: m.zone.clone(),
                    status: status.to_owned(),
                    generation: m.generation,
                    phi,
                }
            })
            .collect();
        ClusterView {
            node: me.name(),
            ring_version: ring.map_or(0, |r| r.version()),
            n: ring.map_or(node.config().n, |r| r.n()),
            partitions: ring
                .map_or_else(Vec::new, |r| r.owners().iter().map(|o| o.name()).collect()),
            nodes,
            pending_ring_version: node.membership().pending().map(|r| r.version()),
            self_status: node
                .membership()
                .get(me)
                .map_or("joining", |m| m.status.name())
                .to_owned(),
        }
    }

    /// Logs an event and counts it.
    fn on_event(&mut self, e: Event) {
        // Serialized only while someone listens (the stream is for people and UIs).
        if self.events_tx.receiver_count() > 0 {
            let json = serde_json::json!({
                "at_ms": self.clock.now().as_millis(),
                "node": self.node.id().name(),
                "kind": e.kind(),
                "event": &e,
            })
            .to_string();
            let _ = self.events_tx.send(Arc::new(EventLine {
                kind: e.kind(),
                json,
            }));
        }
        let m = &self.metrics;
        match &e {
            Event::HintStored { .. } => m.add("hints_stored", 1),
            Event::HintDelivered { .. } => m.add("hints_delivered", 1),
            Event::HintDropped { .. } => m.add("hints_dropped", 1),
            Event::HintRefused { .. } => m.add("hints_refused", 1),
            Event::HandoffReceived { .. } => m.add("handoffs_received", 1),
            Event::ReadRepair { .. } => m.add("read_repairs", 1),
            Event::ReadRetried { .. } => m.add("read_retries", 1),
            Event::MerkleExchangeStarted { .. } => m.add("merkle_exchanges", 1),
            Event::MerkleKeysRepaired { n, .. } => m.add("merkle_keys_repaired", *n as u64),
            Event::MerkleInSync { .. } => m.add("merkle_in_sync", 1),
            Event::PeerReportedDead { .. } => {
                m.add("peers_reported_dead", 1);
                self.reachability_changed = true;
            }
            Event::PeerUnreachable { .. } => {
                m.add("peer_unreachable", 1);
                self.reachability_changed = true;
            }
            Event::PeerReachable { .. } => self.reachability_changed = true,
            Event::MemberStateChanged { .. } => m.add("member_changes", 1),
            Event::RingInstalled { .. } => m.add("rings_installed", 1),
            Event::PartitionPulled { .. } => m.add("partitions_pulled", 1),
            Event::OwnershipHandoff { keys, .. } => m.add("ownership_handoff_keys", *keys as u64),
            Event::MessageIgnored { .. } => m.add("messages_ignored", 1),
            _ => {}
        }
        let node = self.node.id().name();
        match &e {
            Event::StorageFailed { error } => {
                tracing::error!(node, error = %error, "storage failed; dependent outputs withheld")
            }
            Event::RequestStarted { .. }
            | Event::Forwarded { .. }
            | Event::QuorumMet { .. }
            | Event::ReplicaStored { .. }
            | Event::MerkleLevelCompared { .. }
            | Event::MerkleInSync { .. }
            | Event::MerkleExchangeStarted { .. }
            | Event::HintStored { .. }
            | Event::HintDelivered { .. }
            | Event::RequestFailed { .. }
            | Event::StandInRecruited { .. }
            | Event::ReadRepair { .. }
            | Event::ReadRetried { .. }
            | Event::TombstonePurged { .. }
            | Event::MessageIgnored { .. } => {
                tracing::debug!(node, kind = e.kind(), event = ?e)
            }
            _ => tracing::info!(node, kind = e.kind(), event = ?e),
        }
    }
}

/// Whether this node has finished leaving (then it no longer serves clients).
pub fn has_left(view: &ClusterView) -> bool {
    view.self_status == "left" || view.self_status == "removed"
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringlab_core::{Config, MemStorage, NodeInfo, Ring};
    use std::sync::Mutex;

    /// Records what the driver sends.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<(NodeId, Message)>>>);

    impl PeerSink for Recorder {
        fn send(&self, to: NodeId, msg: &Message) {
            self.0.lock().unwrap().push((to, msg.clone()));
        }
        fn set_addr(&self, _: NodeId, _: String) {}
    }

    #[tokio::test]
    async fn single_node_put_get_through_the_driver() {
        let me = NodeId(0);
        let config = Config {
            n: 1,
            r: 1,
            w: 1,
            ..Config::default()
        };
        let clock = Clock::new();
        let info = NodeInfo {
            addr: "127.0.0.1:1 127.0.0.1:2".into(),
            zone: "z1".into(),
        };
        let node = Node::start(me, info, config, None, MemStorage::new(), 7, clock.now());
        let (_net_tx, net_rx) = mpsc::channel::<NetInput>(8);
        let sink = Recorder::default();
        let (mut driver, handle) =
            Driver::new(node, sink, net_rx, clock, Arc::new(Metrics::new()), 8);
        assert!(driver.node().ring().is_none());
        let ring = Ring::new(8, 1, &[(me, "z1".into())]).unwrap();
        driver.admin(Admin::SetRing(ring));
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(driver.run(async {
            let _ = stop_rx.await;
        }));
        let put = handle
            .submit(ClientOp::Put {
                key: "k".into(),
                value: "v".into(),
                context: None,
                w: None,
            })
            .unwrap();
        assert!(matches!(
            put.await.unwrap(),
            Ok(ClientReply::Written { .. })
        ));
        let get = handle
            .submit(ClientOp::Get {
                key: "k".into(),
                r: None,
            })
            .unwrap();
        match get.await.unwrap() {
            Ok(ClientReply::Read { values, .. }) => {
                assert_eq!(values.len(), 1);
                assert_eq!(values[0].1, bytes::Bytes::from("v"));
            }
            other => panic!("unexpected {other:?}"),
        }
        // Wait for the snapshot to show the ring.
        let mut view = handle.view();
        for _ in 0..50 {
            if view.ring_version > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            view = handle.view();
        }
        assert_eq!(view.node, "A");
        assert_eq!(view.partitions, vec!["A".to_string(); 8]);
        assert_eq!(view.nodes.len(), 1);
        assert_eq!(view.nodes[0].http_addr, "127.0.0.1:2");
        assert_eq!(view.nodes[0].status, "up");
        stop_tx.send(()).unwrap();
        task.await.unwrap().unwrap();
    }

    /// Waits up to 2 s for `done` to hold; whether it did.
    async fn eventually(mut done: impl FnMut() -> bool) -> bool {
        for _ in 0..400 {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        done()
    }

    /// Each group commit's gate, in the order the groups were taken.
    #[derive(Clone, Default)]
    struct Gates(Arc<Mutex<Vec<Option<std::sync::mpsc::Sender<()>>>>>);

    impl Gates {
        /// Lets group commit `i` (0-based) finish, once it has been taken.
        async fn open(&self, i: usize) {
            assert!(
                eventually(|| self.taken() > i).await,
                "group commit {i} was never taken"
            );
            // Dropping the sender ends the job's wait.
            self.0.lock().unwrap()[i].take().expect("opened twice");
        }

        fn taken(&self) -> usize {
            self.0.lock().unwrap().len()
        }
    }

    /// MemStorage whose group commits each block until the test opens their gate.
    struct Gated {
        inner: MemStorage,
        pending: bool,
        gates: Gates,
    }

    impl Gated {
        fn new(gates: &Gates) -> Self {
            Gated {
                inner: MemStorage::new(),
                pending: false,
                gates: gates.clone(),
            }
        }
    }

    impl Storage for Gated {
        fn object(&self, key: &[u8]) -> Option<ringlab_core::Object> {
            self.inner.object(key)
        }
        fn objects_after(
            &self,
            after: Option<&[u8]>,
            limit: usize,
        ) -> Vec<(bytes::Bytes, ringlab_core::Object)> {
            self.inner.objects_after(after, limit)
        }
        fn object_count(&self) -> usize {
            self.inner.object_count()
        }
        fn hint(&self, owner: NodeId, key: &[u8]) -> Option<ringlab_core::store::Hint> {
            self.inner.hint(owner, key)
        }
        fn hint_owners(&self) -> Vec<NodeId> {
            self.inner.hint_owners()
        }
        fn hints_for(
            &self,
            owner: NodeId,
            limit: usize,
        ) -> Vec<(bytes::Bytes, ringlab_core::store::Hint)> {
            self.inner.hints_for(owner, limit)
        }
        fn hint_usage(&self, owner: NodeId) -> (usize, usize) {
            self.inner.hint_usage(owner)
        }
        fn meta(&self, name: &str) -> Option<Vec<u8>> {
            self.inner.meta(name)
        }
        fn apply(&mut self, batch: ringlab_core::store::Batch) -> Result<(), StorageError> {
            self.pending = true;
            self.inner.apply(batch)
        }
    }

    impl DurableStorage for Gated {
        fn pending_sync(&self) -> bool {
            self.pending
        }
        fn start_sync(&mut self) -> Result<Option<SyncTask>, StorageError> {
            self.pending = false;
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            self.gates.0.lock().unwrap().push(Some(tx));
            Ok(Some(SyncTask {
                checkpoint: false,
                run: Box::new(move || {
                    let _ = rx.recv();
                    Ok(())
                }),
            }))
        }
        fn finish_sync(&mut self, result: Result<(), StorageError>) -> Result<(), StorageError> {
            result
        }
        fn hint_count(&self) -> usize {
            0
        }
        fn commits(&self) -> u64 {
            self.inner.commits
        }
    }

    /// A driver for node A of a 3-node ring (N=3) over a [`Gated`] storage, with
    /// its first group commit (start-up state) already through.
    async fn gated_driver(
        depth: usize,
    ) -> (
        Gates,
        Recorder,
        Handle,
        oneshot::Sender<()>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
        Arc<Metrics>,
    ) {
        let (a, b, c) = (NodeId(0), NodeId(1), NodeId(2));
        let clock = Clock::new();
        let members: Vec<(NodeId, String)> = [a, b, c].iter().map(|&n| (n, "z1".into())).collect();
        let ring = Ring::new(8, 3, &members).unwrap();
        let gates = Gates::default();
        let node = Node::new(
            a,
            Config::default(),
            Some(ring),
            Gated::new(&gates),
            7,
            clock.now(),
        );
        let (_net_tx, net_rx) = mpsc::channel::<NetInput>(8);
        let sink = Recorder::default();
        let metrics = Arc::new(Metrics::new());
        let (driver, handle) = Driver::new(node, sink.clone(), net_rx, clock, metrics.clone(), 8);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(driver.with_sync_depth(depth).run(async move {
            let _net_tx = _net_tx;
            let _ = stop_rx.await;
        }));
        // Start-up state (generation) is pending: let that first sync through.
        gates.open(0).await;
        assert!(
            eventually(|| metrics.counter("storage_syncs") == 1).await,
            "start-up sync not done"
        );
        (gates, sink, handle, stop_tx, task, metrics)
    }

    /// Replica writes (`Store` with a request id) the driver has sent.
    fn stores(sink: &Recorder) -> Vec<(NodeId, Option<ringlab_core::ReqId>)> {
        sink.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(to, m)| match m {
                Message::Replica(ringlab_core::quorum::Msg::Store { id, .. }) => Some((*to, *id)),
                _ => None,
            })
            .collect()
    }

    async fn wait_for_stores(sink: &Recorder, n: usize) {
        let sent = eventually(|| stores(sink).len() >= n).await;
        assert!(
            sent,
            "{n} replica writes expected, {} sent",
            stores(sink).len()
        );
    }

    /// A W=1 put: the local write alone completes it, in the same input.
    fn put(handle: &Handle, key: &'static str) -> oneshot::Receiver<ClientResult> {
        handle
            .submit(ClientOp::Put {
                key: key.into(),
                value: "v".into(),
                context: None,
                w: Some(1),
            })
            .unwrap()
    }

    async fn written(reply: &mut oneshot::Receiver<ClientResult>) {
        let got = tokio::time::timeout(Duration::from_secs(5), reply)
            .await
            .expect("no reply")
            .unwrap();
        assert!(matches!(got, Ok(ClientReply::Written { .. })), "{got:?}");
    }

    /// The release rules around a group commit: a coordinator's replica writes leave
    /// while its own fsync is still running; the client's acknowledgement waits for it.
    #[tokio::test]
    async fn replica_writes_leave_before_the_fsync_replies_only_after() {
        let (gates, sink, handle, stop_tx, task, _metrics) = gated_driver(1).await;
        let mut reply = put(&handle, "k");
        // The replica writes go out although the local fsync has not completed...
        wait_for_stores(&sink, 2).await;
        let sent = stores(&sink);
        assert_eq!(sent.len(), 2, "replica writes held back by the fsync");
        assert!(sent.iter().all(|(_, id)| id.is_some()));
        // ...but the client's acknowledgement does not.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            reply.try_recv().is_err(),
            "acknowledged before the write was durable"
        );
        gates.open(1).await;
        written(&mut reply).await;
        stop_tx.send(()).unwrap();
        drop(gates); // shutdown waits for nothing else
        task.await.unwrap().unwrap();
    }

    /// Pipelining at depth 1: a write arriving during another write's fsync is
    /// handled at once (its replica writes leave), but its own group is taken only
    /// once the first is durable, and its reply waits for its own group.
    #[tokio::test]
    async fn depth_one_handles_inputs_during_an_fsync_and_syncs_in_turn() {
        let (gates, sink, handle, stop_tx, task, metrics) = gated_driver(1).await;
        let mut first = put(&handle, "k1");
        wait_for_stores(&sink, 2).await;
        assert_eq!(gates.taken(), 2);
        let mut second = put(&handle, "k2");
        // Handled while group 1's fsync is still blocked.
        wait_for_stores(&sink, 4).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(gates.taken(), 2, "a second group taken at depth 1");
        assert_eq!(metrics.counter("storage_syncs_overlapped"), 0);
        gates.open(1).await;
        written(&mut first).await;
        // k2's group is taken now, and its reply waits for it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            second.try_recv().is_err(),
            "k2 acknowledged before its fsync"
        );
        gates.open(2).await;
        written(&mut second).await;
        stop_tx.send(()).unwrap();
        task.await.unwrap().unwrap();
    }

    /// Pipelining at depth 2: the second write's group is synced alongside the
    /// first's, and if it finishes first its reply still waits for the first group
    /// (a crash could lose the first record, and recovery stops there).
    #[tokio::test]
    async fn depth_two_syncs_groups_together_and_releases_them_in_order() {
        let (gates, sink, handle, stop_tx, task, metrics) = gated_driver(2).await;
        let mut first = put(&handle, "k1");
        wait_for_stores(&sink, 2).await;
        let mut second = put(&handle, "k2");
        wait_for_stores(&sink, 4).await;
        eventually(|| gates.taken() == 3).await;
        assert_eq!(gates.taken(), 3, "k2's group not synced alongside k1's");
        assert_eq!(metrics.counter("storage_syncs_overlapped"), 1);
        gates.open(2).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            second.try_recv().is_err(),
            "k2 acknowledged while k1's earlier group was not durable"
        );
        assert!(first.try_recv().is_err());
        gates.open(1).await;
        written(&mut first).await;
        written(&mut second).await;
        stop_tx.send(()).unwrap();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn full_queue_is_overloaded() {
        let clock = Clock::new();
        let node = Node::new(
            NodeId(0),
            Config::default(),
            None,
            MemStorage::new(),
            1,
            clock.now(),
        );
        let (_net_tx, net_rx) = mpsc::channel::<NetInput>(1);
        let (_driver, handle) = Driver::new(
            node,
            Recorder::default(),
            net_rx,
            clock,
            Arc::new(Metrics::new()),
            1,
        );
        let op = ClientOp::Get {
            key: "k".into(),
            r: None,
        };
        assert!(handle.submit(op.clone()).is_ok());
        assert_eq!(handle.submit(op).unwrap_err(), SubmitError::Overloaded);
    }
}
