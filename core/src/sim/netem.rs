//! Network emulation for the simulator (after str0m's netem): latency drawn
//! uniformly per message (which also reorders), loss and duplication decided at
//! send time, and cuts (partitions, one-way blocks) decided at delivery time so a
//! message already in flight when a partition starts is lost, as on a real network.
//! Probabilities are integers in parts per million so a seed replays identically
//! on every platform (no floating point in the decision path).

use crate::id::NodeId;
use crate::time::Dur;
use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Link behaviour, the same for every link unless overridden.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// Minimum one-way latency.
    pub latency_min: Dur,
    /// Maximum one-way latency (uniform in between).
    pub latency_max: Dur,
    /// Probability a message is lost, per million.
    pub loss_ppm: u32,
    /// Probability a message is delivered twice, per million.
    pub dup_ppm: u32,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            latency_min: Dur::millis(1),
            latency_max: Dur::millis(5),
            loss_ppm: 0,
            dup_ppm: 0,
        }
    }
}

/// What the network does with one sent message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Lost at send time.
    Lost,
    /// Delivered after each of these latencies (two for a duplicate).
    Deliver(Vec<Dur>),
}

/// The network: link config plus cuts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Netem {
    /// Link behaviour.
    pub config: NetConfig,
    /// Directed links that deliver nothing.
    blocked: BTreeSet<(NodeId, NodeId)>,
}

impl Netem {
    /// A network with `config` and no cuts.
    pub fn new(config: NetConfig) -> Self {
        Netem {
            config,
            blocked: BTreeSet::new(),
        }
    }

    /// Decides the fate of one message.
    pub fn fate(&self, rng: &mut ChaCha8Rng) -> Fate {
        let c = &self.config;
        if c.loss_ppm > 0 && ppm(rng) < c.loss_ppm {
            return Fate::Lost;
        }
        let mut out = vec![latency(c, rng)];
        if c.dup_ppm > 0 && ppm(rng) < c.dup_ppm {
            out.push(latency(c, rng));
        }
        Fate::Deliver(out)
    }

    /// Whether `from → to` currently delivers.
    pub fn connected(&self, from: NodeId, to: NodeId) -> bool {
        self.blocked.is_empty() || !self.blocked.contains(&(from, to))
    }

    /// Blocks `from → to` only.
    pub fn block(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
    }

    /// Cuts every link between different groups, both ways. Nodes not listed keep
    /// their links.
    pub fn partition(&mut self, groups: &[Vec<NodeId>]) {
        for (i, a) in groups.iter().enumerate() {
            for (j, b) in groups.iter().enumerate() {
                if i != j {
                    for &x in a {
                        for &y in b {
                            self.blocked.insert((x, y));
                        }
                    }
                }
            }
        }
    }

    /// Cuts `node` off from every node in `all`, both ways.
    pub fn isolate(&mut self, node: NodeId, all: impl IntoIterator<Item = NodeId>) {
        for other in all {
            if other != node {
                self.blocked.insert((node, other));
                self.blocked.insert((other, node));
            }
        }
    }

    /// Removes every cut.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// The cut links.
    pub fn blocked(&self) -> impl Iterator<Item = &(NodeId, NodeId)> {
        self.blocked.iter()
    }
}

fn ppm(rng: &mut ChaCha8Rng) -> u32 {
    rng.next_u32() % 1_000_000
}

fn latency(c: &NetConfig, rng: &mut ChaCha8Rng) -> Dur {
    let lo = c.latency_min.as_millis();
    let hi = c.latency_max.as_millis().max(lo);
    Dur(lo + rng.next_u64() % (hi - lo + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    #[test]
    fn loss_and_dup_rates_are_about_right() {
        let net = Netem::new(NetConfig {
            loss_ppm: 200_000,
            dup_ppm: 100_000,
            ..NetConfig::default()
        });
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (mut lost, mut dup) = (0, 0);
        for _ in 0..10_000 {
            match net.fate(&mut rng) {
                Fate::Lost => lost += 1,
                Fate::Deliver(v) => {
                    assert!(v.iter().all(|d| (1..=5).contains(&d.as_millis())));
                    dup += usize::from(v.len() == 2)
                }
            }
        }
        assert!((1800..2200).contains(&lost), "{lost}");
        assert!((600..1000).contains(&dup), "{dup}");
    }

    #[test]
    fn partitions_cut_both_ways_between_groups_only() {
        let mut net = Netem::default();
        let (a, b, c, d) = (NodeId(0), NodeId(1), NodeId(2), NodeId(3));
        net.partition(&[vec![a, b], vec![c]]);
        assert!(net.connected(a, b) && net.connected(a, d) && net.connected(d, c));
        assert!(!net.connected(a, c) && !net.connected(c, b));
        net.heal();
        net.block(a, b);
        assert!(!net.connected(a, b) && net.connected(b, a));
    }
}
