//! Bad client input gets a clear 4xx and never hurts the node: oversized key and value
//! (413, default limits 1 KiB / 1 MiB), malformed context and quorum parameters (400),
//! invalid UTF-8 in the path (400), unknown routes (404), and slow-loris clients
//! (headers dribbled byte by byte, a body that stalls) cut off after the read timeout
//! while other clients are served. No panic in the log.

use ringlab_tests::{raw_http, raw_status, Cluster, ClusterOpts};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The node's client read timeout in this test (seconds).
const READ_TIMEOUT_S: u64 = 2;

fn single_node() -> Cluster {
    let mut opts = ClusterOpts::fast().set("--client-read-timeout-secs", READ_TIMEOUT_S);
    opts.n = 1;
    opts.r = 1;
    opts.w = 1;
    Cluster::start(1, opts)
}

fn error_kind(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("error")?
        .as_str()
        .map(str::to_string)
}

/// Sends `head` then `body` (ignoring write errors: the server may answer and close
/// early) and returns the first response.
fn send_ignoring_write_errors(addr: SocketAddr, head: &[u8], body: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(head);
    for chunk in body.chunks(64 << 10) {
        if s.write_all(chunk).is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn bad_requests_get_clear_errors() {
    let c = single_node();
    let url = c.url(0);
    let http = &c.http;
    let addr = c.nodes[0].http;

    // A normal write first, for a valid context.
    let ok = c.put(0, "good", b"v", None, None).expect("put");
    assert_eq!(ok.status, 204, "{ok:?}");

    // Oversized key: 1025 bytes.
    let long_key = "k".repeat(1025);
    let r = c.put(0, &long_key, b"v", None, None).expect("put long key");
    assert_eq!(r.status, 413, "oversized key: {r:?}");
    assert!(
        error_kind(&r.body).is_some(),
        "error body is JSON with `error`: {r:?}"
    );
    let r = c.get(0, &long_key, None).expect("get long key");
    assert_eq!(r.status, 413, "oversized key on GET: {r:?}");
    // Exactly 1 KiB is fine.
    let r = c
        .put(0, &"k".repeat(1024), b"v", None, None)
        .expect("put 1 KiB key");
    assert_eq!(r.status, 204, "1 KiB key: {r:?}");

    // Oversized value: 1 MiB + 1 (raw, as the node may answer before reading it all).
    let big = vec![b'x'; (1 << 20) + 1];
    let head = format!(
        "PUT /kv/big HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        big.len()
    );
    let resp = send_ignoring_write_errors(addr, head.as_bytes(), &big);
    assert_eq!(
        raw_status(&resp),
        Some(413),
        "oversized value: {:?}",
        String::from_utf8_lossy(&resp[..resp.len().min(300)])
    );
    // Exactly 1 MiB is fine.
    let r = c
        .put(0, "big", &big[..1 << 20], None, None)
        .expect("put 1 MiB");
    assert_eq!(r.status, 204, "1 MiB value: {r:?}");

    // Malformed contexts.
    for ctx in ["!!!", "not a token", "%%%", &"A".repeat(5000)] {
        let r = c
            .put(0, "good", b"v2", Some(ctx), None)
            .expect("put bad ctx");
        assert_eq!(r.status, 400, "context {ctx:?}: {r:?}");
        assert!(error_kind(&r.body).is_some(), "{r:?}");
        let r = c.delete(0, "good", Some(ctx)).expect("delete bad ctx");
        assert_eq!(r.status, 400, "delete with context {ctx:?}: {r:?}");
    }

    // Malformed quorum parameters.
    for q in ["r=abc", "r=0", "r=99", "r=-1", "r="] {
        let r = http.get(&format!("{url}/kv/good?{q}")).expect("get");
        assert_eq!(r.status, 400, "GET ?{q}: {r:?}");
    }
    for q in ["w=abc", "w=0", "w=99"] {
        let r = c
            .http
            .put(&url, &format!("good?{q}"), b"v", None, None)
            .expect("put");
        assert_eq!(r.status, 400, "PUT ?{q}: {r:?}");
    }

    // Invalid UTF-8 in the path (percent-encoded and raw bytes).
    for path in [&b"/kv/%FF%FE%FD"[..], b"/kv/a%C3%28b", b"/kv/\xff\xfe"] {
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(path);
        req.extend_from_slice(b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let resp = raw_http(addr, &req, Duration::from_secs(5)).expect("raw request");
        assert_eq!(
            raw_status(&resp),
            Some(400),
            "path {:?}: {:?}",
            String::from_utf8_lossy(path),
            String::from_utf8_lossy(&resp)
        );
    }

    // Unknown routes and methods.
    for path in ["/nope", "/kv", "/kv/", "/admin/unknown", "/../etc/passwd"] {
        let r = http.get(&format!("{url}{path}")).expect("get");
        assert!(
            // `/kv` and `/kv/` name the key space without a key: 400 (empty key) or 404.
            r.status == 404 || (path.starts_with("/kv") && r.status == 400),
            "GET {path}: {r:?}"
        );
    }
    let r = http.post(&format!("{url}/kv/good")).expect("post");
    assert_eq!(r.status, 405, "POST /kv/good: {r:?}");

    // Still serving, no panic.
    let r = c.get(0, "good", None).expect("get good");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, b"v".as_slice()),
        "{r:?}"
    );
    c.assert_no_panics();
}

/// Whether the server closed `s` (EOF, reset, or an answer followed by EOF), polled
/// without blocking for more than `wait`.
fn closed(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // e.g. a 408 before the close
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn slow_loris_clients_are_cut_off_and_others_served() {
    let c = single_node();
    let addr = c.nodes[0].http;
    let limit = Duration::from_secs(READ_TIMEOUT_S + 6);

    // 1. Headers dribbled one byte every 200 ms, never finished.
    let mut slow_head = TcpStream::connect(addr).expect("connect");
    // 2. Headers complete, body announced as 100 bytes, 3 sent, then silence.
    let mut slow_body = TcpStream::connect(addr).expect("connect");
    slow_body
        .write_all(b"PUT /kv/slow HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc")
        .unwrap();

    let head = b"GET /health HTTP/1.1\r\nHost: t\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let start = Instant::now();
    let (mut head_closed, mut body_closed) = (None, None);
    let mut sent = 0;
    while (head_closed.is_none() || body_closed.is_none()) && start.elapsed() < limit {
        if head_closed.is_none() {
            let byte = head[sent % head.len()];
            if slow_head.write_all(&[byte]).is_err()
                || closed(&mut slow_head, Duration::from_millis(100))
            {
                head_closed = Some(start.elapsed());
            }
            sent += 1;
        }
        if body_closed.is_none() && closed(&mut slow_body, Duration::from_millis(100)) {
            body_closed = Some(start.elapsed());
        }
        // Other clients are served meanwhile.
        assert!(
            c.is_healthy(0),
            "node stopped answering while slow clients hang"
        );
    }
    eprintln!("slow headers cut after {head_closed:?}, stalled body after {body_closed:?}");
    assert!(
        head_closed.is_some(),
        "a client dribbling headers was not cut off within {limit:?}"
    );
    assert!(
        body_closed.is_some(),
        "a client stalling its body was not cut off within {limit:?}"
    );
    assert!(
        head_closed.unwrap() >= Duration::from_millis(READ_TIMEOUT_S * 1000 / 2),
        "cut off before the read timeout: {head_closed:?}"
    );

    let r = c.put(0, "after-loris", b"ok", None, None).expect("put");
    assert_eq!(r.status, 204, "{r:?}");
    // The stalled PUT must not have written anything.
    let r = c.get(0, "slow", None).expect("get slow");
    assert_eq!(r.status, 404, "a stalled partial body was stored: {r:?}");
    c.assert_no_panics();
}
