//! Process-level test harness for the `ringlab` server (raft-rs `harness/` pattern):
//! real `ringlab serve` processes on 127.0.0.1 with random free ports, one temp data
//! dir per node, one generated cluster key file, zones `z1..z3`, seeds = the first node.
//!
//! Invariants the harness keeps so scenarios stay honest and non-flaky:
//! - every process it starts is killed when the [`Cluster`] is dropped, also when a test
//!   panics (no orphans);
//! - each node's stdout/stderr go to a log file; when a test panics the tail of every
//!   log is printed, and [`Cluster::assert_no_panics`] fails if any log shows a panic;
//! - conditions are polled with a deadline ([`wait_until`]), never asserted after a fixed sleep.
//!
//! Environment: `RINGLAB_BIN` (use this binary), `RINGLAB_NO_BUILD` (skip the nested
//! `cargo build`), `RINGLAB_KEEP` (keep the temp dir of a failed test), `RINGLAB_TEST_LOG`
//! (the nodes' `RUST_LOG`, default `info`), `RINGLAB_SEED` (replay a randomized scenario),
//! `RINGLAB_WRITES` (size of the durability run).

use rand::Rng;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use ringlab_core::NodeId;

/// The header carrying the causal context of a key.
pub const CONTEXT_HEADER: &str = "X-Ringlab-Context";

/// Polls `cond` every 50 ms until it returns `Some`, or fails the test after `timeout`
/// with `what` in the message.
pub fn wait_until<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Like [`wait_until`] but with a boolean condition.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    wait_until(what, timeout, || cond().then_some(()))
}

/// The path of the `ringlab` binary: `$RINGLAB_BIN`, else `target/<profile>/ringlab`
/// next to this test executable's `deps/` directory, built once per test process with
/// `cargo build -p ringlab-server --bin ringlab` (same profile) so a stale binary is never tested.
pub fn ringlab_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("RINGLAB_BIN") {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "RINGLAB_BIN={} is not a file", p.display());
            return p;
        }
        let exe = std::env::current_exe().expect("current_exe");
        // target/<profile>/deps/<test>-<hash>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable is not inside target/<profile>/deps")
            .to_path_buf();
        let bin = profile_dir.join(format!("ringlab{}", std::env::consts::EXE_SUFFIX));
        if std::env::var_os("RINGLAB_NO_BUILD").is_none() {
            build_bin(&profile_dir);
        }
        assert!(
            bin.is_file(),
            "the server binary {} is missing: run `cargo build -p ringlab-server --bin ringlab` \
             (or set RINGLAB_BIN)",
            bin.display()
        );
        bin
    })
    .clone()
}

fn build_bin(profile_dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let profile = profile_dir
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("debug")
        .to_string();
    let target_dir = profile_dir.parent().expect("target dir");
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "ringlab-server",
        "--bin",
        "ringlab",
    ])
    .arg("--target-dir")
    .arg(target_dir)
    .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let status = cmd
        .status()
        .expect("running cargo build for the ringlab binary");
    assert!(
        status.success(),
        "`cargo build -p ringlab-server --bin ringlab` failed ({status})"
    );
}

/// The lowest port of the kernel's ephemeral range (Linux's default when unreadable).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// A free TCP port on 127.0.0.1, below the kernel's ephemeral range.
///
/// Why not port 0: the port the kernel hands out is *in* its ephemeral range, and
/// once released any outgoing connection (a node dialing a peer, the test's own
/// HTTP client) may take it as its local port before the node that was given it
/// binds it — or while that node is down between a kill and a restart. CI hit it:
/// "cannot listen on --peer-addr …: Address already in use". Ports below the range
/// are only ever taken by listeners, so a port that binds now stays free for the
/// node. A process-wide counter (from a random start, as several test binaries and
/// threads allocate at once) keeps two tests of one binary from getting the same
/// port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LO: u32 = 10_000;
    static NEXT: OnceLock<(u32, AtomicU32)> = OnceLock::new();
    let (span, next) = NEXT.get_or_init(|| {
        let span = ephemeral_low().clamp(12_000, 65_536) - LO;
        (span, AtomicU32::new(rand::thread_rng().gen_range(0..span)))
    });
    for _ in 0..(*span).min(4096) {
        let port = (LO + next.fetch_add(1, Ordering::Relaxed) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    // Nothing free below the range: the kernel's choice.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

/// A fresh cluster key file body: one random 32-byte key as 64 hex characters.
pub fn random_key_line() -> String {
    let key: [u8; 32] = rand::thread_rng().gen();
    format!("{}\n", hex::encode(key))
}

/// Cluster parameters and per-test knobs.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    /// Replicas per key.
    pub n: usize,
    /// Default read quorum.
    pub r: usize,
    /// Default write quorum.
    pub w: usize,
    /// Partitions (Q).
    pub partitions: u32,
    /// Number of zones; node i gets zone `z{i % zones + 1}`.
    pub zones: usize,
    /// Extra arguments appended to every `ringlab serve`.
    pub extra_args: Vec<String>,
    /// `RUST_LOG` for the nodes.
    pub log_filter: String,
    /// How long to wait for the cluster to form.
    pub form_timeout: Duration,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            n: 3,
            r: 2,
            w: 2,
            partitions: 64,
            zones: 3,
            extra_args: Vec::new(),
            log_filter: std::env::var("RINGLAB_TEST_LOG").unwrap_or_else(|_| "info".into()),
            form_timeout: Duration::from_secs(30),
        }
    }
}

impl ClusterOpts {
    /// Defaults with the faster timers tests need (hint replay 250 ms, anti-entropy
    /// 500 ms, gossip 250 ms, replica timeout 300 ms): the same protocol, noticed sooner.
    pub fn fast() -> Self {
        ClusterOpts {
            extra_args: [
                "--hint-replay-ms",
                "250",
                "--anti-entropy-ms",
                "500",
                "--gossip-ms",
                "250",
                "--replica-timeout-ms",
                "300",
            ]
            .map(String::from)
            .to_vec(),
            ..ClusterOpts::default()
        }
    }
}

impl ClusterOpts {
    /// Sets `flag` to `value` in [`ClusterOpts::extra_args`], replacing an earlier
    /// value (clap refuses a repeated flag).
    pub fn set(mut self, flag: &str, value: impl ToString) -> Self {
        let value = value.to_string();
        match self.extra_args.iter().position(|a| a == flag) {
            Some(p) if p + 1 < self.extra_args.len() => self.extra_args[p + 1] = value,
            _ => self.extra_args.extend([flag.to_string(), value]),
        }
        self
    }
}

/// One node process (running or stopped).
pub struct NodeProc {
    /// Its id (`A`, `B`, …).
    pub id: String,
    /// Peer (transport) address.
    pub peer: SocketAddr,
    /// HTTP address.
    pub http: SocketAddr,
    /// Its zone.
    pub zone: String,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Its key file.
    pub key_file: PathBuf,
    /// Its seeds (`host:port,…`).
    pub seeds: String,
    /// Where its stdout/stderr go (appended across restarts).
    pub log: PathBuf,
    /// Arguments appended after the cluster's (later flags override earlier ones).
    pub extra_args: Vec<String>,
    child: Option<Child>,
    starts: u32,
}

impl NodeProc {
    /// Base URL of its HTTP API.
    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Whether the process is (believed) running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// An HTTP answer: status, headers of interest, body.
#[derive(Clone, Debug)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// `X-Ringlab-Context`, if present.
    pub context: Option<String>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON (panics with the body text if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Every value this reply carries: the body of a 200, every sibling of a 300.
    pub fn values(&self) -> Vec<Vec<u8>> {
        use base64::Engine as _;
        match self.status {
            200 => vec![self.body.clone()],
            300 => self.json()["siblings"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s["value"].as_str())
                        .filter_map(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                        .collect()
                })
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}

/// A blocking HTTP client with short timeouts, which reports every status as a [`Reply`]
/// (no status is an error); transport failures are `Err(text)`.
#[derive(Clone)]
pub struct Http {
    agent: ureq::Agent,
}

impl Default for Http {
    fn default() -> Self {
        Http::new(Duration::from_secs(5))
    }
}

impl Http {
    /// A client whose every request gives up after `timeout`. It opens a fresh
    /// connection per request: nodes are killed and restarted under it, and a server
    /// may close a connection after an error reply, so a pooled connection would turn
    /// into spurious transport errors.
    pub fn new(timeout: Duration) -> Http {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // 300 Multiple Choices is how siblings come back, not a redirect.
            .max_redirects(0)
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .timeout_global(Some(timeout))
            .build()
            .into();
        Http { agent }
    }

    fn finish(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Reply, String> {
        let mut resp = r.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let context = resp
            .headers()
            .get(CONTEXT_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .map_err(|e| e.to_string())?;
        Ok(Reply {
            status,
            context,
            body,
        })
    }

    /// `GET url`.
    pub fn get(&self, url: &str) -> Result<Reply, String> {
        Self::finish(self.agent.get(url).call())
    }

    /// `POST url` with an empty body.
    pub fn post(&self, url: &str) -> Result<Reply, String> {
        Self::finish(self.agent.post(url).send_empty())
    }

    /// `PUT {base}/kv/{key}?w=` with an optional context.
    pub fn put(
        &self,
        base: &str,
        key: &str,
        value: &[u8],
        ctx: Option<&str>,
        w: Option<usize>,
    ) -> Result<Reply, String> {
        let mut url = format!("{base}/kv/{key}");
        if let Some(w) = w {
            let _ = write!(url, "?w={w}");
        }
        let mut req = self.agent.put(&url);
        if let Some(c) = ctx {
            req = req.header(CONTEXT_HEADER, c);
        }
        Self::finish(req.send(value))
    }

    /// `GET {base}/kv/{key}?r=`.
    pub fn get_kv(&self, base: &str, key: &str, r: Option<usize>) -> Result<Reply, String> {
        let mut url = format!("{base}/kv/{key}");
        if let Some(r) = r {
            let _ = write!(url, "?r={r}");
        }
        Self::finish(self.agent.get(&url).call())
    }

    /// `DELETE {base}/kv/{key}` with a context.
    pub fn delete(&self, base: &str, key: &str, ctx: Option<&str>) -> Result<Reply, String> {
        let mut req = self.agent.delete(&format!("{base}/kv/{key}"));
        if let Some(c) = ctx {
            req = req.header(CONTEXT_HEADER, c);
        }
        Self::finish(req.call())
    }
}

/// The sum of every sample of metric `name` (all label sets) in Prometheus text, or
/// `None` when no sample has that exact name.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    metric_samples(text, name)
        .into_iter()
        .map(|(_, v)| v)
        .reduce(|a, b| a + b)
}

/// Every sample of metric `name`: (label text between braces, value).
pub fn metric_samples(text: &str, name: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, rest) = if let Some(r) = rest.strip_prefix('{') {
            match r.find('}') {
                Some(end) => (r[..end].to_string(), &r[end + 1..]),
                None => continue,
            }
        } else if rest.starts_with(' ') {
            (String::new(), rest)
        } else {
            continue; // a longer metric name sharing the prefix
        };
        if let Some(v) = rest.split_whitespace().next().and_then(|v| v.parse().ok()) {
            out.push((labels, v));
        }
    }
    out
}

/// The owner id of each partition and the cluster's N, from a `/cluster` answer.
#[derive(Clone, Debug)]
pub struct RingView {
    /// N.
    pub n: usize,
    /// Owner of partition 0, 1, …, Q−1.
    pub owners: Vec<String>,
    /// Zone of each node id.
    pub zones: BTreeMap<String, String>,
}

impl RingView {
    /// Parses `GET /cluster`.
    pub fn from_cluster(v: &Value) -> Option<RingView> {
        let n = v["n"].as_u64()? as usize;
        let owners: Vec<String> = v["partitions"]
            .as_array()?
            .iter()
            .map(|o| o.as_str().map(str::to_string))
            .collect::<Option<_>>()?;
        let zones = v["nodes"]
            .as_array()?
            .iter()
            .filter_map(|m| {
                Some((
                    m["id"].as_str()?.to_string(),
                    m["zone"].as_str()?.to_string(),
                ))
            })
            .collect();
        (!owners.is_empty() && owners.len().is_power_of_two()).then_some(RingView {
            n,
            owners,
            zones,
        })
    }

    /// The key's partition (README: top log2 Q bits of the first 8 bytes of SHA-256(key)).
    pub fn partition_of(&self, key: &[u8]) -> usize {
        use sha2::Digest as _;
        let h = sha2::Sha256::digest(key);
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[..8]);
        let pos = u64::from_be_bytes(b);
        let q = self.owners.len() as u128;
        ((pos as u128 * q) >> 64) as usize
    }

    /// The key's preference list (README rule): walk the partitions clockwise from the
    /// key's, collecting distinct owners (skipping already-represented zones when the ring
    /// has at least N zones) until there are N.
    pub fn preference_list(&self, key: &[u8]) -> Vec<String> {
        let q = self.owners.len();
        let start = self.partition_of(key);
        let ring_zones: std::collections::BTreeSet<&String> = self
            .owners
            .iter()
            .filter_map(|o| self.zones.get(o))
            .collect();
        let zone_aware = ring_zones.len() >= self.n;
        let mut out: Vec<String> = Vec::new();
        let mut used_zones = std::collections::BTreeSet::new();
        for i in 0..q {
            if out.len() == self.n {
                break;
            }
            let o = &self.owners[(start + i) % q];
            if out.contains(o) {
                continue;
            }
            if zone_aware {
                let z = self.zones.get(o);
                if z.is_some_and(|z| used_zones.contains(z)) {
                    continue;
                }
                if let Some(z) = z {
                    used_zones.insert(z.clone());
                }
            }
            out.push(o.clone());
        }
        out
    }
}

/// A running local cluster. Dropping it kills every process it started.
pub struct Cluster {
    /// Options it was started with.
    pub opts: ClusterOpts,
    /// The nodes, in start order (`A`, `B`, …).
    pub nodes: Vec<NodeProc>,
    /// The shared cluster key file.
    pub key_file: PathBuf,
    /// HTTP client.
    pub http: Http,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n_nodes` nodes: the first with itself as seed, then the others seeded with
    /// it, and waits until every node lists every node `up` and owning partitions.
    pub fn start(n_nodes: usize, opts: ClusterOpts) -> Cluster {
        let mut c = Cluster::new_stopped(n_nodes, opts);
        c.start_node(0);
        c.wait_healthy(0);
        for i in 1..n_nodes {
            c.start_node(i);
        }
        c.wait_formed();
        c
    }

    /// Allocates ports, dirs and the key file for `n_nodes` nodes without starting them.
    pub fn new_stopped(n_nodes: usize, opts: ClusterOpts) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("ringlab-test-")
            .tempdir()
            .expect("temp dir");
        let key_file = dir.path().join("cluster.key");
        std::fs::write(&key_file, random_key_line()).expect("writing the key file");
        let mut nodes: Vec<NodeProc> = Vec::new();
        for i in 0..n_nodes {
            let id = NodeId(i as u32).name();
            let peer: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let seeds = nodes
                .first()
                .map(|n| n.peer.to_string())
                .unwrap_or_else(|| peer.to_string());
            nodes.push(NodeProc {
                zone: format!("z{}", i % opts.zones.max(1) + 1),
                data_dir: dir.path().join(format!("data-{id}")),
                log: dir.path().join(format!("{id}.log")),
                key_file: key_file.clone(),
                id,
                peer,
                http,
                seeds,
                extra_args: Vec::new(),
                child: None,
                starts: 0,
            });
        }
        Cluster {
            opts,
            nodes,
            key_file,
            http: Http::default(),
            dir,
        }
    }

    /// Adds a node (not started) with its own key file holding `key_line`, seeded with
    /// node 0 — e.g. an intruder with the wrong key. Returns its index.
    pub fn add_node_with_key(&mut self, id: &str, key_line: &str) -> usize {
        let key_file = self.dir.path().join(format!("{id}.key"));
        std::fs::write(&key_file, key_line).expect("writing a key file");
        let i = self.nodes.len();
        self.nodes.push(NodeProc {
            id: id.to_string(),
            peer: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            http: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            zone: format!("z{}", i % self.opts.zones.max(1) + 1),
            data_dir: self.dir.path().join(format!("data-{id}")),
            log: self.dir.path().join(format!("{id}.log")),
            key_file,
            seeds: self.nodes[0].peer.to_string(),
            extra_args: Vec::new(),
            child: None,
            starts: 0,
        });
        i
    }

    /// The temp dir holding data dirs, logs and key files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The `ringlab serve` arguments of node `i`.
    pub fn serve_args(&self, i: usize) -> Vec<String> {
        let n = &self.nodes[i];
        let o = &self.opts;
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--id".into(),
            n.id.clone(),
            "--peer-addr".into(),
            n.peer.to_string(),
            "--http".into(),
            n.http.to_string(),
            "--data-dir".into(),
            n.data_dir.display().to_string(),
            "--seeds".into(),
            n.seeds.clone(),
            "--zone".into(),
            n.zone.clone(),
            "--cluster-key-file".into(),
            n.key_file.display().to_string(),
            "--n".into(),
            o.n.to_string(),
            "--r".into(),
            o.r.to_string(),
            "--w".into(),
            o.w.to_string(),
            "--partitions".into(),
            o.partitions.to_string(),
        ];
        args.extend(o.extra_args.iter().cloned());
        // A per-node flag replaces the cluster-wide one (clap may refuse a repeated flag).
        for flag in n.extra_args.iter().filter(|a| a.starts_with("--")) {
            if let Some(p) = args.iter().position(|a| a == flag) {
                args.drain(p..(p + 2).min(args.len()));
            }
        }
        args.extend(n.extra_args.iter().cloned());
        args
    }

    /// Starts node `i` (its log file is appended to).
    pub fn start_node(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "node {i} already running");
        let args = self.serve_args(i);
        let bin = ringlab_bin();
        let node = &mut self.nodes[i];
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("opening the node log");
        node.starts += 1;
        let _ = writeln!(
            log,
            "===== harness: start #{} of {}: {} {}",
            node.starts,
            node.id,
            bin.display(),
            args.join(" ")
        );
        let err = log.try_clone().expect("cloning the log handle");
        let child = Command::new(&bin)
            .args(&args)
            .env("RUST_LOG", &self.opts.log_filter)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        node.child = Some(child);
    }

    /// `kill -9` node `i` and reap it.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill(); // SIGKILL on Unix
            let _ = c.wait();
            self.note(i, "killed with SIGKILL");
        }
    }

    /// Sends signal `sig` (a `kill -s` name such as `HUP`) to running node `i`.
    pub fn signal(&self, i: usize, sig: &str) {
        let pid = self.nodes[i]
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("node {i} is not running"))
            .id();
        let status = Command::new("kill")
            .args(["-s", sig, &pid.to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -s {sig} {pid}: {status}");
        self.note(i, &format!("sent SIG{sig}"));
    }

    /// Restarts node `i` (killing it first if running) with the same id, ports and data dir.
    pub fn restart(&mut self, i: usize) {
        self.kill9(i);
        self.start_node(i);
    }

    /// Kills node `i` and deletes its data dir (it starts empty next time).
    pub fn wipe(&mut self, i: usize) {
        self.kill9(i);
        let d = &self.nodes[i].data_dir;
        if d.exists() {
            std::fs::remove_dir_all(d).expect("removing the data dir");
        }
        self.note(i, "data dir wiped");
    }

    fn note(&self, i: usize, what: &str) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.nodes[i].log)
        {
            let _ = writeln!(f, "===== harness: {what}");
        }
    }

    /// Whether node `i`'s process has exited on its own (it is then reaped and marked stopped).
    pub fn exited(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let st = self.nodes[i].child.as_mut()?.try_wait().ok()??;
        self.nodes[i].child = None;
        Some(st)
    }

    /// Base URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    /// Index of the node with id `id`.
    pub fn index_of(&self, id: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// `GET /health` of node `i` answers 200.
    pub fn is_healthy(&self, i: usize) -> bool {
        self.http
            .get(&format!("{}/health", self.url(i)))
            .is_ok_and(|r| r.status == 200)
    }

    /// Waits until node `i` answers `/health` with 200 (fails early if it exits).
    pub fn wait_healthy(&mut self, i: usize) {
        let deadline = Instant::now() + self.opts.form_timeout;
        loop {
            if self.is_healthy(i) {
                return;
            }
            if let Some(st) = self.exited(i) {
                panic!(
                    "node {} exited ({st}) before becoming healthy; log:\n{}",
                    self.nodes[i].id,
                    tail(&self.nodes[i].log, 60)
                );
            }
            assert!(
                Instant::now() < deadline,
                "node {} not healthy after {:?}",
                self.nodes[i].id,
                self.opts.form_timeout
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET /cluster` of node `i`, as JSON.
    pub fn cluster(&self, i: usize) -> Option<Value> {
        let r = self.http.get(&format!("{}/cluster", self.url(i))).ok()?;
        (r.status == 200).then(|| serde_json::from_slice(&r.body).ok())?
    }

    /// The ring as node `i` sees it.
    pub fn ring(&self, i: usize) -> Option<RingView> {
        RingView::from_cluster(&self.cluster(i)?)
    }

    /// A key `{prefix}-{i}` whose first owner is not the seed A (so killing that owner
    /// leaves every other node seeded), with its preference list (from node A's
    /// `/cluster`), the index of that first owner, and a node outside the list to
    /// coordinate through.
    pub fn key_away_from_seed(&self, prefix: &str) -> (String, Vec<String>, usize, usize) {
        let ring = self.ring(0).expect("/cluster of node A");
        let (key, prefs) = (0..1000)
            .map(|i| format!("{prefix}-{i}"))
            .map(|k| {
                let p = ring.preference_list(k.as_bytes());
                (k, p)
            })
            .find(|(_, p)| p[0] != "A")
            .expect("some key is first owned by a node other than A");
        let owner = self.index_of(&prefs[0]);
        let coord = (0..self.nodes.len())
            .find(|&i| !prefs.contains(&self.nodes[i].id))
            .expect("more nodes than N");
        (key, prefs, owner, coord)
    }

    /// The status node `i` reports for member `id` (`up`, `unreachable`, …).
    pub fn status_of(&self, i: usize, id: &str) -> Option<String> {
        self.cluster(i)?["nodes"]
            .as_array()?
            .iter()
            .find(|m| m["id"] == id)
            .and_then(|m| m["status"].as_str().map(str::to_string))
    }

    /// Whether each of `members` lists every one of `members` as `up` and owning
    /// partitions in its view.
    pub fn formed(&self, members: &[usize]) -> bool {
        members.iter().all(|&i| {
            let Some(v) = self.cluster(i) else {
                return false;
            };
            let Some(ring) = RingView::from_cluster(&v) else {
                return false;
            };
            members.iter().all(|&j| {
                let id = &self.nodes[j].id;
                let up = v["nodes"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|m| m["id"] == id.as_str() && m["status"] == "up")
                });
                up && ring.owners.iter().any(|o| o == id)
            })
        })
    }

    /// Waits until all running nodes agree that all of them are up and own partitions.
    pub fn wait_formed(&mut self) {
        let members: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect();
        for &i in &members {
            self.wait_healthy(i);
        }
        let t = self.opts.form_timeout;
        let deadline = Instant::now() + t;
        while !self.formed(&members) {
            for &i in &members {
                if let Some(st) = self.exited(i) {
                    panic!(
                        "node {} exited ({st}) while the cluster formed",
                        self.nodes[i].id
                    );
                }
            }
            if Instant::now() > deadline {
                let views: Vec<String> = members
                    .iter()
                    .map(|&i| {
                        format!(
                            "{}: {}",
                            self.nodes[i].id,
                            self.cluster(i).map(|v| v.to_string()).unwrap_or_default()
                        )
                    })
                    .collect();
                panic!("cluster not formed after {t:?}:\n{}", views.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until node `observer` reports member `id` with `status`.
    pub fn wait_status(&self, observer: usize, id: &str, status: &str, timeout: Duration) {
        wait_for(
            &format!("{} to see {id} as {status}", self.nodes[observer].id),
            timeout,
            || self.status_of(observer, id).as_deref() == Some(status),
        );
    }

    /// `GET /metrics` of node `i`.
    pub fn metrics(&self, i: usize) -> Option<String> {
        let r = self.http.get(&format!("{}/metrics", self.url(i))).ok()?;
        (r.status == 200).then(|| String::from_utf8_lossy(&r.body).into_owned())
    }

    /// The sum over label sets of metric `name` on node `i`.
    pub fn metric(&self, i: usize, name: &str) -> Option<f64> {
        metric_sum(&self.metrics(i)?, name)
    }

    /// `PUT` through node `i`.
    pub fn put(
        &self,
        i: usize,
        key: &str,
        value: &[u8],
        ctx: Option<&str>,
        w: Option<usize>,
    ) -> Result<Reply, String> {
        self.http.put(&self.url(i), key, value, ctx, w)
    }

    /// `GET` through node `i`.
    pub fn get(&self, i: usize, key: &str, r: Option<usize>) -> Result<Reply, String> {
        self.http.get_kv(&self.url(i), key, r)
    }

    /// `DELETE` through node `i`.
    pub fn delete(&self, i: usize, key: &str, ctx: Option<&str>) -> Result<Reply, String> {
        self.http.delete(&self.url(i), key, ctx)
    }

    /// Fails if any node log shows a Rust panic.
    pub fn assert_no_panics(&self) {
        for n in &self.nodes {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            assert!(
                !text.contains("panicked at"),
                "node {} panicked; log tail:\n{}",
                n.id,
                tail(&n.log, 80)
            );
        }
    }

    /// Prints the tail of every node log to stderr.
    pub fn dump_logs(&self, lines: usize) {
        for n in &self.nodes {
            eprintln!("----- log of {} ({}) -----", n.id, n.log.display());
            eprintln!("{}", tail(&n.log, lines));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            if let Some(mut c) = self.nodes[i].child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            self.dump_logs(40);
            if std::env::var_os("RINGLAB_KEEP").is_some() {
                let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
                eprintln!("kept test dir {}", kept.keep().display());
            }
        }
    }
}

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Sends raw bytes on a fresh TCP connection and reads the answer until EOF or `timeout`.
pub fn raw_http(addr: SocketAddr, request: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(request)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                out.extend_from_slice(&buf[..k]);
                // one response is enough when the server keeps the connection open
                if let Some(len) = complete_response_len(&out) {
                    out.truncate(len);
                    break;
                }
            }
            Err(e) if out.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    Ok(out)
}

/// The status code of a raw HTTP/1.1 response.
pub fn raw_status(resp: &[u8]) -> Option<u16> {
    let line = resp.split(|&b| b == b'\n').next()?;
    let s = std::str::from_utf8(line).ok()?;
    s.split_whitespace().nth(1)?.parse().ok()
}

fn complete_response_len(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())?;
    (buf.len() >= head_end + len).then_some(head_end + len)
}

/// A seeded RNG for a scenario: `$RINGLAB_SEED` or a fresh one, printed so a failure replays.
pub fn scenario_rng(name: &str) -> (u64, rand::rngs::StdRng) {
    use rand::SeedableRng;
    let seed = std::env::var("RINGLAB_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("{name}: seed {seed} (replay with RINGLAB_SEED={seed})");
    (seed, rand::rngs::StdRng::seed_from_u64(seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let low = ephemeral_low();
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port handed out twice");
        for p in ports {
            assert!(
                u32::from(p) < low.max(12_000),
                "{p} is in the ephemeral range"
            );
            TcpListener::bind(("127.0.0.1", p)).expect("a free port binds");
        }
    }

    #[test]
    fn metric_parsing() {
        let text = "# HELP ringlab_hints_pending x\n# TYPE ringlab_hints_pending gauge\n\
                    ringlab_hints_pending 3\nringlab_hints_pending_bytes 99\n\
                    ringlab_frames_rejected_total{reason=\"bad_mac\"} 2\n\
                    ringlab_frames_rejected_total{reason=\"replay\"} 5\n";
        assert_eq!(metric_sum(text, "ringlab_hints_pending"), Some(3.0));
        assert_eq!(metric_sum(text, "ringlab_frames_rejected_total"), Some(7.0));
        assert_eq!(metric_sum(text, "ringlab_nope"), None);
        assert_eq!(
            metric_samples(text, "ringlab_frames_rejected_total")[1],
            ("reason=\"replay\"".to_string(), 5.0)
        );
    }

    #[test]
    fn preference_list_matches_core_ring() {
        let members: Vec<(NodeId, String)> = (0..5)
            .map(|i| (NodeId(i), format!("z{}", i % 3 + 1)))
            .collect();
        let ring = ringlab_core::Ring::new(64, 3, &members).unwrap();
        let view = RingView {
            n: 3,
            owners: ring.owners().iter().map(|o| o.name()).collect(),
            zones: members.iter().map(|(i, z)| (i.name(), z.clone())).collect(),
        };
        for k in 0..500 {
            let key = format!("key-{k}");
            assert_eq!(
                view.partition_of(key.as_bytes()),
                ring.partition_of(key.as_bytes()).index()
            );
            let want: Vec<String> = ring
                .preference_list(key.as_bytes())
                .primaries
                .iter()
                .map(|n| n.name())
                .collect();
            assert_eq!(view.preference_list(key.as_bytes()), want, "{key}");
        }
    }

    #[test]
    fn raw_response_length() {
        let r = b"HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\n\r\nabcEXTRA";
        assert_eq!(complete_response_len(r), Some(r.len() - 5));
        assert_eq!(raw_status(r), Some(404));
    }
}
