//! Local failure detection: each node's own, temporary view of which peers it can
//! reach (Dynamo §4.8.1 — there is no global failure state; a node that cannot
//! reach a peer simply routes around it).
//!
//! Evidence, strongest first:
//! * any message from a peer proves it is up → reachable at once (so a recovered
//!   owner is noticed on its first message, which triggers hint delivery);
//! * a replica request the peer did not answer in time → unreachable at once
//!   (the coordinator's sloppy quorum then recruits a stand-in);
//! * periodic probes: `ping_misses` consecutive unanswered probes → unreachable.
//!
//! Unreachable peers keep being probed every interval, so they come back quickly.
//! A later issue replaces the probing with gossip heartbeats and phi accrual.

use crate::id::NodeId;
use crate::time::Time;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Detector messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// Are you there?
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// Yes.
    Pong {
        /// From the ping.
        nonce: u64,
    },
}

/// What this node believes about one peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    /// Whether requests are routed to it.
    pub reachable: bool,
    /// Last time anything arrived from it.
    pub last_heard: Option<Time>,
    /// Consecutive unanswered probes.
    pub misses: u32,
    /// Outstanding probe: (nonce, sent at).
    pub probe: Option<(u64, Time)>,
    /// Since when it has been unreachable.
    pub down_since: Option<Time>,
    /// Whether it has been reported dead to the administrator (for this outage).
    pub reported_dead: bool,
}

impl Default for PeerView {
    fn default() -> Self {
        PeerView {
            reachable: true,
            last_heard: None,
            misses: 0,
            probe: None,
            down_since: None,
            reported_dead: false,
        }
    }
}

/// The per-node table of peer views.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Detector {
    peers: BTreeMap<NodeId, PeerView>,
}

/// A change of a peer's reachability, to report as an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Became reachable.
    Up(NodeId),
    /// Became unreachable.
    Down(NodeId),
}

impl Detector {
    /// Peers start reachable: Dynamo routes optimistically and learns from failures.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `peer` is reachable in this node's view.
    pub fn is_reachable(&self, peer: NodeId) -> bool {
        self.peers.get(&peer).is_none_or(|p| p.reachable)
    }

    /// The view of one peer.
    pub fn view(&self, peer: NodeId) -> Option<&PeerView> {
        self.peers.get(&peer)
    }

    /// All views, ascending by peer.
    pub fn views(&self) -> impl Iterator<Item = (&NodeId, &PeerView)> {
        self.peers.iter()
    }

    /// Something arrived from `peer`.
    pub fn heard_from(&mut self, peer: NodeId, now: Time) -> Option<Change> {
        let p = self.peers.entry(peer).or_default();
        p.last_heard = Some(now);
        p.misses = 0;
        p.probe = None;
        if p.reachable {
            None
        } else {
            p.reachable = true;
            p.down_since = None;
            p.reported_dead = false;
            Some(Change::Up(peer))
        }
    }

    /// A request to `peer` went unanswered.
    pub fn request_failed(&mut self, peer: NodeId, now: Time) -> Option<Change> {
        let p = self.peers.entry(peer).or_default();
        if p.reachable {
            p.reachable = false;
            p.down_since = Some(now);
            Some(Change::Down(peer))
        } else {
            None
        }
    }

    /// A probe round: counts misses of the previous probes (those older than
    /// `timeout`) and returns the peers to probe now with their nonces.
    pub fn probe_round(
        &mut self,
        peers: impl IntoIterator<Item = NodeId>,
        now: Time,
        timeout: crate::time::Dur,
        misses_allowed: u32,
        mut nonce: impl FnMut() -> u64,
        changes: &mut Vec<Change>,
    ) -> Vec<(NodeId, u64)> {
        let mut out = Vec::new();
        for peer in peers {
            let p = self.peers.entry(peer).or_default();
            if let Some((_, sent)) = p.probe {
                if now.since(sent) < timeout {
                    continue;
                }
                p.misses += 1;
                p.probe = None;
                if p.reachable && p.misses >= misses_allowed {
                    p.reachable = false;
                    p.down_since = Some(now);
                    changes.push(Change::Down(peer));
                }
            }
            let n = nonce();
            p.probe = Some((n, now));
            out.push((peer, n));
        }
        out
    }

    /// Peers unreachable for at least `after` and not yet reported dead; marks them reported.
    pub fn newly_dead(&mut self, now: Time, after: crate::time::Dur) -> Vec<NodeId> {
        let mut out = Vec::new();
        for (id, p) in self.peers.iter_mut() {
            if !p.reported_dead && p.down_since.is_some_and(|t| now.since(t) >= after) {
                p.reported_dead = true;
                out.push(*id);
            }
        }
        out
    }

    /// Forgets a peer that left the cluster.
    pub fn forget(&mut self, peer: NodeId) {
        self.peers.remove(&peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Dur;

    #[test]
    fn misses_then_recovery() {
        let mut d = Detector::new();
        let b = NodeId(1);
        let mut ch = Vec::new();
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        assert_eq!(
            d.probe_round([b], Time(0), Dur(100), 2, &mut next, &mut ch),
            vec![(b, 1)]
        );
        // Too early to count a miss: no new probe either.
        assert!(d
            .probe_round([b], Time(50), Dur(100), 2, &mut next, &mut ch)
            .is_empty());
        d.probe_round([b], Time(100), Dur(100), 2, &mut next, &mut ch);
        assert!(ch.is_empty() && d.is_reachable(b));
        d.probe_round([b], Time(200), Dur(100), 2, &mut next, &mut ch);
        assert_eq!(ch, vec![Change::Down(b)]);
        assert!(!d.is_reachable(b));
        assert_eq!(d.heard_from(b, Time(250)), Some(Change::Up(b)));
        assert_eq!(d.heard_from(b, Time(260)), None);
    }

    #[test]
    fn request_failure_is_immediate() {
        let mut d = Detector::new();
        assert_eq!(
            d.request_failed(NodeId(3), Time(5)),
            Some(Change::Down(NodeId(3)))
        );
        assert_eq!(d.request_failed(NodeId(3), Time(6)), None);
        assert!(d.newly_dead(Time(50), crate::time::Dur(100)).is_empty());
        assert_eq!(
            d.newly_dead(Time(105), crate::time::Dur(100)),
            vec![NodeId(3)]
        );
        assert!(
            d.newly_dead(Time(500), crate::time::Dur(100)).is_empty(),
            "reported once"
        );
        assert!(!d.is_reachable(NodeId(3)));
    }
}
