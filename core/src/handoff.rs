//! Hinted handoff: a stand-in delivers the replicas it holds for an unreachable
//! owner once that owner is reachable again, then deletes them.
//!
//! Invariant: a hint is deleted only after the owner has acknowledged a version of
//! it that is at least as new as the hint's current copy, and the owner acks only
//! after committing the merge — so handoff never reduces the number of durable
//! copies. Hints older than the hint window are dropped (reported as
//! `HintDropped`); repairing those owners is anti-entropy's job.

use crate::id::NodeId;
use crate::message::{Event, Message};
use crate::node::{Node, Timer};
use crate::store::{Op, Storage};
use crate::time::Time;
use crate::version::{Object, VersionVector};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

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

/// A delivery batch awaiting its ack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InFlight {
    batch: u64,
    sent: Time,
}

impl<S: Storage> Node<S> {
    pub(crate) fn hint_replay_tick(&mut self) {
        for owner in self.storage.hint_owners() {
            self.expire_hints(owner);
            self.try_deliver_hints(owner);
        }
        let next = self.now + self.config.hint_replay_interval;
        self.set_timer(next, Timer::HintReplay);
    }

    fn expire_hints(&mut self, owner: NodeId) {
        let window = self.config.hint_window;
        let expired: Vec<Bytes> = self
            .storage
            .hints_for(owner, usize::MAX)
            .into_iter()
            .filter(|(_, h)| self.now.since(h.stored_at) > window)
            .map(|(k, _)| k)
            .collect();
        if expired.is_empty() {
            return;
        }
        let ops = expired
            .iter()
            .map(|key| Op::DeleteHint {
                owner,
                key: key.clone(),
            })
            .collect();
        if self.commit(ops) {
            for key in expired {
                let reason = format!("older than the hint window ({})", window);
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
