//! The coordinator and the replica side of reads and writes: sloppy quorum over the
//! first N *healthy* nodes of the preference list, stand-ins with hints, read
//! repair, and tombstone purging.
//!
//! ## Writes
//! Any node accepts a client write. If it is one of the key's targets (the first N
//! healthy nodes of the preference list in its own view) it coordinates; otherwise
//! it forwards once to the first target, so versions are minted by a replica that
//! holds the key (see `version.rs` for why that matters). The coordinator applies
//! the write to its local copy, commits it, and sends the new object to the other
//! targets; a target standing in for an unreachable owner gets a hint naming that
//! owner. The client is answered after W acks (the local commit counts as one).
//! A target that has not acked after `replica_timeout` is marked unreachable and
//! replaced by the next healthy node of the walk (as a stand-in for the same
//! owner), so the write still reaches N nodes. At `request_timeout` a write
//! without W acks fails with `QuorumNotReached { got, need }` — never a silent
//! success (it is not rolled back either: Dynamo semantics).
//!
//! ## Reads
//! The coordinator asks the N targets, answers after R replies with the causal
//! merge of what it got (all siblings plus one context), then waits for the rest
//! (until the deadline) and sends the merged object to every replica whose copy
//! differed: read repair.
//!
//! ## Tombstones
//! A delete writes a tombstone sibling. It is purged only when it is safe: the
//! coordinator saw acks from all N *primaries* (no stand-in involved) for a
//! tombstone-only object, and then `tombstone_grace` (> the hint window) passes;
//! each primary then drops the key only if its copy is still exactly that
//! tombstone. Any later write keeps the key. A purge also raises the node's epoch
//! floor (see `version.rs`).

use crate::config::ReadFanout;
use crate::id::{ClientReq, NodeId, ReqId};
use crate::message::{ClientOp, ClientReply, Event, Message, Output, RequestError};
use crate::node::{Node, Timer};
use crate::ring::Partition;
use crate::store::{Hint, Op, Storage};
use crate::time::{Dur, Time};
use crate::version::{Actor, Dot, Object, VersionVector};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Coordinator ⇄ replica messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// A client write forwarded to a coordinating replica.
    Forward {
        /// The forwarder's request number.
        id: ReqId,
        /// The client's operation.
        op: ClientOp,
    },
    /// The coordinating replica's answer to a forwarded write.
    ForwardReply {
        /// The forwarder's request number.
        id: ReqId,
        /// The outcome.
        result: Result<ClientReply, RequestError>,
    },
    /// The coordinating replica received a forwarded write and is working on it
    /// (Riak's remote-coordinator ack): until this arrives, the forwarder may retry
    /// through another replica when the first one turns out to be down.
    ForwardAccepted {
        /// The forwarder's request number.
        id: ReqId,
    },
    /// Merge `object` into your copy (or into your hints for `hint`) and ack if `id` is set.
    Store {
        /// Request to ack; `None` for read repair.
        id: Option<ReqId>,
        /// Key.
        key: Bytes,
        /// Versions to merge.
        object: Object,
        /// The owner this replica stands in for.
        hint: Option<NodeId>,
    },
    /// The store is committed.
    StoreAck {
        /// Request.
        id: ReqId,
    },
    /// Send your copy of `key`.
    Fetch {
        /// Request.
        id: ReqId,
        /// Key.
        key: Bytes,
    },
    /// A replica's copy (empty if absent).
    FetchReply {
        /// Request.
        id: ReqId,
        /// The copy.
        object: Object,
    },
    /// Drop `key` if your copy is still exactly this tombstone context.
    Purge {
        /// Key.
        key: Bytes,
        /// The tombstone's context.
        context: VersionVector,
    },
}

/// Where the answer to a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A client of this node.
    Local(ClientReq),
    /// A forwarding node.
    Remote(NodeId, ReqId),
}

/// One node a request was sent to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub node: NodeId,
    /// The owner this target stands in for.
    pub hint: Option<NodeId>,
    pub answered: bool,
    /// Replaced by a stand-in after a timeout.
    pub replaced: bool,
    /// Sent the request (a `ReadFanout::Quorum` read asks only R at first).
    pub asked: bool,
    /// Asked after the start, by a speculative retry or `ask_the_rest` (its
    /// answer time then says nothing of a round trip measured from the start).
    pub late: bool,
}

pub(crate) enum Phase {
    Write {
        object: Object,
        dot: Dot,
    },
    Read {
        replies: Vec<(NodeId, Option<NodeId>, Object)>,
    },
}

/// A request this node coordinates.
pub(crate) struct Coord {
    origin: Origin,
    key: Bytes,
    partition: Partition,
    need: usize,
    targets: Vec<Target>,
    phase: Phase,
    replied: bool,
    /// When the request started (a replica's answer time is measured from it).
    started: Time,
    deadline: Time,
    check: Time,
    /// A `ReadFanout::Quorum` read's speculative retry, while it is pending.
    speculate: Option<Time>,
}

impl Coord {
    /// Answers counted by owner slot: a stand-in and the target it replaced hold
    /// one copy between them once the hint is handed off, so they count once.
    /// W acks therefore mean W distinct primaries will hold the write.
    fn answered(&self) -> usize {
        let slots: std::collections::BTreeSet<NodeId> = self
            .targets
            .iter()
            .filter(|t| t.answered)
            .map(|t| t.hint.unwrap_or(t.node))
            .collect();
        slots.len()
    }
    fn answered_by(&self) -> Vec<NodeId> {
        self.targets
            .iter()
            .filter(|t| t.answered)
            .map(|t| t.node)
            .collect()
    }
}

/// A client write this node forwarded.
pub(crate) struct Forwarded {
    req: ClientReq,
    key: Bytes,
    need: usize,
    deadline: Time,
    /// The replica asked to coordinate.
    to: NodeId,
    /// The operation, kept to retry elsewhere if `to` never accepts it.
    op: ClientOp,
    /// Whether `to` said it is coordinating.
    accepted: bool,
}

/// A tombstone waiting for its grace period.
pub(crate) struct PendingPurge {
    key: Bytes,
    context: VersionVector,
    primaries: Vec<NodeId>,
}

impl<S: Storage> Node<S> {
    /// The first N healthy nodes of the preference list, each stand-in paired with
    /// the unreachable primary its hint names.
    pub(crate) fn targets(&self, p: Partition) -> Vec<Target> {
        let Some(ring) = &self.ring else {
            return Vec::new();
        };
        let n = self.config.n;
        let mut targets = Vec::with_capacity(n);
        let mut missing = std::collections::VecDeque::new();
        let primaries = ring.primaries(p);
        for &node in primaries {
            if self.healthy(node) {
                targets.push(Target {
                    node,
                    hint: None,
                    answered: false,
                    replaced: false,
                    asked: true,
                    late: false,
                });
            } else {
                missing.push_back(node);
            }
        }
        if !missing.is_empty() {
            for node in ring.preference_walk(p).skip(primaries.len()) {
                if targets.len() >= n || missing.is_empty() {
                    break;
                }
                if self.healthy(node) {
                    let hint = missing.pop_front();
                    targets.push(Target {
                        node,
                        hint,
                        answered: false,
                        replaced: false,
                        asked: true,
                        late: false,
                    });
                }
            }
        }
        targets
    }

    pub(crate) fn handle_client(&mut self, origin: Origin, op: ClientOp) {
        let n = self.config.n;
        let (need, name) = match &op {
            ClientOp::Get { r, .. } => (r.unwrap_or(self.config.r), "r"),
            ClientOp::Put { w, .. } | ClientOp::Delete { w, .. } => {
                (w.unwrap_or(self.config.w), "w")
            }
        };
        if need == 0 || need > n {
            let e = RequestError::InvalidQuorum {
                name: name.into(),
                value: need,
                n,
            };
            return self.finish(origin, op.key().clone(), Err(e));
        }
        let Some(ring) = &self.ring else {
            return self.finish(origin, op.key().clone(), Err(RequestError::NoRing));
        };
        let partition = ring.partition_of(op.key());
        let targets = self.targets(partition);
        if targets.len() < need {
            let e = RequestError::Unavailable {
                available: targets.len(),
                need,
            };
            return self.finish(origin, op.key().clone(), Err(e));
        }
        let is_target = targets.iter().any(|t| t.node == self.id);
        match op {
            ClientOp::Get { key, .. } => self.start_read(origin, key, partition, need, targets),
            ClientOp::Put { .. } | ClientOp::Delete { .. }
                if !is_target && matches!(origin, Origin::Local(_)) =>
            {
                self.forward(origin, op, need, targets[0].node)
            }
            ClientOp::Put {
                key,
                value,
                context,
                ..
            } => self.start_write(origin, key, Some(value), context, partition, need, targets),
            ClientOp::Delete { key, context, .. } => {
                self.start_write(origin, key, None, context, partition, need, targets)
            }
        }
    }

    fn forward(&mut self, origin: Origin, op: ClientOp, need: usize, to: NodeId) {
        let Origin::Local(req) = origin else { return };
        let id = self.next_req();
        let deadline = self.now + self.config.request_timeout + self.config.replica_timeout;
        self.forwards.insert(
            id,
            Forwarded {
                req,
                key: op.key().clone(),
                need,
                deadline,
                to,
                op: op.clone(),
                accepted: false,
            },
        );
        self.set_timer(deadline, Timer::ForwardDeadline(id));
        self.set_timer(
            self.now + self.config.replica_timeout,
            Timer::ForwardCheck(id),
        );
        self.event(Event::Forwarded { req, to });
        self.send(to, Message::Replica(Msg::Forward { id, op }));
    }

    /// The replica a write was forwarded to has not accepted it within
    /// `replica_timeout`: it is probably down but not yet detected (a write arriving
    /// right after a crash). Mark it down locally, as any silent replica, and start
    /// the request again, which now routes around it (to the next replica, or to
    /// this node as a stand-in). If the replica was only slow and its acceptance was
    /// lost, the write may be applied twice with the same context: the two versions
    /// become siblings with equal values, never a lost write.
    pub(crate) fn forward_check(&mut self, id: ReqId) {
        let Some(f) = self.forwards.get(&id) else {
            return;
        };
        if f.accepted {
            return;
        }
        let Some(f) = self.forwards.remove(&id) else {
            return;
        };
        self.cancel_timer(f.deadline, Timer::ForwardDeadline(id));
        if let Some(change) = self.detector.mark_down(f.to, self.now) {
            self.on_reachability(change);
        }
        self.handle_client(Origin::Local(f.req), f.op);
    }

    pub(crate) fn forward_deadline(&mut self, id: ReqId) {
        if let Some(f) = self.forwards.remove(&id) {
            let e = RequestError::QuorumNotReached {
                got: 0,
                need: f.need,
            };
            self.finish(Origin::Local(f.req), f.key, Err(e));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start_write(
        &mut self,
        origin: Origin,
        key: Bytes,
        value: Option<Bytes>,
        context: Option<VersionVector>,
        partition: Partition,
        need: usize,
        mut targets: Vec<Target>,
    ) {
        let ctx = context.unwrap_or_default();
        let me = targets.iter().position(|t| t.node == self.id);
        let my_hint = me.and_then(|i| targets[i].hint);
        // The local copy the new version is built on, and where it will be stored.
        let mut local = match (me, my_hint) {
            (Some(_), None) => self.storage.object(&key).unwrap_or_default(),
            (Some(_), Some(owner)) => self
                .storage
                .hint(owner, &key)
                .map(|h| h.object)
                .unwrap_or_default(),
            (None, _) => Object::new(),
        };
        let would_have = local.siblings_after_write(&ctx);
        if would_have > self.config.max_siblings {
            let e = RequestError::TooManySiblings {
                would_have,
                limit: self.config.max_siblings,
            };
            return self.finish(origin, key, Err(e));
        }
        let mut ops = Vec::with_capacity(2);
        // Continue our epoch only from our own durable copy (see version.rs).
        let continued = match (me, my_hint) {
            (Some(_), None) => local
                .context()
                .latest_epoch_of(self.id)
                .map(|(e, _)| e)
                .filter(|&e| e >= self.epoch_floor),
            _ => None,
        };
        let epoch = match continued {
            Some(e) => e,
            None => {
                let (e, op) = self.fresh_epoch();
                ops.push(op);
                e
            }
        };
        let dot = local.write(
            Actor {
                node: self.id,
                epoch,
            },
            &ctx,
            value,
        );
        if let Some(i) = me {
            ops.push(self.store_op(&key, local.clone(), my_hint));
            targets[i].answered = true;
        }
        if !self.commit(ops) {
            return self.finish(
                origin,
                key,
                Err(RequestError::Storage("local commit failed".into())),
            );
        }
        let id = self.next_req();
        let op = if local.is_deleted() { "delete" } else { "put" };
        self.event(Event::RequestStarted {
            req: self.client_req(origin),
            key: key.clone(),
            op: op.into(),
            targets: targets.iter().map(|t| (t.node, t.hint)).collect(),
        });
        if let Some(i) = me {
            self.stored_event(&key, &local, targets[i].hint);
        }
        let me_id = self.id;
        for t in targets.iter().filter(|t| t.node != me_id) {
            let msg = Msg::Store {
                id: Some(id),
                key: key.clone(),
                object: local.clone(),
                hint: t.hint,
            };
            self.send(t.node, Message::Replica(msg));
        }
        // During a join or leave, new owners get every write too (not counted
        // toward W), so nothing written while they pull is missed.
        let extra: Vec<NodeId> = self
            .membership
            .pending()
            .map(|r| r.primaries(partition).to_vec())
            .unwrap_or_default()
            .into_iter()
            .filter(|n| *n != self.id && !targets.iter().any(|t| t.node == *n))
            .collect();
        for n in extra {
            let msg = Msg::Store {
                id: None,
                key: key.clone(),
                object: local.clone(),
                hint: None,
            };
            self.send(n, Message::Replica(msg));
        }
        let deadline = self.now + self.config.request_timeout;
        let check = self.now + self.config.replica_timeout;
        let coord = Coord {
            origin,
            key,
            partition,
            need,
            targets,
            phase: Phase::Write { object: local, dot },
            replied: false,
            started: self.now,
            deadline,
            check,
            speculate: None,
        };
        self.coords.insert(id, coord);
        self.set_timer(deadline, Timer::Deadline(id));
        self.set_timer(check, Timer::ReplicaCheck(id));
        self.progress(id);
    }

    fn start_read(
        &mut self,
        origin: Origin,
        key: Bytes,
        partition: Partition,
        need: usize,
        mut targets: Vec<Target>,
    ) {
        let id = self.next_req();
        self.event(Event::RequestStarted {
            req: self.client_req(origin),
            key: key.clone(),
            op: "get".into(),
            targets: targets.iter().map(|t| (t.node, t.hint)).collect(),
        });
        if self.config.read_fanout == ReadFanout::Quorum {
            // Ask R: ourselves first when we are a target, then in preference
            // order, replicas a recent read had to retry past last.
            let mut order: Vec<usize> = (0..targets.len()).collect();
            order.sort_by_key(|&i| (targets[i].node != self.id, self.is_slow(targets[i].node)));
            for (rank, &i) in order.iter().enumerate() {
                targets[i].asked = rank < need;
            }
        }
        let mut replies = Vec::with_capacity(targets.len());
        for t in targets.iter_mut().filter(|t| t.asked) {
            if t.node == self.id {
                t.answered = true;
                replies.push((t.node, t.hint, self.local_copy(&key, t.hint)));
            } else {
                let msg = Msg::Fetch {
                    id,
                    key: key.clone(),
                };
                self.send(t.node, Message::Replica(msg));
            }
        }
        let deadline = self.now + self.config.request_timeout;
        let check = self.now + self.config.replica_timeout;
        let speculate = targets
            .iter()
            .any(|t| !t.asked)
            .then(|| self.now + self.speculate_delay())
            .filter(|&t| t < check);
        self.coords.insert(
            id,
            Coord {
                origin,
                key,
                partition,
                need,
                targets,
                phase: Phase::Read { replies },
                replied: false,
                started: self.now,
                deadline,
                check,
                speculate,
            },
        );
        self.set_timer(deadline, Timer::Deadline(id));
        self.set_timer(check, Timer::ReplicaCheck(id));
        if let Some(at) = speculate {
            self.set_timer(at, Timer::Speculate(id));
        }
        self.progress(id);
    }

    /// What this node holds for `key` in the role `hint` (own copy or a hint).
    pub(crate) fn local_copy(&self, key: &[u8], hint: Option<NodeId>) -> Object {
        match hint {
            None => self.storage.object(key),
            Some(owner) => self.storage.hint(owner, key).map(|h| h.object),
        }
        .unwrap_or_default()
    }

    /// The storage op that merges `object` into this node's copy or its hints.
    pub(crate) fn store_op(&self, key: &Bytes, object: Object, hint: Option<NodeId>) -> Op {
        match hint {
            Some(owner) if owner != self.id => {
                let stored_at = self
                    .storage
                    .hint(owner, key)
                    .map_or(self.now, |h| h.stored_at);
                Op::PutHint {
                    owner,
                    key: key.clone(),
                    hint: Hint { object, stored_at },
                }
            }
            _ => Op::PutObject {
                key: key.clone(),
                object,
            },
        }
    }

    fn stored_event(&mut self, key: &Bytes, object: &Object, hint: Option<NodeId>) {
        match hint {
            Some(owner) if owner != self.id => self.event(Event::HintStored {
                owner,
                key: key.clone(),
            }),
            _ => self.event(Event::ReplicaStored {
                key: key.clone(),
                siblings: object.sibling_count(),
            }),
        }
    }

    fn client_req(&self, origin: Origin) -> ClientReq {
        match origin {
            Origin::Local(r) => r,
            // Forwarded requests are reported under the forwarder's number.
            Origin::Remote(_, id) => ClientReq(id.0),
        }
    }

    /// Answers the client (or the forwarding node) once.
    fn finish(&mut self, origin: Origin, key: Bytes, result: Result<ClientReply, RequestError>) {
        if let Err(error) = &result {
            self.event(Event::RequestFailed {
                req: self.client_req(origin),
                key,
                error: error.clone(),
            });
        }
        match origin {
            Origin::Local(req) => self.emit(Output::Reply { req, result }),
            Origin::Remote(to, id) => {
                self.send(to, Message::Replica(Msg::ForwardReply { id, result }))
            }
        }
    }

    /// Replies once the quorum is met; cleans up once every target answered.
    fn progress(&mut self, id: ReqId) {
        let Some(c) = self.coords.get(&id) else {
            return;
        };
        let got = c.answered();
        if !c.replied && got >= c.need {
            let result = match &c.phase {
                Phase::Write { object, dot } => Ok(ClientReply::Written {
                    dot: *dot,
                    context: object.context().clone(),
                    acked_by: c.answered_by(),
                    stand_ins: c
                        .targets
                        .iter()
                        .filter(|t| t.answered)
                        .filter_map(|t| t.hint.map(|o| (t.node, o)))
                        .collect(),
                }),
                Phase::Read { replies } => {
                    let merged = merge_all(replies);
                    Ok(ClientReply::Read {
                        values: merged.values().map(|(d, v)| (*d, v.clone())).collect(),
                        context: merged.context().clone(),
                        answered_by: c.answered_by(),
                    })
                }
            };
            let (origin, key, need) = (c.origin, c.key.clone(), c.need);
            if let Some(c) = self.coords.get_mut(&id) {
                c.replied = true;
            }
            self.event(Event::QuorumMet {
                req: self.client_req(origin),
                key: key.clone(),
                got,
                need,
            });
            self.finish(origin, key, result);
        }
        let Some(c) = self.coords.get(&id) else {
            return;
        };
        if c.targets
            .iter()
            .all(|t| t.answered || t.replaced || !t.asked)
        {
            self.complete(id);
        }
    }

    /// Every target answered, or the deadline passed.
    fn complete(&mut self, id: ReqId) {
        let Some(c) = self.coords.remove(&id) else {
            return;
        };
        self.cancel_timer(c.deadline, Timer::Deadline(id));
        self.cancel_timer(c.check, Timer::ReplicaCheck(id));
        if let Some(at) = c.speculate {
            self.cancel_timer(at, Timer::Speculate(id));
        }
        match c.phase {
            Phase::Read { replies } => self.read_repair(c.key, replies),
            Phase::Write { object, .. } => {
                // Purge rule: all N primaries acked a tombstone-only object.
                if !object.is_deleted() {
                    return;
                }
                let Some(ring) = &self.ring else { return };
                let primaries = ring.primaries(c.partition).to_vec();
                let all_primaries_acked = primaries.len() == self.config.n
                    && primaries.iter().all(|p| {
                        c.targets
                            .iter()
                            .any(|t| t.node == *p && t.hint.is_none() && t.answered)
                    });
                if all_primaries_acked {
                    let pid = self.next_req();
                    let at = self.now + self.config.tombstone_grace;
                    self.purges.insert(
                        pid,
                        PendingPurge {
                            key: c.key,
                            context: object.context().clone(),
                            primaries,
                        },
                    );
                    self.set_timer(at, Timer::Purge(pid));
                }
            }
        }
    }

    fn read_repair(&mut self, key: Bytes, replies: Vec<(NodeId, Option<NodeId>, Object)>) {
        let merged = merge_all(&replies);
        if merged.is_empty() {
            return;
        }
        let mut repaired = Vec::new();
        for (node, hint, object) in &replies {
            if *object == merged {
                continue;
            }
            repaired.push(*node);
            if *node == self.id {
                let op = self.store_op(&key, self.local_copy(&key, *hint).merged(&merged), *hint);
                self.commit(vec![op]);
            } else {
                let msg = Msg::Store {
                    id: None,
                    key: key.clone(),
                    object: merged.clone(),
                    hint: *hint,
                };
                self.send(*node, Message::Replica(msg));
            }
        }
        if !repaired.is_empty() {
            self.event(Event::ReadRepair {
                key,
                replicas: repaired,
            });
        }
    }

    /// A `ReadFanout::Quorum` read still short of R after `replica_timeout`: asks
    /// the targets it has not asked yet.
    fn ask_the_rest(&mut self, id: ReqId) {
        if self.fetch_unasked(id) {
            let check = self.now + self.config.replica_timeout;
            if let Some(c) = self.coords.get_mut(&id) {
                c.check = check;
            }
            self.set_timer(check, Timer::ReplicaCheck(id));
        }
    }

    /// How long a `ReadFanout::Quorum` read waits for the replicas it asked before
    /// it also asks the others: 2 ms plus four times the moving average of replica
    /// read round trips (for round trips spread like an exponential that is about
    /// their p98), at most `replica_timeout`.
    ///
    /// Why: asking R replicas instead of N halves a read's replica traffic at N=3,
    /// R=2, but then one slow or crashed-and-not-yet-suspected replica would hold
    /// every read it is asked for until `replica_timeout` (hundreds of ms), where
    /// asking all N hides it. Retrying early (Cassandra's speculative retry) makes
    /// that a few ms; it sends an extra fetch only for the slowest reads. Suspicion
    /// stays with `ReplicaCheck`, so a speculative retry never marks a peer down.
    pub(crate) fn speculate_delay(&self) -> Dur {
        let ms = 2 + (4 * self.fetch_rtt).div_ceil(16);
        Dur(ms.min(self.config.replica_timeout.as_millis()))
    }

    /// Folds one replica read round trip into the moving average (weight 1/8).
    fn observe_fetch_rtt(&mut self, rtt: Dur) {
        let sample = rtt.as_millis().min(60_000) * 16;
        self.fetch_rtt = self.fetch_rtt - self.fetch_rtt / 8 + sample / 8;
    }

    /// The speculative retry of a `ReadFanout::Quorum` read (see `speculate_delay`).
    ///
    /// The replicas still silent are asked last by the reads that start in the
    /// next `replica_timeout` (unless one is asked first anyway and answers on
    /// time, which clears it): a crashed replica that is not
    /// suspected yet then delays one read by a retry, not every read that would
    /// have asked it until `replica_timeout` passes.
    pub(crate) fn speculate(&mut self, id: ReqId) {
        let Some(c) = self.coords.get_mut(&id) else {
            return;
        };
        c.speculate = None;
        if !c.replied {
            let until = self.now + self.config.replica_timeout;
            let silent: Vec<NodeId> = c
                .targets
                .iter()
                .filter(|t| t.asked && !t.answered && t.node != self.id)
                .map(|t| t.node)
                .collect();
            for node in silent {
                self.slow_replicas.insert(node, until);
            }
        }
        self.fetch_unasked(id);
    }

    /// Whether a read had to retry past `node` recently (see `speculate`).
    fn is_slow(&self, node: NodeId) -> bool {
        self.slow_replicas.get(&node).is_some_and(|&t| t > self.now)
    }

    /// Sends the read's fetch to every target not asked yet, unless the read has
    /// its answers. Whether it sent any.
    fn fetch_unasked(&mut self, id: ReqId) -> bool {
        let Some(c) = self.coords.get_mut(&id) else {
            return false;
        };
        if c.replied || c.answered() >= c.need {
            return false;
        }
        let key = c.key.clone();
        let mut fetch = Vec::new();
        for t in c.targets.iter_mut().filter(|t| !t.asked) {
            t.asked = true;
            t.late = true;
            fetch.push(t.node);
        }
        if fetch.is_empty() {
            return false;
        }
        for &node in &fetch {
            self.send(
                node,
                Message::Replica(Msg::Fetch {
                    id,
                    key: key.clone(),
                }),
            );
        }
        self.event(Event::ReadRetried { key, asked: fetch });
        true
    }

    pub(crate) fn replica_check(&mut self, id: ReqId) {
        let Some(c) = self.coords.get(&id) else {
            return;
        };
        let silent: Vec<(usize, NodeId, Option<NodeId>)> = c
            .targets
            .iter()
            .enumerate()
            .filter(|(_, t)| t.asked && !t.answered && !t.replaced)
            .map(|(i, t)| (i, t.node, t.hint))
            .collect();
        let is_write = matches!(c.phase, Phase::Write { .. });
        let partition = c.partition;
        let deadline = c.deadline;
        for &(_, node, _) in &silent {
            if let Some(change) = self.detector.mark_down(node, self.now) {
                self.on_reachability(change);
            }
        }
        if !is_write {
            if self.now < deadline {
                self.ask_the_rest(id);
            }
            return;
        }
        if self.now >= deadline {
            return;
        }
        // Recruit a stand-in for each silent target, so the write still lands on N nodes.
        let Some(c) = self.coords.get(&id) else {
            return;
        };
        let Some(ring) = &self.ring else { return };
        let mut used: Vec<NodeId> = c.targets.iter().map(|t| t.node).collect();
        let walk: Vec<NodeId> = ring.preference_walk(partition).collect();
        let mut recruits = Vec::new();
        for (i, node, hint) in silent {
            let owner = hint.unwrap_or(node);
            if let Some(&stand_in) = walk
                .iter()
                .find(|&&s| !used.contains(&s) && self.healthy(s))
            {
                used.push(stand_in);
                recruits.push((i, owner, stand_in));
            }
        }
        if recruits.is_empty() {
            return;
        }
        let Some(c) = self.coords.get_mut(&id) else {
            return;
        };
        let Phase::Write { object, .. } = &c.phase else {
            return;
        };
        let object = object.clone();
        let key = c.key.clone();
        let mut local = None;
        for &(i, owner, stand_in) in &recruits {
            c.targets[i].replaced = true;
            let hint = (owner != stand_in).then_some(owner);
            c.targets.push(Target {
                node: stand_in,
                hint,
                answered: false,
                replaced: false,
                asked: true,
                late: false,
            });
            if stand_in == self.id {
                local = Some((c.targets.len() - 1, hint));
            }
        }
        let check = self.now + self.config.replica_timeout;
        c.check = check;
        for (_, owner, stand_in) in recruits {
            self.event(Event::StandInRecruited {
                key: key.clone(),
                owner,
                stand_in,
            });
            if stand_in != self.id {
                let hint = (owner != stand_in).then_some(owner);
                let msg = Msg::Store {
                    id: Some(id),
                    key: key.clone(),
                    object: object.clone(),
                    hint,
                };
                self.send(stand_in, Message::Replica(msg));
            }
        }
        if let Some((idx, hint)) = local {
            let op = self.store_op(&key, self.local_copy(&key, hint).merged(&object), hint);
            if self.commit(vec![op]) {
                if let Some(c) = self.coords.get_mut(&id) {
                    c.targets[idx].answered = true;
                }
            }
        }
        self.set_timer(check, Timer::ReplicaCheck(id));
        self.progress(id);
    }

    pub(crate) fn deadline(&mut self, id: ReqId) {
        let Some(c) = self.coords.get(&id) else {
            return;
        };
        if !c.replied {
            let (origin, key) = (c.origin, c.key.clone());
            let e = RequestError::QuorumNotReached {
                got: c.answered(),
                need: c.need,
            };
            if let Some(c) = self.coords.get_mut(&id) {
                c.replied = true;
            }
            self.finish(origin, key, Err(e));
        }
        self.complete(id);
    }

    pub(crate) fn purge_due(&mut self, id: ReqId) {
        let Some(p) = self.purges.remove(&id) else {
            return;
        };
        for node in p.primaries {
            if node == self.id {
                self.purge_local(p.key.clone(), &p.context);
            } else {
                let msg = Msg::Purge {
                    key: p.key.clone(),
                    context: p.context.clone(),
                };
                self.send(node, Message::Replica(msg));
            }
        }
    }

    fn purge_local(&mut self, key: Bytes, context: &VersionVector) {
        let Some(obj) = self.storage.object(&key) else {
            return;
        };
        if obj.is_deleted() && obj.context() == context {
            let mut ops = self.raise_epoch_floor();
            ops.push(Op::DeleteObject { key: key.clone() });
            if self.commit(ops) {
                self.event(Event::TombstonePurged { key });
            }
        }
    }

    pub(crate) fn handle_replica_msg(&mut self, from: NodeId, msg: Msg) {
        match msg {
            Msg::Forward { id, op } => {
                self.send(from, Message::Replica(Msg::ForwardAccepted { id }));
                self.handle_client(Origin::Remote(from, id), op)
            }
            Msg::ForwardAccepted { id } => {
                if let Some(f) = self.forwards.get_mut(&id) {
                    f.accepted = true;
                }
            }
            Msg::ForwardReply { id, result } => {
                if let Some(f) = self.forwards.remove(&id) {
                    self.cancel_timer(f.deadline, Timer::ForwardDeadline(id));
                    self.emit(Output::Reply { req: f.req, result });
                }
            }
            Msg::Store {
                id,
                key,
                object,
                hint,
            } => self.handle_store(from, id, key, object, hint),
            Msg::StoreAck { id } => {
                if let Some(c) = self.coords.get_mut(&id) {
                    if let Some(t) = c.targets.iter_mut().find(|t| t.node == from && !t.answered) {
                        t.answered = true;
                    }
                    self.progress(id);
                }
            }
            Msg::Fetch { id, key } => {
                let mut object = self.storage.object(&key).unwrap_or_default();
                // A stand-in answers with what it holds for anyone.
                for owner in self.storage.hint_owners() {
                    if let Some(h) = self.storage.hint(owner, &key) {
                        object.merge(&h.object);
                    }
                }
                self.send(from, Message::Replica(Msg::FetchReply { id, object }));
            }
            Msg::FetchReply { id, object } => {
                if let Some(c) = self.coords.get_mut(&id) {
                    let rtt = self.now.since(c.started);
                    let mut on_time = false;
                    if let Some(t) = c.targets.iter_mut().find(|t| t.node == from && !t.answered) {
                        t.answered = true;
                        on_time = !t.late;
                        let hint = t.hint;
                        if let Phase::Read { replies } = &mut c.phase {
                            replies.push((from, hint, object));
                        }
                    }
                    if on_time {
                        self.observe_fetch_rtt(rtt);
                        // Asked at the start and answered: not slow (any more).
                        self.slow_replicas.remove(&from);
                    }
                    self.progress(id);
                }
            }
            Msg::Purge { key, context } => self.purge_local(key, &context),
        }
    }

    fn handle_store(
        &mut self,
        from: NodeId,
        id: Option<ReqId>,
        key: Bytes,
        object: Object,
        hint: Option<NodeId>,
    ) {
        let hint = hint.filter(|&o| o != self.id);
        let mut merged = self.local_copy(&key, hint);
        let changed = merged.merge(&object);
        if let Some(owner) = hint {
            let (count, bytes) = self.storage.hint_usage(owner);
            let existing = self.storage.hint(owner, &key);
            let old_bytes = existing.as_ref().map_or(0, |h| h.object.value_bytes());
            let new_count = count + usize::from(existing.is_none());
            if new_count > self.config.max_hints_per_owner
                || bytes - old_bytes + merged.value_bytes() > self.config.max_hint_bytes_per_owner
            {
                // Not stored, so not acked: the coordinator recruits someone else.
                self.event(Event::HintRefused { owner, key });
                return;
            }
        }
        if changed {
            let op = self.store_op(&key, merged.clone(), hint);
            if !self.commit(vec![op]) {
                return;
            }
            self.stored_event(&key, &merged, hint);
        }
        if let Some(id) = id {
            self.send(from, Message::Replica(Msg::StoreAck { id }));
        }
    }
}

fn merge_all(replies: &[(NodeId, Option<NodeId>, Object)]) -> Object {
    let mut merged = Object::new();
    for (_, _, o) in replies {
        merged.merge(o);
    }
    merged
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Config;
    use crate::message::{Input, Output};
    use crate::ring::Ring;
    use crate::store::MemStorage;
    use crate::time::Dur;

    const A: NodeId = NodeId(0);
    const B: NodeId = NodeId(1);
    const C: NodeId = NodeId(2);
    const D: NodeId = NodeId(3);

    pub(crate) fn node(id: NodeId, members: u32, config: Config) -> Node<MemStorage> {
        let m: Vec<(NodeId, String)> = (0..members).map(|i| (NodeId(i), "z".to_owned())).collect();
        let ring = Ring::new(config.partitions, config.n, &m).unwrap();
        Node::new(id, config, Some(ring), MemStorage::new(), 1, Time(0))
    }

    fn drain(n: &mut Node<MemStorage>) -> Vec<Output> {
        std::iter::from_fn(|| n.poll_output()).collect()
    }

    fn sends(out: &[Output]) -> Vec<(NodeId, &Msg)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send {
                    to,
                    msg: Message::Replica(m),
                } => Some((*to, m)),
                _ => None,
            })
            .collect()
    }

    fn reply(out: &[Output]) -> Option<&Result<ClientReply, RequestError>> {
        out.iter().find_map(|o| match o {
            Output::Reply { result, .. } => Some(result),
            _ => None,
        })
    }

    /// A key whose primaries are exactly `want`, in order, on a ring of `members`.
    fn key_for(n: &Node<MemStorage>, want: &[NodeId]) -> Bytes {
        (0..10_000)
            .map(|i| Bytes::from(format!("k{i}")))
            .find(|k| {
                let r = n.ring().unwrap();
                r.primaries(r.partition_of(k)) == want
            })
            .expect("key exists")
    }

    fn put(key: &Bytes, v: &'static str) -> Input {
        Input::Client {
            req: ClientReq(1),
            op: ClientOp::Put {
                key: key.clone(),
                value: Bytes::from_static(v.as_bytes()),
                context: None,
                w: None,
            },
        }
    }

    #[test]
    fn coordinating_primary_stores_then_sends_to_the_other_targets() {
        let mut a = node(A, 3, Config::default());
        let key = key_for(&a, &[A, B, C]);
        a.handle_input(Time(0), put(&key, "v"));
        let out = drain(&mut a);
        let s = sends(&out);
        assert_eq!(s.iter().map(|(to, _)| *to).collect::<Vec<_>>(), vec![B, C]);
        for (_, m) in &s {
            assert!(matches!(
                m,
                Msg::Store {
                    id: Some(_),
                    hint: None,
                    ..
                }
            ));
        }
        assert!(reply(&out).is_none(), "one local ack is not W=2");
        assert!(
            a.storage().object(&key).is_some(),
            "committed before sending"
        );
        // B's ack completes the quorum.
        let Msg::Store { id: Some(id), .. } = s[0].1 else {
            unreachable!()
        };
        a.handle_input(
            Time(3),
            Input::Message {
                from: B,
                msg: Message::Replica(Msg::StoreAck { id: *id }),
            },
        );
        let out = drain(&mut a);
        match reply(&out) {
            Some(Ok(ClientReply::Written {
                acked_by,
                stand_ins,
                ..
            })) => {
                assert_eq!(acked_by, &vec![A, B]);
                assert!(stand_ins.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn non_replica_forwards_once_to_the_first_target() {
        let mut d = node(D, 4, Config::default());
        let key = key_for(&d, &[A, B, C]);
        d.handle_input(Time(0), put(&key, "v"));
        let out = drain(&mut d);
        let s = sends(&out);
        assert_eq!(s.len(), 1);
        let id = match s[0] {
            (A, Msg::Forward { id, .. }) => *id,
            other => panic!("{other:?}"),
        };
        // A accepted it: no retry elsewhere, however long A takes.
        d.handle_input(
            Time(1),
            Input::Message {
                from: A,
                msg: Message::Replica(Msg::ForwardAccepted { id }),
            },
        );
        assert!(drain(&mut d).is_empty());
        // No answer: the client gets a clear error at the deadline, not silence.
        let t = Time(0) + Config::default().request_timeout + Config::default().replica_timeout;
        d.handle_input(t, Input::Timeout);
        let out = drain(&mut d);
        assert!(sends(&out).is_empty(), "an accepted forward is not retried");
        assert_eq!(
            reply(&out),
            Some(&Err(RequestError::QuorumNotReached { got: 0, need: 2 }))
        );
    }

    #[test]
    fn forward_to_a_silently_dead_replica_is_retried_around_it() {
        let mut d = node(D, 4, Config::default());
        let key = key_for(&d, &[A, B, C]);
        d.handle_input(Time(0), put(&key, "v"));
        let _ = drain(&mut d);
        // A never accepts: at replica_timeout D marks it down and, now a stand-in
        // for A, coordinates the write itself.
        let t = Time(0) + Config::default().replica_timeout;
        d.handle_input(t, Input::Timeout);
        let out = drain(&mut d);
        assert!(out
            .iter()
            .any(|o| matches!(o, Output::Event(Event::PeerUnreachable { peer: A }))));
        let s = sends(&out);
        assert!(s.iter().all(|(to, _)| *to != A), "{s:?}");
        for peer in [B, C] {
            assert!(s
                .iter()
                .any(|(to, m)| *to == peer && matches!(m, Msg::Store { .. })));
        }
        assert_eq!(
            d.storage().hint_count(),
            1,
            "D holds the write as a hint for A"
        );
    }

    #[test]
    fn unreachable_primary_is_replaced_by_a_hinted_stand_in() {
        let mut b = node(B, 4, Config::default());
        let key = key_for(&b, &[A, B, C]);
        let walk: Vec<NodeId> = {
            let r = b.ring().unwrap();
            r.preference_walk(r.partition_of(&key)).collect()
        };
        assert_eq!(walk[3], D);
        b.detector.mark_down(A, Time(0));
        b.handle_input(Time(0), put(&key, "v"));
        let out = drain(&mut b);
        let s = sends(&out);
        assert!(s
            .iter()
            .any(|(to, m)| *to == D && matches!(m, Msg::Store { hint: Some(A), .. })));
        assert!(s
            .iter()
            .any(|(to, m)| *to == C && matches!(m, Msg::Store { hint: None, .. })));
        assert!(!s.iter().any(|(to, _)| *to == A));
    }

    #[test]
    fn silent_replica_is_replaced_after_the_replica_timeout() {
        let cfg = Config::default();
        let mut a = node(A, 4, cfg.clone());
        let key = key_for(&a, &[A, B, C]);
        a.handle_input(Time(0), put(&key, "v"));
        let out = drain(&mut a);
        let Msg::Store { id: Some(id), .. } = sends(&out)[0].1 else {
            unreachable!()
        };
        let id = *id;
        a.handle_input(
            Time(2),
            Input::Message {
                from: B,
                msg: Message::Replica(Msg::StoreAck { id }),
            },
        );
        drain(&mut a);
        // C never answers.
        a.handle_input(Time(0) + cfg.replica_timeout, Input::Timeout);
        let out = drain(&mut a);
        assert!(out.contains(&Output::Event(Event::PeerUnreachable { peer: C })));
        assert!(out.contains(&Output::Event(Event::StandInRecruited {
            key: key.clone(),
            owner: C,
            stand_in: D
        })));
        assert!(sends(&out)
            .iter()
            .any(|(to, m)| *to == D && matches!(m, Msg::Store { hint: Some(C), .. })));
    }

    /// B's object "v" for `key`, and the message asking `D` to hold it for A.
    /// An object holding one write of "v" by `node` (epoch 1).
    pub(crate) fn written_by(node: NodeId) -> Object {
        let mut obj = Object::new();
        let actor = Actor { node, epoch: 1 };
        obj.write(actor, &VersionVector::new(), Some(Bytes::from_static(b"v")));
        obj
    }

    fn hinted_store(id: u64, key: &Bytes) -> (Object, Input) {
        let obj = written_by(B);
        let msg = Msg::Store {
            id: Some(ReqId(id)),
            key: key.clone(),
            object: obj.clone(),
            hint: Some(A),
        };
        (
            obj,
            Input::Message {
                from: B,
                msg: Message::Replica(msg),
            },
        )
    }

    #[test]
    fn store_with_hint_goes_to_the_hint_store_and_is_acked() {
        let mut d = node(D, 4, Config::default());
        let key = Bytes::from_static(b"k");
        let (obj, input) = hinted_store(9, &key);
        d.handle_input(Time(1), input);
        let out = drain(&mut d);
        assert!(out.contains(&Output::Event(Event::HintStored {
            owner: A,
            key: key.clone()
        })));
        let ack = Message::Replica(Msg::StoreAck { id: ReqId(9) });
        assert!(out.contains(&Output::Send { to: B, msg: ack }));
        assert!(d.storage().object(&key).is_none());
        assert_eq!(d.storage().hint(A, &key).unwrap().object, obj);
    }

    #[test]
    fn full_hint_budget_refuses_without_acking() {
        let cfg = Config {
            max_hints_per_owner: 1,
            ..Config::default()
        };
        let mut d = node(D, 4, cfg);
        for (i, k) in [&b"k1"[..], b"k2"].into_iter().enumerate() {
            let (_, input) = hinted_store(i as u64, &Bytes::copy_from_slice(k));
            d.handle_input(Time(1), input);
        }
        let out = drain(&mut d);
        let refused = Event::HintRefused {
            owner: A,
            key: Bytes::from_static(b"k2"),
        };
        assert!(out.contains(&Output::Event(refused)));
        assert_eq!(sends(&out).len(), 1, "only the stored hint is acked");
    }

    #[test]
    fn sibling_cap_rejects_a_blind_write_and_changes_nothing() {
        let cfg = Config {
            n: 1,
            r: 1,
            w: 1,
            max_siblings: 2,
            ..Config::default()
        };
        let mut a = node(A, 1, cfg);
        let key = Bytes::from_static(b"k");
        for v in ["1", "2"] {
            a.handle_input(Time(0), put(&key, v));
            assert!(matches!(reply(&drain(&mut a)), Some(Ok(_))));
        }
        let before = a.storage().object(&key);
        a.handle_input(Time(0), put(&key, "3"));
        let out = drain(&mut a);
        assert_eq!(
            reply(&out),
            Some(&Err(RequestError::TooManySiblings {
                would_have: 3,
                limit: 2
            }))
        );
        assert_eq!(a.storage().object(&key), before);
    }

    #[test]
    fn invalid_quorum_is_rejected_up_front() {
        let mut a = node(A, 3, Config::default());
        let op = ClientOp::Get {
            key: Bytes::from_static(b"k"),
            r: Some(4),
        };
        a.handle_input(
            Time(0),
            Input::Client {
                req: ClientReq(7),
                op,
            },
        );
        let out = drain(&mut a);
        assert_eq!(
            reply(&out).unwrap().as_ref().unwrap_err().to_string(),
            "invalid quorum r=4: must be between 1 and n=3"
        );
    }

    #[test]
    fn tombstone_is_purged_after_all_primaries_ack_and_grace_passes() {
        let cfg = Config {
            n: 1,
            r: 1,
            w: 1,
            ..Config::default()
        };
        let grace = cfg.tombstone_grace;
        let mut a = node(A, 1, cfg);
        let key = Bytes::from_static(b"k");
        a.handle_input(Time(0), put(&key, "v"));
        let ctx = match reply(&drain(&mut a)) {
            Some(Ok(ClientReply::Written { context, .. })) => context.clone(),
            other => panic!("{other:?}"),
        };
        let op = ClientOp::Delete {
            key: key.clone(),
            context: Some(ctx),
            w: None,
        };
        a.handle_input(
            Time(1),
            Input::Client {
                req: ClientReq(2),
                op,
            },
        );
        drain(&mut a);
        assert!(a.storage().object(&key).unwrap().is_deleted());
        let floor_before = a.epoch_floor;
        a.handle_input(Time(1) + grace - Dur(1), Input::Timeout);
        drain(&mut a);
        assert!(
            a.storage().object(&key).is_some(),
            "not before the grace period"
        );
        a.handle_input(Time(1) + grace, Input::Timeout);
        let out = drain(&mut a);
        assert!(out.contains(&Output::Event(Event::TombstonePurged { key: key.clone() })));
        assert!(a.storage().object(&key).is_none());
        assert!(
            a.epoch_floor > floor_before,
            "old epochs can no longer be continued"
        );
    }

    /// The object of the first replica write in `out`.
    fn stored_object(out: &[Output]) -> Object {
        sends(out)
            .into_iter()
            .find_map(|(_, m)| match m {
                Msg::Store { object, .. } => Some(object.clone()),
                _ => None,
            })
            .expect("replica write")
    }

    /// The early-release contract: a coordinator's replica write may leave before
    /// its own batch is durable. If the node then crashes and restarts from the
    /// state *before* that batch, its next write must not reuse the lost dot.
    #[test]
    fn dots_sent_before_durability_are_never_reissued_after_a_restart() {
        let mut a = node(A, 3, Config::default());
        let key = key_for(&a, &[A, B, C]);
        a.handle_input(Time(0), put(&key, "first"));
        drain(&mut a);
        // What the disk holds at the last sync: "first" is durable.
        let durable = a.storage().clone();
        a.handle_input(Time(1), put(&key, "lost"));
        let out = drain(&mut a);
        let lost = stored_object(&out);
        assert!(out.iter().any(|o| matches!(
            o,
            Output::Send { msg, .. } if msg.may_precede_durability()
        )));
        // Crash before the sync: restart from the durable state.
        let config = Config::default();
        let ring = a.ring().cloned();
        let mut a2 = Node::new(A, config, ring, durable, 2, Time(2));
        drain(&mut a2);
        a2.handle_input(Time(3), put(&key, "after restart"));
        let out = drain(&mut a2);
        let fresh = stored_object(&out);
        let lost_dots: Vec<Dot> = lost.siblings().map(|(d, _)| *d).collect();
        let mut checked = 0;
        for (d, v) in fresh.siblings() {
            if v.map(|b| &b[..]) == Some(&b"after restart"[..]) {
                assert!(!lost_dots.contains(d), "dot {d:?} reissued");
                assert!(!lost.context().covers(d), "dot {d:?} already covered");
                checked += 1;
            }
        }
        assert_eq!(checked, 1);
        // Merging what B holds (the lost write) with the new write keeps both values.
        let mut b = lost.clone();
        b.merge(&fresh);
        let values: Vec<Bytes> = b.siblings().filter_map(|(_, v)| v.cloned()).collect();
        assert!(values.iter().any(|v| v == &b"after restart"[..]));
        assert!(values.iter().any(|v| v == &b"lost"[..]));
    }

    fn get(key: &Bytes) -> Input {
        Input::Client {
            req: ClientReq(9),
            op: ClientOp::Get {
                key: key.clone(),
                r: None,
            },
        }
    }

    /// Node A of 3 with `config` and `ReadFanout::Quorum`, and a key whose
    /// preference list is A, B, C.
    fn quorum_node(config: Config) -> (Node<MemStorage>, Bytes) {
        let a = node(
            A,
            3,
            Config {
                read_fanout: ReadFanout::Quorum,
                ..config
            },
        );
        let key = key_for(&a, &[A, B, C]);
        (a, key)
    }

    /// `from`'s read reply to request `id`: it holds nothing for the key.
    fn empty_reply(from: NodeId, id: ReqId) -> Input {
        Input::Message {
            from,
            msg: Message::Replica(Msg::FetchReply {
                id,
                object: Object::new(),
            }),
        }
    }

    fn fetches(out: &[Output]) -> Vec<(NodeId, ReqId)> {
        sends(out)
            .into_iter()
            .filter_map(|(to, m)| match m {
                Msg::Fetch { id, .. } => Some((to, *id)),
                _ => None,
            })
            .collect()
    }

    /// `ReadFanout::Quorum`: a primary asks itself and one more replica; the read
    /// completes on that answer and the third replica is never asked.
    #[test]
    fn quorum_fanout_asks_r_replicas() {
        let (mut a, key) = quorum_node(Config::default());
        a.handle_input(Time(0), get(&key));
        let out = drain(&mut a);
        let f = fetches(&out);
        assert_eq!(f.iter().map(|(to, _)| *to).collect::<Vec<_>>(), vec![B]);
        assert!(reply(&out).is_none());
        a.handle_input(Time(1), empty_reply(B, f[0].1));
        let out = drain(&mut a);
        assert!(matches!(reply(&out), Some(Ok(ClientReply::Read { .. }))));
        assert!(a.coords.is_empty(), "complete without the unasked replica");
        // Nothing more is sent later.
        a.handle_input(Time(0) + a.config.replica_timeout, Input::Timeout);
        assert!(fetches(&drain(&mut a)).is_empty());
        // The default asks every target.
        let mut a = node(A, 3, Config::default());
        a.handle_input(Time(0), get(&key));
        let f = fetches(&drain(&mut a));
        assert_eq!(f.iter().map(|(to, _)| *to).collect::<Vec<_>>(), vec![B, C]);
    }

    /// A `ReadFanout::Quorum` read whose asked replica is silent asks the rest at
    /// its speculative retry (2 ms with no round trip measured yet), long before
    /// `replica_timeout`, and still succeeds. The retry suspects nobody: the silent
    /// replica is marked down only at `replica_timeout`.
    #[test]
    fn quorum_fanout_asks_the_rest_when_one_is_silent() {
        let (mut a, key) = quorum_node(Config::default());
        a.handle_input(Time(0), get(&key));
        let f = fetches(&drain(&mut a));
        assert_eq!(f, vec![(B, f[0].1)]);
        assert_eq!(a.speculate_delay(), Dur(2));
        a.handle_input(Time(1), Input::Timeout);
        assert!(fetches(&drain(&mut a)).is_empty(), "not before the retry");
        a.handle_input(Time(2), Input::Timeout);
        let out = drain(&mut a);
        let f2 = fetches(&out);
        assert_eq!(f2, vec![(C, f[0].1)], "the unasked replica, same request");
        assert!(out.contains(&Output::Event(Event::ReadRetried {
            key: key.clone(),
            asked: vec![C],
        })));
        assert!(a.detector.is_reachable(B), "a retry suspects nobody");
        a.handle_input(Time(3), empty_reply(C, f[0].1));
        let out = drain(&mut a);
        match reply(&out) {
            Some(Ok(ClientReply::Read { answered_by, .. })) => {
                assert_eq!(answered_by, &vec![A, C]);
            }
            other => panic!("{other:?}"),
        }
        // C answered late: its time is not a round trip from the start.
        assert_eq!(a.fetch_rtt, 0);
        // B is still silent at replica_timeout: now it is suspected.
        a.handle_input(Time(0) + a.config.replica_timeout, Input::Timeout);
        drain(&mut a);
        assert!(!a.detector.is_reachable(B));
    }

    /// After a read retried past B, the next reads ask C first: one read pays for
    /// a silent replica, not every read until `replica_timeout`.
    #[test]
    fn quorum_fanout_asks_a_retried_past_replica_last() {
        let (mut a, key) = quorum_node(Config::default());
        a.handle_input(Time(0), get(&key));
        let f = fetches(&drain(&mut a));
        assert_eq!(f[0].0, B);
        a.handle_input(Time(2), Input::Timeout);
        assert_eq!(fetches(&drain(&mut a)), vec![(C, f[0].1)]);
        a.handle_input(Time(3), empty_reply(C, f[0].1));
        drain(&mut a);
        for t in [4, 10, 100] {
            a.handle_input(Time(t), get(&key));
            let f = fetches(&drain(&mut a));
            assert_eq!(
                f.iter().map(|x| x.0).collect::<Vec<_>>(),
                vec![C],
                "at {t} ms"
            );
            a.handle_input(Time(t + 1), empty_reply(C, f[0].1));
            drain(&mut a);
        }
    }

    /// A read answered before its retry sends nothing more: the retry's timer goes
    /// with the request.
    #[test]
    fn quorum_fanout_answered_in_time_never_retries() {
        let (mut a, key) = quorum_node(Config::default());
        a.handle_input(Time(0), get(&key));
        let f = fetches(&drain(&mut a));
        a.handle_input(Time(1), empty_reply(B, f[0].1));
        assert!(matches!(
            reply(&drain(&mut a)),
            Some(Ok(ClientReply::Read { .. }))
        ));
        assert!(a.coords.is_empty());
        assert!(
            !a.timers
                .iter()
                .any(|(_, t)| matches!(t, Timer::Speculate(_))),
            "the retry timer is cancelled"
        );
        a.handle_input(Time(0) + a.config.replica_timeout, Input::Timeout);
        assert!(fetches(&drain(&mut a)).is_empty());
    }

    /// The retry waits 2 ms plus four times the moving average of on-time replica
    /// round trips, and never longer than `replica_timeout`.
    #[test]
    fn speculate_delay_follows_round_trips_within_bounds() {
        let (mut a, key) = quorum_node(Config {
            replica_timeout: Dur(50),
            ..Config::default()
        });
        let mut now = Time(0);
        let mut read_taking = |a: &mut Node<MemStorage>, ms: u64| {
            a.handle_input(now, get(&key));
            let f = fetches(&drain(a));
            assert_eq!(f.len(), 1, "{ms} ms: one replica asked");
            now = now + Dur(ms);
            a.handle_input(now, empty_reply(B, f[0].1));
            drain(a);
            now = now + Dur(1);
        };
        // Round trips of 0 ms (sub-millisecond) keep the floor.
        for _ in 0..20 {
            read_taking(&mut a, 0);
        }
        assert_eq!(a.speculate_delay(), Dur(2));
        // 5-ms round trips (B was asked at the start, so they count even though the
        // 2-ms retry was due: no timeout input here lets it fire) move the delay
        // to 2 + 4 * 5.
        for _ in 0..40 {
            read_taking(&mut a, 5);
        }
        let d = a.speculate_delay().as_millis();
        assert!((20..=22).contains(&d), "delay {d} ms");
        // Round trips of seconds: capped at replica_timeout, so no retry is planned.
        a.observe_fetch_rtt(Dur(10_000));
        a.observe_fetch_rtt(Dur(10_000));
        assert_eq!(a.speculate_delay(), Dur(50));
        a.handle_input(now, get(&key));
        drain(&mut a);
        assert!(!a
            .timers
            .iter()
            .any(|(_, t)| matches!(t, Timer::Speculate(_))));
    }
}
