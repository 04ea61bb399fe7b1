//! Gossip membership: who is in the cluster, in which state, and which ring is
//! active — spread without any special node except configured seeds.
//!
//! ## State and merge
//! [`Membership`] holds one [`Member`] entry per node (address, zone, generation —
//! bumped on every restart and persisted —, a version bumped on every change of
//! the entry, status, and the pending ring version whose data the node has pulled),
//! the active [`Ring`] and, during a join or leave, the pending one. Merging is a
//! join of versions: per entry the higher (generation, version) wins; per ring the
//! higher (version, fingerprint) wins. It is commutative, associative and idempotent
//! (proptested below), so any gossip order converges.
//!
//! Heartbeats do not live in this state: they travel on the failure detector's own
//! path (`detector.rs`). That keeps the gossiped state constant in a steady cluster,
//! so a push-pull round costs one 8-byte state hash.
//!
//! ## Dissemination
//! * Push-pull (the safety net): every `gossip_interval` a node sends its state hash
//!   to a random live peer; only if the hashes differ do they exchange digests
//!   (id → generation, version) and then exactly the entries the other lacks,
//!   bounded per message (scuttlebutt-style deltas).
//! * Rumor mongering (speed): a fresh change is pushed at once to `gossip_fanout`
//!   random peers with a hop budget; a receiver that learns something new forwards
//!   it with one hop less.
//! * Seeds: when the random peer was not a seed, a node also syncs with a seed every
//!   `seed_gossip_every` rounds. That is what merges logically partitioned rings
//!   (SCENARIOS S7): without seeds, two rings whose members never met stay split.
//!
//! ## Ring changes (explicit only)
//! Only admin inputs change ownership: `join` (a node asks a contact), `leave`, and
//! `remove` (for a dead node). The *claimant* — the lowest-id `up` member reachable
//! in a node's view — turns them into a pending ring with the claim algorithm. Every
//! node that gains partitions in the pending ring pulls their data from current
//! replicas, then reports `ready`; coordinators send writes to pending owners too,
//! so nothing written during the transfer is missed. When every gaining node is
//! ready, the claimant activates the pending ring. A crash never moves partitions.

use crate::id::NodeId;
use crate::message::{Event, Message};
use crate::node::{Node, Timer};
use crate::ring::{Partition, Ring};
use crate::store::{Op, Storage};
use crate::version::Object;
use bytes::Bytes;
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A member's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Status {
    /// Asked to join; not yet an owner.
    Joining,
    /// An owner (or ready to become one).
    Up,
    /// Asked to leave; its partitions are being handed over.
    Leaving,
    /// Left after handing its partitions over.
    Left,
    /// Removed by an administrator (a dead node); its partitions were reassigned.
    Removed,
}

impl Status {
    /// Lower-case name, as the API and UI show it.
    pub fn name(self) -> &'static str {
        match self {
            Status::Joining => "joining",
            Status::Up => "up",
            Status::Leaving => "leaving",
            Status::Left => "left",
            Status::Removed => "removed",
        }
    }

    /// Whether the member takes part in the cluster (gossips, may own data).
    pub fn is_active(self) -> bool {
        matches!(self, Status::Joining | Status::Up | Status::Leaving)
    }
}

/// One node as the cluster knows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// Id.
    pub id: NodeId,
    /// Peer address (opaque to the core).
    pub addr: String,
    /// Zone label.
    pub zone: String,
    /// Bumped on every restart.
    pub generation: u64,
    /// Bumped on every change of this entry within a generation.
    pub version: u64,
    /// Lifecycle state.
    pub status: Status,
    /// The pending ring version whose partitions this node has pulled.
    pub ready: u64,
}

impl Member {
    fn key(&self) -> (u64, u64) {
        (self.generation, self.version)
    }
}

/// A monitor's published verdict about one subject (see `detector.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Observation {
    /// The observer's generation when it published this.
    pub generation: u64,
    /// The observer's counter within that generation.
    pub counter: u64,
    /// True: the observer confirmed the subject unreachable.
    pub unreachable: bool,
}

impl Observation {
    fn key(&self) -> (u64, u64) {
        (self.generation, self.counter)
    }
}

/// The gossiped state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    members: BTreeMap<NodeId, Member>,
    ring: Option<Ring>,
    pending: Option<Ring>,
    /// (observer, subject) → verdict.
    observations: BTreeMap<(NodeId, NodeId), Observation>,
    /// Derived: ring keys and the state hash, recomputed after every change (a
    /// push-pull round compares hashes, so they must be cheap to read).
    #[serde(skip)]
    cache: CacheCell,
}

/// Derived data never takes part in equality: two equal states are equal whether
/// or not their caches were computed yet.
#[derive(Clone, Debug, Default)]
struct CacheCell(Option<Cache>);

impl PartialEq for CacheCell {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for CacheCell {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cache {
    ring: Option<(u64, u64)>,
    pending: Option<(u64, u64)>,
    /// XOR of the entry hashes of every member and observation: updated in O(1)
    /// per changed entry, so a 1000-member state does not re-hash on every merge.
    entries: u64,
}

use crate::sim::splitmix;

fn member_hash(id: NodeId, generation: u64, version: u64) -> u64 {
    splitmix(splitmix(splitmix(u64::from(id.0) ^ 0x4d45_4d42) ^ generation) ^ version)
}

fn observation_hash(k: (NodeId, NodeId), generation: u64, counter: u64) -> u64 {
    let pair = (u64::from(k.0 .0) << 32) | u64::from(k.1 .0);
    splitmix(splitmix(splitmix(pair ^ 0x4f42_5345) ^ generation) ^ counter)
}

fn ring_hash(k: Option<(u64, u64)>) -> u64 {
    k.map_or(0x6e6f_6e65, |(v, f)| splitmix(splitmix(v) ^ f))
}

/// A compact summary used to find what a peer lacks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// id → (generation, version).
    pub members: Vec<(NodeId, u64, u64)>,
    /// Active ring (version, fingerprint).
    pub ring: Option<(u64, u64)>,
    /// Pending ring (version, fingerprint).
    pub pending: Option<(u64, u64)>,
    /// (observer, subject) → (generation, counter).
    pub observations: Vec<((NodeId, NodeId), u64, u64)>,
}

/// Entries and rings to merge.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// Member entries.
    pub members: Vec<Member>,
    /// Active ring, if the receiver lacks it.
    pub ring: Option<Ring>,
    /// Pending ring, if the receiver lacks it.
    pub pending: Option<Ring>,
    /// Observations the receiver lacks.
    pub observations: Vec<((NodeId, NodeId), Observation)>,
}

impl Delta {
    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
            && self.ring.is_none()
            && self.pending.is_none()
            && self.observations.is_empty()
    }
}

/// Gossip messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// Push-pull, step 1: my state hash.
    Syn {
        /// Hash of the sender's state.
        hash: u64,
    },
    /// Step 2 (only if the hashes differ): my digest.
    Digest(Digest),
    /// Step 3/4: what you lack; `request` asks for what I lack.
    Delta {
        /// Entries the receiver lacks.
        delta: Delta,
        /// The sender's digest, if it wants the receiver's newer entries back.
        request: Option<Digest>,
    },
    /// Rumor mongering: a fresh change, forwarded while `hops` lasts.
    Rumor {
        /// The change.
        delta: Delta,
        /// Remaining forwarding hops.
        hops: u8,
    },
    /// A node asks to join through this contact.
    Join {
        /// Its entry.
        member: Member,
    },
    /// A gaining node asks a current replica for a partition's data.
    Pull {
        /// Partition.
        partition: Partition,
        /// Keys after this one, in the partition's Merkle tree order (bucket, then
        /// key: [`crate::merkle::MerkleTree::iter_after`]).
        after: Option<Bytes>,
    },
    /// A page of a partition's data.
    PullData {
        /// Partition.
        partition: Partition,
        /// The request's cursor, echoed: the puller goes on only with the answer
        /// to the request it has outstanding, not with a late duplicate of it.
        after: Option<Bytes>,
        /// The last key this page covers in tree order, whether or not the source
        /// still stored its object: the next request's cursor. (A page of keys
        /// all missing from storage would otherwise carry no cursor and stall.)
        last: Option<Bytes>,
        /// Keys and versions.
        items: Vec<(Bytes, Object)>,
        /// Last page.
        done: bool,
    },
}

/// A partition this node is pulling: its cursor, and the request outstanding
/// (which replica was asked, and when).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PullState {
    after: Option<Bytes>,
    asked: Option<(NodeId, crate::time::Time)>,
}

/// Fingerprint of a ring (FNV-1a of its encoding): the tie-break between two rings
/// of the same version made by different claimants.
pub fn ring_fingerprint(r: &Ring) -> u64 {
    r.fingerprint()
}

/// (version, fingerprint): the order in which rings supersede each other.
type RingKey = (u64, u64);

fn ring_key(r: &Option<Ring>) -> Option<(u64, u64)> {
    r.as_ref().map(key_of)
}

fn key_of(r: &Ring) -> (u64, u64) {
    (r.version(), ring_fingerprint(r))
}

const MAX_DELTA_MEMBERS: usize = 256;

impl Membership {
    /// Every entry, ascending by id.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// One entry.
    pub fn get(&self, id: NodeId) -> Option<&Member> {
        self.members.get(&id)
    }

    /// The active ring.
    pub fn ring(&self) -> Option<&Ring> {
        self.ring.as_ref()
    }

    /// The pending ring, during a join or leave.
    pub fn pending(&self) -> Option<&Ring> {
        self.pending.as_ref()
    }

    /// Hash of the whole state (equal states ⇔ equal hashes, up to collisions).
    pub fn hash(&self) -> u64 {
        let (entries, ring, pending) = match &self.cache.0 {
            Some(c) => (c.entries, c.ring, c.pending),
            None => (
                self.entries_from_scratch(),
                ring_key(&self.ring),
                ring_key(&self.pending),
            ),
        };
        splitmix(entries ^ splitmix(ring_hash(ring) ^ ring_hash(pending).rotate_left(29)))
    }

    fn entries_from_scratch(&self) -> u64 {
        let m = self
            .members
            .values()
            .fold(0, |h, m| h ^ member_hash(m.id, m.generation, m.version));
        self.observations.iter().fold(m, |h, (k, o)| {
            h ^ observation_hash(*k, o.generation, o.counter)
        })
    }

    fn ring_keys(&self) -> (Option<RingKey>, Option<RingKey>) {
        match &self.cache.0 {
            Some(c) => (c.ring, c.pending),
            None => (ring_key(&self.ring), ring_key(&self.pending)),
        }
    }

    /// Recomputes the derived cache (after a change or a deserialization).
    pub(crate) fn refresh(&mut self) {
        self.refresh_with(ring_key(&self.ring), ring_key(&self.pending));
    }

    fn refresh_with(&mut self, ring: Option<(u64, u64)>, pending: Option<(u64, u64)>) {
        let entries = self.entries_from_scratch();
        self.cache.0 = Some(Cache {
            ring,
            pending,
            entries,
        });
    }

    /// The digest of this state.
    pub fn digest(&self) -> Digest {
        Digest {
            members: self
                .members
                .values()
                .map(|m| (m.id, m.generation, m.version))
                .collect(),
            ring: self.ring_keys().0,
            pending: self.ring_keys().1,
            observations: self
                .observations
                .iter()
                .map(|(k, o)| (*k, o.generation, o.counter))
                .collect(),
        }
    }

    /// Published verdicts, by (observer, subject).
    pub fn observations(&self) -> impl Iterator<Item = (&(NodeId, NodeId), &Observation)> {
        self.observations.iter()
    }

    /// What a peer with digest `d` lacks (bounded).
    pub fn delta_for(&self, d: &Digest) -> Delta {
        let theirs: BTreeMap<NodeId, (u64, u64)> =
            d.members.iter().map(|&(id, g, v)| (id, (g, v))).collect();
        let members = self
            .members
            .values()
            .filter(|m| theirs.get(&m.id).is_none_or(|k| m.key() > *k))
            .take(MAX_DELTA_MEMBERS)
            .cloned()
            .collect();
        let (rk, pk) = self.ring_keys();
        let newer = |mine: &Option<Ring>, k: Option<(u64, u64)>, theirs: Option<(u64, u64)>| {
            (k.is_some() && k > theirs).then(|| mine.clone()).flatten()
        };
        let theirs_obs: BTreeMap<(NodeId, NodeId), (u64, u64)> = d
            .observations
            .iter()
            .map(|&(k, g, c)| (k, (g, c)))
            .collect();
        let observations = self
            .observations
            .iter()
            .filter(|(k, o)| theirs_obs.get(k).is_none_or(|t| o.key() > *t))
            .map(|(k, o)| (*k, *o))
            .collect();
        Delta {
            members,
            ring: newer(&self.ring, rk, d.ring),
            pending: newer(&self.pending, pk, d.pending),
            observations,
        }
    }

    /// Whether a peer with digest `d` has anything this state lacks.
    pub fn lacks_from(&self, d: &Digest) -> bool {
        d.members
            .iter()
            .any(|&(id, g, v)| self.members.get(&id).is_none_or(|m| (g, v) > m.key()))
            || d.ring > self.ring_keys().0
            || d.pending > self.ring_keys().1
            || d.observations
                .iter()
                .any(|&(k, g, c)| self.observations.get(&k).is_none_or(|o| (g, c) > o.key()))
    }

    /// Merges `delta`; returns the part that was new here (to pass on as a rumor).
    pub fn merge(&mut self, delta: &Delta) -> Delta {
        let mut fresh = Delta::default();
        if self.cache.0.is_none() {
            self.refresh();
        }
        let (mut rk, mut pk) = self.ring_keys();
        let mut entries = self.cache.0.map_or(0, |c| c.entries);
        for m in &delta.members {
            let old = self.members.get(&m.id);
            if old.is_none_or(|old| m.key() > old.key()) {
                if let Some(old) = old {
                    entries ^= member_hash(old.id, old.generation, old.version);
                }
                entries ^= member_hash(m.id, m.generation, m.version);
                self.members.insert(m.id, m.clone());
                fresh.members.push(m.clone());
            }
        }
        if let Some(r) = &delta.ring {
            let k = Some(key_of(r));
            if k > rk {
                self.ring = Some(r.clone());
                rk = k;
                fresh.ring = Some(r.clone());
            }
        }
        if let Some(r) = &delta.pending {
            let k = Some(key_of(r));
            if k > pk {
                self.pending = Some(r.clone());
                pk = k;
                fresh.pending = Some(r.clone());
            }
        }
        for (k, o) in &delta.observations {
            let old = self.observations.get(k);
            if old.is_none_or(|old| o.key() > old.key()) {
                if let Some(old) = old {
                    entries ^= observation_hash(*k, old.generation, old.counter);
                }
                entries ^= observation_hash(*k, o.generation, o.counter);
                self.observations.insert(*k, *o);
                fresh.observations.push((*k, *o));
            }
        }
        // A pending ring no newer than the active one is done (or superseded).
        if let (Some(p), Some(a)) = (&self.pending, &self.ring) {
            if p.version() <= a.version() {
                self.pending = None;
                pk = None;
            }
        }
        self.cache.0 = Some(Cache {
            ring: rk,
            pending: pk,
            entries,
        });
        fresh
    }

    /// Publishes this node's verdict about `subject`.
    pub(crate) fn observe(
        &mut self,
        observer: NodeId,
        generation: u64,
        subject: NodeId,
        unreachable: bool,
    ) -> Delta {
        let counter = self
            .observations
            .get(&(observer, subject))
            .filter(|o| o.generation == generation)
            .map_or(1, |o| o.counter + 1);
        let o = Observation {
            generation,
            counter,
            unreachable,
        };
        self.merge(&Delta {
            observations: vec![((observer, subject), o)],
            ..Delta::default()
        })
    }

    /// Replaces an entry with a newer one made locally (by its owner or an admin).
    fn put_local(&mut self, m: Member) -> Delta {
        self.merge(&Delta {
            members: vec![m],
            ..Delta::default()
        })
    }
}

impl<S: Storage> Node<S> {
    /// The gossiped membership as this node sees it.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Gossip rounds this node has started since it was (re)started (for metrics).
    pub fn gossip_rounds(&self) -> u64 {
        self.gossip_rounds
    }

    /// Peers to gossip with: active members other than self.
    pub(crate) fn gossip_peers(&mut self) -> Vec<NodeId> {
        let me = self.id;
        self.active_members()
            .into_iter()
            .filter(|&id| id != me)
            .collect()
    }

    /// Active members, ascending (cached per membership state).
    pub(crate) fn active_members(&mut self) -> Vec<NodeId> {
        let h = self.membership.hash();
        if self.active_cache.0 != h || self.active_cache.1.is_empty() {
            let ids = self
                .membership
                .members()
                .filter(|m| m.status.is_active())
                .map(|m| m.id)
                .collect();
            self.active_cache = (h, ids);
        }
        self.active_cache.1.clone()
    }

    pub(crate) fn random_of(&mut self, from: &[NodeId]) -> Option<NodeId> {
        (!from.is_empty()).then(|| from[(self.rng.next_u64() % from.len() as u64) as usize])
    }

    pub(crate) fn gossip_tick(&mut self) {
        if std::mem::take(&mut self.membership_dirty) {
            let encoded = postcard::to_allocvec(&self.membership).unwrap_or_default();
            self.commit(vec![Op::PutMeta {
                name: "membership".into(),
                value: encoded,
            }]);
        }
        let next = self.now
            + self.jitter(self.config.gossip_interval)
            + crate::time::Dur(self.config.gossip_interval.as_millis() / 2);
        self.set_timer(next, Timer::Gossip);
        let peers: Vec<NodeId> = self
            .gossip_peers()
            .into_iter()
            .filter(|p| self.detector.is_reachable(*p))
            .collect();
        let hash = self.membership.hash();
        let chosen = self.random_of(&peers);
        if let Some(peer) = chosen {
            self.send(peer, Message::gossip(Msg::Syn { hash }));
        }
        self.gossip_rounds += 1;
        let seeds: Vec<NodeId> = self
            .config
            .seeds
            .iter()
            .copied()
            .filter(|&s| s != self.id)
            .collect();
        let every = self.config.seed_gossip_every.max(1);
        if chosen.is_none_or(|p| !seeds.contains(&p))
            && (chosen.is_none() || self.gossip_rounds % every == 0)
        {
            if let Some(seed) = self.random_of(&seeds) {
                self.send(seed, Message::gossip(Msg::Syn { hash }));
            }
        }
        self.run_claimant();
        self.ensure_pulls();
        self.continue_pulls();
    }

    /// Starts pulling for the pending ring once both rings are known here.
    fn ensure_pulls(&mut self) {
        let started = self
            .membership
            .pending()
            .is_none_or(|p| p.version() == self.pull_version);
        if !started && self.membership.ring().is_some() {
            self.start_pulls();
        }
    }

    pub(crate) fn handle_gossip_msg(&mut self, from: NodeId, msg: Msg) {
        match msg {
            Msg::Syn { hash } => {
                if hash != self.membership.hash() {
                    let d = self.membership.digest();
                    self.send(from, Message::gossip(Msg::Digest(d)));
                }
            }
            Msg::Digest(d) => {
                let delta = self.membership.delta_for(&d);
                let request = self
                    .membership
                    .lacks_from(&d)
                    .then(|| self.membership.digest());
                if !delta.is_empty() || request.is_some() {
                    self.send(from, Message::gossip(Msg::Delta { delta, request }));
                }
            }
            Msg::Delta { delta, request } => {
                self.absorb(delta, None);
                if let Some(d) = request {
                    let back = self.membership.delta_for(&d);
                    if !back.is_empty() {
                        self.send(
                            from,
                            Message::gossip(Msg::Delta {
                                delta: back,
                                request: None,
                            }),
                        );
                    }
                }
            }
            Msg::Rumor { delta, hops } => self.absorb(delta, Some(hops)),
            Msg::Join { member } => {
                self.absorb(
                    Delta {
                        members: vec![member],
                        ..Delta::default()
                    },
                    None,
                );
                // Hand the joiner everything we know.
                let all = self.membership.delta_for(&Digest::default());
                self.send(
                    from,
                    Message::gossip(Msg::Delta {
                        delta: all,
                        request: None,
                    }),
                );
            }
            Msg::Pull { partition, after } => self.serve_pull(from, partition, after),
            Msg::PullData {
                partition,
                after,
                last,
                items,
                done,
            } => self.absorb_pull(from, partition, after, last, items, done),
        }
    }

    /// Merges gossip; a change is persisted, applied and spread as a rumor
    /// (`hops`: the rumor's remaining budget, or a fresh budget for other paths).
    fn absorb(&mut self, delta: Delta, hops: Option<u8>) {
        let fresh = self.membership.merge(&delta);
        if fresh.is_empty() {
            return;
        }
        let hops = hops.map_or(self.config.rumor_hops, |h| h.saturating_sub(1));
        self.after_membership_change(fresh, hops);
    }

    /// An admin input's change, merged like gossip.
    pub(crate) fn absorb_admin(&mut self, delta: Delta) {
        self.absorb(delta, None);
    }

    /// Publishes this node's verdict about `subject` and spreads it.
    pub(crate) fn publish_observation(&mut self, subject: NodeId, unreachable: bool) {
        let fresh = self
            .membership
            .observe(self.id, self.generation, subject, unreachable);
        if !fresh.is_empty() {
            let hops = self.config.rumor_hops;
            self.after_membership_change(fresh, hops);
        }
    }

    /// A local change of this node's own entry (or an admin's change of another's).
    pub(crate) fn change_member(&mut self, m: Member) {
        let fresh = self.membership.put_local(m);
        if !fresh.is_empty() {
            let hops = self.config.rumor_hops;
            self.after_membership_change(fresh, hops);
        }
    }

    fn after_membership_change(&mut self, fresh: Delta, hops: u8) {
        for m in &fresh.members {
            self.event(Event::MemberStateChanged {
                member: m.id,
                status: m.status.name().into(),
                generation: m.generation,
            });
        }
        // Persisted at the next gossip tick (the generation is persisted at start;
        // everything else here can be re-learned from peers).
        self.membership_dirty = true;
        if fresh.ring.is_some() {
            if let Some(r) = self.membership.ring().cloned() {
                self.install_ring(r);
            }
        }
        // Recorded after the install: a ring counts as prepared for only if this
        // node knew it as pending before it became active (a merge can bring another
        // cluster's ring together with that cluster's pending copy of it).
        if let Some(p) = self.membership.pending() {
            self.prepared_ring = Some((p.version(), p.fingerprint()));
        }
        if !fresh.observations.is_empty() || !fresh.members.is_empty() {
            self.recompute_remote_views();
        }
        if fresh.pending.is_some() || fresh.ring.is_some() {
            self.sync_trees();
        }
        self.ensure_pulls();
        self.update_own_status();
        // Infectious for a few more ticks: under loss a single push is not enough.
        if self.config.rumor_rounds > 0 {
            if self.hot.len() >= 32 {
                self.hot.remove(0);
            }
            self.hot.push((fresh.clone(), self.config.rumor_rounds));
        }
        if hops > 0 {
            let peers = self.gossip_peers();
            for _ in 0..self.config.gossip_fanout.min(peers.len()) {
                if let Some(p) = self.random_of(&peers) {
                    self.send(
                        p,
                        Message::gossip(Msg::Rumor {
                            delta: fresh.clone(),
                            hops,
                        }),
                    );
                }
            }
        }
        self.run_claimant();
    }

    /// Pushes recent changes again to `gossip_fanout` random peers (called every
    /// heartbeat tick while they are hot). Receivers that learn something from them
    /// become infectious in turn; those that knew it already stay quiet.
    pub(crate) fn push_hot_rumors(&mut self) {
        if self.hot.is_empty() {
            return;
        }
        let mut combined = Delta::default();
        for (d, rounds) in self.hot.iter_mut() {
            combined.members.extend(d.members.iter().cloned());
            combined.observations.extend(d.observations.iter().cloned());
            if d.ring.is_some() {
                combined.ring = d.ring.clone();
            }
            if d.pending.is_some() {
                combined.pending = d.pending.clone();
            }
            *rounds -= 1;
        }
        self.hot.retain(|(_, r)| *r > 0);
        let peers = self.gossip_peers();
        for _ in 0..self.config.gossip_fanout.min(peers.len()) {
            if let Some(p) = self.random_of(&peers) {
                let msg = Msg::Rumor {
                    delta: combined.clone(),
                    hops: 0,
                };
                self.send(p, Message::gossip(msg));
            }
        }
    }

    /// This node's own entry follows the active ring: a joiner that became an owner is
    /// `up`, a leaver that no longer owns anything has `left`.
    fn update_own_status(&mut self) {
        let Some(me) = self.membership.get(self.id).cloned() else {
            return;
        };
        let in_ring = self.membership.ring().is_some_and(|r| r.contains(self.id));
        let status = match me.status {
            Status::Joining if in_ring => Status::Up,
            Status::Leaving if !in_ring && self.membership.ring().is_some() => Status::Left,
            s => s,
        };
        if status != me.status {
            self.change_member(Member {
                status,
                version: me.version + 1,
                ..me
            });
        }
    }

    /// The claimant turns admin requests into a pending ring and activates it when
    /// every gaining node has pulled its data.
    fn run_claimant(&mut self) {
        if self.claimant_guard(true) {
            return;
        }
        self.claim();
        self.claimant_guard(false);
    }

    fn claim(&mut self) {
        let me = self.id;
        let claimant = self
            .membership
            .members()
            .filter(|m| m.status == Status::Up && (m.id == me || self.detector.is_reachable(m.id)))
            .map(|m| m.id)
            .next();
        if claimant != Some(me) {
            return;
        }
        let Some(active) = self.membership.ring() else {
            return;
        };
        // Version the next plan must outrank: the pending ring's when that plan is
        // abandoned, the active ring's otherwise.
        let mut floor = active.version();
        if let Some(pending) = self.membership.pending() {
            let all_ready = gaining(active, pending).iter().all(|id| {
                self.membership
                    .get(*id)
                    .is_some_and(|m| m.ready >= pending.version())
            });
            if all_ready {
                let pending = pending.clone();
                self.event(Event::RingActivated {
                    version: pending.version(),
                });
                let delta = Delta {
                    ring: Some(pending),
                    ..Delta::default()
                };
                self.absorb(delta, None);
                return;
            }
            // A plan waits for every gaining node to pull. One that names a member
            // taken out since (it died mid-pull and an administrator removed it)
            // would wait forever: plan again from the active ring instead. Writes
            // sent to pending owners were never counted toward W, so dropping the
            // plan loses nothing; nodes that already pulled for it pull again.
            let abandoned = pending.members().any(|(id, _)| {
                self.membership
                    .get(id)
                    .is_some_and(|m| matches!(m.status, Status::Removed | Status::Left))
            });
            if !abandoned {
                return;
            }
            floor = pending.version();
        }
        let wanted = self.membership.members().any(|m| match m.status {
            Status::Joining | Status::Up => !active.contains(m.id),
            Status::Leaving | Status::Left | Status::Removed => active.contains(m.id),
        });
        if !wanted && floor == active.version() {
            return;
        }
        let active = active.clone();
        let mut next = active.clone();
        for m in self.membership.members() {
            let result = match m.status {
                Status::Joining | Status::Up if !next.contains(m.id) => {
                    next.with_joined(m.id, &m.zone)
                }
                Status::Leaving | Status::Left | Status::Removed if next.contains(m.id) => {
                    next.with_removed(m.id)
                }
                _ => continue,
            };
            if let Ok(r) = result {
                next = r;
            }
        }
        if floor > active.version() && next.version() <= floor {
            // Replanning: possibly the active ownership itself (the abandoned plan's
            // only change was the removed member), which then activates at once.
            next = next.with_version(floor + 1);
        }
        if next.version() > active.version() {
            self.event(Event::RingProposed {
                version: next.version(),
                moved: active.moved_partitions(&next),
            });
            let delta = Delta {
                pending: Some(next),
                ..Delta::default()
            };
            self.absorb(delta, None);
        }
    }

    /// Starts pulling every partition this node gains in the pending ring.
    fn start_pulls(&mut self) {
        let (Some(active), Some(pending)) = (
            self.membership.ring().cloned(),
            self.membership.pending().cloned(),
        ) else {
            return;
        };
        self.pulls.clear();
        self.pull_version = pending.version();
        let mine = active.replicated_by(self.id);
        for p in pending.replicated_by(self.id) {
            if !mine.contains(&p) {
                self.pulls.insert(p, PullState::default());
            }
        }
        self.continue_pulls();
    }

    /// Keeps `pull_concurrency` partitions being pulled: asks again for those whose
    /// last request went unanswered for `request_timeout` (the page or its source
    /// was lost), and starts the next ones; when none is left, reports `ready` for
    /// the pending version. A partition with no reachable source waits without
    /// taking a slot.
    fn continue_pulls(&mut self) {
        let Some(pv) = self.membership.pending().map(Ring::version) else {
            return;
        };
        if pv != self.pull_version {
            return;
        }
        if self.pulls.is_empty() {
            let me = self.membership.get(self.id).cloned();
            if let Some(me) = me.filter(|m| m.ready < pv) {
                self.change_member(Member {
                    ready: pv,
                    version: me.version + 1,
                    ..me
                });
            }
            return;
        }
        let Some(active) = self.membership.ring().cloned() else {
            return;
        };
        let limit = self.config.pull_concurrency.max(1);
        let timeout = self.config.request_timeout;
        let mut busy = 0;
        let mut idle = Vec::new();
        let mut stale = Vec::new();
        for (&p, st) in &self.pulls {
            match st.asked {
                Some((_, at)) if self.now.since(at) < timeout => busy += 1,
                Some(_) => stale.push(p),
                None => idle.push(p),
            }
        }
        for p in stale.into_iter().chain(idle) {
            if busy >= limit {
                break;
            }
            if self.ask_pull(&active, p) {
                busy += 1;
            }
        }
    }

    /// Asks a random reachable replica of `p` in `active` for the page after the
    /// partition's cursor. False if no replica is reachable.
    fn ask_pull(&mut self, active: &Ring, p: Partition) -> bool {
        let sources = self.reachable_replicas(active, p);
        let Some(src) = self.random_of(&sources) else {
            if let Some(st) = self.pulls.get_mut(&p) {
                st.asked = None;
            }
            return false;
        };
        let Some(st) = self.pulls.get_mut(&p) else {
            return false;
        };
        st.asked = Some((src, self.now));
        let after = st.after.clone();
        self.send(
            src,
            Message::gossip(Msg::Pull {
                partition: p,
                after,
            }),
        );
        true
    }

    fn serve_pull(&mut self, from: NodeId, p: Partition, after: Option<Bytes>) {
        self.flush_partition(p);
        let Some(tree) = self.ae.trees.get(&p) else {
            return;
        };
        // Pages follow the tree's own order (bucket, then key), so each costs its
        // length, not a sort of the whole partition.
        let page = self.config.hint_batch.max(1);
        let mut keys: Vec<Vec<u8>> = tree
            .iter_after(after.as_deref())
            .take(page + 1)
            .map(|(k, _)| k.to_vec())
            .collect();
        let done = keys.len() <= page;
        keys.truncate(page);
        let last = keys.last().map(|k| Bytes::copy_from_slice(k));
        let items: Vec<(Bytes, Object)> = keys
            .into_iter()
            .filter_map(|k| self.storage.object(&k).map(|o| (Bytes::from(k), o)))
            .collect();
        self.send(
            from,
            Message::gossip(Msg::PullData {
                partition: p,
                after,
                last,
                items,
                done,
            }),
        );
    }

    fn absorb_pull(
        &mut self,
        from: NodeId,
        p: Partition,
        after: Option<Bytes>,
        last: Option<Bytes>,
        items: Vec<(Bytes, Object)>,
        done: bool,
    ) {
        let Some(st) = self.pulls.get(&p) else {
            return;
        };
        // Only the answer to the request outstanding goes on with the pull: a late
        // answer (to a request asked again after a timeout, from another source or
        // the same one) is merged, since merging is idempotent, but does not start
        // a second chain of requests.
        let current = st.asked.is_some_and(|(src, _)| src == from) && st.after == after;
        if self.merge_own(&items).is_none() {
            return;
        }
        self.event(Event::PartitionPulled {
            from,
            partition: p.0,
            keys: items.len(),
            done,
        });
        if !current {
            return;
        }
        if done {
            self.pulls.remove(&p);
            // A slot is free: the next partition starts (or `ready` is reported).
            self.continue_pulls();
        } else if let Some(k) = last {
            let st = self.pulls.entry(p).or_default();
            st.after = Some(k.clone());
            st.asked = Some((from, self.now));
            self.send(
                from,
                Message::gossip(Msg::Pull {
                    partition: p,
                    after: Some(k),
                }),
            );
        }
        // A page that is neither the last nor has a cursor is malformed: the
        // request stays outstanding and is asked again after `request_timeout`.
    }

    /// Admin: join the cluster through `contact`.
    pub(crate) fn admin_join(&mut self, contact: NodeId) {
        let Some(me) = self.membership.get(self.id).cloned() else {
            return;
        };
        self.send(contact, Message::gossip(Msg::Join { member: me }));
    }

    /// Admin: change the status of `id` (this node's own entry, or a dead node's).
    pub(crate) fn admin_set_status(&mut self, id: NodeId, status: Status) {
        if let Some(m) = self.membership.get(id).cloned() {
            if m.status != status {
                self.change_member(Member {
                    status,
                    version: m.version + 1,
                    ..m
                });
            }
        }
    }

    /// The entry this node starts with (new generation on every start).
    pub(crate) fn own_member(&self, generation: u64, previous: Option<&Member>) -> Member {
        let in_ring = self.ring.as_ref().is_some_and(|r| r.contains(self.id));
        let status = match previous.map(|m| m.status) {
            Some(s @ (Status::Leaving | Status::Left | Status::Removed)) => s,
            _ if in_ring => Status::Up,
            _ => Status::Joining,
        };
        Member {
            id: self.id,
            addr: self.addr.clone(),
            zone: self.zone.clone(),
            generation,
            version: 1,
            status,
            ready: previous.map_or(0, |m| m.ready),
        }
    }
}

/// Nodes that replicate a partition in `pending` that they do not replicate in `active`.
fn gaining(active: &Ring, pending: &Ring) -> Vec<NodeId> {
    let mut out: Vec<NodeId> = Vec::new();
    for p in (0..pending.partitions()).map(Partition) {
        for &n in pending.primaries(p) {
            if !active.primaries(p).contains(&n) && !out.contains(&n) {
                out.push(n);
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    mod pages {
        use super::super::*;
        use crate::config::Config;
        use crate::message::{Input, Output};
        use crate::quorum::tests::written_by;
        use crate::store::{Batch, MemStorage, Op, Storage};
        use crate::time::Time;
        use crate::version::Object;

        const A: NodeId = NodeId(0);
        const B: NodeId = NodeId(1);

        /// A node of a 3-member ring (every node replicates every partition), with
        /// pages of `page` keys.
        fn node(id: NodeId, page: usize) -> Node<MemStorage> {
            let config = Config {
                hint_batch: page,
                ..Config::default()
            };
            crate::quorum::tests::node(id, 3, config)
        }

        fn pull_sends(n: &mut Node<MemStorage>) -> Vec<(NodeId, Msg)> {
            std::iter::from_fn(|| n.poll_output())
                .filter_map(|o| match o {
                    Output::Send {
                        to,
                        msg: Message::Gossip(m),
                    } if matches!(*m, Msg::Pull { .. } | Msg::PullData { .. }) => Some((to, *m)),
                    _ => None,
                })
                .collect()
        }

        /// Five keys of partition 0, stored on `n`, in the tree's order.
        fn five_keys(n: &mut Node<MemStorage>) -> Vec<Bytes> {
            let ring = n.ring().unwrap().clone();
            let keys: Vec<Bytes> = (0..10_000)
                .map(|i| Bytes::from(format!("k{i}")))
                .filter(|k| ring.partition_of(k) == Partition(0))
                .take(5)
                .collect();
            let items: Vec<(Bytes, Object)> =
                keys.iter().map(|k| (k.clone(), written_by(A))).collect();
            assert_eq!(n.merge_own(&items), Some(5));
            n.flush_trees();
            let tree = n.merkle_tree(Partition(0)).unwrap();
            tree.iter_after(None)
                .map(|(k, _)| Bytes::copy_from_slice(k))
                .collect()
        }

        #[test]
        fn a_page_of_keys_missing_from_storage_still_moves_the_cursor() {
            let mut a = node(A, 2);
            let order = five_keys(&mut a);
            // The tree and the store out of step: the first page's objects are gone
            // from storage behind the node's back.
            let gone = Batch {
                ops: order[..2]
                    .iter()
                    .map(|k| Op::DeleteObject { key: k.clone() })
                    .collect(),
            };
            a.storage.apply(gone).unwrap();
            a.handle_input(
                Time(1),
                Input::Message {
                    from: B,
                    msg: Message::gossip(Msg::Pull {
                        partition: Partition(0),
                        after: None,
                    }),
                },
            );
            let sent = pull_sends(&mut a);
            let [(
                to,
                Msg::PullData {
                    after,
                    last,
                    items,
                    done,
                    ..
                },
            )] = &sent[..]
            else {
                panic!("one page expected, got {sent:?}");
            };
            assert_eq!(*to, B);
            assert!(items.is_empty() && !done && after.is_none());
            assert_eq!(
                last.as_ref(),
                Some(&order[1]),
                "the cursor covers the missing keys"
            );
        }

        #[test]
        fn only_the_answer_to_the_outstanding_request_goes_on() {
            let mut d = node(NodeId(3), 2);
            let key = Bytes::from_static(b"x");
            d.pulls.insert(
                Partition(0),
                PullState {
                    after: None,
                    asked: Some((B, Time(0))),
                },
            );
            let page = |last: &str| {
                Message::gossip(Msg::PullData {
                    partition: Partition(0),
                    after: None,
                    last: Some(Bytes::from(last.to_owned())),
                    items: vec![(key.clone(), written_by(B))],
                    done: false,
                })
            };
            d.handle_input(
                Time(1),
                Input::Message {
                    from: B,
                    msg: page("m"),
                },
            );
            let sent = pull_sends(&mut d);
            assert_eq!(
                sent,
                vec![(
                    B,
                    Msg::Pull {
                        partition: Partition(0),
                        after: Some(Bytes::from_static(b"m")),
                    }
                )],
                "the page's cursor is the next request's, though its item is another key"
            );
            // The same answer again (a duplicate after a re-ask): merged, no second chain.
            d.handle_input(
                Time(2),
                Input::Message {
                    from: B,
                    msg: page("m"),
                },
            );
            assert!(pull_sends(&mut d).is_empty());
            assert!(d.storage.object(&key).is_some());
            assert_eq!(d.pulls[&Partition(0)].after, Some(Bytes::from_static(b"m")));
        }
    }

    fn member(id: u32, generation: u64, version: u64, status: Status) -> Member {
        Member {
            id: NodeId(id),
            addr: format!("n{id}"),
            zone: "z".into(),
            generation,
            version,
            status,
            ready: 0,
        }
    }

    fn state(entries: &[(u32, u64, u64, u8)], ring_v: Option<u8>) -> Membership {
        let mut m = Membership::default();
        let statuses = [
            Status::Joining,
            Status::Up,
            Status::Leaving,
            Status::Left,
            Status::Removed,
        ];
        let members: Vec<Member> = entries
            .iter()
            .map(|&(id, g, v, s)| member(id, g, v, statuses[s as usize % 5]))
            .collect();
        let ring = ring_v.map(|v| {
            let ids: Vec<(NodeId, String)> = (0..=(v % 4) as u32)
                .map(|i| (NodeId(i), "z".into()))
                .collect();
            Ring::new(8, 2, &ids).unwrap()
        });
        for mem in members {
            // Arbitrary order of application must not matter for the law tests.
            if m.members.get(&mem.id).is_none_or(|o| mem.key() > o.key()) {
                m.members.insert(mem.id, mem);
            }
        }
        m.ring = ring;
        m
    }

    fn entries() -> impl Strategy<Value = Vec<(u32, u64, u64, u8)>> {
        proptest::collection::vec((0u32..6, 0u64..3, 0u64..4, 0u8..5), 0..8)
    }

    fn join(a: &Membership, b: &Membership) -> Membership {
        let mut x = a.clone();
        x.merge(&b.delta_for(&Digest::default()));
        x
    }

    proptest! {
        #[test]
        fn merge_is_commutative_associative_idempotent(a in entries(), b in entries(), c in entries(), ra in proptest::option::of(0u8..4), rb in proptest::option::of(0u8..4)) {
            // Distinct (generation, version) per id make "higher wins" total; equal
            // keys with different contents are not produced by real nodes.
            let dedup = |v: Vec<(u32, u64, u64, u8)>, salt: u8| -> Vec<(u32, u64, u64, u8)> {
                v.into_iter().map(|(id, g, ver, s)| (id, g, ver * 3 + u64::from(salt), s)).collect()
            };
            let (a, b, c) = (state(&dedup(a, 0), ra), state(&dedup(b, 1), rb), state(&dedup(c, 2), None));
            prop_assert_eq!(join(&a, &b), join(&b, &a));
            prop_assert_eq!(join(&join(&a, &b), &c), join(&a, &join(&b, &c)));
            prop_assert_eq!(join(&a, &a), a.clone());
            prop_assert_eq!(join(&a, &b).hash(), join(&b, &a).hash());
        }

        #[test]
        fn push_pull_makes_two_states_equal(a in entries(), b in entries()) {
            let dedup = |v: Vec<(u32, u64, u64, u8)>, salt: u8| -> Vec<(u32, u64, u64, u8)> {
                v.into_iter().map(|(id, g, ver, s)| (id, g, ver * 2 + u64::from(salt), s)).collect()
            };
            let (mut x, mut y) = (state(&dedup(a, 0), Some(1)), state(&dedup(b, 1), Some(2)));
            // x → y: Syn; y → x: Digest; x → y: Delta + request; y → x: Delta.
            let dy = y.digest();
            let to_y = x.delta_for(&dy);
            let request = x.lacks_from(&dy).then(|| x.digest());
            y.merge(&to_y);
            if let Some(d) = request {
                let back = y.delta_for(&d);
                x.merge(&back);
            }
            prop_assert_eq!(x.hash(), y.hash());
            prop_assert_eq!(x, y);
        }
    }

    #[test]
    fn higher_generation_wins_even_with_a_lower_version() {
        let mut m = Membership::default();
        m.merge(&Delta {
            members: vec![member(1, 1, 9, Status::Up)],
            ..Delta::default()
        });
        let fresh = m.merge(&Delta {
            members: vec![member(1, 2, 1, Status::Up)],
            ..Delta::default()
        });
        assert_eq!(fresh.members.len(), 1);
        assert_eq!(m.get(NodeId(1)).unwrap().generation, 2);
        let stale = m.merge(&Delta {
            members: vec![member(1, 1, 10, Status::Left)],
            ..Delta::default()
        });
        assert!(stale.is_empty());
    }
}
