//! The partitioned consistent-hash ring: which nodes hold which keys.
//!
//! # Protocol
//!
//! This implements Dynamo's partitioning *strategy 3* (DeCandia et al., SOSP 2007,
//! §6.2): the 64-bit hash space is cut into `Q` equal, fixed partitions and each
//! member owns about `Q/S` of them. Fixed partitions decouple *partitioning* (which
//! never changes, so a partition is a unit of hand-off, Merkle trees and anti-entropy)
//! from *placement* (which partitions a node owns, the only thing membership changes
//! touch). A key lives in the partition its hash falls in; its preference list is
//! the first `N` distinct owners met walking clockwise from that partition, then every
//! other member once (the fallbacks sloppy quorum recruits as stand-ins).
//!
//! When the ring spans at least `N` zones, the walk skips owners whose zone already
//! holds a replica, so the `N` primaries always sit in `N` different zones.
//!
//! # Claim algorithm
//!
//! Ownership is computed deterministically from the previous ring and the new
//! member set (no randomness: every node computes the same ring from the same
//! inputs, which is what lets gossip converge on a version number alone):
//!
//! 1. **Targets.** With `S` members, members sorted by (current count descending, id)
//!    get `⌈Q/S⌉`, the rest `⌊Q/S⌋`, so the nodes already holding more keep more
//!    and nothing moves needlessly.
//! 2. **Minimal movement.** Only surplus moves: a join takes exactly the donors'
//!    excess (at most `⌈Q/(S+1)⌉` partitions, all to the joiner); a leave hands out
//!    exactly the leaver's partitions and nothing else.
//! 3. **Spacing.** Which partitions move (and, on a leave, who receives each) is
//!    chosen greedily to minimise the windows of `N` consecutive partitions lacking
//!    `N` distinct owners (and, with at least `N` zones, `N` distinct zones), since
//!    such a window makes the preference list walk further. A lighter secondary
//!    term counts same-owner (same-zone) pairs closer than `N`: it breaks ties by
//!    spreading, and while `S < N` (every window bad) it still lays the ring out
//!    so that later joins can reach zero bad windows. Each candidate is scored on
//!    the windows containing it only, and only the neighbourhood of a change is
//!    re-scored, so `Q = 4096` stays cheap. A budgeted pass of count-preserving
//!    swaps (which never increases movement) then repairs what greed left behind.
//!    Minimal movement wins over spacing: a leave from a tight layout (say 5 → 4
//!    members) can leave bad windows that only a later join repairs.
//! 4. **Initial claim.** Members are ordered so zones interleave (round-robin over
//!    zones, spread in proportion to zone sizes, ids sorted within a zone) and
//!    partition `i` goes to member `i mod S`; the same swap pass then removes the
//!    seam where `S` does not divide `Q`.
//!
//! # Invariants
//!
//! * Every owner is a member; `Q` is a power of two in `1..=4096`; `N ≥ 1`.
//! * After [`Ring::new`], [`Ring::with_joined`] and [`Ring::with_removed`] (from a
//!   balanced ring) every member owns `⌊Q/S⌋` or `⌈Q/S⌉` partitions.
//! * [`Ring::primaries`] holds `min(N, S)` distinct members, spanning `N` zones
//!   whenever the ring has `N` zones or more.
//! * Each operation yields a new ring with `version + 1`; rings are values, so a
//!   node can keep the old one while handing data off.
//!
//! Some layouts cannot avoid a bad window: with 3 members, `N = 3` and `Q = 64`,
//! 64 is not a multiple of 3, so at least two windows repeat an owner. The walk
//! simply goes a little further there. With more members than partitions some
//! members own nothing; the walk reaches them after every owner, by id.

use crate::id::NodeId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use thiserror::Error;

/// The partition count used when nothing else is configured: enough that 16 nodes
/// still get 4 partitions each, few enough that per-partition state stays small.
pub const DEFAULT_PARTITIONS: u32 = 64;

/// The largest supported partition count; bounds per-partition state (Merkle trees,
/// hand-off bookkeeping) and claim cost.
pub const MAX_PARTITIONS: u32 = 4096;

/// The largest supported replication factor. Real deployments use 3 to 5; the
/// bound keeps the primaries cache (`Q·N` ids) and the claim's window scoring
/// (`O(N³)` per candidate) small even for a ring received from a faulty peer.
pub const MAX_N: usize = 16;

/// A fixed slice of the hash space, numbered clockwise from position 0. Partitions
/// never change with membership, which is why they are the unit of hand-off.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Partition(pub u32);

impl Partition {
    /// The partition number as an index into per-partition vectors.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

/// Why a ring could not be built or changed. Rings are immutable values, so in
/// every case nothing changed: the caller still holds the ring it started from.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RingError {
    /// The partition count is not a power of two in `1..=4096`; nothing changed.
    #[error("partition count {0} is not a power of two in 1..=4096; nothing changed")]
    InvalidPartitionCount(u32),
    /// A ring needs at least one member to own its partitions; nothing changed.
    #[error("a ring needs at least one member; nothing changed")]
    NoMembers,
    /// The joining node is already a member; nothing changed.
    #[error("node {0} is already a member; nothing changed")]
    AlreadyMember(NodeId),
    /// The node to remove is not a member; nothing changed.
    #[error("node {0} is not a member; nothing changed")]
    NotMember(NodeId),
    /// Removing the last member would leave partitions without an owner; nothing changed.
    #[error("cannot remove the last member; nothing changed")]
    LastMember,
    /// The member list names the same node twice; nothing changed.
    #[error("node {0} is listed twice; nothing changed")]
    DuplicateMember(NodeId),
    /// A (deserialized) ring names an owner that is not a member; nothing changed.
    #[error("partition owner {0} is not a member; nothing changed")]
    OwnerNotMember(NodeId),
    /// The replication factor must be in `1..=16` ([`MAX_N`]); nothing changed.
    #[error("replication factor must be in 1..=16; nothing changed")]
    InvalidN,
}

/// The position of a key on the ring: the first 8 bytes of SHA-256 of the key,
/// big-endian. A cryptographic hash keeps adversarial or sequential keys spread
/// evenly; fixing the byte order keeps positions identical on every platform.
pub fn key_position(key: &[u8]) -> u64 {
    let digest = Sha256::digest(key);
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(head)
}

/// The partition holding ring position `position` when the ring has `q` partitions:
/// `position / (2^64 / q)`. `q` must be a power of two (every [`Ring`]'s is), which
/// makes this a shift; `q = 1` maps everything to partition 0.
pub fn partition_at(position: u64, q: u32) -> Partition {
    let bits = q.trailing_zeros();
    Partition(position.checked_shr(64 - bits).unwrap_or(0) as u32)
}

/// A key's full preference list (for UIs and tests; coordinators use the lazy
/// [`Ring::preference_walk`] because they rarely need more than `N + 2` nodes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreferenceList {
    /// The partition the key hashes to.
    pub partition: Partition,
    /// The `min(N, S)` replicas that should hold the key.
    pub primaries: Vec<NodeId>,
    /// Every other member, in the order sloppy quorum recruits them as stand-ins.
    pub fallbacks: Vec<NodeId>,
}

/// The ring as stored and sent: only the facts, never the derived cache, so a
/// peer cannot send a cache that disagrees with the owners.
#[derive(Serialize, Deserialize)]
struct RingRepr {
    version: u64,
    n: u64,
    owners: Vec<NodeId>,
    zones: BTreeMap<NodeId, String>,
}

/// Membership, zones and partition ownership at one version. Immutable: changes
/// produce a new ring with the next version, so the old one stays usable while
/// data is handed off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RingRepr", into = "RingRepr")]
pub struct Ring {
    version: u64,
    n: usize,
    owners: Vec<NodeId>,
    zones: BTreeMap<NodeId, String>,
    // Derived (rebuilt on deserialize, never serialized):
    zone_count: usize,
    /// Primaries per partition, `k = min(n, S)` each, flattened.
    k: usize,
    primaries: Vec<NodeId>,
}

impl From<Ring> for RingRepr {
    fn from(r: Ring) -> RingRepr {
        RingRepr {
            version: r.version,
            n: r.n as u64,
            owners: r.owners,
            zones: r.zones,
        }
    }
}

impl TryFrom<RingRepr> for Ring {
    type Error = RingError;

    fn try_from(r: RingRepr) -> Result<Ring, RingError> {
        let n = usize::try_from(r.n).map_err(|_| RingError::InvalidN)?;
        Ring::from_parts(r.version, n, r.owners, r.zones)
    }
}

impl Ring {
    /// Builds the initial ring (version 1): zones interleaved around the ring and
    /// every member owning `⌊q/S⌋` or `⌈q/S⌉` partitions. The result depends only on
    /// the set of members, not on their order in `members`.
    pub fn new(q: u32, n: usize, members: &[(NodeId, String)]) -> Result<Ring, RingError> {
        check_q(q)?;
        if n == 0 || n > MAX_N {
            return Err(RingError::InvalidN);
        }
        if members.is_empty() {
            return Err(RingError::NoMembers);
        }
        let mut zones = BTreeMap::new();
        for (id, zone) in members {
            if zones.insert(*id, zone.clone()).is_some() {
                return Err(RingError::DuplicateMember(*id));
            }
        }
        let owners = initial_claim(q as usize, n, &zones);
        Ring::from_parts(1, n, owners, zones)
    }

    /// A ring from its facts as a node reports them (`GET /cluster`: version, N, the
    /// owner of each partition and each owner's zone), validated exactly like a ring
    /// received from a peer — so a client computes the same preference lists as the
    /// cluster. Errors for a partition count that is not a power of two, an owner
    /// without a zone, or an invalid N.
    pub fn from_owners(
        version: u64,
        n: usize,
        owners: Vec<NodeId>,
        zones: BTreeMap<NodeId, String>,
    ) -> Result<Ring, RingError> {
        Ring::from_parts(version, n, owners, zones)
    }

    /// Validates the facts and rebuilds the derived cache.
    fn from_parts(
        version: u64,
        n: usize,
        owners: Vec<NodeId>,
        zones: BTreeMap<NodeId, String>,
    ) -> Result<Ring, RingError> {
        check_q(u32::try_from(owners.len()).unwrap_or(u32::MAX))?;
        if n == 0 || n > MAX_N {
            return Err(RingError::InvalidN);
        }
        if zones.is_empty() {
            return Err(RingError::NoMembers);
        }
        let dense = Dense::new(&zones);
        let mut idx = Vec::with_capacity(owners.len());
        for o in &owners {
            idx.push(dense.index(*o).ok_or(RingError::OwnerNotMember(*o))?);
        }
        let k = n.min(dense.ids.len());
        let primaries = build_primaries(&idx, &dense, n, k);
        Ok(Ring {
            version,
            n,
            owners,
            zones,
            zone_count: dense.zone_count,
            k,
            primaries,
        })
    }

    /// The version, bumped by every change, so gossip can keep the newer ring.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// `Q`, the number of partitions (a power of two, fixed for the ring's life).
    pub fn partitions(&self) -> u32 {
        self.owners.len() as u32
    }

    /// `N`, the replication factor fixed at construction.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The member owning partition `p`: its coordinator, and always the first of
    /// its primaries.
    ///
    /// Panics if `p` is out of range, like slice indexing: partitions come from
    /// this ring, so an out-of-range one is a caller bug.
    pub fn owner(&self, p: Partition) -> NodeId {
        self.owners[p.index()]
    }

    /// The owner of every partition, indexed by partition number.
    pub fn owners(&self) -> &[NodeId] {
        &self.owners
    }

    /// The members and their zone labels, sorted by id.
    pub fn members(&self) -> impl Iterator<Item = (NodeId, &str)> {
        self.zones.iter().map(|(id, z)| (*id, z.as_str()))
    }

    /// `S`, the number of members.
    pub fn member_count(&self) -> usize {
        self.zones.len()
    }

    /// A member's zone label, or `None` for a non-member.
    pub fn zone(&self, id: NodeId) -> Option<&str> {
        self.zones.get(&id).map(String::as_str)
    }

    /// Whether `id` is a member.
    pub fn contains(&self, id: NodeId) -> bool {
        self.zones.contains_key(&id)
    }

    /// The number of distinct zone labels; at `N` or more, replicas span `N` zones.
    pub fn zone_count(&self) -> usize {
        self.zone_count
    }

    /// The partition a key falls in.
    pub fn partition_of(&self, key: &[u8]) -> Partition {
        partition_at(key_position(key), self.partitions())
    }

    /// The `min(N, S)` replicas of partition `p`: distinct owners walking clockwise
    /// from `p`, skipping owners whose zone is already used when the ring has at
    /// least `N` zones. Cached, so this is O(1).
    ///
    /// Panics if `p` is out of range (a caller bug, as with [`Ring::owner`]).
    pub fn primaries(&self, p: Partition) -> &[NodeId] {
        let i = p.index() * self.k;
        &self.primaries[i..i + self.k]
    }

    /// Every member exactly once: the primaries of `p`, then the others in clockwise
    /// walk order from `p` (owners skipped for zone reasons included), then members
    /// owning no partition (normally only when `S > Q`) by id. Lazy, because a
    /// coordinator recruiting stand-ins usually stops after one or two fallbacks.
    pub fn preference_walk(&self, p: Partition) -> impl Iterator<Item = NodeId> + '_ {
        let prims = self.primaries(p);
        Walk {
            ring: self,
            prims,
            start: p.index(),
            next_primary: 0,
            step: 0,
            tail: self.zones.keys(),
            seen: BTreeSet::new(),
            left: self.member_count(),
        }
    }

    /// A key's whole preference list (allocates; for UIs and tests).
    pub fn preference_list(&self, key: &[u8]) -> PreferenceList {
        let partition = self.partition_of(key);
        let mut walk = self.preference_walk(partition);
        let primaries: Vec<NodeId> = walk.by_ref().take(self.k).collect();
        PreferenceList {
            partition,
            primaries,
            fallbacks: walk.collect(),
        }
    }

    /// The ring after `id` joins in `zone`: the joiner takes at most `⌈Q/(S+1)⌉`
    /// partitions and nothing else moves. Version + 1.
    pub fn with_joined(&self, id: NodeId, zone: &str) -> Result<Ring, RingError> {
        if self.contains(id) {
            return Err(RingError::AlreadyMember(id));
        }
        let mut zones = self.zones.clone();
        zones.insert(id, zone.to_string());
        let owners = rebalance(&self.owners, &zones, self.n);
        Ring::from_parts(self.version + 1, self.n, owners, zones)
    }

    /// The same ownership under another version: a plan that supersedes a newer
    /// pending ring must outrank it, or gossip would keep the older plan.
    pub fn with_version(&self, version: u64) -> Ring {
        Ring {
            version,
            ..self.clone()
        }
    }

    /// The ring after `id` leaves: exactly its partitions move, to the members
    /// that keep the ring balanced and spaced. Version + 1.
    pub fn with_removed(&self, id: NodeId) -> Result<Ring, RingError> {
        if !self.contains(id) {
            return Err(RingError::NotMember(id));
        }
        if self.member_count() == 1 {
            return Err(RingError::LastMember);
        }
        let mut zones = self.zones.clone();
        zones.remove(&id);
        let owners = rebalance(&self.owners, &zones, self.n);
        Ring::from_parts(self.version + 1, self.n, owners, zones)
    }

    /// A 64-bit FNV-1a fingerprint of the ring's facts (version, N, owners, zones),
    /// computed without copying the ring: gossip's tie-break between two rings of
    /// the same version.
    pub fn fingerprint(&self) -> u64 {
        let facts = (self.version, self.n as u64, &self.owners, &self.zones);
        let bytes = postcard::to_allocvec(&facts).unwrap_or_default();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }

    /// The partitions `id` owns (its coordinator duties), ascending.
    pub fn partitions_owned_by(&self, id: NodeId) -> Vec<Partition> {
        (0..self.owners.len())
            .filter(|&i| self.owners[i] == id)
            .map(|i| Partition(i as u32))
            .collect()
    }

    /// The partitions whose primaries include `id` (the data it must store), ascending.
    pub fn replicated_by(&self, id: NodeId) -> Vec<Partition> {
        (0..self.owners.len() as u32)
            .map(Partition)
            .filter(|&p| self.primaries(p).contains(&id))
            .collect()
    }

    /// How many of the `Q` cyclic windows of `N` consecutive partitions lack `N`
    /// distinct owners, i.e. where the preference list walks past `N` partitions.
    /// By definition every window is bad when `S < N` or `Q < N`.
    pub fn bad_windows(&self) -> usize {
        let dense = Dense::new(&self.zones);
        let seq: Vec<u32> = self
            .owners
            .iter()
            .map(|o| dense.index(*o).unwrap_or(0))
            .collect();
        count_bad_windows(&seq, self.n, dense.ids.len())
    }

    /// How many of the `Q` cyclic windows of `N` consecutive partitions lack `N`
    /// distinct zones (all of them when the ring has fewer than `N` zones); with
    /// zones, this is what makes the walk go further.
    pub fn bad_zone_windows(&self) -> usize {
        let dense = Dense::new(&self.zones);
        let seq: Vec<u32> = self
            .owners
            .iter()
            .map(|o| dense.zone_of[dense.index(*o).unwrap_or(0) as usize])
            .collect();
        count_bad_windows(&seq, self.n, dense.zone_count)
    }

    /// How many partitions changed owner between `self` and `other` (the hand-off
    /// work of a change). Rings with different `Q` share no layout: every
    /// partition of the larger counts as moved.
    pub fn moved_partitions(&self, other: &Ring) -> usize {
        if self.owners.len() != other.owners.len() {
            return self.owners.len().max(other.owners.len());
        }
        self.owners
            .iter()
            .zip(&other.owners)
            .filter(|(a, b)| a != b)
            .count()
    }
}

fn check_q(q: u32) -> Result<(), RingError> {
    if q.is_power_of_two() && q <= MAX_PARTITIONS {
        Ok(())
    } else {
        Err(RingError::InvalidPartitionCount(q))
    }
}

/// The lazy walk behind [`Ring::preference_walk`].
struct Walk<'a> {
    ring: &'a Ring,
    prims: &'a [NodeId],
    start: usize,
    next_primary: usize,
    step: usize,
    tail: std::collections::btree_map::Keys<'a, NodeId, String>,
    seen: BTreeSet<NodeId>,
    left: usize,
}

impl Iterator for Walk<'_> {
    type Item = NodeId;

    fn next(&mut self) -> Option<NodeId> {
        if self.left == 0 {
            return None;
        }
        if let Some(&p) = self.prims.get(self.next_primary) {
            self.next_primary += 1;
            self.left -= 1;
            return Some(p);
        }
        let q = self.ring.owners.len();
        while self.step < q {
            let o = self.ring.owners[(self.start + self.step) & (q - 1)];
            self.step += 1;
            if !self.prims.contains(&o) && self.seen.insert(o) {
                self.left -= 1;
                return Some(o);
            }
        }
        for &m in self.tail.by_ref() {
            if !self.prims.contains(&m) && self.seen.insert(m) {
                self.left -= 1;
                return Some(m);
            }
        }
        None
    }
}

/// Members as dense indices (sorted by id) with dense zone indices, so the claim
/// and cache builders can use plain vectors instead of maps.
struct Dense {
    ids: Vec<NodeId>,
    zone_of: Vec<u32>,
    zone_count: usize,
}

impl Dense {
    fn new(zones: &BTreeMap<NodeId, String>) -> Dense {
        let labels: BTreeSet<&str> = zones.values().map(String::as_str).collect();
        let labels: Vec<&str> = labels.into_iter().collect();
        let ids = zones.keys().copied().collect();
        let zone_of = zones
            .values()
            .map(|z| labels.binary_search(&z.as_str()).unwrap_or(0) as u32)
            .collect();
        Dense {
            ids,
            zone_of,
            zone_count: labels.len(),
        }
    }

    fn index(&self, id: NodeId) -> Option<u32> {
        self.ids.binary_search(&id).ok().map(|i| i as u32)
    }
}

/// Computes the primaries of every partition (see [`Ring::primaries`]).
fn build_primaries(owners: &[u32], dense: &Dense, n: usize, k: usize) -> Vec<NodeId> {
    let q = owners.len();
    let s = dense.ids.len();
    let zone_mode = dense.zone_count >= n;
    // Stamps instead of per-walk sets: member/zone `x` is taken for partition `p`
    // iff its stamp equals `p + 1`.
    let mut member_stamp = vec![0u32; s];
    let mut zone_stamp = vec![0u32; dense.zone_count];
    let mut out = Vec::with_capacity(q * k);
    for p in 0..q {
        let stamp = p as u32 + 1;
        let mut got = 0;
        let mut take = |m: u32, out: &mut Vec<NodeId>| -> bool {
            let z = dense.zone_of[m as usize] as usize;
            if member_stamp[m as usize] == stamp || (zone_mode && zone_stamp[z] == stamp) {
                return false;
            }
            member_stamp[m as usize] = stamp;
            zone_stamp[z] = stamp;
            out.push(dense.ids[m as usize]);
            true
        };
        for i in 0..q {
            if got == k {
                break;
            }
            if take(owners[(p + i) & (q - 1)], &mut out) {
                got += 1;
            }
        }
        for m in 0..s as u32 {
            if got == k {
                break;
            }
            if take(m, &mut out) {
                got += 1;
            }
        }
        debug_assert_eq!(got, k);
    }
    out
}

/// Counts cyclic windows of `w` consecutive entries of `seq` that repeat a value
/// (values are below `alphabet`). Windows longer than the ring or the alphabet are
/// all bad. Sliding counts keep this O(Q + w) whatever `w` is.
fn count_bad_windows(seq: &[u32], w: usize, alphabet: usize) -> usize {
    let q = seq.len();
    if w <= 1 {
        return 0;
    }
    if w > q || w > alphabet {
        return q;
    }
    let mut counts = vec![0u32; alphabet];
    let mut dups = 0usize;
    for &v in &seq[..w] {
        if counts[v as usize] > 0 {
            dups += 1;
        }
        counts[v as usize] += 1;
    }
    let mut bad = 0;
    for s in 0..q {
        if dups > 0 {
            bad += 1;
        }
        let out = seq[s] as usize;
        counts[out] -= 1;
        if counts[out] > 0 {
            dups -= 1;
        }
        let inn = seq[(s + w) % q] as usize;
        if counts[inn] > 0 {
            dups += 1;
        }
        counts[inn] += 1;
    }
    bad
}

/// The spacing objective, evaluated locally around one or two partitions.
///
/// Primary term: windows of `N` consecutive partitions that repeat an owner (or,
/// with at least `N` zones, a zone), weighted so that one window outweighs any
/// change of the secondary term. Secondary term: pairs of partitions closer than
/// `N` with the same owner (or zone). Pairs make the layout degrade gracefully
/// when windows cannot be good (fewer members or zones than `N`), which keeps
/// room for later joins to reach a good layout, and break ties by spreading.
struct Spacer<'a> {
    q: usize,
    /// Window length, or 0 when windows are all bad anyway (`N > S`, `N > Q`).
    ow: usize,
    /// Zone window length, or 0 when zones cannot fill a window (`N > zones`).
    zw: usize,
    /// Pairs up to this distance count.
    dmax: usize,
    /// Whether zone pairs count (more than one zone).
    zone_pairs: bool,
    weight: u32,
    zone_of: &'a [u32],
}

impl<'a> Spacer<'a> {
    fn new(q: usize, n: usize, dense: &'a Dense) -> Spacer<'a> {
        let usable = |w: usize, alphabet: usize| {
            if w <= 1 || w > q || w > alphabet {
                0
            } else {
                w
            }
        };
        let dmax = (n - 1).min(q / 2);
        Spacer {
            q,
            ow: usable(n, dense.ids.len()),
            zw: usable(n, dense.zone_count),
            dmax,
            zone_pairs: dense.zone_count > 1,
            weight: 8 * dmax as u32 + 1,
            zone_of: &dense.zone_of,
        }
    }

    fn active(&self) -> bool {
        self.dmax > 0
    }

    /// How far a change at one partition reaches into other partitions' scores.
    fn radius(&self) -> usize {
        self.ow.max(self.zw).saturating_sub(1).max(self.dmax)
    }

    fn key(&self, v: u32, zone: bool) -> u32 {
        if zone {
            self.zone_of[v as usize]
        } else {
            v
        }
    }

    /// 1 if the window of `w` partitions from `start` repeats an owner (or zone).
    /// Holes (`None`, partitions still to be handed out) never conflict.
    fn window(&self, cur: &[Option<u32>], start: usize, w: usize, zone: bool) -> u32 {
        let mask = self.q - 1;
        for i in 0..w {
            let Some(a) = cur[(start + i) & mask] else {
                continue;
            };
            let a = self.key(a, zone);
            for j in i + 1..w {
                if cur[(start + j) & mask].is_some_and(|b| self.key(b, zone) == a) {
                    return 1;
                }
            }
        }
        0
    }

    /// Bad windows containing `p` (and, with `other`, those containing `other`
    /// but not `p`), unweighted.
    fn windows(&self, cur: &[Option<u32>], p: usize, other: Option<usize>) -> u32 {
        let q = self.q;
        let mut c = 0;
        for (w, zone) in [(self.ow, false), (self.zw, true)] {
            if w == 0 {
                continue;
            }
            for d in 0..w {
                c += self.window(cur, (p + q - d) % q, w, zone);
            }
            if let Some(o) = other {
                for d in 0..w {
                    let s = (o + q - d) % q;
                    // Windows starting within w-1 before p were counted already.
                    if (p + q - s) % q >= w {
                        c += self.window(cur, s, w, zone);
                    }
                }
            }
        }
        c
    }

    /// Same-owner (and same-zone) pairs closer than `N` involving `p`, skipping
    /// the partner `skip` (so a pair between two scored partitions counts once).
    fn pairs(&self, cur: &[Option<u32>], p: usize, skip: Option<usize>) -> u32 {
        let Some(a) = cur[p] else { return 0 };
        let q = self.q;
        let za = self.zone_of[a as usize];
        let mut c = 0;
        for d in 1..=self.dmax {
            for x in [(p + d) % q, (p + q - d) % q] {
                if Some(x) == skip {
                    continue;
                }
                if let Some(b) = cur[x] {
                    c += u32::from(b == a);
                    c += u32::from(self.zone_pairs && self.zone_of[b as usize] == za);
                }
            }
        }
        c
    }

    /// The local cost around `p` (and `other`, for swaps).
    fn local(&self, cur: &[Option<u32>], p: usize, other: Option<usize>) -> u32 {
        let mut c = self.weight * self.windows(cur, p, other) + self.pairs(cur, p, None);
        if let Some(o) = other {
            c += self.pairs(cur, o, Some(p));
        }
        c
    }
}

/// Orders members so zones interleave: each zone's members (by id) are spread
/// evenly over one lap in proportion to the zone's size; equal-size zones give
/// plain round-robin.
fn interleave(dense: &Dense) -> Vec<u32> {
    let mut by_zone: Vec<Vec<u32>> = vec![Vec::new(); dense.zone_count];
    for (m, &z) in dense.zone_of.iter().enumerate() {
        by_zone[z as usize].push(m as u32);
    }
    // Member j of a zone of size m sits at lap fraction (2j+1)/(2m).
    let mut keyed: Vec<(u64, u64, usize, u32)> = Vec::new();
    for (z, ms) in by_zone.iter().enumerate() {
        for (j, &m) in ms.iter().enumerate() {
            keyed.push((2 * j as u64 + 1, 2 * ms.len() as u64, z, m));
        }
    }
    keyed.sort_by(|a, b| {
        (a.0 * b.1)
            .cmp(&(b.0 * a.1))
            .then(a.2.cmp(&b.2))
            .then(a.3.cmp(&b.3))
    });
    keyed.into_iter().map(|k| k.3).collect()
}

/// The initial claim: interleaved round-robin, then count-preserving swaps to fix
/// the seam where `S` does not divide `Q`.
fn initial_claim(q: usize, n: usize, zones: &BTreeMap<NodeId, String>) -> Vec<NodeId> {
    let dense = Dense::new(zones);
    let order = interleave(&dense);
    let mut cur: Vec<Option<u32>> = (0..q).map(|i| Some(order[i % order.len()])).collect();
    let spacer = Spacer::new(q, n, &dense);
    improve_by_swaps(&mut cur, None, &spacer);
    cur.into_iter()
        .map(|o| dense.ids[o.unwrap_or(0) as usize])
        .collect()
}

/// Work budget (pair checks plus weighted cost evaluations) for the swap pass,
/// so pathological inputs (say, one zone holding almost everyone, whose windows
/// can never be good) cannot make a claim slow. Deterministic: a budget, not a
/// clock.
const SWAP_BUDGET: u64 = 1 << 22;

/// Repeatedly swaps the owners of two partitions when that lowers the spacing
/// cost. Swaps keep every member's count. With `orig` (the owners before this
/// change, `None` for a leaver) a swap must also keep each donor's and
/// receiver's share of the movement: either side must be a partition moving in
/// this change, and an unmoved partition may only trade with a mover taken from
/// its own owner (join: take a different partition from the same donor; leave:
/// exchange two movers' receivers). So movement never grows.
fn improve_by_swaps(cur: &mut [Option<u32>], orig: Option<&[Option<u32>]>, spacer: &Spacer) {
    if !spacer.active() || (spacer.ow == 0 && spacer.zw == 0) {
        return;
    }
    let q = cur.len();
    let moved = |cur: &[Option<u32>], i: usize| orig.is_none_or(|o| o[i] != cur[i]);
    let allowed = |cur: &[Option<u32>], p: usize, o: usize| match orig {
        None => true,
        Some(orig) => {
            let (pm, om) = (orig[p] != cur[p], orig[o] != cur[o]);
            (pm && (om || cur[o] == orig[p])) || (om && cur[p] == orig[o])
        }
    };
    // A superset of the movers (partners for unmoved partitions).
    let mut movers: Vec<usize> = (0..q).filter(|&i| moved(cur, i)).collect();
    if movers.is_empty() {
        return;
    }
    let mut is_mover = vec![false; q];
    for &m in &movers {
        is_mover[m] = true;
    }
    let per_eval = (spacer.ow.pow(3) + spacer.zw.pow(3) + 4 * spacer.dmax) as u64 * 2;
    let mut budget = SWAP_BUDGET;
    for _pass in 0..8 {
        let mut improved = false;
        for p in 0..q {
            budget = budget.saturating_sub(per_eval / 2);
            if budget == 0 {
                return;
            }
            // Only bad windows trigger a search; pairs alone are not worth O(Q).
            if spacer.windows(cur, p, None) == 0 {
                continue;
            }
            // A mover may trade with anyone; others only with movers.
            let p_moved = moved(cur, p);
            let count = if p_moved { q } else { movers.len() };
            for i in 0..count {
                let o = if p_moved { i } else { movers[i] };
                budget = budget.saturating_sub(1);
                if cur[o] == cur[p] || !allowed(cur, p, o) {
                    continue;
                }
                if budget < per_eval {
                    return;
                }
                budget -= per_eval;
                let before = spacer.local(cur, p, Some(o));
                cur.swap(p, o);
                let after = spacer.local(cur, p, Some(o));
                if after < before {
                    improved = true;
                    for x in [p, o] {
                        if !is_mover[x] {
                            is_mover[x] = true;
                            movers.push(x);
                        }
                    }
                    break;
                }
                cur.swap(p, o);
            }
        }
        if !improved {
            break;
        }
    }
}

/// The join/leave claim: re-targets counts (ceilings to those already owning
/// most, ties by id), moves only surplus, choosing greedily where it goes. An
/// unbalanced input (only possible from a foreign serialized ring) comes out
/// balanced too, at the cost of moving its excess as well.
fn rebalance(owners: &[NodeId], zones: &BTreeMap<NodeId, String>, n: usize) -> Vec<NodeId> {
    let q = owners.len();
    let dense = Dense::new(zones);
    let s = dense.ids.len();
    let orig: Vec<Option<u32>> = owners.iter().map(|o| dense.index(*o)).collect();
    let mut cur = orig.clone();

    let mut count = vec![0usize; s];
    for m in cur.iter().flatten() {
        count[*m as usize] += 1;
    }
    let mut order: Vec<usize> = (0..s).collect();
    order.sort_by(|&a, &b| count[b].cmp(&count[a]).then(a.cmp(&b)));
    let (base, extra) = (q / s, q % s);
    let mut surplus = vec![0usize; s];
    let mut deficit = vec![0usize; s];
    for (rank, &m) in order.iter().enumerate() {
        let target = base + usize::from(rank < extra);
        surplus[m] = count[m].saturating_sub(target);
        deficit[m] = target.saturating_sub(count[m]);
    }

    let spacer = Spacer::new(q, n, &dense);
    // Holes (a leaver's partitions) must all move; hand them out first. Then move
    // donors' surplus (joins, or rebalancing an unbalanced ring).
    let holes: Vec<usize> = (0..q).filter(|&p| cur[p].is_none()).collect();
    greedy(&mut cur, &holes, &mut surplus, &mut deficit, &spacer);
    let donated: Vec<usize> = (0..q)
        .filter(|&p| cur[p].is_some_and(|o| surplus[o as usize] > 0))
        .collect();
    greedy(&mut cur, &donated, &mut surplus, &mut deficit, &spacer);
    improve_by_swaps(&mut cur, Some(&orig), &spacer);
    debug_assert!(cur.iter().all(Option::is_some), "every hole is handed out");

    cur.into_iter()
        .map(|o| dense.ids[o.unwrap_or(0) as usize])
        .collect()
}

/// Greedy placement: repeatedly moves the candidate partition whose best receiver
/// lowers (or least raises) the local spacing cost; ties go to the receiver with
/// the largest remaining deficit, then to the lowest index. Scores are cached and
/// only refreshed near a change or when a receiver fills up.
fn greedy(
    cur: &mut [Option<u32>],
    cands: &[usize],
    surplus: &mut [usize],
    deficit: &mut [usize],
    spacer: &Spacer,
) {
    if cands.is_empty() {
        return;
    }
    let q = cur.len();
    let eligible = |cur: &[Option<u32>], surplus: &[usize], p: usize| {
        cur[p].is_none_or(|o| surplus[o as usize] > 0)
    };
    // Members still short of their target; usually few, however many members.
    let mut recv: Vec<usize> = (0..deficit.len()).filter(|&r| deficit[r] > 0).collect();
    let score = |cur: &mut [Option<u32>], deficit: &[usize], recv: &[usize], p: usize| {
        let was = cur[p];
        let before = i64::from(spacer.local(cur, p, None));
        let mut best: Option<(i64, usize, u32)> = None;
        for &r in recv {
            let d = deficit[r];
            let delta = if spacer.active() {
                cur[p] = Some(r as u32);
                let after = i64::from(spacer.local(cur, p, None));
                after - before
            } else {
                0
            };
            // Prefer lower delta, then larger deficit, then lower index.
            let better = match best {
                None => true,
                Some((bd, bdef, _)) => delta < bd || (delta == bd && d > bdef),
            };
            if better {
                best = Some((delta, d, r as u32));
            }
        }
        cur[p] = was;
        best.map(|(d, _, r): (i64, usize, u32)| (d, r))
    };
    // Position of each partition in `cands`, for neighbourhood refreshes.
    let mut slot = vec![usize::MAX; q];
    for (i, &p) in cands.iter().enumerate() {
        slot[p] = i;
    }
    let mut done = vec![false; cands.len()];
    let mut best: Vec<Option<(i64, u32)>> = cands
        .iter()
        .map(|&p| score(cur, deficit, &recv, p))
        .collect();
    loop {
        let mut pick: Option<(i64, usize)> = None;
        for (i, &p) in cands.iter().enumerate() {
            if done[i] || !eligible(cur, surplus, p) {
                continue;
            }
            if let Some((d, _)) = best[i] {
                if pick.is_none_or(|(bd, _)| d < bd) {
                    pick = Some((d, i));
                }
            }
        }
        let Some((_, i)) = pick else { break };
        let p = cands[i];
        let (_, r) = best[i].unwrap_or((0, 0));
        if let Some(o) = cur[p] {
            surplus[o as usize] -= 1;
        }
        cur[p] = Some(r);
        deficit[r as usize] -= 1;
        done[i] = true;

        let filled = deficit[r as usize] == 0;
        if filled {
            recv.retain(|&x| x != r as usize);
            for j in 0..cands.len() {
                if !done[j] && best[j].is_some_and(|(_, br)| br == r) {
                    best[j] = score(cur, deficit, &recv, cands[j]);
                }
            }
        }
        let rad = spacer.radius();
        for d in 1..=rad.min(q / 2) {
            for np in [(p + d) % q, (p + q - d) % q] {
                let j = slot[np];
                if j != usize::MAX && !done[j] {
                    best[j] = score(cur, deficit, &recv, np);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn members(ids: &[(u32, &str)]) -> Vec<(NodeId, String)> {
        ids.iter()
            .map(|(i, z)| (NodeId(*i), z.to_string()))
            .collect()
    }

    fn plain(s: u32) -> Vec<(NodeId, String)> {
        (0..s).map(|i| (NodeId(i), "z".to_string())).collect()
    }

    fn counts(r: &Ring) -> BTreeMap<NodeId, usize> {
        let mut c: BTreeMap<NodeId, usize> = r.members().map(|(m, _)| (m, 0)).collect();
        for o in r.owners() {
            *c.get_mut(o).unwrap() += 1;
        }
        c
    }

    fn assert_balanced(r: &Ring) {
        let q = r.partitions() as usize;
        let s = r.member_count();
        for (m, c) in counts(r) {
            assert!(
                c == q / s || c == q.div_ceil(s),
                "{m} owns {c}, want {} or {}",
                q / s,
                q.div_ceil(s)
            );
        }
    }

    #[test]
    fn key_position_is_sha256_prefix() {
        // SHA-256("hello") = 2cf24dba5fb0a30e 26e83b2a...
        assert_eq!(key_position(b"hello"), 0x2cf2_4dba_5fb0_a30e);
        let d = Sha256::digest(b"hello");
        assert_eq!(
            key_position(b"hello"),
            u64::from_be_bytes(d[..8].try_into().unwrap())
        );
    }

    #[test]
    fn partition_boundaries() {
        assert_eq!(partition_at(0, 1), Partition(0));
        assert_eq!(partition_at(u64::MAX, 1), Partition(0));
        assert_eq!(partition_at(0, 64), Partition(0));
        assert_eq!(partition_at(u64::MAX, 64), Partition(63));
        assert_eq!(partition_at((1 << 58) - 1, 64), Partition(0));
        assert_eq!(partition_at(1 << 58, 64), Partition(1));
        assert_eq!(partition_at(0, 4096), Partition(0));
        assert_eq!(partition_at(u64::MAX, 4096), Partition(4095));
        assert_eq!(partition_at((1 << 52) - 1, 4096), Partition(0));
        assert_eq!(partition_at(1 << 52, 4096), Partition(1));
        assert_eq!(partition_at(4095 << 52, 4096), Partition(4095));
        // "hello": top 6 bits of 0x2c are 0b001011.
        let r = Ring::new(64, 3, &plain(3)).unwrap();
        assert_eq!(r.partition_of(b"hello"), Partition(11));
        let r1 = Ring::new(1, 1, &plain(1)).unwrap();
        assert_eq!(r1.partition_of(b"hello"), Partition(0));
    }

    #[test]
    fn errors() {
        assert_eq!(
            Ring::new(48, 3, &plain(3)),
            Err(RingError::InvalidPartitionCount(48))
        );
        assert_eq!(
            Ring::new(0, 3, &plain(3)),
            Err(RingError::InvalidPartitionCount(0))
        );
        assert_eq!(
            Ring::new(8192, 3, &plain(3)),
            Err(RingError::InvalidPartitionCount(8192))
        );
        assert_eq!(Ring::new(64, 3, &[]), Err(RingError::NoMembers));
        assert_eq!(Ring::new(64, 0, &plain(3)), Err(RingError::InvalidN));
        assert_eq!(
            Ring::new(64, MAX_N + 1, &plain(3)),
            Err(RingError::InvalidN)
        );
        assert!(Ring::new(64, MAX_N, &plain(3)).is_ok());
        assert_eq!(
            Ring::new(64, 3, &members(&[(1, "a"), (2, "b"), (1, "c")])),
            Err(RingError::DuplicateMember(NodeId(1)))
        );
        let r = Ring::new(64, 3, &plain(3)).unwrap();
        assert_eq!(
            r.with_joined(NodeId(1), "z"),
            Err(RingError::AlreadyMember(NodeId(1)))
        );
        assert_eq!(
            r.with_removed(NodeId(9)),
            Err(RingError::NotMember(NodeId(9)))
        );
        let one = Ring::new(64, 3, &plain(1)).unwrap();
        assert_eq!(one.with_removed(NodeId(0)), Err(RingError::LastMember));
        assert!(RingError::LastMember
            .to_string()
            .contains("nothing changed"));
    }

    #[test]
    fn seven_nodes() {
        let r = Ring::new(64, 3, &plain(7)).unwrap();
        assert_eq!(r.version(), 1);
        assert_eq!(r.partitions(), 64);
        assert_eq!(r.member_count(), 7);
        assert_balanced(&r);
        for p in [0u32, 1, 5, 62, 63] {
            let ps: Vec<String> = r.primaries(Partition(p)).iter().map(|m| m.name()).collect();
            println!("p{p}: owner {} primaries {:?}", r.owner(Partition(p)), ps);
        }
        println!(
            "owners: {}",
            r.owners().iter().map(|o| o.name()).collect::<String>()
        );
        println!("bad windows: {}", r.bad_windows());
        // Round-robin A..G, with the seam (64 = 9·7 + 1) repaired by swapping.
        assert_eq!(
            r.owners().iter().map(|o| o.name()).collect::<String>(),
            "BCADEFGABCDEFGABCDEFGABCDEFGABCDEFGABCDEFGABCDEFGABCDEFGABCDEFGA"
        );
        let names =
            |p: u32| -> String { r.primaries(Partition(p)).iter().map(|m| m.name()).collect() };
        assert_eq!(names(0), "BCA");
        assert_eq!(names(1), "CAD");
        assert_eq!(names(5), "FGA");
        assert_eq!(names(62), "GAB");
        assert_eq!(names(63), "ABC");
        assert_eq!(r.bad_windows(), 0);
        let walk: String = r.preference_walk(Partition(5)).map(|m| m.name()).collect();
        assert_eq!(walk, "FGABCDE");
        for p in 0..64 {
            let walk: Vec<NodeId> = r.preference_walk(Partition(p)).collect();
            assert_eq!(walk.len(), 7);
            assert_eq!(walk.iter().collect::<BTreeSet<_>>().len(), 7);
            assert_eq!(&walk[..3], r.primaries(Partition(p)));
            assert_eq!(walk[0], r.owner(Partition(p)));
        }
        let pl = r.preference_list(b"hello");
        assert_eq!(pl.partition, Partition(11));
        assert_eq!(pl.primaries, r.primaries(Partition(11)));
        assert_eq!(pl.fallbacks.len(), 4);
    }

    #[test]
    fn impossible_and_possible_layouts() {
        // 64 is not a multiple of 3: some window must repeat an owner, and in fact
        // at least two must (two good neighbouring windows force period 3).
        let r = Ring::new(64, 3, &plain(3)).unwrap();
        assert!((1..=2).contains(&r.bad_windows()), "{}", r.bad_windows());
        assert_eq!(r.bad_windows(), 2, "the lower bound is reached");
        for s in [4, 8, 16] {
            assert_eq!(
                Ring::new(64, 3, &plain(s)).unwrap().bad_windows(),
                0,
                "S={s}"
            );
        }
        for s in 4..=20 {
            let r = Ring::new(64, 3, &plain(s)).unwrap();
            assert_eq!(r.bad_windows(), 0, "S={s}");
        }
        // Fewer members than N: every window is bad by definition.
        assert_eq!(Ring::new(64, 3, &plain(2)).unwrap().bad_windows(), 64);
    }

    #[test]
    fn zones_span() {
        let m = members(&[(0, "a"), (1, "a"), (2, "b"), (3, "b"), (4, "c"), (5, "c")]);
        let r = Ring::new(64, 3, &m).unwrap();
        assert_eq!(r.zone_count(), 3);
        assert_eq!(r.bad_windows(), 0);
        // 64 is not a multiple of 3: zone windows cannot all be good.
        assert!(
            (1..=2).contains(&r.bad_zone_windows()),
            "{}",
            r.bad_zone_windows()
        );
        for p in 0..64 {
            let z: BTreeSet<&str> = r
                .primaries(Partition(p))
                .iter()
                .map(|m| r.zone(*m).unwrap())
                .collect();
            assert_eq!(z.len(), 3);
        }
        // Join a node into zone a: replicas still span 3 zones.
        let r2 = r.with_joined(NodeId(6), "a").unwrap();
        assert_balanced(&r2);
        check_primaries(&r2);
        println!(
            "zones after join: bad windows {} bad zone windows {}",
            r2.bad_windows(),
            r2.bad_zone_windows()
        );
    }

    #[test]
    fn bad_windows_table() {
        println!("  S  bad(seq joins)  bad(new)  moved(last join)");
        let mut r = Ring::new(64, 3, &plain(1)).unwrap();
        for s in 2..=10u32 {
            let next = r.with_joined(NodeId(s - 1), "z").unwrap();
            let moved = r.moved_partitions(&next);
            r = next;
            assert_balanced(&r);
            let fresh = Ring::new(64, 3, &plain(s)).unwrap();
            println!(
                " {s:2}  {:14}  {:8}  {moved}",
                r.bad_windows(),
                fresh.bad_windows()
            );
            // What this algorithm achieves: S = 2 < N has every window bad by
            // definition, S = 3 hits the lower bound of 2 (64 is not a multiple of
            // 3), and from S = 4 on every window has 3 distinct owners.
            let want = match s {
                2 => 64,
                3 => 2,
                _ => 0,
            };
            assert_eq!(r.bad_windows(), want, "S={s}");
            if s >= 3 {
                assert_eq!(fresh.bad_windows(), want, "S={s}");
            }
        }
    }

    fn arb_members(max: u32) -> impl Strategy<Value = Vec<(NodeId, String)>> {
        proptest::collection::btree_map(0..100u32, 0..5u8, 1..=max as usize).prop_map(|m| {
            m.into_iter()
                .map(|(id, z)| (NodeId(id), format!("z{z}")))
                .collect()
        })
    }

    fn arb_q() -> impl Strategy<Value = u32> {
        prop_oneof![Just(8u32), Just(16), Just(64), Just(256)]
    }

    fn check_primaries(r: &Ring) {
        let s = r.member_count();
        let want = r.n().min(s);
        for p in 0..r.partitions() {
            let prim = r.primaries(Partition(p));
            assert_eq!(prim.len(), want);
            assert_eq!(prim.iter().collect::<BTreeSet<_>>().len(), want);
            if r.zone_count() >= r.n() {
                let z: BTreeSet<&str> = prim.iter().map(|m| r.zone(*m).unwrap()).collect();
                assert_eq!(z.len(), r.n());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        #[test]
        fn claim_properties(
            ms in arb_members(20),
            q in arb_q(),
            n in 1usize..=4,
            ops in proptest::collection::vec((any::<bool>(), 0..100u32, 0..5u8), 0..8),
        ) {
            let r = Ring::new(q, n, &ms).unwrap();
            assert_balanced(&r);
            check_primaries(&r);
            // Deterministic, and independent of input order.
            let mut rev = ms.clone();
            rev.reverse();
            prop_assert_eq!(&Ring::new(q, n, &rev).unwrap(), &r);

            let mut r = r;
            for (join, id, z) in ops {
                let id = NodeId(id);
                let next = if join {
                    match r.with_joined(id, &format!("z{z}")) {
                        Ok(next) => {
                            let s1 = next.member_count();
                            let moved = r.moved_partitions(&next);
                            prop_assert!(moved <= (q as usize).div_ceil(s1));
                            for p in 0..q as usize {
                                if r.owners()[p] != next.owners()[p] {
                                    prop_assert_eq!(next.owners()[p], id);
                                }
                            }
                            next
                        }
                        Err(e) => { prop_assert_eq!(e, RingError::AlreadyMember(id)); continue; }
                    }
                } else {
                    // Remove an existing member, chosen by `id`.
                    let victims: Vec<NodeId> = r.members().map(|(m, _)| m).collect();
                    let v = victims[id.0 as usize % victims.len()];
                    match r.with_removed(v) {
                        Ok(next) => {
                            let owned = r.partitions_owned_by(v);
                            for p in 0..q {
                                let p = Partition(p);
                                prop_assert_eq!(
                                    r.owner(p) != next.owner(p),
                                    owned.contains(&p)
                                );
                            }
                            next
                        }
                        Err(e) => {
                            prop_assert_eq!(e, RingError::LastMember);
                            continue;
                        }
                    }
                };
                prop_assert_eq!(next.version(), r.version() + 1);
                // Same change twice gives the same ring.
                assert_balanced(&next);
                check_primaries(&next);
                r = next;
            }

            // Serde round trip rebuilds the cache.
            let bytes = postcard::to_allocvec(&r).unwrap();
            let back: Ring = postcard::from_bytes(&bytes).unwrap();
            prop_assert_eq!(&back, &r);
            for p in 0..q {
                prop_assert_eq!(back.primaries(Partition(p)), r.primaries(Partition(p)));
            }
        }

        #[test]
        fn join_is_deterministic(ms in arb_members(12), q in arb_q(), n in 1usize..=4, id in 100..200u32) {
            let r = Ring::new(q, n, &ms).unwrap();
            prop_assert_eq!(r.with_joined(NodeId(id), "z1").unwrap(), r.with_joined(NodeId(id), "z1").unwrap());
        }

        #[test]
        fn arbitrary_reprs_validate(
            owners in proptest::collection::vec(0..6u32, 0..20),
            members in proptest::collection::btree_set(0..5u32, 0..4),
            n in 0u64..20,
        ) {
            let repr = RingRepr {
                version: 7,
                n,
                owners: owners.iter().map(|&o| NodeId(o)).collect(),
                zones: members.iter().map(|&m| (NodeId(m), format!("z{}", m % 2))).collect(),
            };
            let valid = owners.len().is_power_of_two()
                && !members.is_empty()
                && owners.iter().all(|o| members.contains(o))
                && (1..=MAX_N as u64).contains(&n);
            let got = postcard::from_bytes::<Ring>(&postcard::to_allocvec(&repr).unwrap());
            prop_assert_eq!(got.is_ok(), valid, "{:?}", got);
            if let Ok(r) = got {
                prop_assert_eq!(r.version(), 7);
                check_primaries(&r);
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = postcard::from_bytes::<Ring>(&bytes);
        }
    }

    #[test]
    fn malformed_deserialization() {
        let enc = |repr: &RingRepr| postcard::to_allocvec(repr).unwrap();
        let zones: BTreeMap<NodeId, String> =
            [(NodeId(0), "a".to_string()), (NodeId(1), "b".to_string())].into();
        let ok = RingRepr {
            version: 3,
            n: 2,
            owners: vec![NodeId(0), NodeId(1), NodeId(0), NodeId(1)],
            zones: zones.clone(),
        };
        let r: Ring = postcard::from_bytes(&enc(&ok)).unwrap();
        assert_eq!(r.version(), 3);
        assert_eq!(r.primaries(Partition(0)), [NodeId(0), NodeId(1)]);

        let bad_q = RingRepr {
            owners: vec![NodeId(0), NodeId(1), NodeId(0)],
            ..ok_clone(&ok)
        };
        assert!(postcard::from_bytes::<Ring>(&enc(&bad_q)).is_err());
        let bad_owner = RingRepr {
            owners: vec![NodeId(0), NodeId(7), NodeId(0), NodeId(1)],
            ..ok_clone(&ok)
        };
        assert!(postcard::from_bytes::<Ring>(&enc(&bad_owner)).is_err());
        let bad_n = RingRepr {
            n: 0,
            ..ok_clone(&ok)
        };
        assert!(postcard::from_bytes::<Ring>(&enc(&bad_n)).is_err());
        let no_members = RingRepr {
            zones: BTreeMap::new(),
            ..ok_clone(&ok)
        };
        assert!(postcard::from_bytes::<Ring>(&enc(&no_members)).is_err());
        // The error type itself, through TryFrom.
        assert_eq!(
            Ring::try_from(RingRepr {
                owners: vec![NodeId(0), NodeId(7), NodeId(0), NodeId(1)],
                ..ok_clone(&ok)
            }),
            Err(RingError::OwnerNotMember(NodeId(7)))
        );
        assert_eq!(
            Ring::try_from(RingRepr {
                owners: vec![NodeId(0); 3],
                ..ok_clone(&ok)
            }),
            Err(RingError::InvalidPartitionCount(3))
        );
    }

    #[test]
    fn unbalanced_input_is_rebalanced() {
        let repr = RingRepr {
            version: 1,
            n: 2,
            owners: vec![NodeId(0); 8],
            zones: [(NodeId(0), "a".to_string()), (NodeId(1), "a".to_string())].into(),
        };
        let r: Ring = postcard::from_bytes(&postcard::to_allocvec(&repr).unwrap()).unwrap();
        assert_eq!(r.primaries(Partition(0)), [NodeId(0), NodeId(1)]);
        let j = r.with_joined(NodeId(2), "a").unwrap();
        assert_balanced(&j);
        assert_eq!(j.bad_windows(), 0);
        let l = r.with_removed(NodeId(1)).unwrap();
        assert_eq!(l.owners(), [NodeId(0); 8]);
    }

    fn ok_clone(r: &RingRepr) -> RingRepr {
        RingRepr {
            version: r.version,
            n: r.n,
            owners: r.owners.clone(),
            zones: r.zones.clone(),
        }
    }

    #[test]
    fn large_ring_join_and_leave() {
        let r = Ring::new(4096, 3, &plain(64)).unwrap();
        assert_eq!(r.bad_windows(), 0);
        let j = r.with_joined(NodeId(64), "z").unwrap();
        assert_balanced(&j);
        assert!(r.moved_partitions(&j) <= 4096usize.div_ceil(65));
        println!(
            "Q=4096 S=64->65: moved {} bad {}",
            r.moved_partitions(&j),
            j.bad_windows()
        );
        let l = j.with_removed(NodeId(3)).unwrap();
        assert_balanced(&l);
        println!(
            "Q=4096 S=65->64: moved {} bad {}",
            j.moved_partitions(&l),
            l.bad_windows()
        );
    }
}
