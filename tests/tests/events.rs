//! The live event stream: `GET /events?kinds=…` on a real node streams its core events
//! as server-sent events (one JSON object per `data:` line), filtered by kind, and a
//! malformed filter is a clear 400.

use ringlab_tests::{wait_for, Cluster, ClusterOpts};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Opens `path` on `addr` and collects everything the server sends, in the background.
fn stream(addr: std::net::SocketAddr, path: &str) -> Arc<Mutex<String>> {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: ringlab\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("request");
    let seen = Arc::new(Mutex::new(String::new()));
    let out = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    seen
}

#[test]
fn events_stream_core_events_filtered_by_kind() {
    let c = Cluster::start(3, ClusterOpts::fast());
    let b = 1;
    let seen = stream(c.nodes[b].http, "/events?kinds=stored");
    wait_for("the stream to open", Duration::from_secs(10), || {
        seen.lock().unwrap().contains("text/event-stream")
    });
    // A write with W=3 makes B store a replica.
    let r = c.put(0, "live-key", b"v", None, Some(3)).expect("put");
    assert_eq!(r.status, 204, "{r:?}");
    wait_for(
        "B to stream its ReplicaStored event",
        Duration::from_secs(10),
        || seen.lock().unwrap().contains("\"ReplicaStored\""),
    );
    let text = seen.lock().unwrap().clone();
    let events: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).expect("each data line is JSON"))
        .collect();
    assert!(!events.is_empty(), "{text}");
    for e in &events {
        assert_eq!(
            e["kind"], "stored",
            "the filter lets only stored events through: {e}"
        );
        assert_eq!(e["node"], c.nodes[b].id, "{e}");
        assert!(e["at_ms"].as_u64().is_some(), "{e}");
    }
    // The key is in the event, in the core's serde form (bytes as numbers).
    let key: Vec<u64> = b"live-key".iter().map(|&b| u64::from(b)).collect();
    assert!(
        events.iter().any(|e| e["event"]["ReplicaStored"]["key"]
            .as_array()
            .is_some_and(|k| k.iter().filter_map(|v| v.as_u64()).eq(key.iter().copied()))),
        "{text}"
    );

    // A malformed filter is refused clearly.
    let r = c
        .http
        .get(&format!("{}/events?kinds=Not%20A%20Kind", c.url(b)))
        .expect("get");
    assert_eq!(r.status, 400, "{r:?}");
    c.assert_no_panics();
}

/// `peers=1` adds one `event: peer` line per message the node sends or receives:
/// a W=3 write coordinated by A shows on B as a replica write in from A and its
/// ack out to A. Without it, no peer line is sent; with `peers=only`, nothing else.
#[test]
fn events_stream_peer_messages_on_request() {
    let c = Cluster::start(3, ClusterOpts::fast());
    let b = 1;
    let with = stream(c.nodes[b].http, "/events?kinds=stored&peers=1");
    let without = stream(c.nodes[b].http, "/events?kinds=stored");
    let only = stream(c.nodes[b].http, "/events?peers=only");
    wait_for("the streams to open", Duration::from_secs(10), || {
        [&with, &without, &only]
            .iter()
            .all(|s| s.lock().unwrap().contains("text/event-stream"))
    });
    let r = c.put(0, "peer-key", b"v", None, Some(3)).expect("put");
    assert_eq!(r.status, 204, "{r:?}");
    let a = c.nodes[0].id.clone();
    let peer_lines = |text: &str| -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let mut peer = false;
        for l in text.lines() {
            if l == "event: peer" {
                peer = true;
            } else if let Some(d) = l.strip_prefix("data: ") {
                if peer {
                    out.push(serde_json::from_str(d).expect("a peer line is JSON"));
                }
                peer = false;
            } else if l.is_empty() {
                peer = false;
            }
        }
        out
    };
    // The replica write in from A and its ack out to A, among `text`'s peer lines.
    let write_and_ack = |text: &str| {
        let lines = peer_lines(text);
        let has = |dir: &str, kind: &str| {
            lines
                .iter()
                .any(|l| l["dir"] == dir && l["peer"] == a.as_str() && l["kind"] == kind)
        };
        has("in", "ReplicaWrite") && has("out", "ReplicaAck")
    };
    wait_for(
        "B to stream the replica write from A and its ack",
        Duration::from_secs(10),
        || write_and_ack(&with.lock().unwrap()),
    );
    for l in peer_lines(&with.lock().unwrap()) {
        assert_eq!(l["node"], c.nodes[b].id, "{l}");
        assert!(
            l["at_ms"].as_u64().is_some() && l["skipped"].as_u64().is_some(),
            "{l}"
        );
    }
    // The same write reached the plain stream, but no peer line did.
    wait_for(
        "the plain stream's stored event",
        Duration::from_secs(10),
        || without.lock().unwrap().contains("\"ReplicaStored\""),
    );
    assert!(
        !without.lock().unwrap().contains("event: peer"),
        "{}",
        without.lock().unwrap()
    );
    // peers=only: the same peer lines, and no core event at all.
    wait_for(
        "the peers-only stream's lines",
        Duration::from_secs(10),
        || write_and_ack(&only.lock().unwrap()),
    );
    let text = only.lock().unwrap().clone();
    let data = text.lines().filter(|l| l.starts_with("data: ")).count();
    assert_eq!(data, peer_lines(&text).len(), "only peer lines: {text}");
    let r = c
        .http
        .get(&format!("{}/events?peers=yes", c.url(b)))
        .expect("get");
    assert_eq!(r.status, 400, "{r:?}");
    c.assert_no_panics();
}
