//! HTTP API tests against a single-node in-process server (n = r = w = 1) with
//! real redb storage in a temp dir, on a random port.

use ringlab_core::{Admin, Config, Node, NodeId, NodeInfo, Ring};
use ringlab_server::api::{self, ApiState};
use ringlab_server::config::Limits;
use ringlab_server::driver::{Clock, Driver, NetInput, NoPeers};
use ringlab_server::metrics::Metrics;
use ringlab_server::storage::RedbStorage;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

struct Server {
    base: String,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
    client: reqwest::Client,
}

async fn start(limits: Limits) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let storage = RedbStorage::open(dir.path()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let clock = Clock::new();
    let me = NodeId(0);
    let config = Config {
        n: 1,
        r: 1,
        w: 1,
        ..Config::default()
    };
    let info = NodeInfo {
        addr: format!("127.0.0.1:1 {addr}"),
        zone: "z1".into(),
    };
    let node = Node::start(me, info, config, None, storage, 1, clock.now());
    let (net_tx, net_rx) = mpsc::channel::<NetInput>(1);
    let (mut driver, handle) =
        Driver::new(node, NoPeers, net_rx, clock, Arc::new(Metrics::new()), 64);
    driver.admin(Admin::SetRing(
        Ring::new(8, 1, &[(me, "z1".into())]).unwrap(),
    ));
    tokio::spawn(async move {
        let _keep = net_tx;
        driver.run(std::future::pending()).await
    });
    let state = ApiState {
        handle,
        limits,
        n: 1,
        reply_timeout: Duration::from_secs(5),
        allow_origins: vec!["http://127.0.0.1:8080".into()],
    };
    tokio::spawn(api::serve(
        listener,
        api::router(state),
        limits.read_timeout,
    ));
    Server {
        base: format!("http://{addr}"),
        addr,
        _dir: dir,
        client: reqwest::Client::new(),
    }
}

fn small_limits() -> Limits {
    Limits {
        max_key_bytes: 1024,
        max_value_bytes: 1000,
        read_timeout: Duration::from_secs(1),
    }
}

fn ctx(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get("x-ringlab-context")
        .map(|v| v.to_str().unwrap().to_owned())
}

async fn error_kind(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.expect("JSON error body");
    assert!(body["message"].is_string(), "{body}");
    (status, body["error"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn put_get_delete_and_siblings_round_trip() {
    let s = start(small_limits()).await;
    let c = &s.client;
    let url = |k: &str| format!("{}/kv/{k}", s.base);

    let r = c.put(url("k")).body("v1").send().await.unwrap();
    assert_eq!(r.status(), 204);
    let c1 = ctx(&r).expect("context on write");
    let r = c.get(url("k")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(ctx(&r).as_deref(), Some(c1.as_str()));
    assert_eq!(r.bytes().await.unwrap(), "v1");

    // A write with the context replaces the value.
    let r = c
        .put(url("k"))
        .header("X-Ringlab-Context", &c1)
        .body("v2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = c.get(url("k")).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), "v2");

    // Two blind writes are siblings: 300 with both values.
    for v in ["a", "b"] {
        let r = c.put(url("s")).body(v).send().await.unwrap();
        assert_eq!(r.status(), 204);
    }
    let r = c.get(url("s")).send().await.unwrap();
    assert_eq!(r.status(), 300);
    let body: Value = r.json().await.unwrap();
    let mut values: Vec<String> = body["siblings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            use base64::Engine as _;
            let b = base64::engine::general_purpose::STANDARD
                .decode(s["value"].as_str().unwrap())
                .unwrap();
            String::from_utf8(b).unwrap()
        })
        .collect();
    values.sort();
    assert_eq!(values, vec!["a", "b"]);
    // Resolving with the read context leaves one value.
    let token = body["context"].as_str().unwrap();
    let r = c
        .put(url("s"))
        .header("X-Ringlab-Context", token)
        .body("ab")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = c.get(url("s?r=1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), "ab");

    // Delete with the context: 404 afterwards, still with a context.
    let r = c.get(url("k")).send().await.unwrap();
    let c2 = ctx(&r).unwrap();
    let r = c
        .delete(url("k"))
        .header("X-Ringlab-Context", &c2)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = c.get(url("k")).send().await.unwrap();
    assert!(ctx(&r).is_some());
    assert_eq!(error_kind(r).await, (404, "not_found".into()));
    let r = c.get(url("never-written")).send().await.unwrap();
    assert_eq!(error_kind(r).await, (404, "not_found".into()));

    // Percent-encoded keys are their decoded bytes.
    let r = c.put(url("a%2Fb%20c")).body("x").send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = c.get(url("a%2fb%20c")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Observability endpoints.
    let r = c.get(format!("{}/cluster", s.base)).send().await.unwrap();
    let cluster: Value = r.json().await.unwrap();
    assert_eq!(cluster["node"], "A");
    assert_eq!(cluster["partitions"].as_array().unwrap().len(), 8);
    assert_eq!(cluster["nodes"][0]["status"], "up");
    assert_eq!(cluster["nodes"][0]["http_addr"], s.addr.to_string());
    let r = c.get(format!("{}/health", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = c
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("\nringlab_hints_pending 0\n"), "{text}");
    assert!(text.contains("ringlab_frames_rejected_total{reason=\"bad_mac\"} 0"));
    assert!(text.contains("ringlab_requests_total{op=\"get\",outcome=\"siblings\"} 1"));
    assert!(text.contains("ringlab_requests_total{op=\"put\",outcome=\"ok\"} 6"));
}

/// An allowed origin may read the observation routes from a browser; other origins,
/// and the key-value and admin routes, get no CORS header.
#[tokio::test]
async fn only_allowed_origins_may_read_the_observation_routes() {
    let s = start(small_limits()).await;
    let c = &s.client;
    let acao = |r: &reqwest::Response| {
        r.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let allowed = "http://127.0.0.1:8080";
    for path in ["/cluster", "/health", "/metrics"] {
        let r = c
            .get(format!("{}{path}", s.base))
            .header("Origin", allowed)
            .send()
            .await
            .unwrap();
        // (/health may still say 503 while the one-node ring settles: the header
        // is there either way.)
        assert_eq!(acao(&r).as_deref(), Some(allowed), "{path}");
        let r = c
            .get(format!("{}{path}", s.base))
            .header("Origin", "http://evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(acao(&r), None, "{path} for another origin");
    }
    let r = c
        .get(format!("{}/events", s.base))
        .header("Origin", allowed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(acao(&r).as_deref(), Some(allowed), "/events");
    drop(r);
    let r = c
        .get(format!("{}/kv/k", s.base))
        .header("Origin", allowed)
        .send()
        .await
        .unwrap();
    assert_eq!(acao(&r), None, "/kv is not readable cross-origin");
    let r = c
        .post(format!("{}/admin/leave", s.base))
        .header("Origin", allowed)
        .send()
        .await
        .unwrap();
    assert_eq!(acao(&r), None, "admin routes get no CORS header");
}

#[tokio::test]
async fn bad_input_is_a_clear_4xx() {
    let s = start(small_limits()).await;
    let c = &s.client;
    let url = |k: &str| format!("{}/kv/{k}", s.base);

    let r = c
        .put(url("k"))
        .header("X-Ringlab-Context", "zz-not-a-token")
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(error_kind(r).await, (400, "invalid_context".into()));
    let r = c
        .put(url("k"))
        .header("X-Ringlab-Context", "00ff")
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(error_kind(r).await, (400, "invalid_context".into()));

    let long = "k".repeat(1025);
    let r = c.put(url(&long)).body("v").send().await.unwrap();
    assert_eq!(error_kind(r).await, (413, "key_too_large".into()));
    let r = c.put(url("k")).body(vec![b'x'; 1001]).send().await.unwrap();
    assert_eq!(error_kind(r).await, (413, "value_too_large".into()));
    // Without a Content-Length (chunked), the limit still holds.
    let mut t = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let chunk = format!("258\r\n{}\r\n", "x".repeat(600));
    let req = format!(
        "PUT /kv/k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunk}{chunk}0\r\n\r\n"
    );
    t.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut buf)).await;
    let head = String::from_utf8_lossy(&buf);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("value_too_large"), "{head}");
    let r = c.put(url("k")).body(vec![b'x'; 1000]).send().await.unwrap();
    assert_eq!(r.status(), 204);

    for q in ["k?r=0", "k?r=2", "k?r=x", "k?r=-1"] {
        let r = c.get(url(q)).send().await.unwrap();
        assert_eq!(error_kind(r).await, (400, "invalid_param".into()), "{q}");
    }
    let r = c.put(url("k?w=9")).body("v").send().await.unwrap();
    assert_eq!(error_kind(r).await, (400, "invalid_param".into()));

    for k in ["%ff", "%zz", "a%2", "%C3%28"] {
        let r = c.get(url(k)).send().await.unwrap();
        assert_eq!(error_kind(r).await, (400, "invalid_key".into()), "{k}");
    }
    let r = c.get(format!("{}/kv/", s.base)).send().await.unwrap();
    assert_eq!(error_kind(r).await, (400, "invalid_key".into()));
    let r = c.get(format!("{}/nope", s.base)).send().await.unwrap();
    assert_eq!(error_kind(r).await, (404, "not_found".into()));
    let r = c.post(url("k")).send().await.unwrap();
    assert_eq!(error_kind(r).await, (405, "method_not_allowed".into()));
    let r = c
        .get(format!("{}/admin/leave", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(error_kind(r).await, (405, "method_not_allowed".into()));

    // Raw bytes that are not UTF-8 in the request line: a 4xx, never a panic.
    let mut t = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    t.write_all(b"GET /kv/\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut buf)).await;
    let head = String::from_utf8_lossy(&buf);
    assert!(head.starts_with("HTTP/1.1 4"), "{head}");

    // Still serving.
    let r = c.get(url("k")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    let s = start(small_limits()).await;
    // Headers never finished: the connection is closed after the header timeout.
    let mut t = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    t.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "connection still open after the header timeout"
    );

    // An idle keep-alive connection is closed too (the header timer restarts when idle).
    let mut t = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    t.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "idle connection still open after the timeout");
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));

    // Body never finished: 408 after the body timeout.
    let mut t = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    t.write_all(b"PUT /kv/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection still open after the body timeout");
    let head = String::from_utf8_lossy(&buf);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");

    let r = s
        .client
        .get(format!("{}/kv/slow", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
