//! Merkle-tree anti-entropy for one partition (Dynamo §4.7 style replica
//! synchronisation).
//!
//! # Protocol
//!
//! Every node keeps one [`MerkleTree`] per partition it replicates, fed with
//! `(key, item hash)` pairs where the item hash is SHA-256 of the key and its
//! causal version set (computed by the node; opaque here). Two replicas X and Y
//! repair a partition with an [`Exchange`]: X sends its root and item count
//! ([`MerkleMsg::Root`]); Y answers [`MerkleMsg::Equal`] (done: one 32-byte
//! root crossed the wire) or starts descending. Each following
//! [`MerkleMsg::Level`] message moves one level down and alternates direction:
//! it carries the sender's *verdicts* on the nodes the peer just described
//! (same / descend / I list / you list), the sender's child hashes for every
//! node it chose to descend into (all differing nodes of a level in one
//! message), `(key, item hash)` lists for small differing subtrees, and
//! answers to the lists the peer sent. The outcome on each side is a [`Diff`]:
//! keys whose version sets it must send, and keys it will receive. Moving
//! the data and merging is the node's job, not this module's.
//!
//! # Tree shape (and why)
//!
//! * **Hashing (scenario S3).** SHA-256. A leaf is an item hash; a parent is
//!   `SHA-256(left ‖ right)`; on a level with an odd number of nodes the last
//!   node is paired with a copy of itself. [`build_levels`] is exactly that
//!   construction over a list of leaves and [`render_tree`] prints it.
//! * **Fixed key-hash buckets.** A tree over the *sorted key list* misaligns
//!   as soon as one replica has one extra key: every later leaf shifts and the
//!   whole right part of the tree differs. Instead a key's place is fixed by
//!   its hash: bucket = the first `depth` bits of bytes 8..16 of
//!   `SHA-256(key)` ([`key_bits`]). Bytes 0..8 choose the partition, so the
//!   bucket bits are independent of Q and spread evenly inside a partition.
//!   Above the 2^depth buckets sits a complete binary tree of height `depth`
//!   ([`MerkleConfig::depth`], fixed per cluster). Its shape never depends on
//!   the keys, so two replicas always line up node by node.
//! * **Buckets use S3.** A bucket's hash is the S3 root of its item hashes, in
//!   key order (one item: the item hash itself). An insertion shifts leaves
//!   only inside its own bucket.
//! * **Sparse.** Empty subtrees hash to [`EMPTY`] (all zeros). A parent of two
//!   empty children is [`EMPTY`] as well, and only non-empty nodes are stored
//!   (one `BTreeMap` per level). Memory is the items plus their cached bucket
//!   levels (about 2×32 bytes per key) plus at most `min(2^(depth+1), n·(depth+1))`
//!   upper nodes. That stays bounded however large the partition is.
//! * **Virtual levels below the buckets.** With a fixed depth, big partitions
//!   get big buckets, and swapping whole buckets would cost O(n/2^depth) items
//!   per differing key. So the exchange keeps descending *inside* a differing
//!   bucket, using the next bits of the key hash. It computes those virtual
//!   nodes on the fly and stores nothing: a virtual node's hash is SHA-256 over
//!   the item hashes (in key order) of the bucket items with that bit prefix.
//!   They still line up, because they are addressed by key-hash bits. They are
//!   only compared with the peer's virtual nodes, never combined into parents,
//!   so a flat hash is enough and costs ~4× fewer SHA-256 blocks than an S3 tree.
//!   The byte cost per differing key stays about `66·log2(n)` at every
//!   partition size. The CPU cost is about 2·m hashed item hashes per differing
//!   bucket and side.
//!
//! # Costs, honestly
//!
//! S3 asks for about log2(n) hashes per update. Here, changing the item of an
//! existing key recomputes `⌈log2 m⌉ + depth` hashes (m = bucket size, about
//! n/2^depth). Inserting or removing a key shifts the later leaves of its
//! bucket, which costs about `(m − position) + ⌈log2 m⌉ + depth` hashes
//! (`m − 1 + ⌈log2 m⌉ + depth` at worst). The cost is confined to one bucket and reported by
//! [`MerkleTree::insert`] and [`MerkleTree::remove`]. Choosing `depth ≈ log2(n/8)`
//! for the expected partition size keeps m small.
//!
//! On the wire, a descent step costs 66 bytes per differing node: two child
//! hashes plus a one-byte count each. Each message adds about 7 bytes of
//! framing (postcard enum tag and vector lengths). The bound
//! `64·d·(⌈log2(n/d)⌉+1)` counts 64 bytes per node. For d = 1 we pay ~73 bytes
//! per level, and a key-hash trie isolates a key about one level deeper than
//! log2(n). We land within about 0.8–1.3× of the bound plus the differing items;
//! identical replicas cost one `Root` (37 bytes) and one `Equal` (1 byte).
//!
//! # Exchange rules
//!
//! * A node is compared by `(hash, count)`. The count is saturated to a `u8`
//!   on the wire, because only "empty" and "≤ [`LIST_THRESHOLD`]" matter.
//!   If either side is empty, or the judging side holds at most
//!   [`LIST_THRESHOLD`] items, the judge lists its items (keys only when the
//!   peer is empty). If only the peer is small, the judge asks the peer to
//!   list. Otherwise it descends. The side answering a list reports which
//!   entries differ or are missing (by index) and the keys it has that the list
//!   lacks. Both sides therefore end with exactly the symmetric difference
//!   of their `(key, item)` sets.
//! * **Bounded work.** `max_keys_per_round` and `max_bytes_per_round` cap what
//!   each side puts on the wire in one exchange. Once a side exceeds a cap, it
//!   keeps only the first differing node per message and marks the rest as
//!   skipped ([`Diff::complete`] becomes `false`). Every list or answer still
//!   carries at least one key, so each exchange repairs at least one
//!   differing key. The caps are soft by one path. A large divergence finishes
//!   over several exchanges, because the trees keep differing until the
//!   repair is done.
//!
//! # Invariants
//!
//! * The root is a function of the `(key, item)` set alone: insertion order,
//!   history and the incremental/rebuild path do not matter. The tests
//!   compare the incremental tree structurally against [`MerkleTree::from_items`].
//! * Node `(level, index)` exists in storage iff its subtree holds ≥ 1 item.
//!   Its count is the item count of its subtree.
//! * Pure and deterministic: no I/O, clocks, randomness or hash-map iteration.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The hash of an empty bucket or subtree (all zeros). A parent of two empty
/// children is `EMPTY` too, so sparse trees cost nothing for their empty parts.
pub const EMPTY: Hash = [0; 32];

/// Largest supported [`MerkleConfig::depth`] (2^32 buckets is far beyond any
/// sensible partition; the limit keeps bucket arithmetic in `u64`).
pub const MAX_DEPTH: u8 = 32;

/// A differing subtree is resolved by listing its items once one side holds at
/// most this many. Listing an item costs about `key + 33` bytes, and descending
/// one more level costs 66 bytes, so 2 is the break-even point for short keys.
pub const LIST_THRESHOLD: u64 = 2;

/// Number of key-hash bits that address nodes (bytes 8..16 of SHA-256(key)).
const POS_BITS: u8 = 64;

/// `SHA-256(left ‖ right)`: the parent of two nodes.
pub fn hash_pair(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The 64 position bits of a key inside its partition: bytes 8..16 of
/// `SHA-256(key)`, big-endian. (Bytes 0..8 choose the partition, so these bits
/// are independent of the partition count.) The bucket is the top
/// [`MerkleConfig::depth`] bits; the exchange uses the following bits to
/// descend inside a bucket.
pub fn key_bits(key: &[u8]) -> u64 {
    let digest = Sha256::digest(key);
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[8..16]);
    u64::from_be_bytes(b)
}

/// The top `t` bits of `bits` (0 when `t == 0`).
fn prefix(bits: u64, t: u8) -> u64 {
    if t == 0 {
        0
    } else {
        bits >> (POS_BITS - t.min(POS_BITS))
    }
}

/// One S3 level up: pairs of nodes, the last one paired with itself if odd.
fn parent_level(level: &[Hash]) -> Vec<Hash> {
    level
        .chunks(2)
        .map(|c| hash_pair(&c[0], c.get(1).unwrap_or(&c[0])))
        .collect()
}

/// Builds the S3 Merkle tree over `leaves`: levels bottom-up, `levels[0]` are
/// the leaves, the last level is `[root]`. A parent is `SHA-256(left ‖ right)`;
/// on a level with an odd number of nodes the last node is paired with a copy
/// of itself. No leaves give `[[EMPTY]]`; one leaf is its own root.
pub fn build_levels(leaves: &[Hash]) -> Vec<Vec<Hash>> {
    let first = if leaves.is_empty() {
        vec![EMPTY]
    } else {
        leaves.to_vec()
    };
    let mut levels = vec![first];
    while let Some(top) = levels.last().filter(|l| l.len() > 1) {
        let next = parent_level(top);
        levels.push(next);
    }
    levels
}

/// The first 4 bytes of a hash in hex, enough to tell nodes apart in a print.
pub fn short_hex(h: &Hash) -> String {
    h[..4].iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Renders levels from [`build_levels`] top-down, one line per level, each
/// node as [`short_hex`]. The last node of an odd level (the one paired with a
/// copy of itself) is marked `(x2)`.
pub fn render_tree(levels: &[Vec<Hash>]) -> String {
    let mut out = String::new();
    let top = levels.len().saturating_sub(1);
    for (i, level) in levels.iter().enumerate().rev() {
        let name = if i == top {
            "root".to_string()
        } else if i == 0 {
            "leaves".to_string()
        } else {
            format!("L{i}")
        };
        let _ = write!(out, "{name:>6} |");
        for (j, h) in level.iter().enumerate() {
            let dup = i < top && level.len() % 2 == 1 && j + 1 == level.len();
            let _ = write!(out, " {}{}", short_hex(h), if dup { "(x2)" } else { "" });
        }
        out.push('\n');
    }
    out
}

/// Cluster-wide Merkle settings. `depth` must be equal on all replicas (the
/// exchange checks it); the caps are local to each side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerkleConfig {
    /// Height of the stored tree: 2^depth key-hash buckets per partition.
    pub depth: u8,
    /// Soft cap on keys one side puts on the wire per exchange.
    pub max_keys_per_round: usize,
    /// Soft cap on bytes one side sends per exchange.
    pub max_bytes_per_round: usize,
}

impl Default for MerkleConfig {
    fn default() -> Self {
        MerkleConfig {
            depth: 10,
            max_keys_per_round: 10_000,
            max_bytes_per_round: 1 << 20,
        }
    }
}

impl MerkleConfig {
    /// Checks the depth is supported (≤ [`MAX_DEPTH`]).
    pub fn validate(&self) -> Result<(), MerkleError> {
        if self.depth > MAX_DEPTH {
            return Err(MerkleError::DepthTooLarge(self.depth));
        }
        Ok(())
    }
}

/// Errors of tree configuration and of the exchange. A failed exchange is
/// simply abandoned; the next one starts afresh.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    /// The configured depth exceeds [`MAX_DEPTH`].
    #[error("merkle depth {0} exceeds the maximum {MAX_DEPTH}")]
    DepthTooLarge(u8),
    /// The two replicas use different tree depths; they cannot align.
    #[error("merkle depth mismatch: ours {ours}, theirs {theirs}")]
    DepthMismatch {
        /// Our depth.
        ours: u8,
        /// The peer's depth.
        theirs: u8,
    },
    /// A message arrived that the exchange's state does not expect.
    #[error("unexpected merkle message for the exchange state")]
    UnexpectedMessage,
    /// A message is inconsistent with what was asked (wrong counts, indices).
    #[error("malformed merkle message: {0}")]
    Malformed(&'static str),
}

/// One bucket: its items sorted by key, their position bits, and the cached
/// S3 levels above the item hashes (`upper.last() == [bucket hash]` when there
/// are ≥ 2 items).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Bucket {
    items: Vec<(Vec<u8>, Hash)>,
    bits: Vec<u64>,
    upper: Vec<Vec<Hash>>,
}

impl Bucket {
    fn find(&self, key: &[u8]) -> Result<usize, usize> {
        self.items.binary_search_by(|(k, _)| k.as_slice().cmp(key))
    }

    fn hash(&self) -> Hash {
        match (self.upper.last(), self.items.first()) {
            (Some(top), _) => top[0],
            (None, Some((_, h))) => *h,
            (None, None) => EMPTY,
        }
    }

    /// Builds the cached levels from scratch.
    fn build(&mut self) {
        let leaves: Vec<Hash> = self.items.iter().map(|(_, h)| *h).collect();
        let mut levels = build_levels(&leaves);
        levels.remove(0);
        self.upper = levels;
    }

    /// Recomputes the cached levels after leaves `lo..=hi` changed (`hi =
    /// usize::MAX` after an insertion or removal: everything from `lo` on
    /// shifted). Returns the number of hashes computed.
    fn rehash(&mut self, lo: usize, hi: usize) -> usize {
        let mut sizes = Vec::new();
        let mut n = self.items.len();
        while n > 1 {
            n = n.div_ceil(2);
            sizes.push(n);
        }
        self.upper.truncate(sizes.len());
        self.upper.resize_with(sizes.len(), Vec::new);
        for (level, &size) in self.upper.iter_mut().zip(&sizes) {
            level.resize(size, EMPTY);
        }
        let (mut lo, mut hi) = (lo, hi);
        let mut hashes = 0;
        for (k, &size) in sizes.iter().enumerate() {
            lo /= 2;
            hi /= 2;
            let end = hi.min(size - 1);
            if lo > end {
                continue;
            }
            let (below, above) = self.upper.split_at_mut(k);
            let items = &self.items;
            let child_len = if k == 0 {
                items.len()
            } else {
                below[k - 1].len()
            };
            let child = |j: usize| if k == 0 { items[j].1 } else { below[k - 1][j] };
            for (slot, i) in above[0][lo..=end].iter_mut().zip(lo..) {
                let l = child(2 * i);
                let r = if 2 * i + 1 < child_len {
                    child(2 * i + 1)
                } else {
                    l
                };
                *slot = hash_pair(&l, &r);
                hashes += 1;
            }
        }
        hashes
    }
}

/// A node address for the exchange: `t` bits from the root (0 = root,
/// `depth` = bucket, beyond = virtual nodes inside a bucket) and the
/// `t`-bit prefix `p` of the key bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NodeRef {
    t: u8,
    p: u64,
}

impl NodeRef {
    const ROOT: NodeRef = NodeRef { t: 0, p: 0 };

    fn child(self, bit: u64) -> NodeRef {
        NodeRef {
            t: self.t + 1,
            p: (self.p << 1) | bit,
        }
    }
}

/// The Merkle tree of one partition replica: fixed-depth key-hash buckets
/// (see the module docs). Feed it with [`insert`](Self::insert) and
/// [`remove`](Self::remove) as the node's store changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MerkleTree {
    cfg: MerkleConfig,
    buckets: BTreeMap<u64, Bucket>,
    /// `levels[l]`: non-empty nodes at height `l` (0 = buckets, depth = root),
    /// index → (hash, item count).
    levels: Vec<BTreeMap<u64, (Hash, u64)>>,
    len: usize,
}

impl MerkleTree {
    /// An empty tree.
    ///
    /// # Panics
    /// If `cfg.depth > MAX_DEPTH` (see [`MerkleConfig::validate`]).
    pub fn new(cfg: MerkleConfig) -> Self {
        assert!(
            cfg.validate().is_ok(),
            "merkle depth {} > {MAX_DEPTH}",
            cfg.depth
        );
        MerkleTree {
            cfg,
            buckets: BTreeMap::new(),
            levels: vec![BTreeMap::new(); usize::from(cfg.depth) + 1],
            len: 0,
        }
    }

    /// A tree built from scratch over `items` (a later duplicate key wins).
    pub fn from_items<I: IntoIterator<Item = (Vec<u8>, Hash)>>(
        cfg: MerkleConfig,
        items: I,
    ) -> Self {
        let mut t = MerkleTree::new(cfg);
        t.rebuild_from(items);
        t
    }

    /// Replaces the contents with `items` and rebuilds every hash from scratch
    /// (a later duplicate key wins).
    pub fn rebuild_from<I: IntoIterator<Item = (Vec<u8>, Hash)>>(&mut self, items: I) {
        let sorted: BTreeMap<Vec<u8>, Hash> = items.into_iter().collect();
        self.buckets.clear();
        self.levels.iter_mut().for_each(BTreeMap::clear);
        self.len = sorted.len();
        let depth = self.cfg.depth;
        for (key, item) in sorted {
            let bits = key_bits(&key);
            let b = self.buckets.entry(prefix(bits, depth)).or_default();
            b.items.push((key, item));
            b.bits.push(bits);
        }
        for (&i, b) in &mut self.buckets {
            b.build();
            self.levels[0].insert(i, (b.hash(), b.items.len() as u64));
        }
        for l in 1..self.levels.len() {
            let (below, above) = self.levels.split_at_mut(l);
            let mut children = below[l - 1].iter().peekable();
            while let Some((&i, &(h, c))) = children.next() {
                let (mut left, mut right, mut count) = (EMPTY, EMPTY, c);
                if i & 1 == 0 {
                    left = h;
                    if let Some((&j, &(h2, c2))) = children.peek() {
                        if j == i | 1 {
                            right = h2;
                            count += c2;
                            children.next();
                        }
                    }
                } else {
                    right = h;
                }
                above[0].insert(i >> 1, (hash_pair(&left, &right), count));
            }
        }
    }

    /// The configuration the tree was built with.
    pub fn config(&self) -> &MerkleConfig {
        &self.cfg
    }

    /// Height of the stored tree (number of parent levels above the buckets).
    pub fn depth(&self) -> u8 {
        self.cfg.depth
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the tree holds no key.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The root hash ([`EMPTY`] for an empty tree).
    pub fn root(&self) -> Hash {
        self.node(self.cfg.depth, 0)
    }

    /// The bucket a key falls in (top `depth` bits of [`key_bits`]).
    pub fn bucket_index(&self, key: &[u8]) -> u64 {
        prefix(key_bits(key), self.cfg.depth)
    }

    /// The item hash stored for `key`.
    pub fn get(&self, key: &[u8]) -> Option<Hash> {
        let b = self.buckets.get(&self.bucket_index(key))?;
        b.find(key).ok().map(|i| b.items[i].1)
    }

    /// Sets `key`'s item hash. Returns the number of SHA-256 computations
    /// performed (0 if the item was already stored): `⌈log2 m⌉ + depth` for a
    /// changed item; for a new key at position p of its bucket about
    /// `(m − p) + ⌈log2 m⌉ + depth`, at most `m − 1 + ⌈log2 m⌉ + depth`
    /// (m = bucket size).
    pub fn insert(&mut self, key: &[u8], item: Hash) -> usize {
        let bits = key_bits(key);
        let b = prefix(bits, self.cfg.depth);
        let bucket = self.buckets.entry(b).or_default();
        let hashes = match bucket.find(key) {
            Ok(i) if bucket.items[i].1 == item => return 0,
            Ok(i) => {
                bucket.items[i].1 = item;
                bucket.rehash(i, i)
            }
            Err(i) => {
                bucket.items.insert(i, (key.to_vec(), item));
                bucket.bits.insert(i, bits);
                self.len += 1;
                bucket.rehash(i, usize::MAX)
            }
        };
        hashes + self.refresh(b)
    }

    /// Removes `key`. Returns the number of SHA-256 computations performed
    /// (0 if the key was absent).
    pub fn remove(&mut self, key: &[u8]) -> usize {
        let b = self.bucket_index(key);
        let Some(bucket) = self.buckets.get_mut(&b) else {
            return 0;
        };
        let Ok(i) = bucket.find(key) else {
            return 0;
        };
        bucket.items.remove(i);
        bucket.bits.remove(i);
        self.len -= 1;
        let hashes = bucket.rehash(i, usize::MAX);
        hashes + self.refresh(b)
    }

    /// Re-summarises bucket `b` and recomputes its `depth` ancestors.
    fn refresh(&mut self, b: u64) -> usize {
        match self.buckets.get(&b).filter(|bk| !bk.items.is_empty()) {
            Some(bk) => {
                let summary = (bk.hash(), bk.items.len() as u64);
                self.levels[0].insert(b, summary);
            }
            None => {
                self.buckets.remove(&b);
                self.levels[0].remove(&b);
            }
        }
        let mut hashes = 0;
        let mut idx = b;
        for l in 1..self.levels.len() {
            idx >>= 1;
            let (below, above) = self.levels.split_at_mut(l);
            let left = below[l - 1].get(&(idx << 1)).copied();
            let right = below[l - 1].get(&((idx << 1) | 1)).copied();
            if left.is_none() && right.is_none() {
                above[0].remove(&idx);
                continue;
            }
            let (lh, lc) = left.unwrap_or((EMPTY, 0));
            let (rh, rc) = right.unwrap_or((EMPTY, 0));
            above[0].insert(idx, (hash_pair(&lh, &rh), lc + rc));
            hashes += 1;
        }
        hashes
    }

    /// The hash of node `index` at height `level` (0 = buckets, `depth` =
    /// root; `index` < 2^(depth − level)). [`EMPTY`] for empty or
    /// out-of-range nodes.
    pub fn node(&self, level: u8, index: u64) -> Hash {
        self.stored(level, index).0
    }

    /// Number of items under node `index` at height `level` (see [`node`](Self::node)).
    pub fn node_len(&self, level: u8, index: u64) -> u64 {
        self.stored(level, index).1
    }

    fn stored(&self, level: u8, index: u64) -> (Hash, u64) {
        self.levels
            .get(usize::from(level))
            .and_then(|m| m.get(&index))
            .copied()
            .unwrap_or((EMPTY, 0))
    }

    /// The `(key, item hash)` pairs of bucket `index`, sorted by key.
    pub fn bucket_items(&self, index: u64) -> &[(Vec<u8>, Hash)] {
        self.buckets
            .get(&index)
            .map_or(&[][..], |b| b.items.as_slice())
    }

    /// All `(key, item hash)` pairs, by bucket then key.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &Hash)> + '_ {
        self.buckets
            .values()
            .flat_map(|b| b.items.iter().map(|(k, h)| (k.as_slice(), h)))
    }

    /// The pairs that [`iter`](Self::iter) yields after `after`'s place (all of
    /// them for `None`), whether or not `after` is still in the tree. A cursor
    /// for paging through a partition: each page costs its own length plus a
    /// lookup, where collecting and sorting every key would cost the whole
    /// partition per page.
    pub fn iter_after<'a>(
        &'a self,
        after: Option<&'a [u8]>,
    ) -> impl Iterator<Item = (&'a [u8], &'a Hash)> + 'a {
        let start = after.map_or(0, |k| self.bucket_index(k));
        self.buckets.range(start..).flat_map(move |(&index, b)| {
            let skip = match after {
                Some(k) if index == start => match b.find(k) {
                    Ok(i) => i + 1,
                    Err(i) => i,
                },
                _ => 0,
            };
            b.items[skip..].iter().map(|(k, h)| (k.as_slice(), h))
        })
    }

    /// `(hash, count)` of a stored or virtual node.
    fn summary(&self, n: NodeRef) -> (Hash, u64) {
        let depth = self.cfg.depth;
        if n.t <= depth {
            return self.stored(depth - n.t, n.p);
        }
        let Some(b) = self.buckets.get(&(n.p >> (n.t - depth))) else {
            return (EMPTY, 0);
        };
        // A virtual node is never stored or combined into a parent, so a flat
        // hash over its item hashes (key order) will do: ~4× fewer SHA-256
        // blocks than an S3 tree over the same items.
        let mut hasher = Sha256::new();
        let mut count = 0u64;
        for ((_, h), _) in b
            .items
            .iter()
            .zip(&b.bits)
            .filter(|(_, &bits)| prefix(bits, n.t) == n.p)
        {
            hasher.update(h);
            count += 1;
        }
        let hash = if count == 0 {
            EMPTY
        } else {
            hasher.finalize().into()
        };
        (hash, count)
    }

    /// The items under a stored or virtual node, by bucket then key.
    fn items_under(&self, n: NodeRef) -> Box<dyn Iterator<Item = (&[u8], &Hash)> + '_> {
        let depth = self.cfg.depth;
        if n.t <= depth {
            let shift = depth - n.t;
            let (lo, hi) = (n.p << shift, (n.p + 1) << shift);
            return Box::new(
                self.buckets
                    .range(lo..hi)
                    .flat_map(|(_, b)| b.items.iter().map(|(k, h)| (k.as_slice(), h))),
            );
        }
        let Some(b) = self.buckets.get(&(n.p >> (n.t - depth))) else {
            return Box::new(std::iter::empty());
        };
        Box::new(
            b.items
                .iter()
                .zip(&b.bits)
                .filter(move |(_, &bits)| prefix(bits, n.t) == n.p)
                .map(|((k, h), _)| (k.as_slice(), h)),
        )
    }
}

// ---------------------------------------------------------------------------
// The exchange.

/// A message of the exchange. The node wraps it with the partition and peer
/// ids in its own network message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MerkleMsg {
    /// Initiator → responder: opens the exchange.
    Root {
        /// The initiator's tree depth (must match).
        depth: u8,
        /// The initiator's item count.
        count: u64,
        /// The initiator's root hash.
        root: Hash,
    },
    /// Responder → initiator: the roots are equal, nothing to repair.
    Equal,
    /// One descent step (either direction).
    Level(LevelMsg),
}

/// One step of the descent. All vectors are in the order both sides derive
/// from the previous message, so no node addresses travel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LevelMsg {
    /// Verdicts on the nodes the receiver described in its last message
    /// (children of the nodes it descended into, or the root), 2 bits each,
    /// four per byte, least significant first: 0 same (or skipped), 1 descend,
    /// 2 the sender lists its items, 3 the receiver must list its items.
    pub verdicts: Vec<u8>,
    /// The sender skipped something because of its caps (exchange incomplete).
    pub truncated: bool,
    /// For every "descend" verdict, the sender's two children (left, right).
    pub children: Vec<NodeSummary>,
    /// For every "sender lists" verdict, in order, then for every "receiver
    /// must list" verdict of the previous message, the sender's items.
    pub lists: Vec<ItemList>,
    /// Answers to the lists of the previous message, in order.
    pub answers: Vec<ListAnswer>,
}

/// A node as one side sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSummary {
    /// The node's hash.
    pub hash: Hash,
    /// The node's item count, saturated at 255 (only 0 and small matter).
    pub count: u8,
}

/// One side's items under a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemList {
    /// The keys, by bucket then key.
    pub keys: Vec<Vec<u8>>,
    /// Their item hashes, or empty when the receiver has no item there (then
    /// every key is to be sent anyway).
    pub hashes: Vec<Hash>,
}

/// The answer to an [`ItemList`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListAnswer {
    /// Indices of listed keys the answerer holds with a different item (both send).
    pub differ: Vec<u32>,
    /// Indices of listed keys the answerer lacks (the lister sends). Left
    /// empty for a keys-only list: there every key not in `differ` is missing.
    pub missing: Vec<u32>,
    /// Keys under the node the answerer holds and the list lacks (the answerer sends).
    pub extra: Vec<Vec<u8>>,
}

/// The outcome of an exchange for one side.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Keys whose version sets this side must send to the peer (sorted).
    pub send: Vec<Vec<u8>>,
    /// Keys whose version sets the peer will send to this side (sorted).
    pub receive: Vec<Vec<u8>>,
    /// False if a cap cut the exchange short: run another one later.
    pub complete: bool,
}

/// What to do after [`Exchange::handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this message and wait for the answer.
    Send(MerkleMsg),
    /// Send this last message; this side is done.
    Finish(MerkleMsg, Diff),
    /// Nothing more to send; this side is done.
    Done(Diff),
}

const SAME: u8 = 0;
const DESCEND: u8 = 1;
const I_LIST: u8 = 2;
const YOU_LIST: u8 = 3;

fn pack(codes: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; codes.len().div_ceil(4)];
    for (i, c) in codes.iter().enumerate() {
        out[i / 4] |= (c & 3) << ((i % 4) * 2);
    }
    out
}

fn unpack(bytes: &[u8], n: usize) -> Result<Vec<u8>, MerkleError> {
    if bytes.len() != n.div_ceil(4) {
        return Err(MerkleError::Malformed("verdict count"));
    }
    Ok((0..n)
        .map(|i| (bytes[i / 4] >> ((i % 4) * 2)) & 3)
        .collect())
}

fn saturate(n: u64) -> u8 {
    u8::try_from(n).unwrap_or(u8::MAX)
}

/// The postcard-encoded size of a message in bytes (what it costs on the wire
/// before the node's own framing).
pub fn encoded_len(msg: &MerkleMsg) -> usize {
    postcard::to_allocvec(msg).map_or(0, |v| v.len())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    AwaitRoot,
    AwaitPeer { first: bool },
    Done,
}

/// The reply being built.
#[derive(Default)]
struct Out {
    codes: Vec<u8>,
    children: Vec<NodeSummary>,
    lists: Vec<ItemList>,
    answers: Vec<ListAnswer>,
    targets: Vec<NodeRef>,
    requested: Vec<NodeRef>,
    sent_lists: Vec<(Vec<Vec<u8>>, bool)>,
    est: usize,
    progressed: bool,
}

/// One side of an anti-entropy exchange for one partition. It is a pure
/// state holder: the tree is borrowed per call (the node owns it), and
/// messages go in and out as values.
#[derive(Clone, Debug)]
pub struct Exchange {
    phase: Phase,
    /// Nodes the peer will judge next (the children I described last).
    targets: Vec<NodeRef>,
    /// Nodes I asked the peer to list.
    requested: Vec<NodeRef>,
    /// Lists I sent last (keys, keys only?), awaiting answers.
    sent_lists: Vec<(Vec<Vec<u8>>, bool)>,
    send: BTreeSet<Vec<u8>>,
    receive: BTreeSet<Vec<u8>>,
    keys_used: usize,
    bytes_sent: usize,
    truncated: bool,
    max_keys: usize,
    max_bytes: usize,
}

impl Exchange {
    fn with_limits(phase: Phase, cfg: &MerkleConfig) -> Self {
        Exchange {
            phase,
            targets: Vec::new(),
            requested: Vec::new(),
            sent_lists: Vec::new(),
            send: BTreeSet::new(),
            receive: BTreeSet::new(),
            keys_used: 0,
            bytes_sent: 0,
            truncated: false,
            max_keys: cfg.max_keys_per_round,
            max_bytes: cfg.max_bytes_per_round,
        }
    }

    /// Starts an exchange as the initiator: returns the state and the
    /// [`MerkleMsg::Root`] to send. Caps come from `tree.config()`.
    pub fn initiate(tree: &MerkleTree) -> (Exchange, MerkleMsg) {
        let mut x = Exchange::with_limits(Phase::AwaitPeer { first: true }, tree.config());
        let msg = MerkleMsg::Root {
            depth: tree.depth(),
            count: tree.len() as u64,
            root: tree.root(),
        };
        x.bytes_sent = encoded_len(&msg);
        x.targets = vec![NodeRef::ROOT];
        (x, msg)
    }

    /// A responder waiting for the initiator's [`MerkleMsg::Root`]. Caps come
    /// from the tree passed with that message.
    pub fn respond() -> Exchange {
        Exchange::with_limits(Phase::AwaitRoot, &MerkleConfig::default())
    }

    /// Whether this side has finished.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Handles a message from the peer. `tree` is this side's tree for the
    /// partition. If it changes between calls, the diff may be slightly off;
    /// the next exchange corrects that. After an error the exchange is
    /// abandoned.
    pub fn handle(&mut self, tree: &MerkleTree, msg: MerkleMsg) -> Result<Step, MerkleError> {
        let r = match (self.phase, msg) {
            (Phase::AwaitRoot, MerkleMsg::Root { depth, count, root }) => {
                self.on_root(tree, depth, count, root)
            }
            (Phase::AwaitPeer { first: true }, MerkleMsg::Equal) => {
                self.phase = Phase::Done;
                Ok(Step::Done(self.diff()))
            }
            (Phase::AwaitPeer { .. }, MerkleMsg::Level(m)) => self.on_level(tree, m),
            _ => Err(MerkleError::UnexpectedMessage),
        };
        if r.is_err() {
            self.phase = Phase::Done;
        }
        r
    }

    fn diff(&self) -> Diff {
        Diff {
            send: self.send.iter().cloned().collect(),
            receive: self.receive.iter().cloned().collect(),
            complete: !self.truncated,
        }
    }

    fn on_root(
        &mut self,
        tree: &MerkleTree,
        depth: u8,
        count: u64,
        root: Hash,
    ) -> Result<Step, MerkleError> {
        self.max_keys = tree.config().max_keys_per_round;
        self.max_bytes = tree.config().max_bytes_per_round;
        if depth != tree.depth() {
            return Err(MerkleError::DepthMismatch {
                ours: tree.depth(),
                theirs: depth,
            });
        }
        if root == tree.root() {
            self.phase = Phase::Done;
            let msg = MerkleMsg::Equal;
            self.bytes_sent += encoded_len(&msg);
            return Ok(Step::Finish(msg, self.diff()));
        }
        let mut out = Out::default();
        let peer = NodeSummary {
            hash: root,
            count: saturate(count),
        };
        self.judge(tree, NodeRef::ROOT, &peer, &mut out);
        Ok(self.finish_round(out))
    }

    fn on_level(&mut self, tree: &MerkleTree, m: LevelMsg) -> Result<Step, MerkleError> {
        let targets = std::mem::take(&mut self.targets);
        let requested = std::mem::take(&mut self.requested);
        let sent_lists = std::mem::take(&mut self.sent_lists);
        let codes = unpack(&m.verdicts, targets.len())?;
        self.truncated |= m.truncated;
        let (mut descended, mut listed, mut must_list) = (Vec::new(), Vec::new(), Vec::new());
        for (&node, code) in targets.iter().zip(codes) {
            match code {
                DESCEND if node.t >= POS_BITS => {
                    return Err(MerkleError::Malformed("descend below key bits"))
                }
                DESCEND => descended.push(node),
                I_LIST => listed.push(node),
                YOU_LIST => must_list.push(node),
                _ => {}
            }
        }
        if m.children.len() != 2 * descended.len() {
            return Err(MerkleError::Malformed("children count"));
        }
        if m.lists.len() != listed.len() + requested.len() {
            return Err(MerkleError::Malformed("list count"));
        }
        if m.answers.len() != sent_lists.len() {
            return Err(MerkleError::Malformed("answer count"));
        }
        for ((keys, keys_only), answer) in sent_lists.iter().zip(&m.answers) {
            self.apply_answer(keys, *keys_only, answer)?;
        }
        if descended.is_empty() && m.lists.is_empty() && must_list.is_empty() {
            // Nothing asks for a reply: the peer has finished, and so have we.
            self.phase = Phase::Done;
            return Ok(Step::Done(self.diff()));
        }
        let mut out = Out::default();
        for (node, pair) in descended.iter().zip(m.children.chunks_exact(2)) {
            self.judge(tree, node.child(0), &pair[0], &mut out);
            self.judge(tree, node.child(1), &pair[1], &mut out);
        }
        for (&node, list) in listed.iter().chain(&requested).zip(m.lists) {
            let answer = self.answer(tree, node, list)?;
            out.est += 2 * (answer.differ.len() + answer.missing.len())
                + answer.extra.iter().map(|k| k.len() + 1).sum::<usize>()
                + 3;
            out.answers.push(answer);
        }
        for node in must_list {
            self.list_items(tree, node, true, &mut out);
        }
        Ok(self.finish_round(out))
    }

    fn finish_round(&mut self, out: Out) -> Step {
        let expecting =
            !out.targets.is_empty() || !out.requested.is_empty() || !out.lists.is_empty();
        let msg = MerkleMsg::Level(LevelMsg {
            verdicts: pack(&out.codes),
            truncated: self.truncated,
            children: out.children,
            lists: out.lists,
            answers: out.answers,
        });
        self.bytes_sent += encoded_len(&msg);
        self.targets = out.targets;
        self.requested = out.requested;
        self.sent_lists = out.sent_lists;
        if expecting {
            self.phase = Phase::AwaitPeer { first: false };
            Step::Send(msg)
        } else {
            self.phase = Phase::Done;
            Step::Finish(msg, self.diff())
        }
    }

    fn over_budget(&self, est: usize) -> bool {
        self.keys_used >= self.max_keys || self.bytes_sent.saturating_add(est) >= self.max_bytes
    }

    /// Keys this side may still put in one list or answer (at least one, so
    /// every exchange makes progress).
    fn key_room(&self) -> usize {
        self.max_keys.saturating_sub(self.keys_used).max(1)
    }

    /// Compares our `node` with the peer's summary and records the verdict.
    fn judge(&mut self, tree: &MerkleTree, node: NodeRef, peer: &NodeSummary, out: &mut Out) {
        let (hash, count) = tree.summary(node);
        if hash == peer.hash {
            out.codes.push(SAME);
            return;
        }
        if out.progressed && self.over_budget(out.est) {
            self.truncated = true;
            out.codes.push(SAME);
            return;
        }
        out.progressed = true;
        let peer_count = u64::from(peer.count);
        if count == 0 || peer_count == 0 || count <= LIST_THRESHOLD || node.t >= POS_BITS {
            self.list_items(tree, node, peer_count != 0, out);
            out.codes.push(I_LIST);
        } else if peer_count <= LIST_THRESHOLD {
            out.requested.push(node);
            out.codes.push(YOU_LIST);
        } else {
            for bit in 0..2 {
                let child = node.child(bit);
                let (hash, count) = tree.summary(child);
                out.children.push(NodeSummary {
                    hash,
                    count: saturate(count),
                });
                out.targets.push(child);
            }
            out.est += 2 * 33;
            out.codes.push(DESCEND);
        }
    }

    /// Lists our items under `node` (keys only if `!with_hashes`, capped).
    fn list_items(&mut self, tree: &MerkleTree, node: NodeRef, with_hashes: bool, out: &mut Out) {
        let room = if with_hashes {
            usize::MAX
        } else {
            self.key_room()
        };
        let (mut keys, mut hashes) = (Vec::new(), Vec::new());
        for (key, hash) in tree.items_under(node) {
            if keys.len() == room {
                self.truncated = true;
                break;
            }
            keys.push(key.to_vec());
            if with_hashes {
                hashes.push(*hash);
            }
        }
        let keys_only = !with_hashes && !keys.is_empty();
        self.keys_used += keys.len();
        out.est += keys.iter().map(|k| k.len() + 1).sum::<usize>() + 32 * hashes.len() + 2;
        out.lists.push(ItemList {
            keys: keys.clone(),
            hashes,
        });
        out.sent_lists.push((keys, keys_only));
    }

    /// Answers the peer's list of its items under `node`.
    fn answer(
        &mut self,
        tree: &MerkleTree,
        node: NodeRef,
        list: ItemList,
    ) -> Result<ListAnswer, MerkleError> {
        if !list.hashes.is_empty() && list.hashes.len() != list.keys.len() {
            return Err(MerkleError::Malformed("list hashes"));
        }
        let keys_only = list.hashes.is_empty();
        let mut answer = ListAnswer::default();
        for (i, key) in list.keys.iter().enumerate() {
            let idx = u32::try_from(i).map_err(|_| MerkleError::Malformed("list too long"))?;
            match tree.get(key) {
                None => {
                    if !keys_only {
                        answer.missing.push(idx);
                    }
                    self.receive.insert(key.clone());
                }
                Some(mine) if list.hashes.get(i) != Some(&mine) => {
                    answer.differ.push(idx);
                    self.send.insert(key.clone());
                    self.receive.insert(key.clone());
                }
                Some(_) => {}
            }
        }
        let listed: BTreeSet<&[u8]> = list.keys.iter().map(Vec::as_slice).collect();
        let room = self.key_room();
        for (key, _) in tree.items_under(node) {
            if listed.contains(key) {
                continue;
            }
            if answer.extra.len() == room {
                self.truncated = true;
                break;
            }
            answer.extra.push(key.to_vec());
            self.send.insert(key.to_vec());
        }
        self.keys_used += answer.extra.len();
        Ok(answer)
    }

    /// Applies the peer's answer to a list we sent.
    fn apply_answer(
        &mut self,
        keys: &[Vec<u8>],
        keys_only: bool,
        answer: &ListAnswer,
    ) -> Result<(), MerkleError> {
        let key = |i: u32| {
            keys.get(i as usize)
                .ok_or(MerkleError::Malformed("answer index"))
        };
        if keys_only {
            // Every listed key goes to the peer; `differ` marks the ones it has too.
            self.send.extend(keys.iter().cloned());
        }
        for &i in &answer.missing {
            self.send.insert(key(i)?.clone());
        }
        for &i in &answer.differ {
            self.send.insert(key(i)?.clone());
            self.receive.insert(key(i)?.clone());
        }
        for k in &answer.extra {
            self.receive.insert(k.clone());
        }
        Ok(())
    }
}

/// What [`run_exchange`] observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeReport {
    /// Round trips (messages / 2, rounded up).
    pub rounds: usize,
    /// Messages exchanged.
    pub messages: usize,
    /// Total postcard-encoded bytes of all messages.
    pub bytes: usize,
    /// Keys `a` must send to `b` (sorted).
    pub a_sends: Vec<Vec<u8>>,
    /// Keys `b` must send to `a` (sorted).
    pub b_sends: Vec<Vec<u8>>,
    /// False if a cap cut the exchange short.
    pub complete: bool,
}

/// Runs one exchange between `a` (initiator) and `b` (responder) in memory,
/// through the message API, with every message postcard-encoded and decoded
/// (so `bytes` is real). Caps come from each tree's config. For tests and
/// benches.
pub fn run_exchange(a: &MerkleTree, b: &MerkleTree) -> Result<ExchangeReport, MerkleError> {
    let (mut xa, first) = Exchange::initiate(a);
    let mut xb = Exchange::respond();
    let (mut da, mut db) = (None, None);
    let (mut messages, mut bytes) = (0usize, 0usize);
    let mut in_flight = Some((first, false)); // (message, addressed to a?)
    while let Some((msg, to_a)) = in_flight.take() {
        let wire = postcard::to_allocvec(&msg).map_err(|_| MerkleError::Malformed("encode"))?;
        messages += 1;
        bytes += wire.len();
        if messages > 1000 {
            return Err(MerkleError::Malformed("exchange does not terminate"));
        }
        let msg: MerkleMsg =
            postcard::from_bytes(&wire).map_err(|_| MerkleError::Malformed("decode"))?;
        let (x, tree, done) = if to_a {
            (&mut xa, a, &mut da)
        } else {
            (&mut xb, b, &mut db)
        };
        match x.handle(tree, msg)? {
            Step::Send(m) => in_flight = Some((m, !to_a)),
            Step::Finish(m, d) => {
                *done = Some(d);
                in_flight = Some((m, !to_a));
            }
            Step::Done(d) => *done = Some(d),
        }
    }
    let (Some(da), Some(db)) = (da, db) else {
        return Err(MerkleError::Malformed("exchange ended early"));
    };
    debug_assert_eq!(da.receive, db.send);
    debug_assert_eq!(db.receive, da.send);
    debug_assert_eq!(da.complete, db.complete);
    Ok(ExchangeReport {
        rounds: messages.div_ceil(2),
        messages,
        bytes,
        a_sends: da.send,
        b_sends: db.send,
        complete: da.complete && db.complete,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Map = BTreeMap<Vec<u8>, Hash>;

    fn sha(parts: &[&[u8]]) -> Hash {
        let mut h = Sha256::new();
        for p in parts {
            h.update(p);
        }
        h.finalize().into()
    }

    fn key(i: u64) -> Vec<u8> {
        format!("user:{i:010}").into_bytes()
    }

    fn item(key: &[u8], version: u64) -> Hash {
        sha(&[key, b"|", &version.to_be_bytes()])
    }

    fn cfg(depth: u8) -> MerkleConfig {
        MerkleConfig {
            depth,
            max_keys_per_round: usize::MAX,
            max_bytes_per_round: usize::MAX,
        }
    }

    fn tree_of(c: MerkleConfig, m: &Map) -> MerkleTree {
        MerkleTree::from_items(c, m.iter().map(|(k, v)| (k.clone(), *v)))
    }

    /// Keys whose item differs or that exist on one side only: (a sends, b sends).
    fn naive_diff(a: &Map, b: &Map) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let a_sends = a
            .iter()
            .filter(|(k, v)| b.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .collect();
        let b_sends = b
            .iter()
            .filter(|(k, v)| a.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .collect();
        (a_sends, b_sends)
    }

    /// Applies a report the way a node would: copy one-sided keys, merge conflicts
    /// into the same "merged" item on both sides.
    fn apply(
        a: &mut MerkleTree,
        b: &mut MerkleTree,
        ma: &mut Map,
        mb: &mut Map,
        r: &ExchangeReport,
    ) {
        let keys: BTreeSet<Vec<u8>> = r.a_sends.iter().chain(&r.b_sends).cloned().collect();
        for k in keys {
            let merged = match (ma.get(&k), mb.get(&k)) {
                (Some(x), Some(y)) => sha(&[x.min(y), x.max(y)]),
                (Some(x), None) | (None, Some(x)) => *x,
                (None, None) => continue,
            };
            for (t, m) in [(&mut *a, &mut *ma), (&mut *b, &mut *mb)] {
                t.insert(&k, merged);
                m.insert(k.clone(), merged);
            }
        }
    }

    // ---- S3: the plain Merkle construction -------------------------------

    #[test]
    fn s3_roots_k8_k7_k5() {
        let leaf = |i: usize| sha(&[format!("K{i}").as_bytes(), b"|{A:1}"]);
        let h = |a: &Hash, b: &Hash| sha(&[a, b]);
        let l: Vec<Hash> = (1..=8).map(leaf).collect();
        let (h12, h34, h56, h78) = (
            h(&l[0], &l[1]),
            h(&l[2], &l[3]),
            h(&l[4], &l[5]),
            h(&l[6], &l[7]),
        );
        let k8 = h(&h(&h12, &h34), &h(&h56, &h78));
        let k7 = h(&h(&h12, &h34), &h(&h56, &h(&l[6], &l[6])));
        let h55 = h(&l[4], &l[4]);
        let k5 = h(&h(&h12, &h34), &h(&h55, &h55));
        for (n, expected) in [(8, k8), (7, k7), (5, k5)] {
            let levels = build_levels(&l[..n]);
            println!("K1..K{n}:\n{}", render_tree(&levels));
            assert_eq!(levels.last().unwrap(), &vec![expected], "K1..K{n}");
            // A depth-0 tree is one bucket: exactly S3 over the items sorted by key.
            let items = (1..=n)
                .rev()
                .map(|i| (format!("K{i}").into_bytes(), leaf(i)));
            assert_eq!(MerkleTree::from_items(cfg(0), items).root(), expected);
        }
        assert!(render_tree(&build_levels(&l[..5])).contains("(x2)"));
    }

    #[test]
    fn s3_edge_cases() {
        assert_eq!(build_levels(&[]), vec![vec![EMPTY]]);
        let x = sha(&[b"x"]);
        assert_eq!(build_levels(&[x]), vec![vec![x]]);
        assert_eq!(build_levels(&[x, x]).len(), 2);
        assert_eq!(MerkleTree::new(cfg(10)).root(), EMPTY);
    }

    #[test]
    fn stored_nodes_compose() {
        let m: Map = (0..500).map(|i| (key(i), item(&key(i), 1))).collect();
        let t = tree_of(cfg(4), &m);
        assert_eq!(t.len(), 500);
        assert_eq!(t.node_len(4, 0), 500);
        for level in 1..=4u8 {
            for i in 0..(1u64 << (4 - level)) {
                let (l, r) = (t.node(level - 1, 2 * i), t.node(level - 1, 2 * i + 1));
                assert_eq!(t.node(level, i), hash_pair(&l, &r));
                assert_eq!(
                    t.node_len(level, i),
                    t.node_len(level - 1, 2 * i) + t.node_len(level - 1, 2 * i + 1)
                );
            }
        }
        for b in 0..16 {
            let items = t.bucket_items(b);
            let leaves: Vec<Hash> = items.iter().map(|(_, h)| *h).collect();
            assert_eq!(t.node(0, b), build_levels(&leaves).last().unwrap()[0]);
            assert!(items.windows(2).all(|w| w[0].0 < w[1].0));
            assert!(items.iter().all(|(k, _)| t.bucket_index(k) == b));
        }
        assert_eq!(t.iter().count(), 500);
    }

    #[test]
    fn update_cost_is_bucket_path_plus_depth() {
        // One bucket of 100 items: ⌈log2 100⌉ = 7 hashes, plus 10 parents.
        let mut t = MerkleTree::new(cfg(10));
        let mut placed = Vec::new();
        let mut i = 0;
        while placed.len() < 100 {
            if t.bucket_index(&key(i)) == 5 {
                t.insert(&key(i), item(&key(i), 0));
                placed.push(key(i));
            }
            i += 1;
        }
        assert_eq!(t.insert(&placed[40], item(&placed[40], 1)), 7 + 10);
        assert_eq!(
            t.insert(&placed[40], item(&placed[40], 1)),
            0,
            "unchanged item"
        );
        // A lone key: the bucket hash is the item itself, only the 10 parents.
        let mut lone = MerkleTree::new(cfg(10));
        assert_eq!(lone.insert(b"k", item(b"k", 1)), 10);
        assert_eq!(lone.insert(b"k", item(b"k", 2)), 10);
        assert_eq!(lone.remove(b"k"), 0, "the emptied path needs no hash");
        assert_eq!(lone.root(), EMPTY);
        assert_eq!(lone.remove(b"k"), 0);
        // Insertions shift leaves only inside their bucket: at most m + depth.
        let n = t.insert(b"new", item(b"new", 0));
        assert!(
            n <= t.bucket_items(t.bucket_index(b"new")).len() + 10,
            "{n}"
        );
    }

    #[test]
    fn identical_trees_cost_one_root() {
        let m: Map = (0..2000).map(|i| (key(i), item(&key(i), 1))).collect();
        let (a, b) = (tree_of(cfg(10), &m), tree_of(cfg(10), &m));
        let r = run_exchange(&a, &b).unwrap();
        assert_eq!(r.messages, 2);
        let (_, root_msg) = Exchange::initiate(&a);
        assert_eq!(
            encoded_len(&root_msg),
            1 + 1 + 2 + 32,
            "tag, depth, count, root"
        );
        assert_eq!(r.bytes, encoded_len(&root_msg) + 1, "Root + Equal");
        assert!(r.a_sends.is_empty() && r.b_sends.is_empty() && r.complete);
    }

    #[test]
    fn one_insertion_stays_aligned() {
        let m: Map = (0..5000).map(|i| (key(i), item(&key(i), 1))).collect();
        let a = tree_of(cfg(10), &m);
        let mut b = a.clone();
        b.insert(b"extra", item(b"extra", 1));
        let r = run_exchange(&a, &b).unwrap();
        assert_eq!(r.b_sends, vec![b"extra".to_vec()]);
        assert!(r.a_sends.is_empty());
        // Bound 64·(⌈log2 5000⌉ + 1) hash bytes + the item; ~7 bytes of framing per level.
        let bound = 64 * (13 + 1) + 5 + 32;
        assert!(r.bytes * 100 < bound * 120, "{} bytes vs {bound}", r.bytes);
    }

    #[test]
    fn fresh_replica_gets_everything() {
        let m: Map = (0..300).map(|i| (key(i), item(&key(i), 1))).collect();
        let full = tree_of(cfg(6), &m);
        let empty = MerkleTree::new(cfg(6));
        for (a, b, full_is_a) in [(&full, &empty, true), (&empty, &full, false)] {
            let r = run_exchange(a, b).unwrap();
            let (sends, other) = if full_is_a {
                (&r.a_sends, &r.b_sends)
            } else {
                (&r.b_sends, &r.a_sends)
            };
            assert_eq!(sends, &m.keys().cloned().collect::<Vec<_>>());
            assert!(other.is_empty());
            // Keys only (no item hashes), plus a root.
            assert!(r.bytes < 300 * 17 + 200, "{} bytes", r.bytes);
        }
    }

    #[test]
    fn depth_mismatch_and_unexpected_messages() {
        let a = MerkleTree::new(cfg(10));
        let b = MerkleTree::new(cfg(8));
        let (_, root) = Exchange::initiate(&a);
        let mut y = Exchange::respond();
        assert_eq!(
            y.handle(&b, root.clone()),
            Err(MerkleError::DepthMismatch {
                ours: 8,
                theirs: 10
            })
        );
        assert!(y.is_done());
        let mut y = Exchange::respond();
        assert_eq!(
            y.handle(&b, MerkleMsg::Equal),
            Err(MerkleError::UnexpectedMessage)
        );
        let (mut x, _) = Exchange::initiate(&a);
        let bad = MerkleMsg::Level(LevelMsg {
            verdicts: vec![],
            ..LevelMsg::default()
        });
        assert_eq!(
            x.handle(&a, bad),
            Err(MerkleError::Malformed("verdict count"))
        );
        assert_eq!(
            MerkleConfig {
                depth: 40,
                ..cfg(0)
            }
            .validate(),
            Err(MerkleError::DepthTooLarge(40))
        );
    }

    #[test]
    fn capped_exchange_reports_incomplete_and_converges() {
        let c = MerkleConfig {
            depth: 10,
            max_keys_per_round: 5,
            max_bytes_per_round: 4096,
        };
        let mut ma: Map = (0..3000).map(|i| (key(i), item(&key(i), 1))).collect();
        let mut mb = ma.clone();
        for i in (0..3000).step_by(30) {
            mb.insert(key(i), item(&key(i), 2));
        }
        let (mut a, mut b) = (tree_of(c, &ma), tree_of(c, &mb));
        let mut exchanges = 0;
        while a.root() != b.root() {
            let r = run_exchange(&a, &b).unwrap();
            assert!(!r.a_sends.is_empty(), "every exchange repairs something");
            assert!(r.bytes < 2 * 4096 + 2000, "{} bytes", r.bytes);
            if exchanges == 0 {
                assert!(!r.complete);
            }
            apply(&mut a, &mut b, &mut ma, &mut mb, &r);
            exchanges += 1;
            assert!(exchanges <= 100);
        }
        assert!(exchanges > 1);
        assert_eq!(ma, mb);
    }

    /// Bytes to repair d differing keys among n, against the bound and against
    /// sending everything. Run with
    /// `cargo test --release --lib bytes_table -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bytes_table() {
        let c = MerkleConfig {
            depth: 10,
            ..cfg(10)
        };
        println!(
            "depth {}, keys of {} bytes, d/3 changed items, d/3 only on a, d/3 only on b",
            c.depth,
            key(0).len()
        );
        println!(
            "{:>8} {:>5} | {:>10} {:>5} | {:>10} {:>10} {:>7} | {:>11}",
            "n", "d", "bytes", "msgs", "hash bound", "+items", "ratio", "send all"
        );
        for n in [1_000u64, 100_000, 1_000_000] {
            let a = MerkleTree::from_items(c, (0..n).map(|i| (key(i), item(&key(i), 1))));
            for d in [0u64, 1, 10, 1000] {
                let mut b = a.clone();
                for j in 0..d {
                    let i = j * n / d.max(1);
                    match j % 3 {
                        0 => b.insert(&key(i), item(&key(i), 2)),
                        1 => b.remove(&key(i)),
                        _ => b.insert(&key(n + j), item(&key(n + j), 1)),
                    };
                }
                let r = run_exchange(&a, &b).unwrap();
                // Changed keys (j % 3 == 0) travel both ways.
                assert_eq!(
                    (r.a_sends.len() + r.b_sends.len()) as u64,
                    d + d.div_ceil(3)
                );
                let hash_bound = if d == 0 {
                    32
                } else {
                    let ratio = (n as f64 / d as f64).log2().ceil().max(0.0) as u64;
                    64 * d * (ratio + 1)
                };
                let bound = hash_bound + d * (key(0).len() as u64 + 32);
                println!(
                    "{:>8} {:>5} | {:>10} {:>5} | {:>10} {:>10} {:>6.2}x | {:>11}",
                    n,
                    d,
                    r.bytes,
                    r.messages,
                    hash_bound,
                    bound,
                    r.bytes as f64 / bound as f64,
                    n * (key(0).len() as u64 + 32)
                );
            }
        }
    }

    // ---- property tests ---------------------------------------------------

    /// Two replicas: a random base, and a copy with a few inserts/updates/removals.
    fn arb_pair() -> impl Strategy<Value = (Map, Map)> {
        (
            prop::collection::btree_map(0u64..400, 0u64..3, 0..150),
            prop::collection::vec((0u64..400, prop::option::of(0u64..4)), 0..12),
        )
            .prop_map(|(base, ops)| {
                let a: Map = base
                    .into_iter()
                    .map(|(k, v)| (key(k), item(&key(k), v)))
                    .collect();
                let mut b = a.clone();
                for (k, v) in ops {
                    match v {
                        Some(v) => b.insert(key(k), item(&key(k), v)),
                        None => b.remove(&key(k)),
                    };
                }
                (a, b)
            })
    }

    /// Two unrelated replicas (large divergence, one side often much bigger).
    fn arb_independent() -> impl Strategy<Value = (Map, Map)> {
        let side = || prop::collection::btree_map(0u64..300, 0u64..2, 0..120);
        (side(), side()).prop_map(|(a, b)| {
            let to_map = |m: BTreeMap<u64, u64>| -> Map {
                m.into_iter()
                    .map(|(k, v)| (key(k), item(&key(k), v)))
                    .collect()
            };
            (to_map(a), to_map(b))
        })
    }

    fn arb_replicas() -> impl Strategy<Value = (Map, Map)> {
        prop_oneof![3 => arb_pair(), 1 => arb_independent()]
    }

    fn arb_depth() -> impl Strategy<Value = u8> {
        prop::sample::select(vec![0u8, 1, 3, 6, 10])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Paging with `iter_after` from each page's last key (the pull protocol's
        /// cursor) visits every pair once, in `iter`'s order, also when the key
        /// under the cursor is removed between pages.
        #[test]
        fn paging_after_a_cursor_visits_every_pair_once(
            (ma, _) in arb_pair(),
            depth in arb_depth(),
            page in 1usize..9,
            remove_cursor in any::<bool>(),
        ) {
            let mut t = tree_of(cfg(depth), &ma);
            let all: Vec<Vec<u8>> = t.iter().map(|(k, _)| k.to_vec()).collect();
            let mut seen: Vec<Vec<u8>> = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            loop {
                let keys: Vec<Vec<u8>> = t
                    .iter_after(after.as_deref())
                    .take(page)
                    .map(|(k, _)| k.to_vec())
                    .collect();
                let Some(last) = keys.last().cloned() else { break };
                seen.extend(keys);
                if remove_cursor {
                    t.remove(&last);
                }
                after = Some(last);
            }
            prop_assert_eq!(seen, all);
        }

        #[test]
        fn equal_sets_iff_equal_roots((ma, mb) in arb_pair(), depth in arb_depth()) {
            let a = tree_of(cfg(depth), &ma);
            // Build b incrementally, in reverse order, to vary history.
            let mut b = MerkleTree::new(cfg(depth));
            for (k, v) in mb.iter().rev() {
                b.insert(k, *v);
            }
            prop_assert_eq!(ma == mb, a.root() == b.root());
        }

        #[test]
        fn exchange_finds_exactly_the_symmetric_difference((ma, mb) in arb_replicas(), depth in arb_depth()) {
            let (a, b) = (tree_of(cfg(depth), &ma), tree_of(cfg(depth), &mb));
            let r = run_exchange(&a, &b).unwrap();
            let (a_sends, b_sends) = naive_diff(&ma, &mb);
            prop_assert_eq!(&r.a_sends, &a_sends);
            prop_assert_eq!(&r.b_sends, &b_sends);
            prop_assert!(r.complete);
            if ma == mb {
                prop_assert_eq!(r.messages, 2);
            }
            // Applying the diff both ways makes the replicas equal.
            let (mut a, mut b, mut ma, mut mb) = (a, b, ma, mb);
            apply(&mut a, &mut b, &mut ma, &mut mb, &r);
            prop_assert_eq!(a.root(), b.root());
            prop_assert_eq!(ma, mb);
        }

        #[test]
        fn incremental_equals_rebuild(
            ops in prop::collection::vec((0u64..80, prop::option::of(0u64..3)), 1..60),
            depth in arb_depth(),
        ) {
            let mut t = MerkleTree::new(cfg(depth));
            let mut m = Map::new();
            for (k, v) in ops {
                let k = key(k);
                let hashes = match v {
                    Some(v) => {
                        let bucket = t.bucket_index(&k);
                        let before = t.bucket_items(bucket).len();
                        let existed = m.insert(k.clone(), item(&k, v));
                        let h = t.insert(&k, item(&k, v));
                        match existed {
                            Some(old) if old == item(&k, v) => prop_assert_eq!(h, 0),
                            Some(_) => {
                                let path = before.next_power_of_two().trailing_zeros() as usize;
                                prop_assert_eq!(h, path + usize::from(depth));
                            }
                            None => {
                                let m = before + 1;
                                let log = m.next_power_of_two().trailing_zeros() as usize;
                                prop_assert!(h <= m - 1 + log + usize::from(depth), "{} > bound", h);
                            }
                        }
                        h
                    }
                    None => {
                        m.remove(&k);
                        t.remove(&k)
                    }
                };
                let log = (m.len() + 1).next_power_of_two().trailing_zeros() as usize;
                prop_assert!(hashes <= m.len() + log + usize::from(depth));
                prop_assert_eq!(&t, &tree_of(cfg(depth), &m));
            }
        }

        #[test]
        fn tiny_caps_converge_over_several_exchanges((ma, mb) in arb_replicas(), depth in arb_depth()) {
            let c = MerkleConfig { depth, max_keys_per_round: 1, max_bytes_per_round: 1 };
            let (mut a, mut b) = (tree_of(c, &ma), tree_of(c, &mb));
            let (mut ma, mut mb) = (ma, mb);
            let (a_all, b_all) = naive_diff(&ma, &mb);
            let budget = a_all.len() + b_all.len() + 1;
            let mut exchanges = 0;
            while a.root() != b.root() {
                let r = run_exchange(&a, &b).unwrap();
                let (a_now, b_now) = naive_diff(&ma, &mb);
                prop_assert!(!(r.a_sends.is_empty() && r.b_sends.is_empty()), "no progress");
                prop_assert!(r.a_sends.iter().all(|k| a_now.contains(k)));
                prop_assert!(r.b_sends.iter().all(|k| b_now.contains(k)));
                apply(&mut a, &mut b, &mut ma, &mut mb, &r);
                exchanges += 1;
                prop_assert!(exchanges <= budget);
            }
            prop_assert_eq!(ma, mb);
        }
    }
}
