//! Hinted handoff: a stand-in delivers the replicas it holds for an unreachable
//! owner once that owner is reachable again, then deletes them.
//!
//! Invariant: a hint is deleted only after the owner has acknowledged a version of
//! it that is at least as new as the hint's current copy, and the owner acks only
//! after committing the merge — so handoff never reduces the number of durable
//! copies. Hints older than the hint window are dropped (reported as
//! `HintDropped`); repairing those owners is anti-entropy's job. Not those of an
//! orphan copy (below): anti-entropy never sees it, so they wait for their owner,
//! or move to the key's new primaries if the ring moved on.
//!
//! Ownership handoff reuses the same delivery. When a node adopts an active ring it
//! did not prepare for — the other side of a logical partition (S7) won the merge,
//! or the node was cut off while a pending ring was pulled and activated — it may
//! hold its own copies of keys it no longer replicates, written while it believed in
//! its old ring. Nobody pulled them, and anti-entropy only compares co-replicas, so
//! they would be invisible forever. The node scans its store page by page (a cursor
//! persisted with each page, so a crash resumes the scan) and stores each such
//! key as a hint for every primary of the key in the new ring; delivery, acks and
//! retries are hinted handoff's. Its own copy is deleted once the last of those
//! owners has acknowledged a version covering it (never before: until then it may
//! be the only copy); that holds for any hint acknowledged for a key the node does
//! not replicate. Planned transitions skip the scan: their gaining nodes pulled
//! before activation.

use crate::id::NodeId;
use crate::message::{Event, Message};
use crate::node::{Node, Timer};
use crate::store::{Hint, Op, Storage};
use crate::time::Time;
use crate::version::{Object, VersionVector};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Handoff messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// Hinted replicas for the receiver (the intended owner).
    Deliver {
        /// Batch number, echoed in the ack.
        batch: u64,
        /// Keys and versions.
        items: Vec<(Bytes, Object)>,
    },
    /// The owner committed these (each with the context it merged).
    Ack {
        /// Batch number.
        batch: u64,
        /// Keys and the contexts merged.
        items: Vec<(Bytes, VersionVector)>,
    },
}

/// Where an ownership handoff scan stands (persisted under [`META_OWNERSHIP_HANDOFF`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OrphanScan {
    /// The ring version that started it (owners come from the current ring).
    ring_version: u64,
    /// Last key scanned; `None` before the first page.
    after: Option<Bytes>,
}

/// Storage meta name of the scan in progress (empty: none).
const META_OWNERSHIP_HANDOFF: &str = "ownership_handoff";

impl OrphanScan {
    /// A scan from the first key (a newer unprepared ring restarts it).
    pub(crate) fn new(ring_version: u64) -> Self {
        OrphanScan {
            ring_version,
            after: None,
        }
    }

    /// Whether the scan has not passed any key yet.
    pub(crate) fn at_start(&self) -> bool {
        self.after.is_none()
    }

    /// The scan a previous run left unfinished, if any.
    pub(crate) fn load<S: Storage>(storage: &S) -> Option<Self> {
        let bytes = storage.meta(META_OWNERSHIP_HANDOFF)?;
        postcard::from_bytes(&bytes).ok()
    }

    /// The meta op that persists `scan` (`None`: no scan in progress).
    pub(crate) fn op(scan: Option<&OrphanScan>) -> Op {
        Op::PutMeta {
            name: META_OWNERSHIP_HANDOFF.into(),
            value: scan
                .and_then(|s| postcard::to_allocvec(s).ok())
                .unwrap_or_default(),
        }
    }
}

/// A delivery batch awaiting its ack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InFlight {
    batch: u64,
    sent: Time,
}

impl<S: Storage> Node<S> {
    pub(crate) fn hint_replay_tick(&mut self) {
        self.ownership_handoff_step();
        for owner in self.storage.hint_owners() {
            self.expire_hints(owner);
            self.try_deliver_hints(owner);
        }
        let next = self.now + self.config.hint_replay_interval;
        self.set_timer(next, Timer::HintReplay);
    }

    /// Scans the next page of the store: every own copy of a key this node does
    /// not replicate becomes a hint for each of the key's primaries (merged into a
    /// hint already held for it), committed with the scan's new position.
    pub(crate) fn ownership_handoff_step(&mut self) {
        let (Some(scan), Some(ring)) = (self.orphan_scan.clone(), self.ring.clone()) else {
            return;
        };
        let limit = self.config.hint_batch.max(1) * 8;
        let page = self.storage.objects_after(scan.after.as_deref(), limit);
        let (mut ops, mut keys) = (Vec::new(), 0);
        // Hint count and bytes per owner with this page's hints: the page is cut
        // before the key that would take an owner past its hint limits, and the
        // scan waits there until delivery makes room — a large handoff drains
        // through delivery instead of filling the disk.
        let mut usage: BTreeMap<NodeId, (usize, usize)> = BTreeMap::new();
        let mut last = scan.after.clone();
        let mut cut = false;
        'page: for (key, object) in &page {
            let owners = ring.primaries(ring.partition_of(key));
            if !owners.contains(&self.id) {
                let (mut key_ops, mut key_usage) = (Vec::new(), Vec::new());
                for &owner in owners {
                    // Merged into any hint already held, keeping its window start.
                    let existing = self.storage.hint(owner, key).map(|h| h.object);
                    let (count, bytes) = *usage
                        .entry(owner)
                        .or_insert_with(|| self.storage.hint_usage(owner));
                    let count = count + usize::from(existing.is_none());
                    let old_bytes = existing.as_ref().map_or(0, Object::value_bytes);
                    let mut hint = existing.unwrap_or_default();
                    hint.merge(object);
                    let bytes = bytes.saturating_sub(old_bytes) + hint.value_bytes();
                    if count > self.config.max_hints_per_owner
                        || bytes > self.config.max_hint_bytes_per_owner
                    {
                        cut = true;
                        break 'page;
                    }
                    key_usage.push((owner, (count, bytes)));
                    key_ops.push(self.store_op(key, hint, Some(owner)));
                }
                usage.extend(key_usage);
                ops.extend(key_ops);
                keys += 1;
            }
            last = Some(key.clone());
        }
        if cut && last == scan.after {
            return; // the first key does not fit yet: nothing to commit
        }
        let done = !cut && page.len() < limit;
        let hints = ops.len();
        let next = (!done).then(|| OrphanScan {
            ring_version: scan.ring_version,
            after: last,
        });
        ops.push(OrphanScan::op(next.as_ref()));
        if !self.commit(ops) {
            return;
        }
        self.orphan_scan = next;
        if keys > 0 || done {
            self.event(Event::OwnershipHandoff {
                ring_version: scan.ring_version,
                keys,
                hints,
                done,
            });
        }
    }

    /// Hints that keep orphan own copies written by `ops` on their way to the keys'
    /// owners, to commit with `ops`; `true` when one did not fit under an owner's
    /// hint limits, so the caller restarts the ownership scan (which waits for
    /// room) instead.
    ///
    /// The scan at an unprepared ring install hints every orphan copy it finds, but
    /// a copy can be written after the scan passed its key: a hint or a replica
    /// write sent by a node that still routes by an older ring, say, arriving after
    /// this node installed the new one. Without a hint nothing would ever move such
    /// a copy (anti-entropy compares co-replicas only) or delete it, so every own
    /// copy of a key this node replicates in neither the active nor the pending ring
    /// is covered here, by a hint that descends it: the owners' acks then let the
    /// copy go as for the scan's hints.
    /// `parts` is [`Self::key_partitions`] of `ops`.
    pub(crate) fn orphan_hints(
        &self,
        ops: &[Op],
        parts: &[Option<crate::ring::Partition>],
    ) -> (Vec<Op>, bool) {
        let Some(ring) = self.ring.as_ref() else {
            return (Vec::new(), false);
        };
        let me = self.id;
        let pending = self.membership.pending();
        let (mut out, mut full) = (Vec::new(), false);
        let mut usage: BTreeMap<NodeId, (usize, usize)> = BTreeMap::new();
        for (op, part) in ops.iter().zip(parts) {
            let (Op::PutObject { key, object }, Some(part)) = (op, part) else {
                continue;
            };
            let owners = ring.primaries(*part);
            if owners.contains(&me)
                || pending.is_some_and(|r| r.primaries(r.partition_of(key)).contains(&me))
            {
                continue;
            }
            for &owner in owners {
                let existing = self.storage.hint(owner, key).map(|h| h.object);
                let (count, bytes) = *usage
                    .entry(owner)
                    .or_insert_with(|| self.storage.hint_usage(owner));
                let count = count + usize::from(existing.is_none());
                let old_bytes = existing.as_ref().map_or(0, Object::value_bytes);
                let mut hint = existing.unwrap_or_default();
                hint.merge(object);
                let bytes = bytes.saturating_sub(old_bytes) + hint.value_bytes();
                if count > self.config.max_hints_per_owner
                    || bytes > self.config.max_hint_bytes_per_owner
                {
                    full = true;
                    continue;
                }
                usage.insert(owner, (count, bytes));
                out.push(self.store_op(key, hint, Some(owner)));
            }
        }
        (out, full)
    }

    /// Whether this node's own copy of `key` may go now that `owner` acked `ctx`:
    /// the node replicates the key in neither the active nor the pending ring, no
    /// other owner still waits for a hint of it, and the acked context covers the
    /// copy. Then every owner holds it durably, and a stale copy kept here could
    /// only come back later (say, after its tombstone was purged elsewhere) when
    /// this node gains the partition again.
    fn own_copy_handed_off(&self, key: &[u8], owner: NodeId, ctx: &VersionVector) -> bool {
        let Some(mine) = self.orphan_copy(key) else {
            return false;
        };
        ctx.descends(mine.context())
            && self
                .storage
                .hint_owners()
                .into_iter()
                .all(|o| o == owner || self.storage.hint(o, key).is_none())
    }

    /// This node's own copy of `key` if it is an orphan: the node replicates the
    /// key in neither the active nor the pending ring, so hints are the copy's only
    /// way to the key's owners.
    fn orphan_copy(&self, key: &[u8]) -> Option<Object> {
        let me = self.id;
        let replicates = |r: Option<&crate::ring::Ring>| {
            r.is_some_and(|r| r.primaries(r.partition_of(key)).contains(&me))
        };
        if self.ring.is_none()
            || replicates(self.ring.as_ref())
            || replicates(self.membership.pending())
        {
            return None;
        }
        self.storage.object(key)
    }

    /// Drops `owner`'s hints older than the hint window — except those of orphan
    /// copies ([`Self::orphan_copy`]). Dropping one of those would strand the copy:
    /// anti-entropy only compares co-replicas, so nothing else would ever move it,
    /// and it is never deleted here either (that waits for every owner's ack). So
    /// such a hint is kept while `owner` is still one of the key's primaries, and
    /// otherwise (the ring moved on) is moved to the primaries that have none.
    fn expire_hints(&mut self, owner: NodeId) {
        let window = self.config.hint_window;
        let expired: Vec<(Bytes, Hint)> = self
            .storage
            .hints_for(owner, usize::MAX)
            .into_iter()
            .filter(|(_, h)| self.now.since(h.stored_at) > window)
            .collect();
        if expired.is_empty() {
            return;
        }
        let mut ops = Vec::new();
        let mut dropped = Vec::new();
        for (key, hint) in expired {
            let primaries = self
                .ring
                .as_ref()
                .map(|r| r.primaries(r.partition_of(&key)).to_vec())
                .unwrap_or_default();
            let reason = if self.orphan_copy(&key).is_some() {
                if primaries.contains(&owner) {
                    continue; // still the owner: the copy waits for it
                }
                for &p in &primaries {
                    if p != self.id && self.storage.hint(p, &key).is_none() {
                        ops.push(self.store_op(&key, hint.object.clone(), Some(p)));
                    }
                }
                format!("{owner} no longer replicates it: moved to {primaries:?}")
            } else {
                format!("older than the hint window ({})", window)
            };
            ops.push(Op::DeleteHint {
                owner,
                key: key.clone(),
            });
            dropped.push((key, reason));
        }
        if !ops.is_empty() && self.commit(ops) {
            for (key, reason) in dropped {
                self.event(Event::HintDropped { owner, key, reason });
            }
        }
    }

    /// Sends the next batch of hints to `owner` if it is reachable and no batch is
    /// awaiting an ack (a batch unacked for a request timeout is resent).
    pub(crate) fn try_deliver_hints(&mut self, owner: NodeId) {
        if owner == self.id || !self.detector.is_reachable(owner) {
            return;
        }
        if let Some(f) = self.handoffs.get(&owner) {
            if self.now.since(f.sent) < self.config.request_timeout {
                return;
            }
        }
        let items: Vec<(Bytes, Object)> = self
            .storage
            .hints_for(owner, self.config.hint_batch)
            .into_iter()
            .map(|(k, h)| (k, h.object))
            .collect();
        if items.is_empty() {
            self.handoffs.remove(&owner);
            return;
        }
        let batch = self.handoffs.get(&owner).map_or(1, |f| f.batch + 1);
        self.handoffs.insert(
            owner,
            InFlight {
                batch,
                sent: self.now,
            },
        );
        self.event(Event::HandoffStarted {
            owner,
            hints: items.len(),
        });
        self.send(owner, Message::Handoff(Msg::Deliver { batch, items }));
    }

    pub(crate) fn handle_handoff_msg(&mut self, from: NodeId, msg: Msg) {
        match msg {
            Msg::Deliver { batch, items } => {
                if self.merge_own(&items).is_none() {
                    return;
                }
                let acked: Vec<(Bytes, VersionVector)> = items
                    .into_iter()
                    .map(|(key, object)| (key, object.context().clone()))
                    .collect();
                self.event(Event::HandoffReceived {
                    from,
                    keys: acked.len(),
                });
                self.send(
                    from,
                    Message::Handoff(Msg::Ack {
                        batch,
                        items: acked,
                    }),
                );
            }
            Msg::Ack { batch, items } => {
                if self.handoffs.get(&from).is_some_and(|f| f.batch == batch) {
                    self.handoffs.remove(&from);
                }
                let mut ops = Vec::new();
                let mut delivered = Vec::new();
                for (key, ctx) in items {
                    // Keep a hint that changed after the batch was sent.
                    if let Some(h) = self.storage.hint(from, &key) {
                        if ctx.descends(h.object.context()) {
                            ops.push(Op::DeleteHint {
                                owner: from,
                                key: key.clone(),
                            });
                            if self.own_copy_handed_off(&key, from, &ctx) {
                                ops.push(Op::DeleteObject { key: key.clone() });
                            }
                            delivered.push(key);
                        }
                    }
                }
                if !self.commit(ops) {
                    return;
                }
                for key in delivered {
                    self.event(Event::HintDelivered { owner: from, key });
                }
                self.try_deliver_hints(from);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::message::{Admin, Input};
    use crate::ring::Ring;
    use crate::store::{Batch, MemStorage};

    const A: NodeId = NodeId(0);

    fn rings() -> (Ring, Ring) {
        let three: Vec<(NodeId, String)> = (0..3).map(|i| (NodeId(i), "z1".to_owned())).collect();
        let before = Ring::new(16, 3, &three).unwrap();
        let mut after = before.clone();
        for i in 3..6 {
            after = after.with_joined(NodeId(i), "z1").unwrap();
        }
        (before, after)
    }

    /// 300 keys written by A, as one batch.
    fn store_300() -> MemStorage {
        let mut storage = MemStorage::new();
        let mut ops = Vec::new();
        for i in 0..300u32 {
            let mut o = Object::new();
            o.write(
                crate::version::Actor { node: A, epoch: 1 },
                &VersionVector::new(),
                Some(Bytes::from(format!("v{i}"))),
            );
            ops.push(Op::PutObject {
                key: Bytes::from(format!("key-{i}")),
                object: o,
            });
        }
        storage.apply(Batch { ops }).unwrap();
        storage
    }

    /// The scan never takes an owner past `max_hints_per_owner`: it stops where it
    /// is until delivery makes room, then goes on, and in the end has hinted every
    /// foreign key to each of its owners all the same — also when the limit is
    /// below one page (32 keys here), where a page must be cut, not retried whole.
    #[test]
    fn ownership_handoff_waits_for_room_under_the_hint_limit() {
        for max in [5, 40] {
            handoff_under_hint_limit(max);
        }
    }

    fn handoff_under_hint_limit(max: usize) {
        let (before, after) = rings();
        let cfg = Config {
            hint_batch: 4,
            max_hints_per_owner: max,
            ..Config::demo()
        };
        let mut node = Node::new(A, cfg, Some(before), store_300(), 1, Time(0));
        node.handle_input(Time(1), Input::Admin(Admin::SetRing(after.clone())));
        let mut hinted = std::collections::BTreeSet::new();
        let mut rounds = 0;
        while node.ownership_handoff_in_progress() {
            rounds += 1;
            assert!(rounds < 300, "limit {max}: the scan never ends");
            for _ in 0..10 {
                node.ownership_handoff_step();
            }
            // Delivery, stood in for: every hint held is recorded and deleted.
            let mut ops = Vec::new();
            for o in (0..6).map(NodeId) {
                let held = node.storage().hints_for(o, usize::MAX);
                assert!(
                    held.len() <= max,
                    "limit {max}: {o} holds {} hints",
                    held.len()
                );
                for (key, _) in held {
                    hinted.insert((o, key.clone()));
                    ops.push(Op::DeleteHint { owner: o, key });
                }
            }
            node.storage_mut().apply(Batch { ops }).unwrap();
        }
        assert!(
            rounds > 2,
            "limit {max}: the limit paused the scan ({rounds} rounds)"
        );
        let want: std::collections::BTreeSet<(NodeId, Bytes)> = (0..300u32)
            .map(|i| Bytes::from(format!("key-{i}")))
            .flat_map(|k| {
                let owners = after.primaries(after.partition_of(&k)).to_vec();
                let foreign = !owners.contains(&A);
                owners
                    .into_iter()
                    .filter(move |_| foreign)
                    .map(move |o| (o, k.clone()))
            })
            .collect();
        assert_eq!(hinted, want, "limit {max}");
    }

    /// A node holding 300 keys adopts, unprepared, a ring in which it replicates
    /// fewer partitions; it crashes after the first page and resumes from the
    /// persisted cursor. In the end every key it no longer replicates is a hint for
    /// each of its new primaries, and nothing else is.
    #[test]
    fn ownership_handoff_hints_every_foreign_key_and_resumes_after_a_crash() {
        let (before, after) = rings();
        let cfg = Config {
            hint_batch: 4,
            ..Config::demo()
        };
        let mut node = Node::new(A, cfg.clone(), Some(before), store_300(), 1, Time(0));
        node.handle_input(Time(1), Input::Admin(Admin::SetRing(after.clone())));
        assert!(node.ownership_handoff_in_progress());
        node.ownership_handoff_step();
        assert!(
            node.ownership_handoff_in_progress(),
            "300 keys take several pages"
        );
        // Crash: only storage survives.
        let storage = node.storage().clone();
        let mut node = Node::new(A, cfg, Some(after.clone()), storage, 2, Time(10));
        assert!(node.ownership_handoff_in_progress(), "the scan resumes");
        let mut steps = 0;
        while node.ownership_handoff_in_progress() {
            node.ownership_handoff_step();
            steps += 1;
            assert!(steps < 100, "the scan never ends");
        }
        let s = node.storage();
        let mut foreign = 0;
        for i in 0..300u32 {
            let key = format!("key-{i}");
            let owners = after.primaries(after.partition_of(key.as_bytes()));
            let mine = owners.contains(&A);
            foreign += usize::from(!mine);
            for o in (0..6).map(NodeId) {
                let hinted = s.hint(o, key.as_bytes()).is_some();
                let want = !mine && owners.contains(&o);
                assert_eq!(hinted, want, "{key}: hint for {o}");
            }
            // The own copy is kept either way.
            assert!(s.object(key.as_bytes()).is_some());
        }
        assert!(foreign > 0 && foreign < 300, "{foreign}");

        // The first key A does (or does not) replicate, and A's context for it.
        let first_key = |replicated: bool| {
            (0..300u32)
                .map(|i| format!("key-{i}"))
                .find(|k| {
                    after
                        .primaries(after.partition_of(k.as_bytes()))
                        .contains(&A)
                        == replicated
                })
                .unwrap()
        };
        let ctx_of = |node: &Node<MemStorage>, k: &str| {
            node.storage()
                .object(k.as_bytes())
                .unwrap()
                .context()
                .clone()
        };

        // The own copy of a foreign key goes only when the last owner has acked it.
        let key = first_key(false);
        let ctx = ctx_of(&node, &key);
        let owners = after.primaries(after.partition_of(key.as_bytes())).to_vec();
        for (i, &o) in owners.iter().enumerate() {
            let ack = Msg::Ack {
                batch: 1,
                items: vec![(Bytes::from(key.clone()), ctx.clone())],
            };
            node.handle_handoff_msg(o, ack);
            let s = node.storage();
            assert!(s.hint(o, key.as_bytes()).is_none(), "{o}'s hint delivered");
            let last = i + 1 == owners.len();
            assert_eq!(
                s.object(key.as_bytes()).is_none(),
                last,
                "own copy after {} of {} acks",
                i + 1,
                owners.len()
            );
        }
        // An ack for a key this node still replicates never deletes its copy.
        let mine = first_key(true);
        let ctx = ctx_of(&node, &mine);
        assert!(!node.own_copy_handed_off(mine.as_bytes(), NodeId(1), &ctx));
    }

    /// An orphan copy's hints outlive the hint window while their owner still
    /// replicates the key (nothing else would move the copy), and move to the
    /// key's primaries once it does not; a plain stand-in hint still expires.
    #[test]
    fn orphan_hints_outlive_the_window_and_follow_the_ring() {
        let (before, after) = rings();
        let cfg = Config::demo();
        let window = cfg.hint_window;
        let mut node = Node::new(A, cfg, Some(before), store_300(), 1, Time(0));
        node.handle_input(Time(1), Input::Admin(Admin::SetRing(after.clone())));
        while node.ownership_handoff_in_progress() {
            node.ownership_handoff_step();
        }
        // A stand-in hint for a key A holds no copy of.
        let plain = Bytes::from_static(b"not-an-own-copy");
        let op = node.store_op(&plain, Object::new(), Some(NodeId(4)));
        assert!(node.commit(vec![op]));
        let hints = node.storage().hint_count();
        assert!(hints > 1);

        // Past the window, with every owner still unreachable.
        node.now = Time(0) + window + crate::time::Dur::secs(1);
        node.hint_replay_tick();
        let s = node.storage();
        assert!(
            s.hint(NodeId(4), &plain).is_none(),
            "the stand-in hint expired"
        );
        assert_eq!(s.hint_count(), hints - 1, "every orphan hint was kept");

        // The ring moves on without F (NodeId 5): its hints go to the keys' new
        // primaries; the others stay.
        let f = NodeId(5);
        let later = after.with_removed(f).unwrap();
        node.ring = Some(later.clone());
        let moved: Vec<Bytes> = node
            .storage()
            .hints_for(f, usize::MAX)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert!(!moved.is_empty());
        node.hint_replay_tick();
        let s = node.storage();
        assert!(s.hints_for(f, usize::MAX).is_empty(), "F's hints moved");
        for key in &moved {
            let owners = later.primaries(later.partition_of(key));
            if owners.contains(&A) {
                continue; // A replicates it now: no hint needed
            }
            for &o in owners {
                assert!(s.hint(o, key).is_some(), "{key:?}: hint for {o}");
            }
            assert!(s.object(key).is_some(), "the own copy stays until acked");
        }
    }

    /// A copy of a key this node does not replicate, written after the ownership
    /// scan (here: a hint delivered by a node that routes by an older ring), gets a
    /// hint for each of the key's owners in the same batch, and goes once they all
    /// acked it; a key it replicates gets none. Seed 227 of the S7-with-data test
    /// left 67 such copies behind before: acked, hint-less, never moved or deleted.
    #[test]
    fn a_copy_written_after_the_scan_is_hinted_and_handed_off() {
        let (_, after) = rings();
        let mut node = Node::new(
            A,
            Config::demo(),
            Some(after.clone()),
            MemStorage::new(),
            1,
            Time(0),
        );
        let owned = |k: &Bytes| after.primaries(after.partition_of(k)).contains(&A);
        let key_where = |mine: bool| {
            (0..300u32)
                .map(|i| Bytes::from(format!("key-{i}")))
                .find(|k| owned(k) == mine)
                .unwrap()
        };
        let (foreign, mine) = (key_where(false), key_where(true));
        let mut object = Object::new();
        let actor = crate::version::Actor {
            node: NodeId(3),
            epoch: 7,
        };
        object.write(actor, &VersionVector::new(), Some(Bytes::from_static(b"v")));
        let items = vec![
            (foreign.clone(), object.clone()),
            (mine.clone(), object.clone()),
        ];
        node.handle_handoff_msg(NodeId(3), Msg::Deliver { batch: 1, items });
        let owners = after.primaries(after.partition_of(&foreign)).to_vec();
        let s = node.storage();
        assert!(s.object(&foreign).is_some() && s.object(&mine).is_some());
        for &o in &owners {
            let h = s
                .hint(o, &foreign)
                .unwrap_or_else(|| panic!("no hint for {o}"));
            assert!(h.object.context().descends(object.context()));
        }
        assert_eq!(
            s.hint_count(),
            owners.len(),
            "the key A replicates got none"
        );
        let ctx = object.context().clone();
        for (i, &o) in owners.iter().enumerate() {
            let ack = Msg::Ack {
                batch: 1,
                items: vec![(foreign.clone(), ctx.clone())],
            };
            node.handle_handoff_msg(o, ack);
            let gone = node.storage().object(&foreign).is_none();
            assert_eq!(
                gone,
                i + 1 == owners.len(),
                "after {} of {} acks",
                i + 1,
                owners.len()
            );
        }
        assert_eq!(node.storage().hint_count(), 0);
        assert!(node.storage().object(&mine).is_some());
    }

    /// When such a hint does not fit under an owner's limit, the ownership scan
    /// starts over instead (it waits for room), so the copy is still handed off.
    #[test]
    fn a_copy_over_the_hint_limit_restarts_the_scan() {
        let (_, after) = rings();
        let cfg = Config {
            max_hints_per_owner: 1,
            ..Config::demo()
        };
        let mut node = Node::new(A, cfg, Some(after.clone()), MemStorage::new(), 1, Time(0));
        let foreign: Vec<Bytes> = (0..300u32)
            .map(|i| Bytes::from(format!("key-{i}")))
            .filter(|k| !after.primaries(after.partition_of(k)).contains(&A))
            .take(2)
            .collect();
        let owners = after.primaries(after.partition_of(&foreign[0])).to_vec();
        // Another key already hinted to each of the first key's owners fills them.
        for &o in &owners {
            let op = node.store_op(&Bytes::from_static(b"other"), Object::new(), Some(o));
            assert!(node.commit(vec![op]));
        }
        assert!(!node.ownership_handoff_in_progress());
        let mut object = Object::new();
        let actor = crate::version::Actor {
            node: NodeId(3),
            epoch: 7,
        };
        object.write(actor, &VersionVector::new(), Some(Bytes::from_static(b"v")));
        let op = Op::PutObject {
            key: foreign[0].clone(),
            object,
        };
        assert!(node.commit(vec![op]));
        assert!(node.ownership_handoff_in_progress(), "the scan restarted");
        assert!(owners
            .iter()
            .all(|&o| node.storage().hint(o, &foreign[0]).is_none()));
        let scan = OrphanScan::load(node.storage()).expect("the restart is persisted");
        assert!(scan.at_start());
    }

    /// A ring this node knew as pending (it pulled for it) starts no scan.
    #[test]
    fn a_prepared_ring_starts_no_ownership_handoff() {
        let (before, after) = rings();
        let mut node = Node::new(
            A,
            Config::demo(),
            Some(before),
            MemStorage::new(),
            1,
            Time(0),
        );
        node.prepared_ring = Some((after.version(), after.fingerprint()));
        node.handle_input(Time(1), Input::Admin(Admin::SetRing(after)));
        assert!(!node.ownership_handoff_in_progress());
    }
}
