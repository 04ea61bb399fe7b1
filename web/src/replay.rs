//! The live simulator and time travel.
//!
//! [`Sim`] owns a `World` built from a [`Scenario`]'s configuration and applies the
//! scenario's actions at exactly the points they were recorded (after the same
//! number of events, at the same virtual time). Going back in time rebuilds the
//! world from the scenario and replays it to the target — the core is
//! deterministic, so the replay is the run. Actions recorded "in the future" of the
//! current position are replayed as the clock passes them; a new action there
//! starts a new branch (the old future is dropped).

use crate::scenario::{Recorded, Scenario};
use ringlab_core::sim::{Action, Record, TraceEntry, World};
use ringlab_core::{ClientReq, NodeId, Time};
use std::collections::{BTreeMap, VecDeque};

/// Largest cluster whose trace is recorded for the event log.
pub const TRACE_MAX_NODES: usize = 64;

/// Entries of the trace kept for the event log.
pub const LOG_CAP: usize = 4000;

/// One event-log line.
#[derive(Clone, Debug, PartialEq)]
pub struct LogEntry {
    /// Position in the whole run's trace (0-based).
    pub seq: u64,
    /// Events processed when it was recorded (for jumping there).
    pub steps: u64,
    /// The trace record.
    pub entry: TraceEntry,
}

impl LogEntry {
    /// The node the record is about (emitter, receiver, or the action's node).
    pub fn node(&self) -> Option<NodeId> {
        match &self.entry.record {
            Record::Deliver { to, .. } => Some(*to),
            Record::Event { node, .. } | Record::Reply { node, .. } => Some(*node),
            Record::Drop(d) => Some(d.to),
            Record::Action(a) => action_node(a),
        }
    }

    /// A short kind for the filter: the event kind, or "deliver"/"reply"/"drop"/"action".
    pub fn kind(&self) -> &'static str {
        match &self.entry.record {
            Record::Deliver { .. } => "deliver",
            Record::Event { event, .. } => event.kind(),
            Record::Reply { .. } => "reply",
            Record::Drop(_) => "drop",
            Record::Action(_) => "action",
        }
    }
}

/// The node an action is about, if one.
pub fn action_node(a: &Action) -> Option<NodeId> {
    match a {
        Action::Crash(n) | Action::Restart(n) | Action::Wipe(n) | Action::Isolate(n) => Some(*n),
        Action::Client { node, .. } | Action::Admin { node, .. } => Some(*node),
        Action::Block { from, .. } => Some(*from),
        _ => None,
    }
}

/// The simulator with its recorded scenario.
pub struct Sim {
    world: World,
    scenario: Scenario,
    /// Index of the next recorded action to apply.
    next_action: usize,
    /// Events processed so far.
    steps: u64,
    log: VecDeque<LogEntry>,
    log_seq: u64,
    /// Events seen so far, by (node, kind).
    seen: BTreeMap<(NodeId, &'static str), u64>,
    /// The furthest virtual time reached in this scenario (the scrubber's end).
    horizon: Time,
    /// Merkle trees built so far, by node (from `MerkleTreesBuilt` events).
    trees_built: BTreeMap<NodeId, usize>,
}

impl Sim {
    /// A fresh run of `scenario` at time zero (its actions are applied as the
    /// clock reaches them).
    pub fn new(scenario: Scenario) -> Result<Sim, String> {
        let mut world = World::new(scenario.cfg.clone())?;
        // The trace feeds the event log; above 64 nodes (reduced drawing) copying
        // every record (gossip digests of a thousand members) would cost more
        // than simulating, so the log is off there.
        world.record_trace(scenario.cfg.nodes.len() <= TRACE_MAX_NODES);
        let horizon = scenario
            .actions
            .last()
            .map_or(Time::ZERO, |a| a.at)
            .max(scenario.position);
        let mut sim = Sim {
            world,
            scenario,
            next_action: 0,
            steps: 0,
            log: VecDeque::new(),
            log_seq: 0,
            seen: BTreeMap::new(),
            horizon,
            trees_built: BTreeMap::new(),
        };
        sim.collect();
        Ok(sim)
    }

    /// Rebuilds `scenario` and replays it up to virtual time `t`.
    pub fn replay_to(scenario: Scenario, t: Time) -> Result<Sim, String> {
        let mut sim = Sim::new(scenario)?;
        sim.advance(t, None, u64::MAX);
        Ok(sim)
    }

    /// Rebuilds `scenario` and replays exactly `steps` events.
    pub fn replay_steps(scenario: Scenario, steps: u64) -> Result<Sim, String> {
        let mut sim = Sim::new(scenario)?;
        while sim.steps < steps && sim.step_one() {}
        Ok(sim)
    }

    /// The world (read-only: everything the UI shows comes from here).
    pub fn world(&self) -> &World {
        &self.world
    }

    /// The recorded scenario.
    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    /// The scenario with `position` set to now (for the URL).
    pub fn snapshot(&self) -> Scenario {
        let mut s = self.scenario.clone();
        s.position = self.world.now();
        s
    }

    /// Mutable guide state (the preset driver records "next" marks here).
    pub fn guide_mut(&mut self) -> Option<&mut crate::scenario::Guide> {
        self.scenario.guide.as_mut()
    }

    /// Events processed so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Virtual now.
    pub fn now(&self) -> Time {
        self.world.now()
    }

    /// The furthest time this scenario has reached.
    pub fn horizon(&self) -> Time {
        self.horizon.max(self.world.now())
    }

    /// The event log (the newest [`LOG_CAP`] trace records).
    pub fn log(&self) -> &VecDeque<LogEntry> {
        &self.log
    }

    /// How many events of `kind` `node` has emitted so far.
    pub fn seen(&self, node: NodeId, kind: &str) -> u64 {
        self.seen
            .iter()
            .filter(|((n, k), _)| *n == node && *k == kind)
            .map(|(_, c)| *c)
            .sum()
    }

    /// Merkle trees each node has built so far.
    pub fn trees_built(&self) -> &BTreeMap<NodeId, usize> {
        &self.trees_built
    }

    /// Runs to virtual time `t` (or until `stop_steps` events were processed, or
    /// `budget` events were processed in this call), applying recorded actions at
    /// their points. Returns true if `t` was reached.
    pub fn advance(&mut self, t: Time, stop_steps: Option<u64>, budget: u64) -> bool {
        let mut left = budget;
        let reached = loop {
            if let Some(rec) = self.scenario.actions.get(self.next_action) {
                if rec.steps <= self.steps && rec.at <= t {
                    let (at, action) = (rec.at, rec.action.clone());
                    if self.world.now() < at {
                        self.world.run_until(at);
                    }
                    self.world.apply(action);
                    self.next_action += 1;
                    continue;
                }
            }
            if stop_steps.is_some_and(|s| self.steps >= s) {
                break false;
            }
            match self.world.next_event_time() {
                Some(et) if et <= t => {
                    if left == 0 {
                        break false;
                    }
                    self.world.step();
                    self.steps += 1;
                    left -= 1;
                }
                _ => break true,
            }
        };
        if reached && self.world.now() < t {
            // No event is due by `t`: only the clock moves.
            self.world.run_until(t);
        }
        self.horizon = self.horizon.max(self.world.now());
        self.collect();
        reached
    }

    /// Processes exactly one event (applying any action due before it); false
    /// when nothing is left to do.
    pub fn step_one(&mut self) -> bool {
        let Some(t) = self.world.next_event_time() else {
            return false;
        };
        let target = self.steps + 1;
        self.advance(t, Some(target), u64::MAX);
        self.steps == target
    }

    /// Applies a user action now and records it. Recorded actions after this
    /// point (a future left by going back in time) are dropped: a new branch.
    /// Returns the client request number for [`Action::Client`].
    pub fn act(&mut self, action: Action) -> Option<ClientReq> {
        self.scenario.actions.truncate(self.next_action);
        self.horizon = self.world.now();
        self.scenario.actions.push(Recorded {
            steps: self.steps,
            at: self.world.now(),
            action: action.clone(),
        });
        self.next_action += 1;
        let req = match action {
            Action::Client { node, op } => Some(self.world.submit(node, op)),
            other => {
                self.world.apply(other);
                None
            }
        };
        self.collect();
        req
    }

    /// Whether recorded actions lie ahead of the current position.
    pub fn has_future(&self) -> bool {
        self.next_action < self.scenario.actions.len()
    }

    fn collect(&mut self) {
        for entry in self.world.take_trace() {
            if let Record::Event { node, event } = &entry.record {
                *self.seen.entry((*node, event.kind())).or_default() += 1;
                if let ringlab_core::Event::MerkleTreesBuilt { count } = event {
                    *self.trees_built.entry(*node).or_default() += count;
                }
            }
            if self.log.len() == LOG_CAP {
                self.log.pop_front();
            }
            self.log.push_back(LogEntry {
                seq: self.log_seq,
                steps: self.steps,
                entry,
            });
            self.log_seq += 1;
        }
    }
}
