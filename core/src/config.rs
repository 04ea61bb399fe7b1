//! Cluster and node configuration. Everything tunable lives here, with the
//! defaults a production cluster would start from and a faster preset for the
//! simulator and the browser.

use crate::time::Dur;
use serde::{Deserialize, Serialize};

/// Configuration shared by all nodes of a cluster (N, R, W, Q must agree) plus
/// per-node timer settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Replicas per key.
    pub n: usize,
    /// Default read quorum.
    pub r: usize,
    /// Default write quorum.
    pub w: usize,
    /// Q: number of fixed partitions (a power of two, 1..=4096).
    pub partitions: u32,
    /// A client request fails if it has not met its quorum by then.
    pub request_timeout: Dur,
    /// A replica that has not acked a write by then is presumed unreachable and a
    /// stand-in is recruited in its place (sloppy quorum keeps N copies).
    pub replica_timeout: Dur,
    /// How often a node sends its heartbeat to its monitors.
    pub heartbeat_interval: Dur,
    /// How many monitors watch each node (and how many subjects each node watches).
    pub monitors: usize,
    /// Phi threshold (an integer, so the decision is bit-identical on every platform).
    pub phi_threshold: u8,
    /// Floor of the heartbeat-interval standard deviation used by phi.
    pub phi_min_std: Dur,
    /// Pause always tolerated on top of the mean heartbeat interval.
    pub phi_acceptable_pause: Dur,
    /// Nodes asked to ping a suspect before it is declared unreachable.
    pub indirect_probes: usize,
    /// How long a suspicion may be refuted before it is confirmed.
    pub suspicion_timeout: Dur,
    /// Observers that must agree before a node adopts "unreachable" from gossip.
    pub observers_needed: usize,
    /// How often a stand-in retries delivering its hints.
    pub hint_replay_interval: Dur,
    /// Hints per delivery batch.
    pub hint_batch: usize,
    /// Max hints held for one owner; further hinted writes are refused (not acked).
    pub max_hints_per_owner: usize,
    /// Max value bytes of hints held for one owner.
    pub max_hint_bytes_per_owner: usize,
    /// Hints older than this are dropped (left for anti-entropy), like Cassandra's hint window.
    pub hint_window: Dur,
    /// Max siblings a client write may create.
    pub max_siblings: usize,
    /// Delay between a delete reaching all N primaries and the tombstone's purge.
    /// Must exceed `hint_window`, so no hint still in flight can resurrect the value.
    pub tombstone_grace: Dur,
    /// Mean time between Merkle exchanges started by one node.
    pub anti_entropy_interval: Dur,
    /// Depth of the per-partition Merkle trees (2^depth key-hash buckets); must
    /// agree cluster-wide.
    pub merkle_depth: u8,
    /// Keys one exchange may repair; more are left for later rounds.
    pub merkle_max_keys_per_round: usize,
    /// A peer unreachable this long is reported dead to the administrator (an
    /// event and a metric); it stays in the ring until an explicit remove.
    pub dead_after: Dur,
    /// Mean time between push-pull gossip rounds.
    pub gossip_interval: Dur,
    /// Peers a fresh change is pushed to at once (rumor mongering).
    pub gossip_fanout: usize,
    /// How many times a rumor is forwarded.
    pub rumor_hops: u8,
    /// Heartbeat ticks during which a node that learned a change pushes it again.
    pub rumor_rounds: u8,
    /// Seed nodes, known to every node.
    pub seeds: Vec<crate::id::NodeId>,
    /// A node also syncs with a seed every this many rounds when its random peer was not one.
    pub seed_gossip_every: u64,
    /// Which replicas a coordinator asks on a read (per node; need not agree).
    pub read_fanout: ReadFanout,
    /// Partitions a gaining node pulls at once during a join or leave (per node).
    /// Each pull is a chain of one-page requests served on the sources' node
    /// tasks, between their client requests; like Riak's handoff concurrency,
    /// a small number keeps a large transfer from crowding out foreground
    /// traffic, at the price of a longer transfer.
    #[serde(default = "default_pull_concurrency")]
    pub pull_concurrency: usize,
}

/// How many replicas a read asks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadFanout {
    /// All N targets, answering after R (Dynamo, Riak): read repair reaches every
    /// replica on every read.
    #[default]
    All,
    /// R targets — the coordinator itself first when it is one — and the others
    /// as a speculative retry if an asked one has not answered within a few
    /// round trips (`Node::speculate_delay`, at most `replica_timeout`; Voldemort's
    /// preferred reads, Cassandra's speculative retry). At N=3, R=2 a read costs one replica round trip
    /// instead of two; read repair then covers the replicas asked, and anti-entropy
    /// the rest.
    Quorum,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            n: 3,
            r: 2,
            w: 2,
            partitions: 64,
            request_timeout: Dur::secs(2),
            replica_timeout: Dur::millis(500),
            heartbeat_interval: Dur::millis(250),
            monitors: 3,
            phi_threshold: 8,
            phi_min_std: Dur::millis(50),
            phi_acceptable_pause: Dur::millis(500),
            indirect_probes: 3,
            suspicion_timeout: Dur::millis(500),
            observers_needed: 2,
            hint_replay_interval: Dur::secs(1),
            hint_batch: 64,
            max_hints_per_owner: 100_000,
            max_hint_bytes_per_owner: 256 << 20,
            hint_window: Dur::secs(3 * 3600),
            max_siblings: 64,
            tombstone_grace: Dur::secs(4 * 3600),
            anti_entropy_interval: Dur::secs(10),
            merkle_depth: 10,
            merkle_max_keys_per_round: 1000,
            dead_after: Dur::secs(60),
            gossip_interval: Dur::secs(1),
            gossip_fanout: 3,
            rumor_hops: 4,
            rumor_rounds: 3,
            seeds: Vec::new(),
            seed_gossip_every: 3,
            read_fanout: ReadFanout::All,
            pull_concurrency: default_pull_concurrency(),
        }
    }
}

fn default_pull_concurrency() -> usize {
    2
}

impl Config {
    /// Faster timers for the simulator and the browser demo: the same protocol,
    /// with failures noticed in a few hundred milliseconds.
    pub fn demo() -> Self {
        Config {
            request_timeout: Dur::millis(1000),
            replica_timeout: Dur::millis(200),
            hint_replay_interval: Dur::millis(250),
            hint_window: Dur::secs(600),
            tombstone_grace: Dur::secs(900),
            anti_entropy_interval: Dur::millis(500),
            merkle_depth: 6,
            gossip_interval: Dur::millis(250),
            dead_after: Dur::secs(5),
            ..Config::default()
        }
    }

    /// The phi accrual settings derived from this configuration.
    pub fn phi(&self) -> crate::phi::PhiConfig {
        crate::phi::PhiConfig {
            threshold: f64::from(self.phi_threshold),
            window: 100,
            min_std_ms: self.phi_min_std.as_millis(),
            acceptable_pause_ms: self.phi_acceptable_pause.as_millis(),
            first_interval_ms: self.heartbeat_interval.as_millis(),
        }
    }

    /// Checks the invariants every node relies on. Nothing is changed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.n == 0 || self.n > 16 {
            return Err(ConfigError::N(self.n));
        }
        for (name, v) in [("r", self.r), ("w", self.w)] {
            if v == 0 || v > self.n {
                return Err(ConfigError::Quorum {
                    name,
                    value: v,
                    n: self.n,
                });
            }
        }
        if !self.partitions.is_power_of_two() || self.partitions > 4096 {
            return Err(ConfigError::Partitions(self.partitions));
        }
        if self.tombstone_grace <= self.hint_window {
            return Err(ConfigError::TombstoneGrace);
        }
        if !(1..=16).contains(&self.phi_threshold)
            || self.monitors == 0
            || self.heartbeat_interval == Dur::ZERO
        {
            return Err(ConfigError::Detector);
        }
        if self.merkle_depth > 24 {
            return Err(ConfigError::MerkleDepth(self.merkle_depth));
        }
        if self.hint_batch == 0
            || self.max_siblings == 0
            || self.merkle_max_keys_per_round == 0
            || self.pull_concurrency == 0
        {
            return Err(ConfigError::Zero);
        }
        Ok(())
    }
}

/// An invalid configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// N out of range.
    #[error("n must be between 1 and 16, got {0}")]
    N(usize),
    /// R or W out of range.
    #[error("{name} must be between 1 and n={n}, got {value}")]
    Quorum {
        /// "r" or "w".
        name: &'static str,
        /// The value given.
        value: usize,
        /// N.
        n: usize,
    },
    /// Q not a power of two in range.
    #[error("partitions must be a power of two between 1 and 4096, got {0}")]
    Partitions(u32),
    /// Grace too short.
    #[error(
        "tombstone_grace must exceed hint_window, or a late hint could resurrect a deleted value"
    )]
    TombstoneGrace,
    /// A count that must be positive is zero.
    #[error(
        "hint_batch, max_siblings, merkle_max_keys_per_round and pull_concurrency must be positive"
    )]
    Zero,
    /// Detector settings out of range.
    #[error("phi_threshold must be 1..=16, monitors and heartbeat_interval positive")]
    Detector,
    /// Merkle depth too large.
    #[error("merkle_depth must be at most 24, got {0}")]
    MerkleDepth(u8),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_demo_are_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
        assert_eq!(Config::demo().validate(), Ok(()));
    }

    #[test]
    fn bad_values_are_named() {
        let c = Config {
            w: 4,
            ..Config::default()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "w must be between 1 and n=3, got 4"
        );
        let c = Config {
            partitions: 48,
            ..Config::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::Partitions(48))));
    }
}
