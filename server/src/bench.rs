//! `ringlab bench`: a closed-loop load generator. `--concurrency` clients each issue
//! one request at a time (reads with probability `--reads`, else writes) against
//! Ringlab's HTTP API, Redis (RESP `SET`/`GET` over TCP) or etcd (its v3 JSON
//! gateway), for `--warmup` then `--duration`; it prints ops/s, p50/p90/p99/p99.9
//! latency from an HDR histogram, and errors by kind (`--json` for machines).
//!
//! Why writes are partitioned among clients: a Ringlab write without a causal context
//! becomes a sibling, so each client writes only its own slice of the key space and
//! always sends the context it last received for that key — the bench then measures
//! plain overwrites, not sibling growth. Reads go to any key. Keys are prefixed with a
//! per-run id so a run never inherits siblings from an earlier one; the key space is
//! preloaded before any benchmark that reads.

mod http;

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The header carrying a key's causal context.
const CONTEXT_HEADER: &str = "X-Ringlab-Context";
/// Longest Redis bulk reply accepted (a guard against a bogus length, not a limit of Redis).
const MAX_BULK: usize = 64 << 20;
/// Concurrent writers used to preload the key space.
const PRELOAD_TASKS: usize = 64;

/// Which store the load goes to.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Ringlab's HTTP API (`PUT`/`GET /kv/{key}`), contexts carried between writes.
    Ringlab,
    /// Redis over RESP (`SET`/`GET`), `--node redis://host:port`.
    Redis,
    /// etcd's v3 JSON gateway (`POST /v3/kv/put`, `/v3/kv/range`), `--node http://host:port`.
    Etcd,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Ringlab => "ringlab",
            Target::Redis => "redis",
            Target::Etcd => "etcd",
        }
    }
}

/// `ringlab bench` options.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// Target URL(s), comma separated; clients are spread over them round-robin
    /// (`http://127.0.0.1:8001` for ringlab and etcd, `redis://127.0.0.1:6379` for redis).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:8001")]
    pub node: Vec<String>,
    /// Concurrent clients, each with one request in flight.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Size of the key space.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Fraction of operations that are reads (0 = all writes, 1 = all reads).
    #[arg(long, default_value_t = 0.5)]
    pub reads: f64,
    /// Measured duration (e.g. `10s`, `500ms`, `1m`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unmeasured warm-up before the measured duration.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Read quorum sent with each ringlab read (`?r=`); the node's default otherwise.
    #[arg(long)]
    pub r: Option<usize>,
    /// Write quorum sent with each ringlab write (`?w=`); the node's default otherwise.
    #[arg(long)]
    pub w: Option<usize>,
    /// The store under test.
    #[arg(long, value_enum, default_value = "ringlab")]
    pub target: Target,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Key prefix; default `bench-<random run id>-`, so runs never share keys.
    #[arg(long)]
    pub key_prefix: Option<String>,
    /// Seed of the clients' key choices (random by default).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Per-request timeout (counted as error `timeout`).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Load-generator runtime threads, 1–1024 (default: one per core). On a
    /// machine whose cores the load generator shares with the nodes under test, 1
    /// (a current-thread runtime, no cross-thread wake-ups) leaves them more CPU:
    /// BENCHMARKS.md measures both.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
}

/// Parses `10s`, `250ms`, `2m`, `1.5s`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (try 10s, 500ms, 1m)"))?;
    let secs = match unit.trim() {
        "ms" => v / 1000.0,
        "s" | "" => v,
        "m" | "min" => v * 60.0,
        _ => return Err(format!("invalid duration unit in {s:?} (ms, s, m)")),
    };
    if !secs.is_finite() || !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// What one operation came to.
enum Outcome {
    /// Success (a read that found the key, or an acknowledged write).
    Ok,
    /// A read of an absent key (not an error, but reported: a preloaded key should exist).
    NotFound,
    /// A failure, by kind (`503 quorum`, `timeout`, `connect`, …).
    Err(String),
}

/// One client's connection to the store under test.
enum Conn {
    Http {
        client: http::HttpConn,
        /// Reused request path buffer.
        path: String,
        target: Target,
        r: Option<usize>,
        w: Option<usize>,
        /// Last context seen per key (ringlab only).
        contexts: BTreeMap<u64, String>,
    },
    Redis {
        addr: String,
        stream: Option<BufReader<TcpStream>>,
        timeout: Duration,
    },
}

impl Conn {
    fn new(args: &BenchArgs, url: &str) -> anyhow::Result<Conn> {
        Ok(match args.target {
            Target::Redis => {
                let addr = url
                    .strip_prefix("redis://")
                    .unwrap_or(url)
                    .trim_end_matches('/')
                    .to_string();
                Conn::Redis {
                    addr,
                    stream: None,
                    timeout: args.timeout,
                }
            }
            target => Conn::Http {
                client: http::HttpConn::new(url, args.timeout).map_err(anyhow::Error::msg)?,
                path: String::with_capacity(128),
                target,
                r: args.r,
                w: args.w,
                contexts: BTreeMap::new(),
            },
        })
    }

    async fn write(&mut self, key_no: u64, key: &str, value: &[u8]) -> Outcome {
        match self {
            Conn::Http {
                client,
                target: Target::Etcd,
                ..
            } => {
                let body = serde_json::json!({"key": b64(key.as_bytes()), "value": b64(value)});
                let body = body.to_string();
                let headers = [("Content-Type", "application/json")];
                match client
                    .request("POST", "/v3/kv/put", &headers, body.as_bytes())
                    .await
                {
                    Ok(resp) if (200..300).contains(&resp.status) => Outcome::Ok,
                    Ok(resp) => Outcome::Err(http_kind(&resp)),
                    Err(kind) => Outcome::Err(kind.to_string()),
                }
            }
            Conn::Http {
                client,
                w,
                contexts,
                path,
                ..
            } => {
                kv_path(path, key, "w", *w);
                let ctx = contexts.get(&key_no);
                let mut headers = Vec::with_capacity(1);
                if let Some(ctx) = ctx {
                    headers.push((CONTEXT_HEADER, ctx.as_str()));
                }
                match client.request("PUT", path, &headers, value).await {
                    Ok(resp) if (200..300).contains(&resp.status) => {
                        if let Some(ctx) = resp.context {
                            contexts.insert(key_no, ctx);
                        }
                        Outcome::Ok
                    }
                    Ok(resp) => Outcome::Err(http_kind(&resp)),
                    Err(kind) => Outcome::Err(kind.to_string()),
                }
            }
            Conn::Redis { .. } => {
                let cmd = resp_command(&[b"SET", key.as_bytes(), value]);
                match self.redis_call(&cmd).await {
                    Ok(RespReply::Simple(_)) => Outcome::Ok,
                    Ok(RespReply::Error(e)) => Outcome::Err(format!("redis {}", first_word(&e))),
                    Ok(_) => Outcome::Err("redis unexpected reply".into()),
                    Err(kind) => Outcome::Err(kind),
                }
            }
        }
    }

    async fn read(&mut self, key_no: u64, key: &str) -> Outcome {
        match self {
            Conn::Http {
                client,
                target: Target::Etcd,
                ..
            } => {
                let body = serde_json::json!({"key": b64(key.as_bytes())}).to_string();
                let headers = [("Content-Type", "application/json")];
                match client
                    .request("POST", "/v3/kv/range", &headers, body.as_bytes())
                    .await
                {
                    Ok(resp) if (200..300).contains(&resp.status) => {
                        let v: serde_json::Value =
                            serde_json::from_slice(&resp.body).unwrap_or(serde_json::Value::Null);
                        if v["kvs"].as_array().is_some_and(|a| !a.is_empty()) {
                            Outcome::Ok
                        } else {
                            Outcome::NotFound
                        }
                    }
                    Ok(resp) => Outcome::Err(http_kind(&resp)),
                    Err(kind) => Outcome::Err(kind.to_string()),
                }
            }
            Conn::Http {
                client,
                r,
                contexts,
                path,
                ..
            } => {
                kv_path(path, key, "r", *r);
                match client.request("GET", path, &[], &[]).await {
                    Ok(resp) if matches!(resp.status, 200 | 300) => {
                        if let Some(ctx) = resp.context {
                            contexts.insert(key_no, ctx);
                        }
                        Outcome::Ok
                    }
                    Ok(resp) if resp.status == 404 => Outcome::NotFound,
                    Ok(resp) => Outcome::Err(http_kind(&resp)),
                    Err(kind) => Outcome::Err(kind.to_string()),
                }
            }
            Conn::Redis { .. } => {
                let cmd = resp_command(&[b"GET", key.as_bytes()]);
                match self.redis_call(&cmd).await {
                    Ok(RespReply::Bulk(Some(_))) => Outcome::Ok,
                    Ok(RespReply::Bulk(None)) => Outcome::NotFound,
                    Ok(RespReply::Error(e)) => Outcome::Err(format!("redis {}", first_word(&e))),
                    Ok(_) => Outcome::Err("redis unexpected reply".into()),
                    Err(kind) => Outcome::Err(kind),
                }
            }
        }
    }

    /// Sends one RESP command and reads its reply; (re)connects as needed. On any I/O
    /// or protocol error the connection is dropped (the next call reconnects) and the
    /// error kind returned.
    async fn redis_call(&mut self, cmd: &[u8]) -> Result<RespReply, String> {
        let Conn::Redis {
            addr,
            stream,
            timeout,
        } = self
        else {
            return Err("not a redis connection".into());
        };
        let timeout = *timeout;
        if stream.is_none() {
            let s = match tokio::time::timeout(timeout, TcpStream::connect(addr.as_str())).await {
                Ok(Ok(s)) => s,
                Ok(Err(_)) => return Err("connect".into()),
                Err(_) => return Err("timeout".into()),
            };
            let _ = s.set_nodelay(true);
            *stream = Some(BufReader::new(s));
        }
        let Some(s) = stream.as_mut() else {
            return Err("connect".into());
        };
        let res = tokio::time::timeout(timeout, async {
            s.get_mut().write_all(cmd).await.map_err(|_| "io")?;
            read_resp(s).await
        })
        .await;
        match res {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(kind)) => {
                *stream = None;
                Err(kind.to_string())
            }
            Err(_) => {
                *stream = None;
                Err("timeout".into())
            }
        }
    }
}

/// A RESP reply (only the shapes `SET`/`GET` produce).
#[derive(Debug, PartialEq)]
enum RespReply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
}

fn resp_command(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", parts.len()).into_bytes();
    for p in parts {
        out.extend_from_slice(format!("${}\r\n", p.len()).as_bytes());
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
    out
}

async fn read_resp<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> Result<RespReply, &'static str> {
    let mut line = Vec::new();
    let n = r.read_until(b'\n', &mut line).await.map_err(|_| "io")?;
    if n == 0 {
        return Err("closed");
    }
    if line.len() < 3 || !line.ends_with(b"\r\n") {
        return Err("protocol");
    }
    let body = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
    match line[0] {
        b'+' => Ok(RespReply::Simple(body)),
        b'-' => Ok(RespReply::Error(body)),
        b':' => body.parse().map(RespReply::Integer).map_err(|_| "protocol"),
        b'$' => {
            let len: i64 = body.parse().map_err(|_| "protocol")?;
            if len < 0 {
                return Ok(RespReply::Bulk(None));
            }
            let len = usize::try_from(len).map_err(|_| "protocol")?;
            if len > MAX_BULK {
                return Err("protocol");
            }
            let mut buf = vec![0u8; len + 2];
            r.read_exact(&mut buf).await.map_err(|_| "io")?;
            if !buf.ends_with(b"\r\n") {
                return Err("protocol");
            }
            buf.truncate(len);
            Ok(RespReply::Bulk(Some(buf)))
        }
        _ => Err("protocol"),
    }
}

fn first_word(s: &str) -> String {
    s.split_whitespace().next().unwrap_or("error").to_string()
}

fn b64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Writes `/kv/{key}` and, when set, `?{param}={value}` into the reused `path`.
fn kv_path(path: &mut String, key: &str, param: &str, value: Option<usize>) {
    use std::fmt::Write as _;
    path.clear();
    path.push_str("/kv/");
    path.push_str(key);
    if let Some(v) = value {
        let _ = write!(path, "?{param}={v}");
    }
}

/// `"<status> <error kind>"`, the kind taken from Ringlab's JSON error body when present.
fn http_kind(resp: &http::Response) -> String {
    let kind = serde_json::from_slice::<serde_json::Value>(&resp.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string));
    match kind {
        Some(k) => format!("{} {k}", resp.status),
        None => resp.status.to_string(),
    }
}

/// What one client measured.
struct ClientResult {
    hist: Histogram<u64>,
    reads: u64,
    writes: u64,
    not_found: u64,
    errors: BTreeMap<String, u64>,
}

fn new_hist() -> anyhow::Result<Histogram<u64>> {
    // 1 µs .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).context("creating the latency histogram")
}

/// The whole run's figures.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    /// Store under test.
    pub target: String,
    /// Target URLs.
    pub nodes: Vec<String>,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Key space size.
    pub keys: u64,
    /// Value size in bytes.
    pub value_size: usize,
    /// Read fraction.
    pub reads_fraction: f64,
    /// Measured seconds.
    pub duration_s: f64,
    /// Successful operations in the measured window (not-found reads included).
    pub ops: u64,
    /// `ops / duration_s`.
    pub ops_per_s: f64,
    /// Reads that completed (found or not).
    pub reads: u64,
    /// Writes acknowledged.
    pub writes: u64,
    /// Reads of an absent key.
    pub not_found: u64,
    /// Latency percentiles of successful operations, milliseconds.
    pub p50_ms: f64,
    /// p90.
    pub p90_ms: f64,
    /// p99.
    pub p99_ms: f64,
    /// p99.9.
    pub p999_ms: f64,
    /// Max.
    pub max_ms: f64,
    /// Failed operations by kind.
    pub errors: BTreeMap<String, u64>,
}

impl Report {
    fn print_text(&self) {
        crate::outln!(
            "target {} ({}), {} clients, {} keys, {} B values, {:.0}% reads, {:.1} s measured",
            self.target,
            self.nodes.join(","),
            self.concurrency,
            self.keys,
            self.value_size,
            self.reads_fraction * 100.0,
            self.duration_s
        );
        crate::outln!(
            "ops {}  ({:.0} ops/s)  reads {}  writes {}  not found {}",
            self.ops,
            self.ops_per_s,
            self.reads,
            self.writes,
            self.not_found
        );
        crate::outln!(
            "latency ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms
        );
        if self.errors.is_empty() {
            crate::outln!("errors: none");
        } else {
            let parts: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            crate::outln!(
                "errors: {} ({})",
                self.errors.values().sum::<u64>(),
                parts.join(", ")
            );
        }
    }
}

fn validate(args: &BenchArgs) -> anyhow::Result<()> {
    if args.node.iter().all(|n| n.trim().is_empty()) {
        bail!("--node: give at least one target URL");
    }
    if args.concurrency == 0 || args.concurrency > 10_000 {
        bail!("--concurrency must be between 1 and 10000");
    }
    if args.keys == 0 {
        bail!("--keys must be at least 1");
    }
    if !(0.0..=1.0).contains(&args.reads) {
        bail!("--reads is a fraction between 0 and 1, got {}", args.reads);
    }
    if args.value_size > 64 << 20 {
        bail!("--value-size at most 64 MiB");
    }
    if args.duration.is_zero() {
        bail!("--duration must be positive");
    }
    Ok(())
}

fn key_name(prefix: &str, k: u64) -> String {
    format!("{prefix}{k:08}")
}

/// Runs the benchmark described by `args` and prints its report. Fails on invalid
/// arguments, when the preload cannot write the key space, or when no operation succeeded.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let report = measure(&args).await?;
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print_text();
    }
    if report.ops == 0 {
        bail!(
            "no operation succeeded ({} errors)",
            report.errors.values().sum::<u64>()
        );
    }
    Ok(())
}

/// Runs the load and returns the figures without printing them.
pub async fn measure(args: &BenchArgs) -> anyhow::Result<Report> {
    validate(args)?;
    let nodes: Vec<String> = args
        .node
        .iter()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    let seed = args.seed.unwrap_or_else(|| rand::thread_rng().gen());
    let prefix = args
        .key_prefix
        .clone()
        .unwrap_or_else(|| format!("bench-{:08x}-", rand::thread_rng().gen::<u32>()));
    let prefix: Arc<str> = prefix.into();
    let mut value = vec![0u8; args.value_size];
    rand::rngs::StdRng::seed_from_u64(seed).fill(&mut value[..]);
    for b in &mut value {
        *b = b'a' + (*b % 26); // printable, so values show up readably in tools
    }
    let value: Arc<[u8]> = value.into();
    let c = args.concurrency;

    // Preload (reads need existing keys); contexts go to the client that owns each key.
    let mut contexts: Vec<BTreeMap<u64, String>> = vec![BTreeMap::new(); c];
    if args.reads > 0.0 {
        let mut tasks = tokio::task::JoinSet::new();
        let tasks_n = PRELOAD_TASKS.min(args.keys as usize).max(1);
        for t in 0..tasks_n {
            let mut conn = Conn::new(args, &nodes[t % nodes.len()])?;
            let (prefix, value, keys) = (prefix.clone(), value.clone(), args.keys);
            tasks.spawn(async move {
                let mut failed = 0u64;
                let mut k = t as u64;
                while k < keys {
                    let mut tries = 0;
                    loop {
                        match conn.write(k, &key_name(&prefix, k), &value).await {
                            Outcome::Ok => break,
                            _ if tries < 3 => tries += 1,
                            _ => {
                                failed += 1;
                                break;
                            }
                        }
                    }
                    k += tasks_n as u64;
                }
                let ctx = match conn {
                    Conn::Http { contexts, .. } => contexts,
                    Conn::Redis { .. } => BTreeMap::new(),
                };
                (failed, ctx)
            });
        }
        let mut failed = 0;
        while let Some(r) = tasks.join_next().await {
            let (f, ctx) = r.context("preload task")?;
            failed += f;
            for (k, v) in ctx {
                contexts[(k % c as u64) as usize].insert(k, v);
            }
        }
        if failed > 0 {
            bail!(
                "preload: {failed} of {} keys could not be written",
                args.keys
            );
        }
    }

    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let mut clients = tokio::task::JoinSet::new();
    for (i, ctx) in contexts.into_iter().enumerate() {
        let mut conn = Conn::new(args, &nodes[i % nodes.len()])?;
        if let Conn::Http { contexts, .. } = &mut conn {
            *contexts = ctx;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37));
        let (prefix, value) = (prefix.clone(), value.clone());
        let (keys, reads) = (args.keys, args.reads);
        // This client's write slice: keys ≡ i (mod c); all keys when the slice is empty.
        let own = keys.saturating_sub(i as u64).div_ceil(c as u64);
        let mut res = ClientResult {
            hist: new_hist()?,
            reads: 0,
            writes: 0,
            not_found: 0,
            errors: BTreeMap::new(),
        };
        clients.spawn(async move {
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let is_read = rng.gen_bool(reads);
                let k = if is_read || own == 0 {
                    rng.gen_range(0..keys)
                } else {
                    i as u64 + rng.gen_range(0..own) * c as u64
                };
                let key = key_name(&prefix, k);
                let outcome = if is_read {
                    conn.read(k, &key).await
                } else {
                    conn.write(k, &key, &value).await
                };
                if t0 < measure_from {
                    continue;
                }
                match outcome {
                    Outcome::Ok | Outcome::NotFound => {
                        let us = t0.elapsed().as_micros().clamp(1, 60_000_000) as u64;
                        let _ = res.hist.record(us);
                        if is_read {
                            res.reads += 1;
                        } else {
                            res.writes += 1;
                        }
                        if matches!(outcome, Outcome::NotFound) {
                            res.not_found += 1;
                        }
                    }
                    Outcome::Err(kind) => *res.errors.entry(kind).or_insert(0) += 1,
                }
            }
            res
        });
    }
    let mut hist = new_hist()?;
    let (mut reads, mut writes, mut not_found) = (0, 0, 0);
    let mut errors = BTreeMap::new();
    while let Some(r) = clients.join_next().await {
        let r = r.context("bench client task")?;
        hist.add(&r.hist).context("merging histograms")?;
        reads += r.reads;
        writes += r.writes;
        not_found += r.not_found;
        for (k, v) in r.errors {
            *errors.entry(k).or_insert(0) += v;
        }
    }
    let secs = args.duration.as_secs_f64();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(Report {
        target: args.target.name().into(),
        nodes,
        concurrency: c,
        keys: args.keys,
        value_size: args.value_size,
        reads_fraction: args.reads,
        duration_s: secs,
        ops: reads + writes,
        ops_per_s: (reads + writes) as f64 / secs,
        reads,
        writes,
        not_found,
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: hist.max() as f64 / 1000.0,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1e400s").is_err());
    }

    #[tokio::test]
    async fn resp_replies_parse_and_reject_garbage() {
        async fn parse(b: &[u8]) -> Result<RespReply, &'static str> {
            read_resp(&mut BufReader::new(b)).await
        }
        assert_eq!(parse(b"+OK\r\n").await, Ok(RespReply::Simple("OK".into())));
        assert_eq!(
            parse(b"-ERR wrong\r\n").await,
            Ok(RespReply::Error("ERR wrong".into()))
        );
        assert_eq!(parse(b":42\r\n").await, Ok(RespReply::Integer(42)));
        assert_eq!(parse(b"$-1\r\n").await, Ok(RespReply::Bulk(None)));
        assert_eq!(
            parse(b"$3\r\nabc\r\n").await,
            Ok(RespReply::Bulk(Some(b"abc".to_vec())))
        );
        assert_eq!(parse(b"$3\r\nabcd\r\n").await, Err("protocol"));
        assert_eq!(parse(b"$999999999999\r\n").await, Err("protocol"));
        assert_eq!(parse(b"$5\r\nab").await, Err("io"));
        assert_eq!(parse(b"?\r\n").await, Err("protocol"));
        assert_eq!(parse(b"").await, Err("closed"));
        assert_eq!(parse(b"+OK").await, Err("protocol"));
    }

    #[test]
    fn resp_commands_encode() {
        assert_eq!(
            resp_command(&[b"GET", b"k1"]),
            b"*2\r\n$3\r\nGET\r\n$2\r\nk1\r\n".to_vec()
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let ok = Cli::try_parse_from(["x", "--reads", "0.9", "--node", "http://a:1,http://b:2"])
            .unwrap()
            .bench;
        assert_eq!(ok.node.len(), 2);
        assert!(validate(&ok).is_ok());
        let bad = Cli::try_parse_from(["x", "--reads", "1.5"]).unwrap().bench;
        assert!(validate(&bad).unwrap_err().to_string().contains("--reads"));
        let zero = Cli::try_parse_from(["x", "--concurrency", "0"])
            .unwrap()
            .bench;
        assert!(validate(&zero).is_err());
        assert!(Cli::try_parse_from(["x", "--target", "mysql"]).is_err());
    }

    /// A tiny Redis stand-in (`SET`/`GET` only) proves the client loop end to end:
    /// preload, mixed load, counts and percentiles.
    #[tokio::test]
    async fn bench_runs_against_a_resp_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let store = Arc::new(std::sync::Mutex::new(BTreeMap::<Vec<u8>, Vec<u8>>::new()));
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut s = BufReader::new(s);
                    loop {
                        let mut parts = Vec::new();
                        let mut line = Vec::new();
                        if s.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let n: usize = String::from_utf8_lossy(&line[1..line.len() - 2])
                            .parse()
                            .unwrap_or(0);
                        for _ in 0..n {
                            let mut line = Vec::new();
                            let _ = s.read_until(b'\n', &mut line).await;
                            let len: usize = String::from_utf8_lossy(&line[1..line.len() - 2])
                                .parse()
                                .unwrap_or(0);
                            let mut buf = vec![0; len + 2];
                            let _ = s.read_exact(&mut buf).await;
                            buf.truncate(len);
                            parts.push(buf);
                        }
                        let reply = match parts[0].as_slice() {
                            b"SET" => {
                                store
                                    .lock()
                                    .unwrap()
                                    .insert(parts[1].clone(), parts[2].clone());
                                b"+OK\r\n".to_vec()
                            }
                            _ => match store.lock().unwrap().get(&parts[1]) {
                                Some(v) => {
                                    let mut r = format!("${}\r\n", v.len()).into_bytes();
                                    r.extend_from_slice(v);
                                    r.extend_from_slice(b"\r\n");
                                    r
                                }
                                None => b"$-1\r\n".to_vec(),
                            },
                        };
                        if s.get_mut().write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let args = BenchArgs {
            node: vec![format!("redis://{addr}")],
            concurrency: 4,
            keys: 100,
            value_size: 16,
            reads: 0.5,
            duration: Duration::from_millis(300),
            warmup: Duration::from_millis(50),
            r: None,
            w: None,
            target: Target::Redis,
            json: true,
            key_prefix: None,
            seed: Some(7),
            timeout: Duration::from_secs(2),
            threads: None,
        };
        let rep = measure(&args).await.unwrap();
        assert!(rep.ops > 100, "{rep:?}");
        assert_eq!(rep.ops, rep.reads + rep.writes);
        assert!(rep.reads > 0 && rep.writes > 0, "{rep:?}");
        assert_eq!(
            rep.not_found, 0,
            "preloaded keys must all be found: {rep:?}"
        );
        assert!(rep.errors.is_empty(), "{rep:?}");
        assert!(rep.p50_ms > 0.0 && rep.p50_ms <= rep.p99_ms && rep.p99_ms <= rep.max_ms);

        // A closed port: every op fails with a counted kind, nothing panics.
        let dead = BenchArgs {
            node: vec!["redis://127.0.0.1:1".into()],
            reads: 0.0,
            duration: Duration::from_millis(100),
            warmup: Duration::ZERO,
            ..args
        };
        let rep = measure(&dead).await.unwrap();
        assert_eq!(rep.ops, 0);
        assert!(
            rep.errors.get("connect").copied().unwrap_or(0) > 0,
            "{rep:?}"
        );
    }
}
