//! Prometheus metrics, rendered by hand in the text exposition format.
//!
//! Counters are plain atomics updated by the driver (events, group commits) and
//! the HTTP handlers (requests, latency); gauges are set by the driver after every
//! batch, so `/metrics` never touches the `Node`. Transport counters are read at
//! render time from a [`TransportSnapshot`] source registered by the process.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

/// Upper bounds (seconds) of the request latency histogram buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// Upper bounds of the group-commit size histogram (batches made durable per fsync).
const GROUP_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Upper bounds (seconds) of the storage sync duration histogram: a log write's
/// `fdatasync` is a fraction of a millisecond, a checkpoint's commit tens of them.
const SYNC_BUCKETS: [f64; 14] = [
    0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0,
];

/// Sync kinds, as labelled in the metrics.
const SYNC_KINDS: [&str; 2] = ["log", "checkpoint"];

/// A cumulative histogram with fixed buckets.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// Sum in micro-units (µs for latencies, whole units otherwise).
    sum: AtomicU64,
    count: AtomicU64,
    scale: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64], scale: f64) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
            scale,
        }
    }

    fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.sum.fetch_add((v * self.scale) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum.load(Relaxed) as f64 / self.scale;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// Transport counters as `/metrics` shows them (filled from the transport's stats).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransportSnapshot {
    /// Frames written to peers.
    pub frames_sent: u64,
    /// Frames accepted from peers.
    pub frames_received: u64,
    /// Bytes written.
    pub bytes_sent: u64,
    /// Bytes read.
    pub bytes_received: u64,
    /// Connections dialed to peers.
    pub connections_dialed: u64,
    /// Messages dropped, by reason (`queue_full`, `no_address`, `too_large`).
    pub dropped: BTreeMap<String, u64>,
    /// Frames or handshakes rejected, by reason (`bad_mac`, `replay`, …).
    pub rejected: BTreeMap<String, u64>,
    /// Fingerprints of the cluster keys accepted, the sending key's first.
    pub key_fingerprints: Vec<String>,
    /// Key file reloads that replaced the keys.
    pub key_reloads: u64,
    /// Key file reloads refused (the keys stayed).
    pub key_reloads_failed: u64,
}

/// Every reason a frame can be rejected for: always rendered (as 0 until it happens).
pub const REJECT_REASONS: [&str; 7] = [
    "bad_mac",
    "replay",
    "oversize",
    "decode",
    "cluster_mismatch",
    "params_mismatch",
    "handshake",
];

type TransportSource = Box<dyn Fn() -> TransportSnapshot + Send + Sync>;

/// Client operations, as labelled in the metrics.
pub const OPS: [&str; 3] = ["put", "get", "delete"];

/// All metrics of one node.
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    latency: [Histogram; 3],
    group_commit: Histogram,
    /// Storage sync durations: log writes, checkpoints.
    sync: [Histogram; 2],
    counters: Mutex<BTreeMap<&'static str, u64>>,
    gauges: Mutex<BTreeMap<&'static str, i64>>,
    transport: RwLock<Option<TransportSource>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Counters the driver bumps, with their help text. Only these names are valid.
const COUNTERS: [(&str, &str); 20] = [
    (
        "hints_stored",
        "Hinted replicas this node stored as a stand-in.",
    ),
    (
        "hints_delivered",
        "Hints delivered to their owner and deleted here.",
    ),
    (
        "hints_dropped",
        "Hints dropped (too old), left to anti-entropy.",
    ),
    (
        "hints_refused",
        "Hinted writes refused because the owner's hint budget is full.",
    ),
    ("handoffs_received", "Hint batches merged from stand-ins."),
    ("read_repairs", "Reads that repaired stale replicas."),
    (
        "read_retries",
        "Quorum-fanout reads that also asked the replicas not asked at first (speculative retry).",
    ),
    ("merkle_exchanges", "Merkle exchanges started by this node."),
    (
        "merkle_keys_repaired",
        "Keys repaired here by Merkle anti-entropy.",
    ),
    (
        "merkle_in_sync",
        "Merkle exchanges that found nothing to repair here.",
    ),
    (
        "peers_reported_dead",
        "Peers reported dead (unreachable longer than dead_after).",
    ),
    (
        "peer_unreachable",
        "Transitions of a peer to unreachable in this node's view.",
    ),
    ("member_changes", "Membership entries learned or changed."),
    ("rings_installed", "Newer rings installed."),
    (
        "partitions_pulled",
        "Partition data pages pulled from current replicas.",
    ),
    (
        "ownership_handoff_keys",
        "Own copies of keys this node does not replicate in a ring it adopted unprepared, handed to their owners as hints.",
    ),
    ("storage_syncs", "Group commits (one fsync each)."),
    (
        "storage_syncs_overlapped",
        "Group commits started while an earlier one was still running (--sync-depth 2).",
    ),
    ("messages_ignored", "Peer messages ignored by the core."),
    (
        "gossip_rounds",
        "Gossip rounds started since this process started.",
    ),
];

/// Gauges the driver sets, with their help text.
const GAUGES: [(&str, &str); 7] = [
    ("hints_pending", "Hints this node holds for other nodes."),
    (
        "unreachable_peers",
        "Members this node currently considers unreachable.",
    ),
    ("members", "Members in this node's membership view."),
    ("objects", "Keys stored as this node's own replicas."),
    ("ring_version", "Version of the ring this node routes by."),
    ("coordinating", "Client requests this node is coordinating."),
    ("client_queue", "Client requests waiting for the node task."),
];

impl Metrics {
    /// Empty metrics.
    pub fn new() -> Self {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            latency: [
                Histogram::new(&LATENCY_BUCKETS, 1e6),
                Histogram::new(&LATENCY_BUCKETS, 1e6),
                Histogram::new(&LATENCY_BUCKETS, 1e6),
            ],
            group_commit: Histogram::new(&GROUP_BUCKETS, 1.0),
            sync: [
                Histogram::new(&SYNC_BUCKETS, 1e6),
                Histogram::new(&SYNC_BUCKETS, 1e6),
            ],
            counters: Mutex::new(COUNTERS.iter().map(|(n, _)| (*n, 0)).collect()),
            gauges: Mutex::new(GAUGES.iter().map(|(n, _)| (*n, 0)).collect()),
            transport: RwLock::new(None),
        }
    }

    /// Registers where transport counters come from.
    pub fn set_transport_source(&self, f: impl Fn() -> TransportSnapshot + Send + Sync + 'static) {
        if let Ok(mut t) = self.transport.write() {
            *t = Some(Box::new(f));
        }
    }

    /// Counts one client request of `op` (one of [`OPS`]) that ended with `outcome`.
    pub fn request(&self, op: &'static str, outcome: &'static str, took: Duration) {
        if let Ok(mut r) = self.requests.lock() {
            *r.entry((op, outcome)).or_default() += 1;
        }
        if let Some(i) = OPS.iter().position(|o| *o == op) {
            self.latency[i].observe(took.as_secs_f64());
        }
    }

    /// Adds `by` to counter `name` (one of the driver's counters; others are ignored).
    pub fn add(&self, name: &'static str, by: u64) {
        if let Ok(mut c) = self.counters.lock() {
            if let Some(v) = c.get_mut(name) {
                *v += by;
            }
        }
    }

    /// Sets counter `name` to a total counted elsewhere (e.g. by the core).
    pub fn set_counter(&self, name: &'static str, total: u64) {
        if let Ok(mut c) = self.counters.lock() {
            if let Some(v) = c.get_mut(name) {
                *v = total;
            }
        }
    }

    /// Sets gauge `name`.
    pub fn set(&self, name: &'static str, value: i64) {
        if let Ok(mut g) = self.gauges.lock() {
            if let Some(v) = g.get_mut(name) {
                *v = value;
            }
        }
    }

    /// The current value of counter `name` (tests, status lines).
    pub fn counter(&self, name: &str) -> u64 {
        self.counters
            .lock()
            .ok()
            .and_then(|c| c.get(name).copied())
            .unwrap_or(0)
    }

    /// The current value of gauge `name`.
    pub fn gauge(&self, name: &str) -> i64 {
        self.gauges
            .lock()
            .ok()
            .and_then(|g| g.get(name).copied())
            .unwrap_or(0)
    }

    /// Records one group commit that made `batches` applied batches durable.
    pub fn group_commit(&self, batches: u64) {
        self.group_commit.observe(batches as f64);
        self.add("storage_syncs", 1);
    }

    /// Records how long one storage sync's fsync took (on its blocking thread): a
    /// log write, or a checkpoint (during which the node applies nothing).
    pub fn sync(&self, took: Duration, checkpoint: bool) {
        self.sync[usize::from(checkpoint)].observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        out.push_str("# HELP ringlab_requests_total Client requests by operation and outcome.\n");
        out.push_str("# TYPE ringlab_requests_total counter\n");
        if let Ok(r) = self.requests.lock() {
            for ((op, outcome), v) in r.iter() {
                let _ = writeln!(
                    out,
                    "ringlab_requests_total{{op=\"{op}\",outcome=\"{outcome}\"}} {v}"
                );
            }
        }
        out.push_str(
            "# HELP ringlab_request_duration_seconds Client request latency by operation.\n",
        );
        out.push_str("# TYPE ringlab_request_duration_seconds histogram\n");
        for (op, h) in OPS.iter().zip(&self.latency) {
            h.render(
                &mut out,
                "ringlab_request_duration_seconds",
                &format!("op=\"{op}\""),
            );
        }
        out.push_str(
            "# HELP ringlab_group_commit_batches Applied batches made durable per fsync.\n",
        );
        out.push_str("# TYPE ringlab_group_commit_batches histogram\n");
        self.group_commit
            .render(&mut out, "ringlab_group_commit_batches", "");
        out.push_str(
            "# HELP ringlab_storage_sync_seconds Storage sync duration by kind (log: a group's record and its fdatasync; checkpoint: the redb commit, during which nothing is applied).\n",
        );
        out.push_str("# TYPE ringlab_storage_sync_seconds histogram\n");
        for (kind, h) in SYNC_KINDS.iter().zip(&self.sync) {
            h.render(
                &mut out,
                "ringlab_storage_sync_seconds",
                &format!("kind=\"{kind}\""),
            );
        }
        if let Ok(c) = self.counters.lock() {
            for (name, help) in COUNTERS {
                let v = c.get(name).copied().unwrap_or(0);
                let _ = writeln!(out, "# HELP ringlab_{name}_total {help}");
                let _ = writeln!(out, "# TYPE ringlab_{name}_total counter");
                let _ = writeln!(out, "ringlab_{name}_total {v}");
            }
        }
        if let Ok(g) = self.gauges.lock() {
            for (name, help) in GAUGES {
                let v = g.get(name).copied().unwrap_or(0);
                let _ = writeln!(out, "# HELP ringlab_{name} {help}");
                let _ = writeln!(out, "# TYPE ringlab_{name} gauge");
                let _ = writeln!(out, "ringlab_{name} {v}");
            }
        }
        let t = self
            .transport
            .read()
            .ok()
            .and_then(|s| s.as_ref().map(|f| f()))
            .unwrap_or_default();
        for (name, help, v) in [
            ("frames_sent", "Frames sent to peers.", t.frames_sent),
            (
                "frames_received",
                "Frames accepted from peers.",
                t.frames_received,
            ),
            ("bytes_sent", "Bytes sent to peers.", t.bytes_sent),
            (
                "peer_connections_dialed",
                "Connections dialed to peers (a pair of nodes shares the one its lower id dialed).",
                t.connections_dialed,
            ),
            (
                "bytes_received",
                "Bytes received from peers.",
                t.bytes_received,
            ),
        ] {
            let _ = writeln!(out, "# HELP ringlab_{name}_total {help}");
            let _ = writeln!(out, "# TYPE ringlab_{name}_total counter");
            let _ = writeln!(out, "ringlab_{name}_total {v}");
        }
        out.push_str(
            "# HELP ringlab_messages_dropped_total Outgoing peer messages dropped, by reason.\n",
        );
        out.push_str("# TYPE ringlab_messages_dropped_total counter\n");
        for (reason, v) in &t.dropped {
            let _ = writeln!(
                out,
                "ringlab_messages_dropped_total{{reason=\"{}\"}} {v}",
                escape(reason)
            );
        }
        out.push_str(
            "# HELP ringlab_frames_rejected_total Peer frames or handshakes rejected, by reason.\n",
        );
        out.push_str("# TYPE ringlab_frames_rejected_total counter\n");
        let mut rejected: BTreeMap<String, u64> =
            REJECT_REASONS.iter().map(|r| (r.to_string(), 0)).collect();
        for (reason, v) in &t.rejected {
            *rejected.entry(reason.clone()).or_default() += v;
        }
        for (reason, v) in rejected {
            let _ = writeln!(
                out,
                "ringlab_frames_rejected_total{{reason=\"{}\"}} {v}",
                escape(&reason)
            );
        }
        // One series per accepted key, so a rotation can be checked cluster-wide
        // before the old key is removed: every node must show the new key as `send`.
        out.push_str(
            "# HELP ringlab_cluster_key Cluster keys this node accepts, by fingerprint; role=\"send\" seals what it sends.\n",
        );
        out.push_str("# TYPE ringlab_cluster_key gauge\n");
        for (i, f) in t.key_fingerprints.iter().enumerate() {
            let role = if i == 0 { "send" } else { "accept" };
            let _ = writeln!(
                out,
                "ringlab_cluster_key{{fingerprint=\"{}\",role=\"{role}\"}} 1",
                escape(f)
            );
        }
        out.push_str(
            "# HELP ringlab_key_reloads_total Cluster key file reloads (SIGHUP), by outcome; on error the keys stay.\n",
        );
        out.push_str("# TYPE ringlab_key_reloads_total counter\n");
        let _ = writeln!(
            out,
            "ringlab_key_reloads_total{{outcome=\"ok\"}} {}",
            t.key_reloads
        );
        let _ = writeln!(
            out,
            "ringlab_key_reloads_total{{outcome=\"error\"}} {}",
            t.key_reloads_failed
        );
        out
    }
}

/// Escapes a label value.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn renders_required_series() {
        let m = Metrics::new();
        m.set("hints_pending", 7);
        m.add("hints_stored", 2);
        m.add("no_such_counter", 5);
        m.request("put", "ok", Duration::from_millis(3));
        m.request("put", "ok", Duration::from_millis(30));
        m.group_commit(5);
        m.sync(Duration::from_micros(150), false);
        m.sync(Duration::from_millis(40), true);
        m.set_transport_source(|| TransportSnapshot {
            rejected: [("bad_mac".to_string(), 3)].into_iter().collect(),
            key_fingerprints: vec!["0badcafe".into(), "12345678".into()],
            key_reloads_failed: 1,
            ..Default::default()
        });
        let text = m.render();
        assert_eq!(
            line(&text, "ringlab_hints_pending "),
            Some("ringlab_hints_pending 7")
        );
        assert_eq!(
            line(&text, "ringlab_hints_stored_total "),
            Some("ringlab_hints_stored_total 2")
        );
        assert_eq!(
            line(&text, "ringlab_frames_rejected_total{reason=\"bad_mac\"}"),
            Some("ringlab_frames_rejected_total{reason=\"bad_mac\"} 3")
        );
        assert_eq!(
            line(&text, "ringlab_frames_rejected_total{reason=\"replay\"}"),
            Some("ringlab_frames_rejected_total{reason=\"replay\"} 0")
        );
        assert_eq!(
            line(&text, "ringlab_requests_total{op=\"put\",outcome=\"ok\"}"),
            Some("ringlab_requests_total{op=\"put\",outcome=\"ok\"} 2")
        );
        // 3 ms falls in le=0.005, 30 ms in le=0.05: cumulative counts 1 then 2.
        assert_eq!(
            line(
                &text,
                "ringlab_request_duration_seconds_bucket{op=\"put\",le=\"0.005\"}"
            ),
            Some("ringlab_request_duration_seconds_bucket{op=\"put\",le=\"0.005\"} 1")
        );
        assert_eq!(
            line(
                &text,
                "ringlab_request_duration_seconds_bucket{op=\"put\",le=\"+Inf\"}"
            ),
            Some("ringlab_request_duration_seconds_bucket{op=\"put\",le=\"+Inf\"} 2")
        );
        assert_eq!(
            line(&text, "ringlab_group_commit_batches_bucket{le=\"8\"}"),
            Some("ringlab_group_commit_batches_bucket{le=\"8\"} 1")
        );
        assert_eq!(m.counter("storage_syncs"), 1);
        // 150 µs is a log write in le=0.0002; the 40-ms checkpoint only from le=0.05.
        assert_eq!(
            line(
                &text,
                "ringlab_storage_sync_seconds_bucket{kind=\"log\",le=\"0.0002\"}"
            ),
            Some("ringlab_storage_sync_seconds_bucket{kind=\"log\",le=\"0.0002\"} 1")
        );
        assert_eq!(
            line(
                &text,
                "ringlab_storage_sync_seconds_bucket{kind=\"checkpoint\",le=\"0.02\"}"
            ),
            Some("ringlab_storage_sync_seconds_bucket{kind=\"checkpoint\",le=\"0.02\"} 0")
        );
        assert_eq!(
            line(
                &text,
                "ringlab_storage_sync_seconds_count{kind=\"checkpoint\"}"
            ),
            Some("ringlab_storage_sync_seconds_count{kind=\"checkpoint\"} 1")
        );
        assert_eq!(
            line(&text, "ringlab_cluster_key{fingerprint=\"0badcafe\""),
            Some("ringlab_cluster_key{fingerprint=\"0badcafe\",role=\"send\"} 1")
        );
        assert_eq!(
            line(&text, "ringlab_cluster_key{fingerprint=\"12345678\""),
            Some("ringlab_cluster_key{fingerprint=\"12345678\",role=\"accept\"} 1")
        );
        assert_eq!(
            line(&text, "ringlab_key_reloads_total{outcome=\"error\"}"),
            Some("ringlab_key_reloads_total{outcome=\"error\"} 1")
        );
    }
}
