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
