//! `ringlab serve` settings: command-line flags merged over an optional TOML file
//! with the same keys (flag > file > default), then checked with the core's
//! `Config::validate` so a bad combination stops the node with a clear message.

use anyhow::{bail, Context};
use ringlab_core::{Config, Dur, NodeId};
use serde::Deserialize;
use std::path::PathBuf;

/// Flags of `ringlab serve`. Every flag can also be given in the `--config` TOML
/// file under the same name with `_` instead of `-` (e.g. `peer_addr = "…"`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// TOML file with the same keys as these flags; flags given on the command line win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's id: a letter A..Z, N26, N27, … or a plain number. Unique in the cluster.
    #[arg(long)]
    pub id: Option<String>,
    /// Address to listen on for other nodes (encrypted peer transport) [default: 127.0.0.1:7001].
    #[arg(long, value_name = "HOST:PORT")]
    pub peer_addr: Option<String>,
    /// Address to serve the client HTTP API on [default: 127.0.0.1:8001].
    #[arg(long, value_name = "HOST:PORT")]
    pub http: Option<String>,
    /// Directory of the node's database (created if missing) [default: ./ringlab-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Comma-separated peer addresses of seed nodes. The first node of a cluster lists
    /// itself (its own --peer-addr); others list one or more running nodes.
    /// [default: this node's own peer address, i.e. start a new cluster]
    #[arg(long, value_name = "HOST:PORT,...", value_delimiter = ',')]
    pub seeds: Option<Vec<String>>,
    /// Zone (rack / availability zone) label; replicas of a key are spread over zones [default: z1].
    #[arg(long)]
    pub zone: Option<String>,
    /// Cluster key file: one 64-hex-char key per line, first one sends, all are
    /// accepted (create one with `ringlab keygen > FILE`). Reread on SIGHUP, so keys
    /// rotate without a restart (a broken file is refused, the keys stay). Required.
    #[arg(long, value_name = "FILE")]
    pub cluster_key_file: Option<PathBuf>,
    /// Cluster name; nodes of a different cluster are refused [default: ringlab].
    #[arg(long)]
    pub cluster: Option<String>,
    /// N: replicas per key; must agree across the cluster [default: 3].
    #[arg(long)]
    pub n: Option<usize>,
    /// R: default read quorum (1..=N); must agree across the cluster [default: 2].
    #[arg(long)]
    pub r: Option<usize>,
    /// W: default write quorum (1..=N); must agree across the cluster [default: 2].
    #[arg(long)]
    pub w: Option<usize>,
    /// Q: number of partitions (a power of two ≤ 4096); must agree across the cluster [default: 64].
    #[arg(long)]
    pub partitions: Option<u32>,
    /// Largest key a client may write, in bytes [default: 1024].
    #[arg(long)]
    pub max_key_bytes: Option<usize>,
    /// Largest value a client may write, in bytes [default: 1048576].
    #[arg(long)]
    pub max_value_bytes: Option<usize>,
    /// Client requests allowed to wait for the node task; more get 429 [default: 4096].
    #[arg(long)]
    pub max_queued_requests: Option<usize>,
    /// Messages queued per peer before further ones are dropped [default: 4096].
    #[arg(long)]
    pub peer_queue: Option<usize>,
    /// A client request fails (503) if it has not met its quorum by then, in ms [default: 2000].
    #[arg(long)]
    pub request_timeout_ms: Option<u64>,
    /// A replica that has not answered by then is replaced by a stand-in, in ms [default: 500].
    #[arg(long)]
    pub replica_timeout_ms: Option<u64>,
    /// Heartbeat interval of the failure detector, in ms [default: 250].
    #[arg(long)]
    pub heartbeat_ms: Option<u64>,
    /// Mean interval between gossip rounds, in ms [default: 1000].
    #[arg(long)]
    pub gossip_ms: Option<u64>,
    /// Mean interval between Merkle anti-entropy exchanges, in ms [default: 10000].
    #[arg(long)]
    pub anti_entropy_ms: Option<u64>,
    /// Interval between hint delivery retries, in ms [default: 1000].
    #[arg(long)]
    pub hint_replay_ms: Option<u64>,
    /// A peer unreachable this long is reported dead, in ms [default: 60000].
    #[arg(long)]
    pub dead_after_ms: Option<u64>,
    /// Seconds a client has to send its request headers, and then its body, before
    /// the connection is cut (slow-loris protection) [default: 10].
    #[arg(long)]
    pub client_read_timeout_secs: Option<u64>,
    /// Threads running the node's tasks. 1 runs everything on one thread (plus a
    /// blocking thread for fsyncs): no hand-offs between threads, the fastest
    /// setting measured when nodes share cores (BENCHMARKS.md). More threads let
    /// HTTP parsing and encryption use more cores of a dedicated machine [default: 1].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Group commits (log record write + fdatasync) in flight at once: 2 lets the
    /// next group's fsync start while the previous one's runs (their replies still
    /// leave in order); 1 syncs one group at a time. Inputs are handled during an
    /// fsync either way [default: 2, at most 2].
    #[arg(long)]
    pub sync_depth: Option<usize>,
    /// Replicas a read asks: `quorum` R, itself first, asking the rest as a
    /// speculative retry once the asked ones are silent for 2 ms plus four times the
    /// average replica round trip, at most --replica-timeout-ms (as Cassandra does:
    /// half the replica traffic at N=3, R=2; a slow replica costs a read a few ms,
    /// and is then asked last for a while), or `all` N (Dynamo and Riak: read
    /// repair reaches every replica on every read; replicas not asked by `quorum`
    /// are repaired by anti-entropy instead) [default: quorum].
    #[arg(long, value_enum)]
    pub read_fanout: Option<Fanout>,
    /// Partitions this node pulls at once when it gains partitions (a join, or
    /// another node leaving). Each pull is a chain of one-page requests its
    /// sources serve between their client requests: fewer slots keep a large
    /// transfer from crowding out foreground traffic, more finish it sooner
    /// [default: 2].
    #[arg(long)]
    pub pull_concurrency: Option<usize>,
    /// Keys per message of the hints and handoff this node delivers, and per
    /// page of the partition pulls it serves [default: 64].
    #[arg(long)]
    pub hint_batch: Option<usize>,
    /// Comma-separated origins (`http://host:port`, or `*`) whose pages may read
    /// this node's GET /events, /cluster, /health and /metrics from a browser — e.g.
    /// the explorer's Live tab served at http://127.0.0.1:8080. Writes and admin
    /// routes never get CORS headers [default: none].
    #[arg(long, value_name = "ORIGIN,...", value_delimiter = ',')]
    pub allow_origin: Option<Vec<String>>,
}

/// `--read-fanout` values.
#[derive(clap::ValueEnum, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Fanout {
    /// Ask all N replicas.
    All,
    /// Ask R replicas first.
    Quorum,
}

/// The same keys as [`ServeArgs`], read from TOML. Unknown keys are an error.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<String>,
    peer_addr: Option<String>,
    http: Option<String>,
    data_dir: Option<PathBuf>,
    seeds: Option<Seeds>,
    zone: Option<String>,
    cluster_key_file: Option<PathBuf>,
    cluster: Option<String>,
    n: Option<usize>,
    r: Option<usize>,
    w: Option<usize>,
    partitions: Option<u32>,
    max_key_bytes: Option<usize>,
    max_value_bytes: Option<usize>,
    max_queued_requests: Option<usize>,
    peer_queue: Option<usize>,
    request_timeout_ms: Option<u64>,
    replica_timeout_ms: Option<u64>,
    heartbeat_ms: Option<u64>,
    gossip_ms: Option<u64>,
    anti_entropy_ms: Option<u64>,
    hint_replay_ms: Option<u64>,
    dead_after_ms: Option<u64>,
    client_read_timeout_secs: Option<u64>,
    threads: Option<usize>,
    sync_depth: Option<usize>,
    read_fanout: Option<Fanout>,
    pull_concurrency: Option<usize>,
    hint_batch: Option<usize>,
    allow_origin: Option<Seeds>,
}

/// Seeds (or origins) as a TOML list or one comma-separated string.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum Seeds {
    List(Vec<String>),
    Text(String),
}

impl Seeds {
    fn into_vec(self) -> Vec<String> {
        match self {
            Seeds::List(v) => v,
            Seeds::Text(s) => s.split(',').map(str::to_owned).collect(),
        }
    }
}

/// Limits applied to client requests only (never to replication).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest key, bytes.
    pub max_key_bytes: usize,
    /// Largest value, bytes.
    pub max_value_bytes: usize,
    /// Time a client has for its headers, and again for its body.
    pub read_timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 1024,
            max_value_bytes: 1 << 20,
            read_timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// Everything `ringlab serve` needs, resolved and validated.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Node id.
    pub id: NodeId,
    /// Peer listen address.
    pub peer_addr: String,
    /// HTTP listen address.
    pub http: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Seed peer addresses.
    pub seeds: Vec<String>,
    /// Zone.
    pub zone: String,
    /// Key file.
    pub cluster_key_file: PathBuf,
    /// Cluster name.
    pub cluster: String,
    /// The core configuration (seeds filled in at start-up, once resolved to ids).
    pub core: Config,
    /// Client limits.
    pub limits: Limits,
    /// Client request queue.
    pub max_queued_requests: usize,
    /// Per-peer send queue.
    pub peer_queue: usize,
    /// Runtime threads (1: a current-thread runtime).
    pub threads: usize,
    /// Group commits in flight at once.
    pub sync_depth: usize,
    /// Origins allowed to read the observation routes from a browser (`*`: any).
    pub allow_origins: Vec<String>,
}

impl ServeArgs {
    /// Merges flags over the `--config` file over defaults, and validates.
    pub fn resolve(self) -> anyhow::Result<ServeConfig> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let id_text = self
            .id
            .or(file.id)
            .context("--id is required (a letter A..Z, N26, … or a number)")?;
        let id = NodeId::parse(&id_text)
            .with_context(|| format!("invalid --id {id_text:?}: use A..Z, N26, … or a number"))?;
        let peer_addr = self
            .peer_addr
            .or(file.peer_addr)
            .unwrap_or_else(|| "127.0.0.1:7001".into());
        let http = self
            .http
            .or(file.http)
            .unwrap_or_else(|| "127.0.0.1:8001".into());
        for (flag, addr) in [("--peer-addr", &peer_addr), ("--http", &http)] {
            if addr.split_whitespace().count() != 1 {
                bail!("{flag} must be one HOST:PORT without spaces, got {addr:?}");
            }
        }
        let seeds: Vec<String> = self
            .seeds
            .or(file.seeds.map(Seeds::into_vec))
            .unwrap_or_else(|| vec![peer_addr.clone()])
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        if seeds.is_empty() {
            bail!("--seeds is empty: list this node's own --peer-addr to start a new cluster");
        }
        let zone = self.zone.or(file.zone).unwrap_or_else(|| "z1".into());
        let cluster_key_file = self.cluster_key_file.or(file.cluster_key_file).context(
            "--cluster-key-file is required (create one with `ringlab keygen > cluster.key`)",
        )?;
        let d = Config::default();
        let ms = |flag: Option<u64>, file: Option<u64>, default: Dur| {
            flag.or(file).map(Dur::millis).unwrap_or(default)
        };
        let core = Config {
            n: self.n.or(file.n).unwrap_or(d.n),
            r: self.r.or(file.r).unwrap_or(d.r),
            w: self.w.or(file.w).unwrap_or(d.w),
            partitions: self.partitions.or(file.partitions).unwrap_or(d.partitions),
            request_timeout: ms(
                self.request_timeout_ms,
                file.request_timeout_ms,
                d.request_timeout,
            ),
            replica_timeout: ms(
                self.replica_timeout_ms,
                file.replica_timeout_ms,
                d.replica_timeout,
            ),
            heartbeat_interval: ms(self.heartbeat_ms, file.heartbeat_ms, d.heartbeat_interval),
            gossip_interval: ms(self.gossip_ms, file.gossip_ms, d.gossip_interval),
            anti_entropy_interval: ms(
                self.anti_entropy_ms,
                file.anti_entropy_ms,
                d.anti_entropy_interval,
            ),
            hint_replay_interval: ms(
                self.hint_replay_ms,
                file.hint_replay_ms,
                d.hint_replay_interval,
            ),
            dead_after: ms(self.dead_after_ms, file.dead_after_ms, d.dead_after),
            read_fanout: match self.read_fanout.or(file.read_fanout) {
                // The server's default differs from the core's (`All`, which the
                // simulator keeps to show Dynamo's reads): measured 8-26 % less CPU
                // per read and 5-9 % more reads/s (BENCHMARKS.md).
                Some(Fanout::Quorum) | None => ringlab_core::ReadFanout::Quorum,
                Some(Fanout::All) => ringlab_core::ReadFanout::All,
            },
            pull_concurrency: self
                .pull_concurrency
                .or(file.pull_concurrency)
                .unwrap_or(d.pull_concurrency),
            hint_batch: self.hint_batch.or(file.hint_batch).unwrap_or(d.hint_batch),
            ..d
        };
        core.validate()
            .map_err(|e| anyhow::anyhow!("invalid cluster parameters: {e}"))?;
        for (name, v) in [
            ("gossip-ms", core.gossip_interval),
            ("anti-entropy-ms", core.anti_entropy_interval),
            ("hint-replay-ms", core.hint_replay_interval),
            ("request-timeout-ms", core.request_timeout),
            ("replica-timeout-ms", core.replica_timeout),
        ] {
            if v == Dur::ZERO {
                bail!("--{name} must be positive");
            }
        }
        let limits = Limits {
            max_key_bytes: self
                .max_key_bytes
                .or(file.max_key_bytes)
                .unwrap_or(Limits::default().max_key_bytes),
            max_value_bytes: self
                .max_value_bytes
                .or(file.max_value_bytes)
                .unwrap_or(Limits::default().max_value_bytes),
            read_timeout: std::time::Duration::from_secs(
                self.client_read_timeout_secs
                    .or(file.client_read_timeout_secs)
                    .unwrap_or(10)
                    .max(1),
            ),
        };
        if limits.max_key_bytes == 0 || limits.max_value_bytes == 0 {
            bail!("--max-key-bytes and --max-value-bytes must be positive");
        }
        let max_queued_requests = self
            .max_queued_requests
            .or(file.max_queued_requests)
            .unwrap_or(4096)
            .max(1);
        let peer_queue = self.peer_queue.or(file.peer_queue).unwrap_or(4096).max(1);
        let sync_depth = self
            .sync_depth
            .or(file.sync_depth)
            .unwrap_or(crate::driver::SYNC_DEPTH);
        if !(1..=crate::wal::MAX_IN_FLIGHT).contains(&sync_depth) {
            bail!(
                "--sync-depth must be between 1 and {}, got {sync_depth}",
                crate::wal::MAX_IN_FLIGHT
            );
        }
        let threads = self.threads.or(file.threads).unwrap_or(1);
        if !(1..=1024).contains(&threads) {
            bail!("--threads must be between 1 and 1024, got {threads}");
        }
        let allow_origins: Vec<String> = self
            .allow_origin
            .or(file.allow_origin.map(Seeds::into_vec))
            .unwrap_or_default()
            .into_iter()
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        for o in &allow_origins {
            let ok = o == "*"
                || ((o.starts_with("http://") || o.starts_with("https://"))
                    && !o.contains(char::is_whitespace)
                    && axum::http::HeaderValue::from_str(o).is_ok());
            if !ok {
                bail!("--allow-origin: {o:?} is not an origin (http://host:port, https://… or *)");
            }
        }
        Ok(ServeConfig {
            id,
            peer_addr,
            http,
            data_dir: self
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("ringlab-data")),
            seeds,
            zone,
            cluster_key_file,
            cluster: self
                .cluster
                .or(file.cluster)
                .unwrap_or_else(|| "ringlab".into()),
            core,
            limits,
            max_queued_requests,
            peer_queue,
            threads,
            sync_depth,
            allow_origins,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServeArgs {
        ServeArgs {
            id: Some("B".into()),
            cluster_key_file: Some("k".into()),
            ..ServeArgs::default()
        }
    }

    #[test]
    fn flags_win_over_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ringlab.toml");
        std::fs::write(
            &path,
            "zone = \"z2\"\nw = 1\nseeds = \"a:1, b:2\"\nheartbeat_ms = 100\n",
        )
        .unwrap();
        let c = ServeArgs {
            config: Some(path),
            w: Some(3),
            ..args()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.id, NodeId(1));
        assert_eq!(c.zone, "z2");
        assert_eq!(c.core.w, 3);
        assert_eq!(c.core.r, 2);
        assert_eq!(c.seeds, vec!["a:1".to_string(), "b:2".to_string()]);
        assert_eq!(c.core.heartbeat_interval, Dur::millis(100));
        assert_eq!(c.limits.max_value_bytes, 1 << 20);
    }

    #[test]
    fn read_fanout_defaults_to_quorum() {
        use ringlab_core::ReadFanout;
        assert_eq!(
            args().resolve().unwrap().core.read_fanout,
            ReadFanout::Quorum
        );
        let all = ServeArgs {
            read_fanout: Some(Fanout::All),
            ..args()
        };
        assert_eq!(all.resolve().unwrap().core.read_fanout, ReadFanout::All);
    }

    #[test]
    fn allowed_origins_are_checked_and_normalised() {
        let with = |o: &[&str]| {
            ServeArgs {
                allow_origin: Some(o.iter().map(|s| s.to_string()).collect()),
                ..args()
            }
            .resolve()
        };
        let c = with(&["http://127.0.0.1:8080/", " * ", ""]).unwrap();
        assert_eq!(c.allow_origins, vec!["http://127.0.0.1:8080", "*"]);
        assert!(args().resolve().unwrap().allow_origins.is_empty());
        for bad in ["127.0.0.1:8080", "ftp://x", "http://a b", "https//x"] {
            let e = with(&[bad]).unwrap_err().to_string();
            assert!(e.contains("--allow-origin"), "{bad}: {e}");
        }
    }

    #[test]
    fn example_file_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ringlab.toml");
        std::fs::write(&path, include_str!("../ringlab.example.toml")).unwrap();
        let c = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.id, NodeId(0));
        assert_eq!(c.seeds, vec!["127.0.0.1:7001".to_string()]);
        assert_eq!(c.core.anti_entropy_interval, Dur::secs(10));
        assert_eq!(c.cluster_key_file, PathBuf::from("cluster.key"));
        assert_eq!(c.sync_depth, 2);
        assert_eq!((c.core.pull_concurrency, c.core.hint_batch), (2, 64));
    }

    #[test]
    fn pull_settings_reach_the_core_and_zero_is_refused() {
        let c = ServeArgs {
            pull_concurrency: Some(1),
            hint_batch: Some(8),
            ..args()
        }
        .resolve()
        .unwrap();
        assert_eq!((c.core.pull_concurrency, c.core.hint_batch), (1, 8));
        for (pull, batch) in [(Some(0), None), (None, Some(0))] {
            let e = ServeArgs {
                pull_concurrency: pull,
                hint_batch: batch,
                ..args()
            }
            .resolve()
            .unwrap_err();
            assert!(format!("{e:#}").contains("must be positive"), "{e:#}");
        }
    }

    #[test]
    fn bad_settings_are_explained() {
        let e = ServeArgs {
            w: Some(4),
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{e:#}").contains("w must be between 1 and n=3, got 4"));
        for depth in [0, 3] {
            let e = ServeArgs {
                sync_depth: Some(depth),
                ..args()
            }
            .resolve()
            .unwrap_err();
            assert!(
                format!("{e:#}").contains(&format!(
                    "--sync-depth must be between 1 and 2, got {depth}"
                )),
                "{e:#}"
            );
        }
        let e = ServeArgs {
            id: Some("?".into()),
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(e.to_string().contains("invalid --id"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "zonee = \"z2\"\n").unwrap();
        let e = ServeArgs {
            config: Some(path),
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{e:#}").contains("unknown field"));
        // Own peer address is the default seed: a new cluster.
        let c = args().resolve().unwrap();
        assert_eq!(c.seeds, vec!["127.0.0.1:7001".to_string()]);
    }
}
