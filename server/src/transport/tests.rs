//! Two (or more) transports on 127.0.0.1 in one process, plus a hand-driven dialer
//! for tampered, replayed and oversized frames.

use super::*;
use ringlab_core::detector;
use std::time::Instant;
use tokio::time::timeout;

fn hello(id: u32) -> Hello {
    Hello {
        id: NodeId(id),
        cluster: "test".into(),
        peer_addr: String::new(),
        http_addr: "127.0.0.1:1".into(),
        zone: "z1".into(),
        n: 3,
        r: 2,
        w: 2,
        partitions: 64,
    }
}

fn key(b: u8) -> KeyRing {
    KeyRing::from_keys(&[[b; 32]]).unwrap()
}

fn ping(nonce: u64) -> Message {
    Message::Detector(detector::Msg::Ping { nonce })
}

async fn start_with(
    mut h: Hello,
    keys: KeyRing,
    queue: usize,
) -> (Transport, mpsc::Receiver<Incoming>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    h.peer_addr = l.local_addr().unwrap().to_string();
    let cfg = TransportConfig {
        hello: h,
        keys,
        queue_per_peer: queue,
        max_frame: 1 << 20,
    };
    Transport::start(l, cfg).unwrap()
}

async fn start(id: u32) -> (Transport, mpsc::Receiver<Incoming>) {
    start_with(hello(id), key(1), 64).await
}

/// Node `id` started again on `addr` (a stopped transport's port), once it binds.
async fn restart_at(id: u32, addr: SocketAddr) -> (Transport, mpsc::Receiver<Incoming>) {
    let l = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let mut h = hello(id);
    h.peer_addr = addr.to_string();
    let cfg = TransportConfig {
        hello: h,
        keys: key(1),
        queue_per_peer: 64,
        max_frame: 1 << 20,
    };
    Transport::start(l, cfg).unwrap()
}

/// The next message delivered (skipping `Peer` notices), within 5 s.
async fn next_msg(rx: &mut mpsc::Receiver<Incoming>) -> (NodeId, Message) {
    timeout(Duration::from_secs(5), async {
        loop {
            match rx.recv().await {
                Some(Incoming::Message { from, msg }) => return (from, msg),
                Some(Incoming::Peer(_)) => {}
                None => panic!("transport closed"),
            }
        }
    })
    .await
    .expect("no message within 5 s")
}

/// Waits until `f(stats)` holds, for up to 5 s.
async fn until(t: &Transport, what: &str, f: impl Fn(&TransportStats) -> bool) {
    let start = Instant::now();
    while !f(&t.stats()) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what}: {:?}",
            t.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Nothing but (optionally) nothing at all arrives within 300 ms.
async fn silent(rx: &mut mpsc::Receiver<Incoming>) {
    if let Ok(Some(x)) = timeout(Duration::from_millis(300), rx.recv()).await {
        panic!("unexpected delivery: {x:?}");
    }
}

#[tokio::test]
async fn messages_flow_both_ways_with_authenticated_sender() {
    let (a, mut arx) = start(0).await;
    let (b, mut brx) = start(1).await;
    a.set_addr(NodeId(1), b.local_addr().to_string());
    b.set_addr(NodeId(0), a.local_addr().to_string());
    a.send(NodeId(1), &ping(7));
    match timeout(Duration::from_secs(5), brx.recv()).await.unwrap() {
        Some(Incoming::Peer(h)) => assert_eq!(h.id, NodeId(0)),
        other => panic!("expected Peer first, got {other:?}"),
    }
    assert_eq!(next_msg(&mut brx).await, (NodeId(0), ping(7)));
    // The dialer learns the acceptor's Hello too.
    match timeout(Duration::from_secs(5), arx.recv()).await.unwrap() {
        Some(Incoming::Peer(h)) => assert_eq!(h.id, NodeId(1)),
        other => panic!("expected Peer, got {other:?}"),
    }
    // Within the queue bound (64), nothing is dropped even before the connection is up.
    for i in 0..60 {
        b.send(NodeId(0), &ping(i));
    }
    for i in 0..60 {
        assert_eq!(next_msg(&mut arx).await, (NodeId(1), ping(i)));
    }
    // Messages queued together share frames: at most one frame per message.
    let st = a.stats();
    assert!(
        st.frames_sent >= 2 && (2..=61).contains(&st.frames_received),
        "{st:?}"
    );
    assert_eq!(a.stats().rejected.total() + b.stats().rejected.total(), 0);
    // A node's own address resolves to itself (the first node is its own seed).
    assert_eq!(
        a.hello(&a.local_addr().to_string()).await.unwrap().id,
        NodeId(0)
    );
}

#[tokio::test]
async fn wrong_key_is_refused_and_never_delivered() {
    let (a, mut arx) = start(0).await;
    let (c, _crx) = start_with(hello(2), key(9), 64).await;
    let err = c.hello(&a.local_addr().to_string()).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("different cluster key"),
        "{err:#}"
    );
    until(&a, "bad_mac counted", |s| s.rejected.bad_mac == 1).await;
    assert_eq!(c.stats().rejected.handshake, 1);
    c.set_addr(NodeId(0), a.local_addr().to_string());
    c.send(NodeId(0), &ping(1));
    until(&a, "second bad_mac", |s| s.rejected.bad_mac >= 2).await;
    silent(&mut arx).await;
    // A ring that also accepts the old key lets it in (rotation).
    let both = KeyRing::from_keys(&[[1; 32], [9; 32]]).unwrap();
    let (d, _drx) = start_with(hello(3), both, 64).await;
    let (e, _) = start_with(hello(4), key(9), 64).await;
    // e seals with key 9, which d accepts; d answers with key 1, which e cannot open.
    let err = e.hello(&d.local_addr().to_string()).await.unwrap_err();
    assert!(format!("{err:#}").contains("rejected"), "{err:#}");
    assert_eq!(e.stats().rejected.bad_mac, 1);
    let ok = start_with(
        hello(5),
        KeyRing::from_keys(&[[9; 32], [1; 32]]).unwrap(),
        64,
    )
    .await
    .0;
    assert_eq!(
        ok.hello(&d.local_addr().to_string()).await.unwrap().id,
        NodeId(3)
    );
}

/// Writes `keys` (one hex line each) to `path`.
fn write_keys(path: &std::path::Path, keys: &[u8]) {
    let text: String = keys
        .iter()
        .map(|b| format!("{}\n", hex::encode([*b; 32])))
        .collect();
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn keys_rotate_on_live_connections_by_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (fa, fb) = (dir.path().join("a.key"), dir.path().join("b.key"));
    let (a, mut arx) = start(0).await;
    let (b, mut brx) = start(1).await;
    a.set_addr(NodeId(1), b.local_addr().to_string());
    b.set_addr(NodeId(0), a.local_addr().to_string());
    let mut nonce = 0;
    let mut both_ways = |a: &Transport, b: &Transport| {
        nonce += 1;
        a.send(NodeId(1), &ping(nonce));
        b.send(NodeId(0), &ping(nonce));
        nonce
    };
    let n = both_ways(&a, &b);
    assert_eq!(next_msg(&mut brx).await, (NodeId(0), ping(n)));
    assert_eq!(next_msg(&mut arx).await, (NodeId(1), ping(n)));
    let dialed = a.stats().connections_dialed + b.stats().connections_dialed;
    let old = a.key_fingerprints();

    // 1. Add key 9 below key 1 everywhere; 2. move it to the top, one node at a
    // time (a sends with 9 while b still sends with 1: each accepts both);
    // 3. remove key 1. Traffic flows after every step, on the same connections.
    for (step, a_keys, b_keys) in [
        (1, &[1u8, 9][..], &[1u8, 9][..]),
        (2, &[9, 1], &[1, 9]),
        (2, &[9, 1], &[9, 1]),
        (3, &[9], &[9]),
    ] {
        write_keys(&fa, a_keys);
        write_keys(&fb, b_keys);
        let pa = a.reload_keys(&fa).unwrap();
        b.reload_keys(&fb).unwrap();
        assert_eq!(pa.len(), a_keys.len(), "step {step}");
        let n = both_ways(&a, &b);
        assert_eq!(
            next_msg(&mut brx).await,
            (NodeId(0), ping(n)),
            "step {step}"
        );
        assert_eq!(
            next_msg(&mut arx).await,
            (NodeId(1), ping(n)),
            "step {step}"
        );
    }
    assert_ne!(a.key_fingerprints(), old);
    assert_eq!(a.key_fingerprints(), b.key_fingerprints());
    assert_eq!(a.stats().keys, 1);
    assert_eq!(a.stats().key_reloads, 4);
    assert_eq!(a.stats().rejected.total() + b.stats().rejected.total(), 0);
    assert_eq!(
        a.stats().connections_dialed + b.stats().connections_dialed,
        dialed,
        "a reload must not cost a reconnect"
    );

    // The retired key no longer gets in.
    let (old_node, _) = start_with(hello(2), key(1), 64).await;
    let err = old_node
        .hello(&a.local_addr().to_string())
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("different cluster key"),
        "{err:#}"
    );
    until(&a, "the retired key's handshake counted", |s| {
        s.rejected.bad_mac >= 1
    })
    .await;

    // A broken file changes nothing: the error names it, the keys stay, traffic flows.
    std::fs::write(&fa, "not a key\n").unwrap();
    let err = a.reload_keys(&fa).unwrap_err();
    assert!(format!("{err:#}").contains("a.key"), "{err:#}");
    assert!(a.reload_keys(&dir.path().join("missing.key")).is_err());
    assert_eq!(
        (a.stats().key_reloads, a.stats().key_reloads_failed),
        (4, 2)
    );
    assert_eq!(a.key_fingerprints(), b.key_fingerprints());
    let n = both_ways(&a, &b);
    assert_eq!(next_msg(&mut brx).await, (NodeId(0), ping(n)));
    assert_eq!(next_msg(&mut arx).await, (NodeId(1), ping(n)));
}

#[tokio::test]
async fn different_cluster_or_params_are_refused_clearly() {
    let (a, mut arx) = start(0).await;
    let (p, _) = start_with(Hello { n: 5, ..hello(2) }, key(1), 64).await;
    let err = p.hello(&a.local_addr().to_string()).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("parameters differ") && msg.contains("n=5"),
        "{msg}"
    );
    assert_eq!(p.stats().rejected.params_mismatch, 1);
    until(&a, "params_mismatch", |s| s.rejected.params_mismatch == 1).await;

    let (c, _) = start_with(
        Hello {
            cluster: "other".into(),
            ..hello(3)
        },
        key(1),
        64,
    )
    .await;
    let err = c.hello(&a.local_addr().to_string()).await.unwrap_err();
    assert!(format!("{err:#}").contains("\"other\""), "{err:#}");
    until(&a, "cluster_mismatch", |s| s.rejected.cluster_mismatch == 1).await;
    // Refused peers are never reported to the driver.
    silent(&mut arx).await;
}

/// Dials `target` as node 9 by hand, so tests can write arbitrary bytes.
async fn raw(target: &Transport) -> (Arc<Inner>, OutConn, InConn) {
    let (me, _rx) = start(9).await;
    let (h, conn, incoming) = dial(&me.inner, &target.local_addr().to_string())
        .await
        .unwrap();
    assert_eq!(h.id, target.inner.hello.id);
    (me.inner.clone(), conn, incoming)
}

fn frame_for(inner: &Inner, conn: &mut OutConn, msg: &Message) -> Vec<u8> {
    conn.seq += 1;
    let p = frame::encode_payload(&PayloadRef::Message(msg));
    frame::seal(&inner.keys.get(), &inner.header(conn.session, conn.seq), &p)
}

async fn write_raw(conn: &mut OutConn, bytes: &[u8]) {
    conn.w.write_all(bytes).await.unwrap();
    conn.w.flush().await.unwrap();
}

/// The acceptor closed the connection: reading gives EOF (or a reset).
async fn closed(conn: &mut InConn) {
    let mut b = [0u8; 1];
    let r = timeout(Duration::from_secs(5), conn.r.read(&mut b)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "connection still open: {r:?}"
    );
}

#[tokio::test]
async fn tampered_frame_is_bad_mac_and_closes() {
    let (a, mut arx) = start(0).await;
    let (inner, mut conn, mut back) = raw(&a).await;
    let mut f = frame_for(&inner, &mut conn, &ping(1));
    let last = f.len() - 1;
    f[last] ^= 0x01;
    write_raw(&mut conn, &f).await;
    until(&a, "bad_mac", |s| s.rejected.bad_mac == 1).await;
    closed(&mut back).await;
    // Tampering with the (authenticated) header is caught too.
    let (inner, mut conn, _back) = raw(&a).await;
    let mut f = frame_for(&inner, &mut conn, &ping(1));
    f[4 + 30] ^= 0x80; // a sequence number byte
    write_raw(&mut conn, &f).await;
    until(&a, "bad_mac", |s| s.rejected.bad_mac == 2).await;
    no_message(&mut arx).await;
}

#[tokio::test]
async fn replayed_frames_are_rejected_on_the_same_and_a_new_connection() {
    let (a, mut arx) = start(0).await;
    let (inner, mut conn, mut back) = raw(&a).await;
    let f = frame_for(&inner, &mut conn, &ping(1));
    write_raw(&mut conn, &f).await;
    assert_eq!(next_msg(&mut arx).await, (NodeId(9), ping(1)));
    write_raw(&mut conn, &f).await;
    until(&a, "replay", |s| s.rejected.replay == 1).await;
    closed(&mut back).await;

    // Recorded on one connection, injected into another.
    let (inner, mut c1, _b1) = raw(&a).await;
    let f = frame_for(&inner, &mut c1, &ping(2));
    write_raw(&mut c1, &f).await;
    assert_eq!(next_msg(&mut arx).await, (NodeId(9), ping(2)));
    let (_, mut c2, mut b2) = raw(&a).await;
    write_raw(&mut c2, &f).await;
    until(&a, "cross-connection replay", |s| s.rejected.replay == 2).await;
    closed(&mut b2).await;
    no_message(&mut arx).await;
}

/// No `Message` is delivered within 300 ms (`Peer` notices are fine).
async fn no_message(rx: &mut mpsc::Receiver<Incoming>) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    while let Ok(Some(x)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        assert!(matches!(x, Incoming::Peer(_)), "unexpected delivery: {x:?}");
    }
}

#[tokio::test]
async fn oversize_prefix_closes_without_allocating() {
    let (a, _arx) = start(0).await;
    let (_, mut conn, mut back) = raw(&a).await;
    // 4 GiB announced: rejected from the prefix alone.
    write_raw(&mut conn, &[0xff, 0xff, 0xff, 0xff]).await;
    until(&a, "oversize", |s| s.rejected.oversize == 1).await;
    closed(&mut back).await;
    // Before the handshake too.
    let mut s = TcpStream::connect(a.local_addr()).await.unwrap();
    let mut pre = [0u8; 20];
    pre[..4].copy_from_slice(MAGIC);
    s.write_all(&pre).await.unwrap();
    // 128 KiB: under max_frame (1 MiB) but over the pre-authentication limit (64 KiB).
    s.write_all(&[0x00, 0x02, 0x00, 0x00]).await.unwrap();
    until(&a, "oversize in handshake", |s| s.rejected.oversize == 2).await;
    // Garbage preamble.
    let mut s = TcpStream::connect(a.local_addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    until(&a, "bad preamble", |s| s.rejected.handshake == 1).await;
}

#[tokio::test]
async fn full_queue_drops_without_blocking() {
    // A "peer" that accepts and never answers: the writer hangs in the handshake.
    let sink = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = sink.local_addr().unwrap().to_string();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = sink.accept().await {
            held.push(s);
        }
    });
    let (a, _arx) = start_with(hello(0), key(1), 4).await;
    a.send(NodeId(5), &ping(0));
    assert_eq!(a.stats().dropped_no_addr, 1);
    a.set_addr(NodeId(5), sink_addr);
    let t = Instant::now();
    for i in 0..1000 {
        a.send(NodeId(5), &ping(i));
    }
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "send blocked: {:?}",
        t.elapsed()
    );
    let s = a.stats();
    assert_eq!(s.dropped_queue_full, 996, "{s:?}");
}

#[tokio::test]
async fn messages_above_max_frame_are_dropped_at_the_sender() {
    let (b, mut brx) = start(1).await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (a, _) = Transport::start(
        l,
        TransportConfig {
            hello: hello(0),
            keys: key(1),
            queue_per_peer: 8,
            max_frame: 200,
        },
    )
    .unwrap();
    a.set_addr(NodeId(1), b.local_addr().to_string());
    let big = Message::Replica(ringlab_core::quorum::Msg::Purge {
        key: vec![b'k'; 500].into(),
        context: Default::default(),
    });
    a.send(NodeId(1), &big);
    assert_eq!(a.stats().dropped_too_large, 1);
    a.send(NodeId(1), &ping(3));
    assert_eq!(next_msg(&mut brx).await, (NodeId(0), ping(3)));
}

#[tokio::test]
async fn sender_reconnects_after_the_peer_restarts() {
    let (a, _arx) = start(0).await;
    let (b, mut brx) = start(1).await;
    let addr = b.local_addr();
    a.set_addr(NodeId(1), addr.to_string());
    a.send(NodeId(1), &ping(1));
    assert_eq!(next_msg(&mut brx).await.1, ping(1));
    b.shutdown();
    drop(brx);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_b2, mut b2rx) = restart_at(1, addr).await;
    let start = Instant::now();
    let mut n = 100;
    loop {
        a.send(NodeId(1), &ping(n));
        if let Ok(Some(Incoming::Message { from, msg })) =
            timeout(Duration::from_millis(100), b2rx.recv()).await
        {
            assert_eq!(from, NodeId(0));
            assert!(matches!(msg, Message::Detector(detector::Msg::Ping { .. })));
            break;
        }
        n += 1;
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never reconnected"
        );
    }
}

/// Every `Incoming::Message` delivered within 5 s, until `n` arrived.
async fn collect(rx: &mut mpsc::Receiver<Incoming>, n: usize) -> Vec<(NodeId, Message)> {
    let mut got = Vec::new();
    while got.len() < n {
        got.push(next_msg(rx).await);
    }
    got
}

#[tokio::test]
async fn a_pair_shares_the_connection_the_lower_id_dialed() {
    let (a, mut arx) = start(0).await;
    let (b, mut brx) = start(1).await;
    a.set_addr(NodeId(1), b.local_addr().to_string());
    b.set_addr(NodeId(0), a.local_addr().to_string());
    a.send(NodeId(1), &ping(1));
    assert_eq!(next_msg(&mut brx).await, (NodeId(0), ping(1)));
    // b answers over a's connection: it never dials.
    for i in 0..20 {
        b.send(NodeId(0), &ping(100 + i));
        a.send(NodeId(1), &ping(200 + i));
    }
    let to_a = collect(&mut arx, 20).await;
    let to_b = collect(&mut brx, 20).await;
    assert_eq!(
        to_a,
        (0..20)
            .map(|i| (NodeId(1), ping(100 + i)))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        to_b,
        (0..20)
            .map(|i| (NodeId(0), ping(200 + i)))
            .collect::<Vec<_>>()
    );
    assert_eq!(a.stats().connections_dialed, 1);
    assert_eq!(b.stats().connections_dialed, 0, "{:?}", b.stats());
    assert_eq!(a.stats().rejected.total() + b.stats().rejected.total(), 0);
}

#[tokio::test]
async fn the_higher_id_dials_until_the_lower_one_connects_then_moves_over() {
    let (a, mut arx) = start(0).await;
    let (b, mut brx) = start(1).await;
    // b knows a (a joiner a has not heard of): it dials a itself.
    b.set_addr(NodeId(0), a.local_addr().to_string());
    b.send(NodeId(0), &ping(1));
    assert_eq!(next_msg(&mut arx).await, (NodeId(1), ping(1)));
    assert_eq!(b.stats().connections_dialed, 1);
    // a learns b and talks to it: b's frames move to a's connection.
    a.set_addr(NodeId(1), b.local_addr().to_string());
    a.send(NodeId(1), &ping(2));
    assert_eq!(next_msg(&mut brx).await, (NodeId(0), ping(2)));
    for i in 0..50 {
        b.send(NodeId(0), &ping(10 + i));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Nothing queued is lost in the move (the protocols tolerate loss, but a move
    // between two healthy connections should not cause any).
    let got = collect(&mut arx, 50).await;
    let mut nonces: Vec<u64> = got
        .iter()
        .map(|(_, m)| match m {
            Message::Detector(detector::Msg::Ping { nonce }) => *nonce,
            other => panic!("{other:?}"),
        })
        .collect();
    nonces.sort();
    assert_eq!(nonces, (10..60).collect::<Vec<_>>());
    // And b does not dial again while a's connection lasts.
    assert_eq!(b.stats().connections_dialed, 1);
    assert_eq!(a.stats().rejected.total() + b.stats().rejected.total(), 0);
}

#[tokio::test]
async fn the_higher_id_dials_again_when_the_lower_one_goes_away() {
    let (a, _arx) = start(0).await;
    let (b, mut brx) = start(1).await;
    let a_addr = a.local_addr();
    a.set_addr(NodeId(1), b.local_addr().to_string());
    b.set_addr(NodeId(0), a_addr.to_string());
    a.send(NodeId(1), &ping(1));
    assert_eq!(next_msg(&mut brx).await, (NodeId(0), ping(1)));
    a.shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_a2, mut a2rx) = restart_at(0, a_addr).await;
    // The restarted a has nothing to send: b must dial it to be heard.
    let start = Instant::now();
    let mut n = 100;
    loop {
        b.send(NodeId(0), &ping(n));
        if let Ok(Some(Incoming::Message { from, .. })) =
            timeout(Duration::from_millis(100), a2rx.recv()).await
        {
            assert_eq!(from, NodeId(1));
            break;
        }
        n += 1;
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "b never dialed a"
        );
    }
    assert!(b.stats().connections_dialed >= 1);
}
