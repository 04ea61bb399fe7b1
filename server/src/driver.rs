//! The node task: one tokio task owns the `Node` (quinn's `ConnectionDriver`).
//!
//! It `select!`s over peer input, client commands and `sleep_until(poll_timeout())`,
//! handles every queued input (up to [`BATCH`]) while buffering the outputs, then
//! **group-commits**: if storage has batches applied since the last fsync it syncs
//! them all with one fsync, and only then releases the buffered sends and replies.
//! So an ack or a client reply never leaves for a write that is not on disk, and
//! one fsync is shared by every write of the batch. Requests that acknowledge
//! nothing (a coordinator's replica writes and reads, forwards:
//! `Message::may_precede_durability`) leave at once, so a write's fsyncs on the
//! coordinator and on the replicas run in parallel rather than one after another. If the sync fails, [`Driver::run`]
//! returns the error before releasing anything and the process stops serving.
//!
//! HTTP handlers never touch the `Node`: they submit [`Command`]s through a
//! bounded channel ([`Handle`]) and read a [`ClusterView`] snapshot published on a
//! watch channel whenever membership or reachability changes.

use crate::metrics::Metrics;
use ringlab_core::gossip::Status;
use ringlab_core::store::StorageError;
use ringlab_core::{
    Admin, ClientOp, ClientReply, ClientReq, Event, Input, Message, Node, NodeId, Output,
    RequestError, Storage, Time,
};
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// A group commit to run on a blocking thread.
pub type SyncFn = Box<dyn FnOnce() -> Result<(), StorageError> + Send>;

/// Inputs handled before one group commit, at most.
pub const BATCH: usize = 256;

/// A storage the driver can group-commit: batches are applied with deferred
/// durability and made durable together by [`DurableStorage::sync`].
pub trait DurableStorage: Storage + Send + 'static {
    /// Whether batches were applied since the last sync.
    fn pending_sync(&self) -> bool;
    /// Takes what [`DurableStorage::finish_sync`] needs committed (one fsync), as a
    /// job to run on a blocking thread; `None` when nothing is pending. The storage
    /// is not used between the two calls.
    fn start_sync(&mut self) -> Result<Option<SyncFn>, StorageError>;
    /// Records the job's outcome; an error means stop serving.
    fn finish_sync(&mut self, result: Result<(), StorageError>) -> Result<(), StorageError>;
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
    fn start_sync(&mut self) -> Result<Option<SyncFn>, StorageError> {
        Ok(crate::storage::RedbStorage::start_sync(self)?
            .map(|job| Box::new(move || job.commit()) as SyncFn))
    }
    fn finish_sync(&mut self, result: Result<(), StorageError>) -> Result<(), StorageError> {
        crate::storage::RedbStorage::finish_sync(self, result)
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
    fn start_sync(&mut self) -> Result<Option<SyncFn>, StorageError> {
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
    sends: Vec<(NodeId, Message)>,
    replies: Vec<(ClientReq, ClientResult)>,
    /// Peer addresses learned from handshakes of nodes not (yet) in the membership.
    handshaken: HashMap<NodeId, String>,
    membership_hash: Option<u64>,
    reachability_changed: bool,
    commits_at_sync: u64,
    last_gauges: Option<Instant>,
    events_tx: broadcast::Sender<Arc<EventLine>>,
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
        let commits_at_sync = node.storage().commits();
        let (events_tx, _) = broadcast::channel(EVENT_BUFFER);
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
            sends: Vec::new(),
            replies: Vec::new(),
            handshaken: HashMap::new(),
            membership_hash: None,
            reachability_changed: true,
            commits_at_sync,
            last_gauges: None,
            events_tx: events_tx.clone(),
        };
        driver.publish();
        let handle = Handle {
            tx,
            view,
            metrics,
            events: events_tx,
        };
        (driver, handle)
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
            self.finish_batch().await?;
            let deadline = match self.node.poll_timeout() {
                Some(t) => self.clock.instant(t),
                None => Instant::now() + Duration::from_secs(3600),
            };
            let mut queue: Vec<Queued> = Vec::new();
            tokio::select! {
                biased;
                _ = &mut shutdown => {
                    if let Err(e) = self.node.storage_mut().close() {
                        tracing::warn!(error = %e, "checkpoint at shutdown failed (the next start replays the log)");
                    }
                    return Ok(());
                }
                m = self.net_rx.recv(), if self.net_open => match m {
                    Some(m) => queue.push(Queued::Net(m.into())),
                    None => self.net_open = false,
                },
                c = self.cmd_rx.recv(), if self.cmd_open => match c {
                    Some(c) => queue.push(Queued::Cmd(c)),
                    None => self.cmd_open = false,
                },
                _ = tokio::time::sleep_until(deadline.into()) => self.input(Input::Timeout),
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
            // they complete leave at once (see `input`) instead of waiting for this
            // batch's fsync. Inputs from different peers and clients have no order
            // between them to keep.
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
            NetInput::Message { from, msg } => self.input(Input::Message { from, msg }),
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

    /// Handles one input and drains its outputs into the release buffers. While
    /// nothing unsynced exists (no batch applied since the last fsync), no output can
    /// depend on unsynced state, so the buffers are released at once.
    fn input(&mut self, input: Input) {
        self.node.handle_input(self.clock.now(), input);
        self.drain_outputs();
        if !self.node.storage().pending_sync() {
            self.release();
        }
    }

    fn drain_outputs(&mut self) {
        while let Some(out) = self.node.poll_output() {
            match out {
                // Replica writes/reads and forwards leave now, so the replicas'
                // fsyncs overlap ours; everything that acknowledges waits for it.
                Output::Send { to, msg } if msg.may_precede_durability() => self.net.send(to, &msg),
                Output::Send { to, msg } => self.sends.push((to, msg)),
                Output::Reply { req, result } => self.replies.push((req, result)),
                Output::Event(e) => self.on_event(e),
            }
        }
    }

    /// Group commit, then release the buffered outputs, then publish state.
    async fn finish_batch(&mut self) -> anyhow::Result<()> {
        let storage = self.node.storage_mut();
        if storage.pending_sync() {
            let commits = storage.commits();
            // The fsync blocks: it runs on a blocking thread while this task waits
            // and the node's other tasks (HTTP, transport) go on.
            let result = match storage.start_sync() {
                Ok(Some(job)) => tokio::task::spawn_blocking(job)
                    .await
                    .unwrap_or_else(|e| Err(StorageError(format!("sync task failed: {e}")))),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            let synced = self.node.storage_mut().finish_sync(result);
            if let Err(e) = synced {
                tracing::error!(error = %e, "storage sync failed: stopping (no unsynced write is acknowledged)");
                return Err(anyhow::anyhow!("storage sync failed: {e}"));
            }
            self.metrics
                .group_commit(commits.saturating_sub(self.commits_at_sync));
            self.commits_at_sync = commits;
        }
        self.release();
        self.publish();
        Ok(())
    }

    /// Sends the buffered messages and replies.
    fn release(&mut self) {
        for (to, msg) in self.sends.drain(..) {
            self.net.send(to, &msg);
        }
        for (req, result) in self.replies.drain(..) {
            if let Some(tx) = self.waiting.remove(&req) {
                // The client may have gone away; its answer is then dropped.
                let _ = tx.send(result);
            }
        }
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

    /// MemStorage whose group commit blocks until the test opens the gate.
    struct Gated {
        inner: MemStorage,
        pending: bool,
        gate: Arc<Mutex<std::sync::mpsc::Receiver<()>>>,
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
        fn start_sync(&mut self) -> Result<Option<SyncFn>, StorageError> {
            let gate = self.gate.clone();
            Ok(Some(Box::new(move || {
                let _ = gate.lock().unwrap().recv();
                Ok(())
            })))
        }
        fn finish_sync(&mut self, result: Result<(), StorageError>) -> Result<(), StorageError> {
            self.pending = false;
            result
        }
        fn hint_count(&self) -> usize {
            0
        }
        fn commits(&self) -> u64 {
            self.inner.commits
        }
    }

    /// The release rules around a group commit: a coordinator's replica writes leave
    /// while its own fsync is still running; the client's acknowledgement waits for it.
    #[tokio::test]
    async fn replica_writes_leave_before_the_fsync_replies_only_after() {
        let (a, b, c) = (NodeId(0), NodeId(1), NodeId(2));
        let config = Config::default(); // N=3, W=2
        let clock = Clock::new();
        let members: Vec<(NodeId, String)> = [a, b, c].iter().map(|&n| (n, "z1".into())).collect();
        let ring = Ring::new(8, 3, &members).unwrap();
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let storage = Gated {
            inner: MemStorage::new(),
            pending: false,
            gate: Arc::new(Mutex::new(gate_rx)),
        };
        let node = Node::new(a, config, Some(ring), storage, 7, clock.now());
        let (_net_tx, net_rx) = mpsc::channel::<NetInput>(8);
        let sink = Recorder::default();
        let (driver, handle) = Driver::new(
            node,
            sink.clone(),
            net_rx,
            clock,
            Arc::new(Metrics::new()),
            8,
        );
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(driver.run(async {
            let _ = stop_rx.await;
        }));
        // Start-up state (generation) is pending: let that first sync through.
        gate_tx.send(()).unwrap();
        let stores = |sink: &Recorder| -> Vec<(NodeId, Option<ringlab_core::ReqId>)> {
            sink.0
                .lock()
                .unwrap()
                .iter()
                .filter_map(|(to, m)| match m {
                    Message::Replica(ringlab_core::quorum::Msg::Store { id, .. }) => {
                        Some((*to, *id))
                    }
                    _ => None,
                })
                .collect()
        };
        // W=1: the local write alone completes the request, in the same input.
        let mut reply = handle
            .submit(ClientOp::Put {
                key: "k".into(),
                value: "v".into(),
                context: None,
                w: Some(1),
            })
            .unwrap();
        // The replica writes go out although the local fsync has not completed...
        let mut sent = Vec::new();
        for _ in 0..200 {
            sent = stores(&sink);
            if sent.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(sent.len(), 2, "replica writes held back by the fsync");
        assert!(sent.iter().all(|(_, id)| id.is_some()));
        // ...but the client's acknowledgement does not.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            reply.try_recv().is_err(),
            "acknowledged before the write was durable"
        );
        gate_tx.send(()).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), &mut reply)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(got, Ok(ClientReply::Written { .. })), "{got:?}");
        drop(gate_tx); // later syncs pass (recv fails at once)
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
