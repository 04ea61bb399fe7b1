//! Merkle anti-entropy between replicas, driven by the node's timer: the repair of
//! last resort for what hinted handoff and read repair cannot fix (a wiped disk, a
//! hint lost with its stand-in, an owner down past the hint window).
//!
//! Every `anti_entropy_interval` (jittered) a node picks the next partition it
//! replicates (rotating) and a reachable co-replica (random), and runs a
//! [`merkle::Exchange`] with it: roots first — one hash per partition when they
//! agree — then only the differing branches, down to the differing keys. Both sides
//! then send each other exactly those keys' version sets and merge them causally
//! (no overwrite; siblings preserved), which makes both trees identical. Each
//! exchange is bounded (`merkle_max_keys_per_round`); a large divergence is
//! finished by later rounds.
//!
//! The trees (one per replicated partition, see `merkle.rs`) are derived state:
//! built from storage at start, updated on every committed write, and on a ring
//! change only the partitions whose replica set changed are (re)built.

use crate::id::NodeId;
use crate::merkle::{self, Exchange, MerkleMsg, MerkleTree, Step};
use crate::message::{Event, Message};
use crate::node::{Node, Timer};
use crate::ring::Partition;
use crate::store::{Op, Storage};
use crate::time::{Dur, Time};
use crate::version::Object;
use bytes::Bytes;
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Anti-entropy messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// One step of a Merkle exchange.
    Exchange {
        /// The initiator's exchange number.
        xid: u64,
        /// True when sent by the initiator.
        from_initiator: bool,
        /// The partition compared.
        partition: Partition,
        /// The step.
        msg: MerkleMsg,
    },
    /// The version sets of keys that differ, to merge.
    Repair {
        /// The partition.
        partition: Partition,
        /// Keys and versions.
        items: Vec<(Bytes, Object)>,
    },
}

/// One exchange in progress.
pub(crate) struct Session {
    peer: NodeId,
    partition: Partition,
    exchange: Exchange,
    started: Time,
}

/// Sessions older than this are abandoned (the peer crashed or a message was lost).
const SESSION_TTL: Dur = Dur::secs(10);

/// The Merkle item hash of a key's version set: SHA-256(len(key) ‖ key ‖ postcard(object)).
pub fn item_hash(key: &[u8], object: &Object) -> merkle::Hash {
    let mut h = Sha256::new();
    h.update((key.len() as u64).to_le_bytes());
    h.update(key);
    h.update(postcard::to_allocvec(object).unwrap_or_default());
    h.finalize().into()
}

/// Anti-entropy state of a node.
#[derive(Default)]
pub(crate) struct AntiEntropy {
    pub trees: BTreeMap<Partition, MerkleTree>,
    /// Keys written since the last flush, per tracked partition.
    pub dirty: BTreeMap<Partition, std::collections::BTreeSet<Bytes>>,
    /// Partitions the last heartbeat tick found dirty, flushed one per input
    /// handled afterwards ([`Node::flush_next`]).
    pub flush_queue: std::collections::VecDeque<Partition>,
    outgoing: BTreeMap<u64, Session>,
    incoming: BTreeMap<(NodeId, u64), Session>,
    next_xid: u64,
    cursor: usize,
}

impl AntiEntropy {
    pub fn root(&self, p: Partition) -> Option<merkle::Hash> {
        self.trees.get(&p).map(MerkleTree::root)
    }
}

impl<S: Storage> Node<S> {
    fn merkle_config(&self) -> merkle::MerkleConfig {
        merkle::MerkleConfig {
            depth: self.config.merkle_depth,
            max_keys_per_round: self.config.merkle_max_keys_per_round,
            ..merkle::MerkleConfig::default()
        }
    }

    /// Makes the set of trees match the partitions this node replicates, building
    /// only the missing ones from storage. Returns how many trees were built.
    pub(crate) fn sync_trees(&mut self) -> usize {
        let Some(ring) = &self.ring else { return 0 };
        // Partitions replicated now, plus those this node gains in a pending ring.
        let mut wanted: Vec<Partition> = ring.replicated_by(self.id);
        if let Some(pending) = self.membership.pending() {
            wanted.extend(pending.replicated_by(self.id));
            wanted.sort();
            wanted.dedup();
        }
        let q = ring.partitions();
        self.ae.trees.retain(|p, _| wanted.contains(p));
        let missing: Vec<Partition> = wanted
            .into_iter()
            .filter(|p| !self.ae.trees.contains_key(p))
            .collect();
        if missing.is_empty() {
            return 0;
        }
        let cfg = self.merkle_config();
        let mut fresh: BTreeMap<Partition, Vec<(Vec<u8>, merkle::Hash)>> =
            missing.iter().map(|p| (*p, Vec::new())).collect();
        let mut after: Option<Bytes> = None;
        loop {
            let page = self.storage.objects_after(after.as_deref(), 1024);
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (key, object) in &page {
                let p = crate::ring::partition_at(crate::ring::key_position(key), q);
                if let Some(items) = fresh.get_mut(&p) {
                    items.push((key.to_vec(), item_hash(key, object)));
                }
            }
        }
        let built = fresh.len();
        for (p, items) in fresh {
            self.ae.trees.insert(p, MerkleTree::from_items(cfg, items));
        }
        built
    }

    /// The keys of tracked partitions a batch touches (cheap: the item hashes are
    /// computed later, once per key, by [`Node::flush_trees`]).
    pub(crate) fn tree_updates(
        &self,
        ops: &[Op],
        parts: &[Option<Partition>],
    ) -> Vec<(Partition, Bytes)> {
        ops.iter()
            .zip(parts)
            .filter_map(|(op, p)| match (op, p) {
                (Op::PutObject { key, .. } | Op::DeleteObject { key }, Some(p)) => {
                    self.ae.trees.contains_key(p).then(|| (*p, key.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// The active ring's partition of each object op's key (`None` for other ops,
    /// or without a ring), computed once per commit: the trees and the orphan check
    /// both need it, and it is a SHA-256 of the key.
    pub(crate) fn key_partitions(&self, ops: &[Op]) -> Vec<Option<Partition>> {
        ops.iter()
            .map(|op| match (op, &self.ring) {
                (Op::PutObject { key, .. } | Op::DeleteObject { key }, Some(ring)) => {
                    Some(ring.partition_of(key))
                }
                _ => None,
            })
            .collect()
    }

    /// Marks keys of a committed batch dirty in their trees.
    pub(crate) fn update_trees(&mut self, updates: Vec<(Partition, Bytes)>) {
        for (p, key) in updates {
            self.ae.dirty.entry(p).or_default().insert(key);
        }
    }

    /// The heartbeat's part of keeping trees current: partitions the previous tick
    /// queued and no input has flushed since are a tick old, so they are flushed
    /// now; the partitions dirty now are queued, to be flushed one per input
    /// handled ([`Self::flush_next`]).
    ///
    /// Why not flush everything at the tick: a flush costs an item hash and a path
    /// update per key (≈ 5 µs on the 2-core VM of BENCHMARKS.md) on the node's only
    /// thread, and a tick's worth of 1-client writes (≈ 450 keys) stalled every
    /// request for ≈ 2.5 ms four times a second — that was the 1-client write p99.
    /// One partition at a time keeps what made the tick flush cheap (a key written
    /// many times is hashed once; one tree's maps stay in cache while its keys are
    /// done: a flush after every few writes instead cost 12–34 % of write
    /// throughput) and bounds the stall to one partition's keys.
    pub(crate) fn schedule_flush(&mut self) {
        while let Some(p) = self.ae.flush_queue.pop_front() {
            self.flush_partition(p);
        }
        let dirty: Vec<Partition> = self.ae.dirty.keys().copied().collect();
        self.ae.flush_queue.extend(dirty);
    }

    /// Flushes the next queued partition, if any (after every input).
    pub(crate) fn flush_next(&mut self) {
        if let Some(p) = self.ae.flush_queue.pop_front() {
            self.flush_partition(p);
        }
    }

    /// Brings partition `p`'s tree up to date with storage (before an exchange or
    /// a pull reads it).
    pub(crate) fn flush_partition(&mut self, p: Partition) {
        let Some(keys) = self.ae.dirty.remove(&p) else {
            return;
        };
        for key in keys {
            let object = self.storage.object(&key);
            if let Some(tree) = self.ae.trees.get_mut(&p) {
                match object {
                    Some(o) => tree.insert(&key, item_hash(&key, &o)),
                    None => tree.remove(&key),
                };
            }
        }
    }

    /// Brings the trees up to date with storage: one item hash and one path update
    /// per key written since the last flush, however often it was written. Each
    /// tree is flushed within two heartbeat ticks ([`Self::schedule_flush`]), and
    /// before an exchange or a pull reads it, so trees lag
    /// storage by at most one tick — the way Riak's AAE updates its trees
    /// asynchronously — and a hot key costs one hash per tick, not one per write.
    #[cfg(test)]
    pub(crate) fn flush_trees(&mut self) {
        if self.ae.dirty.is_empty() {
            return;
        }
        self.ae.flush_queue.clear();
        for (p, keys) in std::mem::take(&mut self.ae.dirty) {
            for key in keys {
                let object = self.storage.object(&key);
                if let Some(tree) = self.ae.trees.get_mut(&p) {
                    match object {
                        Some(o) => tree.insert(&key, item_hash(&key, &o)),
                        None => tree.remove(&key),
                    };
                }
            }
        }
    }

    /// The root of this node's tree for `p`, if it replicates `p` (as of the last
    /// flush: at most one heartbeat tick behind storage).
    pub fn merkle_root(&self, p: Partition) -> Option<merkle::Hash> {
        self.ae.root(p)
    }

    /// This node's tree for `p`, if it replicates `p`.
    pub fn merkle_tree(&self, p: Partition) -> Option<&MerkleTree> {
        self.ae.trees.get(&p)
    }

    pub(crate) fn anti_entropy_tick(&mut self) {
        let now = self.now;
        self.ae
            .outgoing
            .retain(|_, s| now.since(s.started) < SESSION_TTL);
        self.ae
            .incoming
            .retain(|_, s| now.since(s.started) < SESSION_TTL);
        let next = now
            + self.jitter(self.config.anti_entropy_interval)
            + Dur(self.config.anti_entropy_interval.as_millis() / 2);
        self.set_timer(next, Timer::AntiEntropy);
        if !self.ae.outgoing.is_empty() {
            return;
        }
        let Some(ring) = &self.ring else { return };
        let parts: Vec<Partition> = self.ae.trees.keys().copied().collect();
        if parts.is_empty() {
            return;
        }
        let p = parts[self.ae.cursor % parts.len()];
        self.ae.cursor = self.ae.cursor.wrapping_add(1);
        let peers = self.reachable_replicas(ring, p);
        if peers.is_empty() {
            return;
        }
        let peer = peers[(self.rng.next_u64() % peers.len() as u64) as usize];
        self.flush_partition(p);
        let Some(tree) = self.ae.trees.get(&p) else {
            return;
        };
        let (exchange, msg) = Exchange::initiate(tree);
        self.ae.next_xid += 1;
        let xid = self.ae.next_xid;
        self.ae.outgoing.insert(
            xid,
            Session {
                peer,
                partition: p,
                exchange,
                started: now,
            },
        );
        self.event(Event::MerkleExchangeStarted {
            peer,
            partition: p.0,
        });
        let m = Msg::Exchange {
            xid,
            from_initiator: true,
            partition: p,
            msg,
        };
        self.send(peer, Message::AntiEntropy(m));
    }

    pub(crate) fn handle_anti_entropy_msg(&mut self, from: NodeId, msg: Msg) {
        match msg {
            Msg::Exchange {
                xid,
                from_initiator,
                partition,
                msg,
            } => self.exchange_step(from, xid, from_initiator, partition, msg),
            Msg::Repair { partition, items } => self.merge_repair(from, partition, items),
        }
    }

    fn exchange_step(
        &mut self,
        from: NodeId,
        xid: u64,
        from_initiator: bool,
        p: Partition,
        msg: MerkleMsg,
    ) {
        if !self.ae.trees.contains_key(&p) {
            // We do not replicate this partition (our ring view differs): decline silently.
            return;
        }
        self.flush_partition(p);
        let differing = match &msg {
            MerkleMsg::Level(l) => l.children.len() / 2,
            _ => 0,
        };
        let mut session = if from_initiator {
            match self.ae.incoming.remove(&(from, xid)) {
                Some(s) => s,
                None if matches!(msg, MerkleMsg::Root { .. }) => Session {
                    peer: from,
                    partition: p,
                    exchange: Exchange::respond(),
                    started: self.now,
                },
                None => return,
            }
        } else {
            match self.ae.outgoing.remove(&xid) {
                Some(s) if s.peer == from && s.partition == p => s,
                Some(s) => {
                    self.ae.outgoing.insert(xid, s);
                    return;
                }
                None => return,
            }
        };
        if differing > 0 {
            self.event(Event::MerkleLevelCompared {
                peer: from,
                partition: p.0,
                differing,
            });
        }
        let Some(tree) = self.ae.trees.get(&p) else {
            return;
        };
        let step = match session.exchange.handle(tree, msg) {
            Ok(step) => step,
            Err(e) => {
                self.event(Event::MessageIgnored {
                    from,
                    reason: format!("merkle exchange: {e}"),
                });
                return;
            }
        };
        let reply_flag = !from_initiator;
        let (out, diff) = match step {
            Step::Send(m) => (Some(m), None),
            Step::Finish(m, d) => (Some(m), Some(d)),
            Step::Done(d) => (None, Some(d)),
        };
        if let Some(m) = out {
            let wrapped = Msg::Exchange {
                xid,
                from_initiator: reply_flag,
                partition: p,
                msg: m,
            };
            self.send(from, Message::AntiEntropy(wrapped));
        }
        match diff {
            None => {
                if from_initiator {
                    self.ae.incoming.insert((from, xid), session);
                } else {
                    self.ae.outgoing.insert(xid, session);
                }
            }
            Some(d) => {
                if d.send.is_empty() && d.receive.is_empty() {
                    self.event(Event::MerkleInSync {
                        peer: from,
                        partition: p.0,
                    });
                }
                let items: Vec<(Bytes, Object)> = d
                    .send
                    .iter()
                    .map(|k| {
                        let o = self.storage.object(k).unwrap_or_default();
                        (Bytes::copy_from_slice(k), o)
                    })
                    .collect();
                if !items.is_empty() {
                    self.send(
                        from,
                        Message::AntiEntropy(Msg::Repair {
                            partition: p,
                            items,
                        }),
                    );
                }
            }
        }
    }

    fn merge_repair(&mut self, from: NodeId, p: Partition, items: Vec<(Bytes, Object)>) {
        if !self.ae.trees.contains_key(&p) {
            return;
        }
        let bytes = items.iter().map(|(k, o)| k.len() + o.value_bytes()).sum();
        if let Some(n) = self.merge_own(&items).filter(|&n| n > 0) {
            self.event(Event::MerkleKeysRepaired {
                peer: from,
                partition: p.0,
                n,
                bytes,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::id::ClientReq;
    use crate::message::{ClientOp, Input};
    use crate::quorum::tests::node;
    use crate::time::Time;

    fn tracked(n: &Node<crate::store::MemStorage>) -> usize {
        (0..n.config().partitions)
            .filter_map(|p| n.merkle_tree(Partition(p)))
            .map(MerkleTree::len)
            .sum()
    }

    fn put(n: &mut Node<crate::store::MemStorage>, i: usize) {
        n.handle_input(
            Time(0),
            Input::Client {
                req: ClientReq(i as u64),
                op: ClientOp::Put {
                    key: Bytes::from(format!("k{i}")),
                    value: Bytes::from_static(b"v"),
                    context: None,
                    w: None,
                },
            },
        );
        while n.poll_output().is_some() {}
    }

    /// Every tree with no dirty key matches storage.
    fn check_trees(a: &Node<crate::store::MemStorage>) {
        for p in 0..a.config().partitions {
            if a.ae.dirty.contains_key(&Partition(p)) {
                continue;
            }
            let Some(tree) = a.merkle_tree(Partition(p)) else {
                continue;
            };
            for (key, hash) in tree.iter() {
                let o = a.storage().object(key).expect("stored");
                assert_eq!(*hash, item_hash(key, &o));
            }
        }
    }

    #[test]
    fn a_tick_queues_dirty_partitions_and_inputs_flush_them_one_at_a_time() {
        // 3 nodes, N = 3: A replicates every partition, so every write is tracked.
        let mut a = node(NodeId(0), 3, Config::default());
        let keys = 200;
        for i in 0..keys {
            put(&mut a, i);
        }
        assert_eq!(tracked(&a), 0, "writes alone leave the trees to the tick");
        let dirty = a.ae.dirty.len();
        assert!(dirty > 10, "{dirty} partitions dirty");
        a.schedule_flush();
        assert_eq!(a.ae.flush_queue.len(), dirty);
        assert_eq!(tracked(&a), 0, "the tick itself flushes nothing new");
        // Each input flushes one partition: all of its keys, and only its keys.
        let first = a.ae.flush_queue[0];
        let in_first = a.ae.dirty[&first].len();
        put(&mut a, keys); // a new key, dirty until its partition's turn
        assert_eq!(a.ae.flush_queue.len(), dirty - 1);
        assert_eq!(a.merkle_tree(first).map(MerkleTree::len), Some(in_first));
        for i in 1..dirty {
            put(&mut a, i % keys); // a rewrite: its key joins its partition's set
        }
        assert!(a.ae.flush_queue.is_empty());
        check_trees(&a);
        // What no input flushed is flushed at the next tick: a tree lags by at most
        // two ticks, however idle the node is.
        a.schedule_flush();
        a.schedule_flush();
        assert!(a.ae.dirty.is_empty() && a.ae.flush_queue.is_empty());
        assert_eq!(tracked(&a), keys + 1);
        check_trees(&a);
    }
}
