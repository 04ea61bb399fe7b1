//! Failure detection, in two levels (as the Dynamo paper's seed design says).
//!
//! **Local and temporary.** Each node keeps its *own* view of which peers it can
//! reach; the coordinator's sloppy quorum skips the ones it cannot. Evidence:
//! * Monitoring: members are placed on a pseudo-random cycle (ordered by a hash of
//!   their ids); every node sends a heartbeat every `heartbeat_interval` to the
//!   `monitors` nodes before it, and runs a phi accrual detector ([`crate::phi`], as
//!   in Akka and Cassandra) on the heartbeats of the `monitors` nodes after it (its
//!   subjects). Heartbeat traffic is O(k) per node, whatever the cluster size.
//! * When a subject's phi crosses the threshold, the monitor *suspects* it and, before
//!   declaring anything, asks `indirect_probes` other nodes to ping it (SWIM's
//!   indirect probes, Lifeguard's caution): any answer, heartbeat or message within
//!   `suspicion_timeout` refutes the suspicion. This is what keeps false positives
//!   away under heavy loss.
//! * A confirmed monitor marks the subject unreachable locally and publishes an
//!   *observation* (observer, subject, unreachable) in the gossiped membership. A
//!   node adopts "unreachable" from observations only when `observers_needed`
//!   observers agree and it has not itself heard from the subject since — its own
//!   evidence beats hearsay.
//! * A request the peer failed to answer marks it unreachable locally at once.
//! * Any message from a peer clears the local flag; locally-unreachable peers are
//!   pinged every heartbeat tick, so a recovered peer is noticed quickly (which
//!   triggers hinted handoff).
//!
//! **Reporting.** A peer unreachable for `dead_after` is reported dead to the
//! administrator (an event) — and nothing else happens: it stays in the ring and its
//! partitions do not move until an explicit `remove` or `leave`.

use crate::id::NodeId;
use crate::phi::{PhiConfig, PhiDetector};
use crate::time::{Dur, Time};
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
    /// I am alive (to my monitors); `seq` is my heartbeat counter.
    Heartbeat {
        /// Heartbeat counter of this generation.
        seq: u64,
    },
    /// Please ping `subject` for me (indirect probe).
    ProbeRequest {
        /// The suspected node.
        subject: NodeId,
        /// Echoed in the ack.
        nonce: u64,
    },
    /// `subject` answered your indirect probe.
    ProbeAck {
        /// The node that answered.
        subject: NodeId,
        /// From the request.
        nonce: u64,
    },
}

/// What this node believes about one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    /// Unreachable by this node's own evidence.
    pub local_down: bool,
    /// Unreachable by enough observers' reports (and not heard from since).
    pub remote_down: bool,
    /// Last time anything arrived from it.
    pub last_heard: Option<Time>,
    /// Since when it has been unreachable in this view.
    pub down_since: Option<Time>,
    /// Whether it has been reported dead to the administrator (for this outage).
    pub reported_dead: bool,
}

impl PeerView {
    /// Whether requests are routed to it.
    pub fn reachable(&self) -> bool {
        !(self.local_down || self.remote_down)
    }
}

/// A change of a peer's reachability, to report as an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Became reachable.
    Up(NodeId),
    /// Became unreachable.
    Down(NodeId),
}

/// A subject under suspicion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suspicion {
    /// When phi crossed the threshold.
    pub since: Time,
    /// Nonce of the indirect probes.
    pub nonce: u64,
}

/// The per-node detector state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Detector {
    peers: BTreeMap<NodeId, PeerView>,
    phi: BTreeMap<NodeId, PhiDetector>,
    suspects: BTreeMap<NodeId, Suspicion>,
}

impl Detector {
    /// Peers start reachable: Dynamo routes optimistically and learns from failures.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `peer` is reachable in this node's view.
    pub fn is_reachable(&self, peer: NodeId) -> bool {
        self.peers.get(&peer).is_none_or(PeerView::reachable)
    }

    /// The view of one peer.
    pub fn view(&self, peer: NodeId) -> Option<&PeerView> {
        self.peers.get(&peer)
    }

    /// All views, ascending by peer.
    pub fn views(&self) -> impl Iterator<Item = (&NodeId, &PeerView)> {
        self.peers.iter()
    }

    /// Current phi of a monitored subject (for display).
    pub fn phi(&self, peer: NodeId, now: Time, cfg: &PhiConfig) -> Option<f64> {
        self.phi.get(&peer).map(|d| d.phi(now.as_millis(), cfg))
    }

    /// Subjects currently suspected.
    pub fn suspects(&self) -> impl Iterator<Item = (&NodeId, &Suspicion)> {
        self.suspects.iter()
    }

    fn update(&mut self, peer: NodeId, now: Time, f: impl FnOnce(&mut PeerView)) -> Option<Change> {
        let p = self.peers.entry(peer).or_default();
        let before = p.reachable();
        f(p);
        let after = p.reachable();
        match (before, after) {
            (true, false) => {
                p.down_since = Some(now);
                Some(Change::Down(peer))
            }
            (false, true) => {
                p.down_since = None;
                p.reported_dead = false;
                Some(Change::Up(peer))
            }
            _ => None,
        }
    }

    /// Something arrived from `peer`: it is alive and can reach us.
    pub fn heard_from(&mut self, peer: NodeId, now: Time) -> Option<Change> {
        self.suspects.remove(&peer);
        self.update(peer, now, |p| {
            p.last_heard = Some(now);
            p.local_down = false;
            p.remote_down = false;
        })
    }

    /// A heartbeat from a subject: feeds its phi detector.
    pub fn heartbeat(&mut self, peer: NodeId, now: Time, cfg: &PhiConfig) {
        if let Some(d) = self.phi.get_mut(&peer) {
            d.heartbeat(now.as_millis(), cfg);
        }
    }

    /// A request to `peer` went unanswered, or a suspicion was confirmed.
    pub fn mark_down(&mut self, peer: NodeId, now: Time) -> Option<Change> {
        self.suspects.remove(&peer);
        self.update(peer, now, |p| p.local_down = true)
    }

    /// Observers' reports say `peer` is (or is not) unreachable.
    pub fn set_remote(&mut self, peer: NodeId, down: bool, now: Time) -> Option<Change> {
        self.update(peer, now, |p| p.remote_down = down)
    }

    /// Makes the monitored set exactly `subjects`; a new subject starts with one
    /// arrival now, so a subject that is already dead is still detected.
    pub fn set_subjects(&mut self, subjects: &[NodeId], now: Time, cfg: &PhiConfig) {
        self.phi.retain(|id, _| subjects.contains(id));
        self.suspects.retain(|id, _| subjects.contains(id));
        for &s in subjects {
            self.phi.entry(s).or_insert_with(|| {
                let mut d = PhiDetector::new(cfg);
                d.heartbeat(now.as_millis(), cfg);
                d
            });
        }
    }

    /// Subjects whose phi crossed the threshold and are not suspected yet; they
    /// become suspected (returned with their new suspicion).
    pub fn new_suspects(
        &mut self,
        now: Time,
        mut nonce: impl FnMut() -> u64,
    ) -> Vec<(NodeId, u64)> {
        let mut out = Vec::new();
        for (id, d) in &self.phi {
            let down = self.peers.get(id).is_some_and(|p| p.local_down);
            if !down && !d.is_available(now.as_millis()) && !self.suspects.contains_key(id) {
                let n = nonce();
                self.suspects.insert(
                    *id,
                    Suspicion {
                        since: now,
                        nonce: n,
                    },
                );
                out.push((*id, n));
            }
        }
        out
    }

    /// A suspicion was refuted by an indirect probe.
    pub fn refute(&mut self, subject: NodeId, nonce: u64) -> bool {
        if self
            .suspects
            .get(&subject)
            .is_some_and(|s| s.nonce == nonce)
        {
            self.suspects.remove(&subject);
            // The subject is alive: restart its phi history from now on.
            return true;
        }
        false
    }

    /// Suspicions older than `timeout`: confirmed (removed from the suspects).
    pub fn confirmed(&mut self, now: Time, timeout: Dur) -> Vec<NodeId> {
        let done: Vec<NodeId> = self
            .suspects
            .iter()
            .filter(|(_, s)| now.since(s.since) >= timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in &done {
            self.suspects.remove(id);
        }
        done
    }

    /// Peers unreachable by this node's own evidence (to ping for recovery).
    pub fn locally_down(&self) -> Vec<NodeId> {
        self.peers
            .iter()
            .filter(|(_, p)| p.local_down)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Peers unreachable for at least `after` and not yet reported dead; marks them reported.
    pub fn newly_dead(&mut self, now: Time, after: Dur) -> Vec<NodeId> {
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
        self.phi.remove(&peer);
        self.suspects.remove(&peer);
    }
}

/// The monitoring cycle: active members ordered by a hash of their id. A node's
/// subjects are the `k` members after it, its monitors the `k` before it.
pub fn cycle(members: &[NodeId]) -> Vec<NodeId> {
    let mut v = members.to_vec();
    v.sort_by_key(|id| (crate::sim::splitmix(u64::from(id.0) ^ 0x6d6f_6e69), *id));
    v
}

/// The `k` members after `me` on the cycle (or before, with `backwards`).
pub fn neighbours(cycle: &[NodeId], me: NodeId, k: usize, backwards: bool) -> Vec<NodeId> {
    let Some(i) = cycle.iter().position(|&x| x == me) else {
        return Vec::new();
    };
    let n = cycle.len();
    (1..=k.min(n.saturating_sub(1)))
        .map(|d| {
            if backwards {
                cycle[(i + n - d) % n]
            } else {
                cycle[(i + d) % n]
            }
        })
        .collect()
}

/// The node side: heartbeats, suspicion, indirect probes, observations.
impl<S: crate::store::Storage> crate::node::Node<S> {
    /// (monitors, subjects) of this node on the monitoring cycle, cached per
    /// membership state so a heartbeat tick does not sort the membership.
    fn my_neighbours(&mut self) -> (Vec<NodeId>, Vec<NodeId>) {
        let h = self.membership.hash();
        if self.cycle_cache.0 != h || self.cycle_cache.1.is_empty() {
            let ids = self.active_members();
            let cyc = cycle(&ids);
            let k = self.config.monitors;
            let monitors = neighbours(&cyc, self.id, k, true);
            let subjects = neighbours(&cyc, self.id, k, false);
            self.cycle_cache = (h, cyc, monitors, subjects);
        }
        (self.cycle_cache.2.clone(), self.cycle_cache.3.clone())
    }

    /// The monitoring cycle (cached per membership state).
    fn monitoring_cycle(&mut self) -> Vec<NodeId> {
        self.my_neighbours();
        self.cycle_cache.1.clone()
    }

    pub(crate) fn heartbeat_tick(&mut self) {
        use crate::message::{Event, Message};
        let next = self.now + self.config.heartbeat_interval;
        self.set_timer(next, crate::node::Timer::Heartbeat);
        let (monitors, subjects) = self.my_neighbours();
        // 1. Heartbeat to my monitors.
        self.hb_seq += 1;
        let seq = self.hb_seq;
        for m in monitors {
            self.send(m, Message::Detector(Msg::Heartbeat { seq }));
        }
        // 2. Phi on my subjects; new suspects get indirect probes.
        let phi = self.config.phi();
        self.detector.set_subjects(&subjects, self.now, &phi);
        let rng = &mut self.rng;
        let suspects = self
            .detector
            .new_suspects(self.now, || rand_core::RngCore::next_u64(rng));
        for (subject, _) in &suspects {
            self.event(Event::PeerSuspected { peer: *subject });
        }
        // Probe every current suspect each tick, so loss cannot starve the refutation.
        let current: Vec<(NodeId, u64)> = self
            .detector
            .suspects()
            .map(|(id, s)| (*id, s.nonce))
            .collect();
        for (subject, nonce) in current {
            let helpers: Vec<NodeId> = self
                .gossip_peers()
                .into_iter()
                .filter(|&h| h != subject && self.detector.is_reachable(h))
                .collect();
            for _ in 0..self.config.indirect_probes.min(helpers.len()) {
                if let Some(h) = self.random_of(&helpers) {
                    self.send(h, Message::Detector(Msg::ProbeRequest { subject, nonce }));
                }
            }
            self.send(subject, Message::Detector(Msg::Ping { nonce }));
        }
        // 3. Unrefuted suspicions become local verdicts, published for others.
        for subject in self
            .detector
            .confirmed(self.now, self.config.suspicion_timeout)
        {
            if let Some(change) = self.detector.mark_down(subject, self.now) {
                self.on_reachability(change);
            }
            self.publish_observation(subject, true);
        }
        // 4. Locally-unreachable peers are pinged so their recovery is seen quickly.
        for peer in self.detector.locally_down() {
            let nonce = rand_core::RngCore::next_u64(&mut self.rng);
            self.send(peer, Message::Detector(Msg::Ping { nonce }));
        }
        // 5. Keep recent membership changes spreading, and Merkle trees current.
        self.schedule_flush();
        self.push_hot_rumors();
        // 6. Unreachable for long: tell the administrator. Nothing moves.
        for peer in self.detector.newly_dead(self.now, self.config.dead_after) {
            self.event(Event::PeerReportedDead { peer });
        }
        let horizon = self.config.suspicion_timeout;
        let now = self.now;
        self.probing_for
            .retain(|_, (_, _, _, sent)| now.since(*sent) < horizon);
    }

    pub(crate) fn handle_detector_msg(&mut self, from: NodeId, msg: Msg) {
        use crate::message::Message;
        match msg {
            Msg::Ping { nonce } => self.send(from, Message::Detector(Msg::Pong { nonce })),
            Msg::Pong { nonce } => {
                if let Some((requester, their, subject, _)) = self.probing_for.remove(&nonce) {
                    if subject == from {
                        self.send(
                            requester,
                            Message::Detector(Msg::ProbeAck {
                                subject,
                                nonce: their,
                            }),
                        );
                    }
                }
            }
            Msg::Heartbeat { .. } => {
                let phi = self.config.phi();
                self.detector.heartbeat(from, self.now, &phi);
            }
            Msg::ProbeRequest { subject, nonce } => {
                if subject == self.id {
                    self.send(from, Message::Detector(Msg::ProbeAck { subject, nonce }));
                } else {
                    let mine = rand_core::RngCore::next_u64(&mut self.rng);
                    self.probing_for
                        .insert(mine, (from, nonce, subject, self.now));
                    self.send(subject, Message::Detector(Msg::Ping { nonce: mine }));
                }
            }
            Msg::ProbeAck { subject, nonce } => {
                self.detector.refute(subject, nonce);
            }
        }
    }

    /// After hearing from `peer`: if this node had published it unreachable, it
    /// publishes the correction.
    pub(crate) fn retract_observation(&mut self, peer: NodeId) {
        let published = self
            .membership
            .observations()
            .any(|(&(o, s), obs)| o == self.id && s == peer && obs.unreachable);
        if published {
            self.publish_observation(peer, false);
        }
    }

    /// Adopts "unreachable" for peers that enough observers confirmed (and this
    /// node has not heard from since it learned of it).
    pub(crate) fn recompute_remote_views(&mut self) {
        if self.membership.observations().next().is_none() {
            return;
        }
        let mut down: BTreeMap<NodeId, usize> = BTreeMap::new();
        let mut reported: Vec<NodeId> = Vec::new();
        for (&(observer, subject), obs) in self.membership.observations() {
            if observer == self.id || subject == self.id {
                continue;
            }
            reported.push(subject);
            let observer_ok = self
                .membership
                .get(observer)
                .is_some_and(|m| m.status.is_active())
                && self.detector.is_reachable(observer);
            if obs.unreachable && observer_ok {
                *down.entry(subject).or_default() += 1;
            }
        }
        reported.sort();
        reported.dedup();
        let cyc = self.monitoring_cycle();
        for subject in reported {
            let monitors = neighbours(&cyc, subject, self.config.monitors, true).len();
            let needed = self.config.observers_needed.min(monitors).max(1);
            let is_down = down.get(&subject).copied().unwrap_or(0) >= needed;
            let already = self.detector.view(subject).is_some_and(|v| v.remote_down);
            if is_down != already {
                if let Some(change) = self.detector.set_remote(subject, is_down, self.now) {
                    self.on_reachability(change);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PhiConfig {
        PhiConfig {
            threshold: 8.0,
            window: 100,
            min_std_ms: 50,
            acceptable_pause_ms: 500,
            first_interval_ms: 250,
        }
    }

    #[test]
    fn silence_leads_to_suspicion_then_confirmation_and_a_message_clears_it() {
        let mut d = Detector::new();
        let b = NodeId(1);
        let c = cfg();
        d.set_subjects(&[b], Time(0), &c);
        for t in (250..=2500).step_by(250) {
            d.heartbeat(b, Time(t), &c);
        }
        let mut n = 0;
        assert!(d
            .new_suspects(Time(2700), || {
                n += 1;
                n
            })
            .is_empty());
        let s = d.new_suspects(Time(4000), || {
            n += 1;
            n
        });
        assert_eq!(s, vec![(b, 1)]);
        assert!(d.is_reachable(b), "a suspect is still routed to");
        assert!(d.confirmed(Time(4100), Dur(500)).is_empty());
        assert_eq!(d.confirmed(Time(4500), Dur(500)), vec![b]);
        assert_eq!(d.mark_down(b, Time(4500)), Some(Change::Down(b)));
        assert_eq!(d.locally_down(), vec![b]);
        assert_eq!(d.heard_from(b, Time(5000)), Some(Change::Up(b)));
        assert!(d.locally_down().is_empty());
    }

    #[test]
    fn indirect_ack_refutes_only_the_current_suspicion() {
        let mut d = Detector::new();
        let b = NodeId(1);
        d.set_subjects(&[b], Time(0), &cfg());
        let s = d.new_suspects(Time(10_000), || 7);
        assert_eq!(s, vec![(b, 7)]);
        assert!(!d.refute(b, 6));
        assert!(d.refute(b, 7));
        assert!(d.confirmed(Time(20_000), Dur(1)).is_empty());
    }

    #[test]
    fn remote_reports_are_overridden_by_own_contact_and_dead_is_reported_once() {
        let mut d = Detector::new();
        let b = NodeId(1);
        assert_eq!(d.set_remote(b, true, Time(5)), Some(Change::Down(b)));
        assert!(d.newly_dead(Time(50), Dur(100)).is_empty());
        assert_eq!(d.newly_dead(Time(105), Dur(100)), vec![b]);
        assert!(
            d.newly_dead(Time(500), Dur(100)).is_empty(),
            "reported once"
        );
        assert_eq!(d.heard_from(b, Time(600)), Some(Change::Up(b)));
        assert!(d.is_reachable(b));
    }

    #[test]
    fn monitoring_cycle_gives_k_distinct_neighbours() {
        let ids: Vec<NodeId> = (0..10).map(NodeId).collect();
        let c = cycle(&ids);
        for &me in &ids {
            let subjects = neighbours(&c, me, 3, false);
            let monitors = neighbours(&c, me, 3, true);
            assert_eq!(subjects.len(), 3);
            assert!(!subjects.contains(&me) && !monitors.contains(&me));
            for s in &subjects {
                assert!(neighbours(&c, *s, 3, true).contains(&me), "symmetric");
            }
        }
        assert_eq!(
            neighbours(&cycle(&ids[..2]), NodeId(0), 3, false),
            vec![NodeId(1)]
        );
    }
}
