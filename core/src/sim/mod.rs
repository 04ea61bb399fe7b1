//! A deterministic, seeded cluster simulator.
//!
//! A [`World`] owns every node, a virtual clock and one event queue. Nothing in it
//! reads a clock or an OS RNG: given the same [`SimConfig`] and the same actions at
//! the same virtual times, it produces the same trace — byte for byte, natively and
//! in WASM — and [`World::trace_hash`] fingerprints it (FNV-1a over the postcard
//! encoding of every trace record). Crashing a node drops its volatile state and
//! keeps its [`MemStorage`]; wiping replaces the storage with an empty one.
//!
//! It exposes what the UI draws: nodes, the ring, messages in flight with their send
//! and delivery times, recently dropped messages, hints and versions.

pub mod netem;

use crate::config::Config;
use crate::id::{ClientReq, NodeId};
use crate::message::{
    Admin, ClientOp, ClientReply, Event, Input, Message, MessageKind, Output, RequestError,
};
use crate::node::{Node, NodeInfo};
use crate::ring::Ring;
use crate::store::{MemStorage, Storage};
use crate::time::{Dur, Time};
use crate::version::Object;
use bytes::Bytes;
pub use netem::{Fate, NetConfig, Netem};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

/// One simulated node's static description.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Zone label.
    pub zone: String,
}

/// Everything needed to build a world.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimConfig {
    /// Master seed.
    pub seed: u64,
    /// Nodes, named A, B, … in order.
    pub nodes: Vec<NodeSpec>,
    /// Protocol configuration.
    pub config: Config,
    /// Network behaviour.
    pub net: NetConfig,
    /// Start every node with the ring over all of them (an established cluster).
    /// When false, each node starts alone and knows nothing: clusters form by
    /// `Admin::Join` actions through gossip.
    #[serde(default = "yes")]
    pub bootstrap: bool,
}

fn yes() -> bool {
    true
}

impl SimConfig {
    /// `count` nodes in zones z1..z`zones` (round robin), demo timers.
    pub fn new(seed: u64, count: usize, zones: usize) -> Self {
        SimConfig {
            seed,
            nodes: (0..count)
                .map(|i| NodeSpec {
                    zone: format!("z{}", i % zones.max(1) + 1),
                })
                .collect(),
            config: Config::demo(),
            net: NetConfig::default(),
            bootstrap: true,
        }
    }
}

/// Something a user (or a test, or the UI) does to the world.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Stop a node; volatile state is lost, storage kept.
    Crash(NodeId),
    /// Start a crashed node again on its storage.
    Restart(NodeId),
    /// Replace a node's storage with an empty one (crashes it first if running).
    Wipe(NodeId),
    /// Cut links between groups, both ways.
    Partition(Vec<Vec<NodeId>>),
    /// Cut one node off from everyone.
    Isolate(NodeId),
    /// Cut `from → to` only.
    Block {
        /// Sender side.
        from: NodeId,
        /// Receiver side.
        to: NodeId,
    },
    /// Remove every cut.
    Heal,
    /// Change latency / loss / duplication.
    SetNet(NetConfig),
    /// A client request submitted to `node`.
    Client {
        /// The node the client talks to.
        node: NodeId,
        /// The request.
        op: ClientOp,
    },
    /// Drop one message in flight.
    DropMessage(u64),
    /// Start (or change, or with `None` stop) the generated client workload.
    SetWorkload(Option<Workload>),
    /// An administrator's command to one node.
    Admin {
        /// The node.
        node: NodeId,
        /// The command.
        admin: Admin,
    },
    /// A new node starts (not yet in any ring; join it with `Admin::Join`).
    AddNode {
        /// Its zone.
        zone: String,
    },
}

/// A message on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    /// Unique per world.
    pub id: u64,
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
    /// Sent at.
    pub sent: Time,
    /// Due at.
    pub deliver: Time,
    /// The message.
    pub msg: Message,
    /// FNV-1a of the message's postcard encoding, computed once at send.
    pub fingerprint: u64,
}

/// Why a message did not arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DropReason {
    /// Random loss.
    Loss,
    /// A partition or block.
    Cut,
    /// The receiver was down.
    NodeDown,
    /// Dropped by hand.
    Manual,
}

/// A message that did not arrive (for the UI to fade out).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// Message id.
    pub id: u64,
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
    /// Kind.
    pub kind: MessageKind,
    /// When it was sent.
    pub sent: Time,
    /// When it was dropped.
    pub at: Time,
    /// Why.
    pub reason: DropReason,
}

/// One line of the trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// `to` received a message.
    Deliver {
        /// Message id.
        id: u64,
        /// Sender.
        from: NodeId,
        /// Receiver.
        to: NodeId,
        /// Payload.
        msg: Message,
    },
    /// A node emitted an event.
    Event {
        /// Emitting node.
        node: NodeId,
        /// Event.
        event: Event,
    },
    /// A client got its answer.
    Reply {
        /// Node that answered.
        node: NodeId,
        /// Request.
        req: ClientReq,
        /// Outcome.
        result: Result<ClientReply, RequestError>,
    },
    /// A message was dropped.
    Drop(Dropped),
    /// An action was applied.
    Action(Action),
}

/// A trace line with its time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEntry {
    /// Virtual time.
    pub at: Time,
    /// What happened.
    pub record: Record,
}

/// A client request and its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// Node asked.
    pub node: NodeId,
    /// Request.
    pub op: ClientOp,
    /// Submitted at.
    pub issued: Time,
    /// Answered at, with the outcome (a request to a down node fails at once).
    pub done: Option<(Time, Result<ClientReply, RequestError>)>,
}

/// Counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Messages sent.
    pub sent: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Messages dropped.
    pub dropped: u64,
    /// Encoded bytes sent (postcard).
    pub bytes: u64,
    /// Events emitted.
    pub events: u64,
    /// Encoded bytes sent, by message kind.
    pub bytes_by_kind: BTreeMap<MessageKind, u64>,
}

#[derive(Debug)]
enum What {
    /// Boxed: the queue sifts entries on every push and pop, so they stay small.
    Deliver(Box<InFlight>),
    Wake(NodeId, u32),
    Act(Box<Action>),
    Workload(u64),
}

/// A client workload the world generates by itself: every `interval`, one request
/// at a random running node, on one of `keys` keys; writes carry the context of the
/// latest reply for their key (as a well-behaved client would).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    /// Time between requests.
    pub interval: Dur,
    /// Key space size (`key0`, `key1`, …).
    pub keys: u32,
    /// Percentage of writes (the rest are reads).
    pub write_pct: u8,
    /// Value size in bytes.
    pub value_len: usize,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            interval: Dur::millis(50),
            keys: 16,
            write_pct: 75,
            value_len: 16,
        }
    }
}

#[derive(Debug)]
struct Scheduled {
    at: Time,
    seq: u64,
    what: What,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

struct Slot {
    node: Option<Node<MemStorage>>,
    /// Storage of a crashed node.
    disk: Option<MemStorage>,
    incarnation: u32,
    next_wake: Option<Time>,
}

/// The simulated cluster.
pub struct World {
    cfg: SimConfig,
    now: Time,
    rng: ChaCha8Rng,
    net: Netem,
    ring: Ring,
    slots: Vec<Slot>,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    next_msg: u64,
    next_req: u64,
    clients: BTreeMap<ClientReq, ClientRecord>,
    hash: u64,
    buf: Vec<u8>,
    trace: Option<Vec<TraceEntry>>,
    drops: VecDeque<Dropped>,
    stats: Stats,
    workload: Option<Workload>,
    workload_gen: u64,
    workload_rng: ChaCha8Rng,
    contexts: BTreeMap<Bytes, crate::version::VersionVector>,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl World {
    /// Builds the cluster: every node up, the ring claimed over all of them.
    pub fn new(cfg: SimConfig) -> Result<World, String> {
        cfg.config.validate().map_err(|e| e.to_string())?;
        if cfg.nodes.is_empty() {
            return Err("a world needs at least one node".into());
        }
        let members: Vec<(NodeId, String)> = cfg
            .nodes
            .iter()
            .enumerate()
            .map(|(i, s)| (NodeId(i as u32), s.zone.clone()))
            .collect();
        let ring =
            Ring::new(cfg.config.partitions, cfg.config.n, &members).map_err(|e| e.to_string())?;
        let mut w = World {
            now: Time::ZERO,
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            net: Netem::new(cfg.net.clone()),
            ring,
            slots: Vec::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            next_msg: 1,
            next_req: 1,
            clients: BTreeMap::new(),
            hash: FNV_OFFSET,
            buf: Vec::new(),
            trace: None,
            drops: VecDeque::new(),
            stats: Stats::default(),
            workload: None,
            workload_gen: 0,
            workload_rng: ChaCha8Rng::seed_from_u64(splitmix(cfg.seed ^ 0x3017_10ad)),
            contexts: BTreeMap::new(),
            cfg,
        };
        for i in 0..w.cfg.nodes.len() {
            w.slots.push(Slot {
                node: None,
                disk: Some(MemStorage::new()),
                incarnation: 0,
                next_wake: None,
            });
            w.start(NodeId(i as u32));
        }
        Ok(w)
    }

    /// Keeps every trace record in memory (for the UI and for printing).
    pub fn record_trace(&mut self, on: bool) {
        self.trace = on.then(Vec::new);
    }

    /// The recorded trace (empty unless [`World::record_trace`] is on).
    pub fn trace(&self) -> &[TraceEntry] {
        self.trace.as_deref().unwrap_or(&[])
    }

    /// Takes the recorded trace, leaving recording on.
    pub fn take_trace(&mut self) -> Vec<TraceEntry> {
        match &mut self.trace {
            Some(t) => std::mem::take(t),
            None => Vec::new(),
        }
    }

    /// Fingerprint of everything that happened so far.
    pub fn trace_hash(&self) -> u64 {
        self.hash
    }

    /// Virtual now.
    pub fn now(&self) -> Time {
        self.now
    }

    /// The configuration the world was built with.
    pub fn sim_config(&self) -> &SimConfig {
        &self.cfg
    }

    /// The network emulator: link behaviour and the cuts in force (read-only, for
    /// drawing partitions).
    pub fn net(&self) -> &Netem {
        &self.net
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The newest ring any running node routes by (the bootstrap ring if none has one).
    pub fn ring(&self) -> &Ring {
        self.slots
            .iter()
            .filter_map(|s| s.node.as_ref()?.ring())
            .max_by_key(|r| r.version())
            .unwrap_or(&self.ring)
    }

    /// Number of nodes (up or down).
    pub fn node_count(&self) -> usize {
        self.slots.len()
    }

    /// A running node.
    pub fn node(&self, id: NodeId) -> Option<&Node<MemStorage>> {
        self.slots.get(id.0 as usize)?.node.as_ref()
    }

    /// Whether `id` is running.
    pub fn is_up(&self, id: NodeId) -> bool {
        self.node(id).is_some()
    }

    /// A node's storage, running or crashed.
    pub fn storage(&self, id: NodeId) -> Option<&MemStorage> {
        let s = self.slots.get(id.0 as usize)?;
        s.node.as_ref().map(Node::storage).or(s.disk.as_ref())
    }

    /// Nodes whose own storage holds `key`, with their copies.
    pub fn replicas(&self, key: &[u8]) -> Vec<(NodeId, Object)> {
        (0..self.slots.len())
            .filter_map(|i| {
                let id = NodeId(i as u32);
                self.storage(id)?.object(key).map(|o| (id, o))
            })
            .collect()
    }

    /// Partitions whose running primaries disagree on their Merkle root.
    pub fn divergent_partitions(&self) -> Vec<crate::ring::Partition> {
        let ring = self.ring();
        (0..ring.partitions())
            .map(crate::ring::Partition)
            .filter(|&p| {
                let roots: Vec<_> = ring
                    .primaries(p)
                    .iter()
                    .filter_map(|&n| self.node(n).map(|node| node.merkle_root(p)))
                    .collect();
                roots.windows(2).any(|w| w[0] != w[1])
            })
            .collect()
    }

    /// Every hint in the cluster as (holder, owner, key).
    pub fn hints(&self) -> Vec<(NodeId, NodeId, Bytes)> {
        (0..self.slots.len())
            .flat_map(|i| {
                let id = NodeId(i as u32);
                self.storage(id)
                    .map(|s| s.all_hints())
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |(o, k)| (id, o, k))
            })
            .collect()
    }

    /// Messages on the wire, in delivery order.
    pub fn in_flight(&self) -> Vec<&InFlight> {
        let mut v: Vec<(&Scheduled, &InFlight)> = self
            .queue
            .iter()
            .filter_map(|Reverse(s)| match &s.what {
                What::Deliver(m) => Some((s, &**m)),
                _ => None,
            })
            .collect();
        v.sort_by_key(|(s, _)| (s.at, s.seq));
        v.into_iter().map(|(_, m)| m).collect()
    }

    /// Recently dropped messages (the last 256).
    pub fn recent_drops(&self) -> impl Iterator<Item = &Dropped> {
        self.drops.iter()
    }

    /// Every client request so far.
    pub fn clients(&self) -> &BTreeMap<ClientReq, ClientRecord> {
        &self.clients
    }

    /// One client request.
    pub fn client(&self, req: ClientReq) -> Option<&ClientRecord> {
        self.clients.get(&req)
    }

    /// Submits a client request to `node` now; returns its number.
    pub fn submit(&mut self, node: NodeId, op: ClientOp) -> ClientReq {
        let req = ClientReq(self.next_req);
        self.next_req += 1;
        self.record(Record::Action(Action::Client {
            node,
            op: op.clone(),
        }));
        self.clients.insert(
            req,
            ClientRecord {
                node,
                op: op.clone(),
                issued: self.now,
                done: None,
            },
        );
        if self.is_up(node) {
            self.feed(node, Input::Client { req, op });
        } else {
            let r = Err(RequestError::QuorumNotReached { got: 0, need: 1 });
            self.clients.get_mut(&req).expect("just inserted").done = Some((self.now, r));
        }
        req
    }

    /// Applies an action now.
    pub fn apply(&mut self, action: Action) {
        if let Action::Client { node, op } = action {
            self.submit(node, op);
            return;
        }
        self.record(Record::Action(action.clone()));
        match action {
            Action::Crash(id) => self.crash(id),
            Action::Restart(id) => {
                if self.slot(id).is_some_and(|s| s.node.is_none()) {
                    self.start(id);
                }
            }
            Action::Wipe(id) => {
                self.crash(id);
                if let Some(s) = self.slots.get_mut(id.0 as usize) {
                    s.disk = Some(MemStorage::new());
                }
            }
            Action::Partition(groups) => self.net.partition(&groups),
            Action::Isolate(id) => {
                let all: Vec<NodeId> = (0..self.slots.len() as u32).map(NodeId).collect();
                self.net.isolate(id, all)
            }
            Action::Block { from, to } => self.net.block(from, to),
            Action::Heal => self.net.heal(),
            Action::SetNet(c) => self.net.config = c,
            Action::DropMessage(id) => self.drop_in_flight(id),
            Action::SetWorkload(wl) => {
                // A new generation number makes ticks of the old workload stale.
                self.workload_gen += 1;
                self.workload = wl;
                if let Some(wl) = &self.workload {
                    let at = self.now + wl.interval;
                    self.push(at, What::Workload(self.workload_gen));
                }
            }
            Action::Client { .. } => unreachable!("handled above"),
            Action::Admin { node, admin } => self.feed(node, Input::Admin(admin)),
            Action::AddNode { zone } => {
                let id = NodeId(self.slots.len() as u32);
                self.cfg.nodes.push(NodeSpec { zone });
                self.slots.push(Slot {
                    node: None,
                    disk: Some(MemStorage::new()),
                    incarnation: 0,
                    next_wake: None,
                });
                let bootstrap = std::mem::replace(&mut self.cfg.bootstrap, false);
                self.start(id);
                self.cfg.bootstrap = bootstrap;
            }
        }
    }

    /// Schedules an action at a later virtual time.
    pub fn schedule(&mut self, at: Time, action: Action) {
        self.push(at.max(self.now), What::Act(Box::new(action)));
    }

    /// Processes the next event; false when nothing is left to do.
    pub fn step(&mut self) -> bool {
        let Some(Reverse(s)) = self.queue.pop() else {
            return false;
        };
        self.now = self.now.max(s.at);
        match s.what {
            What::Deliver(m) => self.deliver(*m),
            What::Wake(id, inc) => {
                let idx = id.0 as usize;
                if self.slots[idx].incarnation == inc && self.slots[idx].node.is_some() {
                    self.slots[idx].next_wake = None;
                    let due = self.slots[idx].node.as_ref().and_then(Node::poll_timeout);
                    if due.is_some_and(|t| t <= self.now) {
                        self.feed(id, Input::Timeout);
                    } else {
                        self.rearm(id);
                    }
                }
            }
            What::Act(a) => self.apply(*a),
            What::Workload(gen) => self.workload_tick(gen),
        }
        true
    }

    fn workload_tick(&mut self, gen: u64) {
        let Some(wl) = self.workload.clone().filter(|_| gen == self.workload_gen) else {
            return;
        };
        let up: Vec<NodeId> = (0..self.slots.len() as u32)
            .map(NodeId)
            .filter(|&n| self.is_up(n))
            .collect();
        if !up.is_empty() {
            let r = self.workload_rng.next_u64();
            let node = up[(r % up.len() as u64) as usize];
            let key = Bytes::from(format!("key{}", (r >> 16) % u64::from(wl.keys.max(1))));
            let op = if ((r >> 40) % 100) < u64::from(wl.write_pct) {
                let n = self.next_req;
                let mut value = format!("v{n}-").into_bytes();
                value.resize(wl.value_len.max(value.len()), b'.');
                let context = self.contexts.get(&key).cloned();
                ClientOp::Put {
                    key,
                    value: Bytes::from(value),
                    context,
                    w: None,
                }
            } else {
                ClientOp::Get { key, r: None }
            };
            self.submit(node, op);
        }
        let at = self.now + wl.interval;
        self.push(at, What::Workload(gen));
    }

    /// Runs every event due up to and including `t`, then sets the clock to `t`.
    pub fn run_until(&mut self, t: Time) {
        while self.queue.peek().is_some_and(|Reverse(s)| s.at <= t) {
            self.step();
        }
        self.now = self.now.max(t);
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Dur) {
        let t = self.now + d;
        self.run_until(t);
    }

    /// Runs until `req` is answered or `limit` passes; returns its outcome.
    pub fn run_until_done(
        &mut self,
        req: ClientReq,
        limit: Dur,
    ) -> Option<Result<ClientReply, RequestError>> {
        let end = self.now + limit;
        while self.clients.get(&req).is_some_and(|c| c.done.is_none()) {
            if self.queue.peek().is_none_or(|Reverse(s)| s.at > end) {
                break;
            }
            self.step();
        }
        self.clients
            .get(&req)?
            .done
            .as_ref()
            .map(|(_, r)| r.clone())
    }

    /// Time of the next queued event.
    pub fn next_event_time(&self) -> Option<Time> {
        self.queue.peek().map(|Reverse(s)| s.at)
    }

    fn slot(&self, id: NodeId) -> Option<&Slot> {
        self.slots.get(id.0 as usize)
    }

    fn start(&mut self, id: NodeId) {
        let idx = id.0 as usize;
        let inc = self.slots[idx].incarnation + 1;
        let disk = self.slots[idx].disk.take().unwrap_or_default();
        let seed = splitmix(self.cfg.seed ^ (u64::from(id.0) << 32) ^ u64::from(inc));
        let ring = self.cfg.bootstrap.then(|| self.ring().clone());
        let info = NodeInfo {
            addr: id.name(),
            zone: self.cfg.nodes[idx].zone.clone(),
        };
        let node = Node::start(
            id,
            info,
            self.cfg.config.clone(),
            ring,
            disk,
            seed,
            self.now,
        );
        let slot = &mut self.slots[idx];
        slot.node = Some(node);
        slot.incarnation = inc;
        slot.next_wake = None;
        self.rearm(id);
    }

    fn crash(&mut self, id: NodeId) {
        if let Some(s) = self.slots.get_mut(id.0 as usize) {
            if let Some(node) = s.node.take() {
                s.disk = Some(node.into_storage());
                s.next_wake = None;
            }
        }
    }

    fn drop_in_flight(&mut self, id: u64) {
        let items = std::mem::take(&mut self.queue).into_vec();
        let mut dropped = None;
        let kept: Vec<Reverse<Scheduled>> = items
            .into_iter()
            .filter(|Reverse(s)| match &s.what {
                What::Deliver(m) if m.id == id && dropped.is_none() => {
                    dropped = Some((m.from, m.to, m.msg.kind(), m.sent));
                    false
                }
                _ => true,
            })
            .collect();
        self.queue = BinaryHeap::from(kept);
        if let Some((from, to, kind, sent)) = dropped {
            self.dropped(Dropped {
                id,
                from,
                to,
                kind,
                sent,
                at: self.now,
                reason: DropReason::Manual,
            });
        }
    }

    fn deliver(&mut self, m: InFlight) {
        let reason = if !self.net.connected(m.from, m.to) {
            Some(DropReason::Cut)
        } else if !self.is_up(m.to) {
            Some(DropReason::NodeDown)
        } else {
            None
        };
        if let Some(reason) = reason {
            let kind = m.msg.kind();
            self.dropped(Dropped {
                id: m.id,
                from: m.from,
                to: m.to,
                kind,
                sent: m.sent,
                at: self.now,
                reason,
            });
            return;
        }
        self.stats.delivered += 1;
        let (from, to) = (m.from, m.to);
        let id = m.id;
        self.hash_delivery(id, from, to, m.fingerprint);
        if let Some(t) = &mut self.trace {
            let record = Record::Deliver {
                id,
                from,
                to,
                msg: m.msg.clone(),
            };
            t.push(TraceEntry {
                at: self.now,
                record,
            });
        }
        self.feed(to, Input::Message { from, msg: m.msg });
    }

    /// Folds one delivery into the trace hash: time, ids, and the fingerprint of
    /// the message's encoded bytes.
    fn hash_delivery(&mut self, id: u64, from: NodeId, to: NodeId, fingerprint: u64) {
        let mut rec = [0u8; 33];
        rec[..8].copy_from_slice(&self.now.0.to_le_bytes());
        rec[8] = 0; // Record::Deliver
        rec[9..17].copy_from_slice(&id.to_le_bytes());
        rec[17..21].copy_from_slice(&from.0.to_le_bytes());
        rec[21..25].copy_from_slice(&to.0.to_le_bytes());
        rec[25..].copy_from_slice(&fingerprint.to_le_bytes());
        self.hash = fnv(self.hash, &rec);
    }

    fn dropped(&mut self, d: Dropped) {
        self.stats.dropped += 1;
        self.record(Record::Drop(d.clone()));
        if self.drops.len() == 256 {
            self.drops.pop_front();
        }
        self.drops.push_back(d);
    }

    /// Hashes a record (and keeps it when recording). Deliveries are hashed by
    /// `deliver` itself.
    fn record(&mut self, record: Record) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.extend_from_slice(&self.now.0.to_le_bytes());
        let buf = postcard::to_extend(&record, buf).unwrap_or_default();
        self.hash = fnv(self.hash, &buf);
        self.buf = buf;
        if let Some(t) = &mut self.trace {
            t.push(TraceEntry {
                at: self.now,
                record,
            });
        }
    }

    /// Hands `input` to node `id` and routes everything it outputs.
    fn feed(&mut self, id: NodeId, input: Input) {
        let idx = id.0 as usize;
        let Some(node) = self.slots[idx].node.as_mut() else {
            return;
        };
        node.handle_input(self.now, input);
        while let Some(out) = self.slots[idx].node.as_mut().and_then(Node::poll_output) {
            match out {
                Output::Send { to, msg } => self.send(id, to, msg),
                Output::Reply { req, result } => {
                    self.record(Record::Reply {
                        node: id,
                        req,
                        result: result.clone(),
                    });
                    if let Some(c) = self.clients.get_mut(&req) {
                        if let Ok(
                            ClientReply::Written { context, .. }
                            | ClientReply::Read { context, .. },
                        ) = &result
                        {
                            self.contexts
                                .entry(c.op.key().clone())
                                .or_default()
                                .merge(context);
                        }
                        c.done = Some((self.now, result));
                    }
                }
                Output::Event(event) => {
                    self.stats.events += 1;
                    self.record(Record::Event { node: id, event });
                }
            }
        }
        self.rearm(id);
    }

    fn rearm(&mut self, id: NodeId) {
        let idx = id.0 as usize;
        let Some(due) = self.slots[idx].node.as_ref().and_then(Node::poll_timeout) else {
            return;
        };
        let slot = &self.slots[idx];
        if slot.next_wake.is_none_or(|w| due < w) {
            let inc = slot.incarnation;
            self.slots[idx].next_wake = Some(due);
            let at = due.max(self.now);
            self.push(at, What::Wake(id, inc));
        }
    }

    fn send(&mut self, from: NodeId, to: NodeId, msg: Message) {
        self.stats.sent += 1;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let buf = postcard::to_extend(&msg, buf).unwrap_or_default();
        self.stats.bytes += buf.len() as u64;
        *self.stats.bytes_by_kind.entry(msg.kind()).or_default() += buf.len() as u64;
        let fingerprint = fnv(FNV_OFFSET, &buf);
        self.buf = buf;
        let id = self.next_msg;
        self.next_msg += 1;
        match self.net.fate(&mut self.rng) {
            Fate::Lost => {
                let kind = msg.kind();
                self.dropped(Dropped {
                    id,
                    from,
                    to,
                    kind,
                    sent: self.now,
                    at: self.now,
                    reason: DropReason::Loss,
                });
            }
            Fate::Deliver(lat) => {
                let last = lat.len() - 1;
                let mut msg = Some(msg);
                for (i, d) in lat.into_iter().enumerate() {
                    let m = if i == last {
                        msg.take().expect("one left")
                    } else {
                        msg.clone().expect("kept")
                    };
                    let at = self.now + d;
                    let f = InFlight {
                        id,
                        from,
                        to,
                        sent: self.now,
                        deliver: at,
                        msg: m,
                        fingerprint,
                    };
                    self.push(at, What::Deliver(Box::new(f)));
                }
            }
        }
    }

    fn push(&mut self, at: Time, what: What) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            what,
        }));
    }
}

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// SplitMix64: derives independent per-node seeds from the master seed.
pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The reference run used by the determinism tests (native and WASM) and the
/// benchmark: 7 nodes in 3 zones, a client workload, and every kind of fault.
/// Returns the world after `secs` virtual seconds.
pub fn reference_run(seed: u64, secs: u64) -> World {
    let mut cfg = SimConfig::new(seed, 7, 3);
    cfg.net = NetConfig {
        latency_min: Dur(1),
        latency_max: Dur(20),
        loss_ppm: 20_000,
        dup_ppm: 10_000,
    };
    let mut w = World::new(cfg).expect("valid reference config");
    let (a, b, c, d) = (NodeId(0), NodeId(1), NodeId(2), NodeId(3));
    w.apply(Action::SetWorkload(Some(Workload::default())));
    w.schedule(Time(2_000), Action::Crash(a));
    w.schedule(
        Time(4_000),
        Action::Partition(vec![vec![b, c], vec![d, NodeId(4), NodeId(5), NodeId(6)]]),
    );
    w.schedule(Time(6_000), Action::Restart(a));
    w.schedule(Time(7_000), Action::Heal);
    w.schedule(Time(8_000), Action::Block { from: d, to: a });
    w.schedule(Time(9_000), Action::Wipe(c));
    w.schedule(Time(10_000), Action::Restart(c));
    w.schedule(Time(11_000), Action::Heal);
    w.run_until(Time(secs * 1000));
    w
}
