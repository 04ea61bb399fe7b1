//! One Ringlab node as a pure state machine.
//!
//! ```text
//!            Input::Client ─┐                  ┌─► Output::Reply
//!   Input::Message(Replica) ┼─► quorum.rs ─────┤   (coordinator: targets, acks,
//!                           │   (coordinator +  │    stand-ins, read repair)
//!                           │    replica side)  ├─► Output::Send(Replica)
//!   Input::Message(Handoff) ┼─► handoff.rs ─────┼─► Output::Send(Handoff)
//!   Input::Message(Detector)┼─► detector.rs ────┼─► Output::Send(Detector)
//!            Input::Timeout ┘   (timers table)  └─► Output::Event
//!                                   │
//!                              Storage::apply (one atomic batch per input,
//!                              committed before any output that depends on it)
//! ```
//!
//! The node never blocks and never fails: problems become events or error replies.

use crate::config::Config;
use crate::detector::{Change, Detector};
use crate::id::{NodeId, ReqId};
use crate::message::{Admin, Event, Input, Message, Output};
use crate::ring::Ring;
use crate::store::{Batch, Op, Storage};
use crate::time::{Dur, Time};
use crate::{handoff, quorum};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Named timers (quinn's `TimerTable` idea). Every handler re-checks the state it
/// depends on, so a stale timer is harmless.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// Send heartbeats, check subjects, probe locally-unreachable peers.
    Heartbeat,
    /// Retry hint delivery, expire old hints.
    HintReplay,
    /// A replica request's first-answer deadline (recruit stand-ins).
    ReplicaCheck(ReqId),
    /// A `ReadFanout::Quorum` read's speculative retry: ask the replicas not asked
    /// yet, long before `ReplicaCheck` would (see `quorum::speculate`).
    Speculate(ReqId),
    /// A request's overall deadline.
    Deadline(ReqId),
    /// A forwarded client request's deadline.
    ForwardDeadline(ReqId),
    /// Has the replica a request was forwarded to accepted it?
    ForwardCheck(ReqId),
    /// Purge a tombstone.
    Purge(ReqId),
    /// Start a Merkle exchange.
    AntiEntropy,
    /// Gossip round.
    Gossip,
}

/// How far the epoch counter jumps on every restart (see [`Node::new`]): far more
/// fresh epochs than a host hands out between two syncs.
pub const RESTART_EPOCH_GAP: u64 = 1 << 20;

const META_EPOCH: &str = "epoch";
const META_EPOCH_FLOOR: &str = "epoch_floor";
const META_RING: &str = "ring";
const META_GENERATION: &str = "generation";
const META_MEMBERSHIP: &str = "membership";

/// How this node presents itself to the cluster.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    /// Peer address, opaque to the core (the simulator uses the node's name).
    pub addr: String,
    /// Zone label.
    pub zone: String,
}

/// A Ringlab node. See the crate docs for the drain contract.
pub struct Node<S: Storage> {
    pub(crate) id: NodeId,
    pub(crate) config: Config,
    pub(crate) rng: ChaCha8Rng,
    pub(crate) storage: S,
    pub(crate) ring: Option<Ring>,
    pub(crate) detector: Detector,
    /// Last epoch handed out (persisted before use).
    pub(crate) epoch: u64,
    /// Epochs below this may not be continued (see `version.rs`).
    pub(crate) epoch_floor: u64,
    next_id: u64,
    pub(crate) coords: BTreeMap<ReqId, quorum::Coord>,
    /// Moving average of replica read round trips, in 1/16 ms (see `quorum::speculate`).
    pub(crate) fetch_rtt: u64,
    /// Replicas a quorum read retried past, until when they are asked last.
    pub(crate) slow_replicas: BTreeMap<NodeId, Time>,
    pub(crate) forwards: BTreeMap<ReqId, quorum::Forwarded>,
    pub(crate) purges: BTreeMap<ReqId, quorum::PendingPurge>,
    pub(crate) handoffs: BTreeMap<NodeId, handoff::InFlight>,
    pub(crate) ae: crate::antientropy::AntiEntropy,
    pub(crate) membership: crate::gossip::Membership,
    pub(crate) gossip_rounds: u64,
    /// Partitions being pulled for the pending ring, with the last key received.
    pub(crate) pulls: BTreeMap<crate::ring::Partition, crate::gossip::PullState>,
    pub(crate) pull_version: u64,
    /// The newest pending ring seen (version, fingerprint). An active ring that was
    /// this node's pending ring first was prepared for: its gaining nodes pulled.
    pub(crate) prepared_ring: Option<(u64, u64)>,
    /// Ownership handoff in progress (see `handoff.rs`); persisted, so it resumes.
    pub(crate) orphan_scan: Option<handoff::OrphanScan>,
    pub(crate) addr: String,
    pub(crate) zone: String,
    pub(crate) generation: u64,
    in_claimant: bool,
    pub(crate) membership_dirty: bool,
    /// Recent changes still being pushed, with the ticks they have left.
    pub(crate) hot: Vec<(crate::gossip::Delta, u8)>,
    /// The monitoring cycle, cached with the membership hash it was computed for.
    /// (membership hash, cycle, my monitors, my subjects).
    pub(crate) cycle_cache: (u64, Vec<NodeId>, Vec<NodeId>, Vec<NodeId>),
    pub(crate) active_cache: (u64, Vec<NodeId>),
    pub(crate) hb_seq: u64,
    /// Indirect probes this node runs for others: ping nonce → (requester, their nonce, subject, sent).
    pub(crate) probing_for: BTreeMap<u64, (NodeId, u64, NodeId, Time)>,
    pub(crate) timers: BTreeSet<(Time, Timer)>,
    outputs: VecDeque<Output>,
    pub(crate) now: Time,
}

impl<S: Storage> Node<S> {
    /// Starts (or restarts) node `id` on `storage`. A ring stored in `storage` wins
    /// over `ring` if it is newer. `seed` seeds the node's only RNG.
    pub fn new(
        id: NodeId,
        config: Config,
        ring: Option<Ring>,
        storage: S,
        seed: u64,
        now: Time,
    ) -> Self {
        let zone = ring
            .as_ref()
            .and_then(|r| r.zone(id))
            .unwrap_or("default")
            .to_owned();
        let info = NodeInfo {
            addr: id.name(),
            zone,
        };
        Self::start(id, info, config, ring, storage, seed, now)
    }

    /// Like [`Node::new`], with an explicit address and zone (a node that is not in
    /// the ring yet and will join).
    pub fn start(
        id: NodeId,
        info: NodeInfo,
        config: Config,
        ring: Option<Ring>,
        storage: S,
        seed: u64,
        now: Time,
    ) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let read_u64 = |name: &str| {
            storage
                .meta(name)
                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                .map(u64::from_be_bytes)
        };
        // A fresh (or wiped) disk starts epochs at a random offset so they cannot
        // collide with epochs this node used before the wipe.
        //
        // A restart continues from a fresh range of epochs, [`RESTART_EPOCH_GAP`]
        // above the last persisted one, and forbids continuing any earlier epoch.
        // Why: a host may release replica writes before its own batch is durable
        // ([`Message::may_precede_durability`]), so a crash can leave dots this node
        // issued on other replicas but not on its own disk; reissuing them would give
        // two different values the same dot. The host syncs at least once per
        // [`RESTART_EPOCH_GAP`] fresh epochs (the server: every driver loop), so no
        // epoch handed out before the crash can be handed out again.
        let (epoch, floor, restarted) = match read_u64(META_EPOCH) {
            Some(e) => {
                let e = e.saturating_add(RESTART_EPOCH_GAP);
                (e, e, true)
            }
            None => {
                let e = u64::from(rng.next_u32()) << 24;
                (e, e, false)
            }
        };
        let stored_ring: Option<Ring> = storage
            .meta(META_RING)
            .and_then(|b| postcard::from_bytes(&b).ok());
        let ring = match (ring, stored_ring) {
            (Some(a), Some(b)) => Some(if b.version() > a.version() { b } else { a }),
            (a, b) => a.or(b),
        };
        let mut node = Node {
            id,
            config,
            rng,
            storage,
            ring,
            detector: Detector::new(),
            epoch,
            epoch_floor: floor,
            next_id: 1,
            coords: BTreeMap::new(),
            fetch_rtt: 0,
            slow_replicas: BTreeMap::new(),
            forwards: BTreeMap::new(),
            purges: BTreeMap::new(),
            handoffs: BTreeMap::new(),
            ae: Default::default(),
            membership: Default::default(),
            gossip_rounds: 0,
            pulls: BTreeMap::new(),
            pull_version: 0,
            prepared_ring: None,
            orphan_scan: None,
            addr: info.addr,
            zone: info.zone,
            generation: 0,
            in_claimant: false,
            membership_dirty: false,
            hot: Vec::new(),
            cycle_cache: (0, Vec::new(), Vec::new(), Vec::new()),
            active_cache: (0, Vec::new()),
            hb_seq: 0,
            probing_for: BTreeMap::new(),
            timers: BTreeSet::new(),
            outputs: VecDeque::new(),
            now,
        };
        let jitter = node.jitter(node.config.heartbeat_interval);
        node.set_timer(now + jitter, Timer::Heartbeat);
        let jitter = node.jitter(node.config.hint_replay_interval);
        node.set_timer(now + jitter, Timer::HintReplay);
        let jitter = node.jitter(node.config.anti_entropy_interval);
        node.set_timer(now + jitter, Timer::AntiEntropy);
        let jitter = node.jitter(node.config.gossip_interval);
        node.set_timer(now + jitter, Timer::Gossip);
        if restarted {
            // Persisted with the new generation, before any output can leave.
            node.commit(vec![
                Op::PutMeta {
                    name: META_EPOCH.into(),
                    value: epoch.to_be_bytes().to_vec(),
                },
                Op::PutMeta {
                    name: META_EPOCH_FLOOR.into(),
                    value: floor.to_be_bytes().to_vec(),
                },
            ]);
        }
        node.init_membership();
        node.sync_trees();
        node.orphan_scan = handoff::OrphanScan::load(&node.storage);
        // Start-up effects (persisting the new generation) are not outputs.
        node.outputs.clear();
        node
    }

    /// Loads the persisted membership, bumps the generation, and enters this
    /// node's own entry; ring members unknown so far get placeholder entries
    /// (generation 0) that any real entry supersedes.
    fn init_membership(&mut self) {
        use crate::gossip::{Delta, Member, Status};
        let stored: Option<crate::gossip::Membership> = self
            .storage
            .meta(META_MEMBERSHIP)
            .and_then(|b| postcard::from_bytes(&b).ok());
        let generation = self
            .storage
            .meta(META_GENERATION)
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(0, u64::from_be_bytes)
            + 1;
        self.generation = generation;
        self.commit(vec![Op::PutMeta {
            name: META_GENERATION.into(),
            value: generation.to_be_bytes().to_vec(),
        }]);
        let mut membership = stored.unwrap_or_default();
        let ring = self.ring.clone();
        let mut delta = Delta {
            ring: ring.clone(),
            ..Delta::default()
        };
        if let Some(r) = &ring {
            for (id, zone) in r.members() {
                if membership.get(id).is_none() && id != self.id {
                    delta.members.push(Member {
                        id,
                        addr: id.name(),
                        zone: zone.to_owned(),
                        generation: 0,
                        version: 0,
                        status: Status::Up,
                        ready: 0,
                    });
                }
            }
        }
        membership.merge(&delta);
        if let Some(r) = membership.ring().cloned() {
            if self.ring.as_ref() != Some(&r) {
                self.ring = Some(r);
            }
        }
        let previous = membership.get(self.id).cloned();
        let me = self.own_member(generation, previous.as_ref());
        membership.merge(&Delta {
            members: vec![me],
            ..Delta::default()
        });
        membership.refresh();
        self.membership = membership;
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The ring this node routes by.
    pub fn ring(&self) -> Option<&Ring> {
        self.ring.as_ref()
    }

    /// Whether an ownership handoff scan is still running (see `handoff.rs`).
    pub fn ownership_handoff_in_progress(&self) -> bool {
        self.orphan_scan.is_some()
    }

    /// The storage (read-only).
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The storage, mutably: a durable driver uses this to make deferred commits
    /// durable (one fsync for many applied batches) before releasing the outputs
    /// that depend on them. Never change the node's data through it.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// Gives the storage back (the simulator keeps it across a crash).
    pub fn into_storage(self) -> S {
        self.storage
    }

    /// This node's view of its peers.
    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    /// Requests this node is coordinating.
    pub fn coordinating(&self) -> usize {
        self.coords.len()
    }

    /// Feeds one input. **After every call, drain [`Node::poll_output`] until it
    /// returns `None`, then re-read [`Node::poll_timeout`].**
    pub fn handle_input(&mut self, now: Time, input: Input) {
        self.now = self.now.max(now);
        match input {
            Input::Message { from, msg } => self.handle_message(from, msg),
            Input::Client { req, op } => self.handle_client(quorum::Origin::Local(req), op),
            Input::Timeout => self.handle_timeout(),
            Input::Admin(admin) => self.handle_admin(admin),
        }
        self.flush_next();
    }

    /// The next output, if any.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When to call `handle_input(Input::Timeout)` next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Time> {
        self.timers.first().map(|(t, _)| *t)
    }

    fn handle_message(&mut self, from: NodeId, msg: Message) {
        if from == self.id {
            self.event(Event::MessageIgnored {
                from,
                reason: "message claims to be from this node".into(),
            });
            return;
        }
        let was_down = self.detector.view(from).is_some_and(|v| v.local_down);
        if let Some(change) = self.detector.heard_from(from, self.now) {
            self.on_reachability(change);
        }
        if was_down {
            self.retract_observation(from);
        }
        match msg {
            Message::Replica(m) => self.handle_replica_msg(from, m),
            Message::Handoff(m) => self.handle_handoff_msg(from, m),
            Message::AntiEntropy(m) => self.handle_anti_entropy_msg(from, m),
            Message::Gossip(m) => self.handle_gossip_msg(from, *m),
            Message::Detector(m) => self.handle_detector_msg(from, m),
        }
    }

    fn handle_timeout(&mut self) {
        while let Some(&(t, timer)) = self.timers.first() {
            if t > self.now {
                break;
            }
            self.timers.remove(&(t, timer));
            match timer {
                Timer::Heartbeat => self.heartbeat_tick(),
                Timer::HintReplay => self.hint_replay_tick(),
                Timer::ReplicaCheck(id) => self.replica_check(id),
                Timer::Speculate(id) => self.speculate(id),
                Timer::Deadline(id) => self.deadline(id),
                Timer::ForwardDeadline(id) => self.forward_deadline(id),
                Timer::ForwardCheck(id) => self.forward_check(id),
                Timer::Purge(id) => self.purge_due(id),
                Timer::AntiEntropy => self.anti_entropy_tick(),
                Timer::Gossip => self.gossip_tick(),
            }
        }
    }

    pub(crate) fn on_reachability(&mut self, change: Change) {
        match change {
            Change::Up(peer) => {
                self.event(Event::PeerReachable { peer });
                // A recovered owner gets its hints right away.
                self.try_deliver_hints(peer);
            }
            Change::Down(peer) => self.event(Event::PeerUnreachable { peer }),
        }
    }

    fn handle_admin(&mut self, admin: Admin) {
        use crate::gossip::Status;
        match admin {
            Admin::SetRing(ring) => {
                let delta = crate::gossip::Delta {
                    ring: Some(ring),
                    ..Default::default()
                };
                self.absorb_admin(delta);
            }
            Admin::Join { contact } => self.admin_join(contact),
            Admin::Leave => self.admin_set_status(self.id, Status::Leaving),
            Admin::Remove { node } => self.admin_set_status(node, Status::Removed),
        }
    }

    /// Installs `ring` as the routing ring if it differs from the current one (the
    /// membership merge has already decided it is the newest).
    pub(crate) fn install_ring(&mut self, ring: Ring) {
        if self.ring.as_ref() == Some(&ring) {
            return;
        }
        let encoded = postcard::to_allocvec(&ring).unwrap_or_default();
        let version = ring.version();
        // Not a transition this node took part in (e.g. the other side of a logical
        // partition won the merge): nobody pulled what it holds, so it hands off.
        // The scan is persisted with the ring, so a crash cannot lose it.
        let prepared = self.prepared_ring == Some((version, ring.fingerprint()));
        let scan = (self.ring.is_some() && !prepared).then(|| handoff::OrphanScan::new(version));
        let mut ops = vec![Op::PutMeta {
            name: META_RING.into(),
            value: encoded,
        }];
        ops.extend(scan.as_ref().map(|s| handoff::OrphanScan::op(Some(s))));
        if self.commit(ops) {
            self.ring = Some(ring);
            if scan.is_some() {
                self.orphan_scan = scan;
            }
            self.event(Event::RingInstalled { version });
            // Only partitions this node newly replicates get a tree built.
            let built = self.sync_trees();
            if built > 0 {
                self.event(Event::MerkleTreesBuilt { count: built });
            }
        }
    }

    /// Whether `peer` is routable in this node's view (self always is).
    pub(crate) fn claimant_guard(&mut self, on: bool) -> bool {
        let was = self.in_claimant;
        self.in_claimant = on;
        was
    }

    pub(crate) fn healthy(&self, peer: NodeId) -> bool {
        peer == self.id || self.detector.is_reachable(peer)
    }

    /// Commits `ops` as one atomic batch. On failure emits an event and returns
    /// false: the caller must then not emit anything that claims the write happened.
    ///
    /// Own copies of keys this node does not replicate get hints for their owners
    /// in the same batch ([`Self::orphan_hints`]), whichever path wrote them.
    pub(crate) fn commit(&mut self, mut ops: Vec<Op>) -> bool {
        if ops.is_empty() {
            return true;
        }
        let parts = self.key_partitions(&ops);
        let updates = self.tree_updates(&ops, &parts);
        let (hints, full) = self.orphan_hints(&ops, &parts);
        ops.extend(hints);
        // An owner's hints are at their limit: the scan from the start waits for
        // room and then hints what did not fit (and re-hints the rest, harmlessly).
        let rescan = (full && !self.orphan_scan.as_ref().is_some_and(|s| s.at_start()))
            .then(|| {
                self.ring
                    .as_ref()
                    .map(|r| handoff::OrphanScan::new(r.version()))
            })
            .flatten();
        ops.extend(rescan.as_ref().map(|s| handoff::OrphanScan::op(Some(s))));
        match self.storage.apply(Batch { ops }) {
            Ok(()) => {
                self.update_trees(updates);
                if rescan.is_some() {
                    self.orphan_scan = rescan;
                }
                true
            }
            Err(e) => {
                self.event(Event::StorageFailed { error: e.0 });
                false
            }
        }
    }

    /// Merges other replicas' versions of keys into this node's own copies (handoff,
    /// anti-entropy, partition pulls) as one batch. Returns how many keys changed,
    /// or `None` if storage failed (then nothing may be acknowledged).
    pub(crate) fn merge_own(
        &mut self,
        items: &[(bytes::Bytes, crate::version::Object)],
    ) -> Option<usize> {
        let mut ops = Vec::new();
        for (key, object) in items {
            let mut mine = self.storage.object(key).unwrap_or_default();
            if mine.merge(object) {
                ops.push(Op::PutObject {
                    key: key.clone(),
                    object: mine,
                });
            }
        }
        let n = ops.len();
        self.commit(ops).then_some(n)
    }

    /// The primaries of `p` other than this node that it can reach: the peers it
    /// compares trees with or pulls from.
    pub(crate) fn reachable_replicas(&self, ring: &Ring, p: crate::ring::Partition) -> Vec<NodeId> {
        ring.primaries(p)
            .iter()
            .copied()
            .filter(|&n| n != self.id && self.detector.is_reachable(n))
            .collect()
    }

    /// Hands out a fresh epoch; the caller must commit the returned op with its write.
    pub(crate) fn fresh_epoch(&mut self) -> (u64, Op) {
        self.epoch += 1;
        (
            self.epoch,
            Op::PutMeta {
                name: META_EPOCH.into(),
                value: self.epoch.to_be_bytes().to_vec(),
            },
        )
    }

    /// Forbids continuing any epoch used so far (after a purge removed records of them).
    pub(crate) fn raise_epoch_floor(&mut self) -> Vec<Op> {
        let (e, op) = self.fresh_epoch();
        self.epoch_floor = e;
        vec![
            op,
            Op::PutMeta {
                name: META_EPOCH_FLOOR.into(),
                value: e.to_be_bytes().to_vec(),
            },
        ]
    }

    pub(crate) fn next_req(&mut self) -> ReqId {
        let id = ReqId(self.next_id);
        self.next_id += 1;
        id
    }

    pub(crate) fn set_timer(&mut self, at: Time, timer: Timer) {
        self.timers.insert((at, timer));
    }

    pub(crate) fn cancel_timer(&mut self, at: Time, timer: Timer) {
        self.timers.remove(&(at, timer));
    }

    /// Uniform in [interval/2, interval): desynchronises nodes started together.
    pub(crate) fn jitter(&mut self, interval: Dur) -> Dur {
        let half = interval.as_millis() / 2;
        Dur(half + self.rng.next_u64() % half.max(1))
    }

    pub(crate) fn send(&mut self, to: NodeId, msg: Message) {
        debug_assert_ne!(to, self.id, "a node never sends to itself");
        self.outputs.push_back(Output::Send { to, msg });
    }

    pub(crate) fn emit(&mut self, out: Output) {
        self.outputs.push_back(out);
    }

    pub(crate) fn event(&mut self, e: Event) {
        self.outputs.push_back(Output::Event(e));
    }
}
