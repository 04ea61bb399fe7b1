//! The cluster key keeps strangers out, against real processes: a node with the wrong
//! key, a node with the right key but different cluster parameters, and raw garbage on
//! the peer port are all rejected, counted in `ringlab_frames_rejected_total`, never
//! listed in any `/cluster`, and the cluster keeps serving. (Tampered and replayed frames
//! are unit-tested in the server's transport module.)

use ringlab_tests::{random_key_line, wait_for, Cluster, ClusterOpts};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn rejected(c: &Cluster, i: usize) -> f64 {
    c.metric(i, "ringlab_frames_rejected_total").unwrap_or(0.0)
}

/// No running member lists `id` during `window` (polled; the intruder keeps trying).
fn never_listed(c: &Cluster, members: &[usize], id: &str, window: Duration) {
    let end = Instant::now() + window;
    while Instant::now() < end {
        for &i in members {
            let v = c.cluster(i).expect("/cluster answers");
            let listed = v["nodes"]
                .as_array()
                .is_some_and(|a| a.iter().any(|m| m["id"] == id));
            let owns = v["partitions"]
                .as_array()
                .is_some_and(|a| a.iter().any(|o| o == id));
            assert!(
                !listed && !owns,
                "{} lists the rejected node {id}: {v}",
                c.nodes[i].id
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn still_serves(c: &Cluster, i: usize, key: &str) {
    let r = c.put(i, key, b"still-here", None, None).expect("put");
    assert_eq!(r.status, 204, "{r:?}");
    let r = c.get(i, key, None).expect("get");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, b"still-here".as_slice())
    );
}

/// Opens `n` connections to `peer`, each sending a 200-byte frame of junk where a
/// handshake should be.
fn send_junk_handshakes(peer: std::net::SocketAddr, n: usize) {
    let junk: Vec<u8> = (0..200u32).map(|i| (i * 37 % 251) as u8).collect();
    for _ in 0..n {
        if let Ok(mut s) = TcpStream::connect(peer) {
            let _ = s.write_all(&(junk.len() as u32).to_be_bytes());
            let _ = s.write_all(&junk);
            let _ = s.flush();
        }
    }
}

#[test]
fn wrong_key_peer_and_garbage_are_rejected() {
    let mut c = Cluster::start(3, ClusterOpts::fast());
    let members = [0, 1, 2];
    let before = rejected(&c, 0);

    // Raw garbage on A's peer port: an absurd length prefix (must not be allocated) …
    let peer = c.nodes[0].peer;
    if let Ok(mut s) = TcpStream::connect(peer) {
        let _ = s.write_all(&u32::MAX.to_be_bytes());
        let _ = s.write_all(&[0xAB; 64]);
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut sink = [0u8; 256];
        // The node closes the connection (EOF or reset) rather than waiting for 4 GiB.
        let closed = (0..100).any(|_| matches!(s.read(&mut sink), Ok(0) | Err(_)));
        assert!(
            closed,
            "the node kept a connection announcing a 4 GiB frame open"
        );
    }
    // … and a small frame of random bytes where a handshake should be.
    send_junk_handshakes(peer, 3);
    wait_for(
        "A to count the garbage in ringlab_frames_rejected_total",
        Duration::from_secs(10),
        || rejected(&c, 0) >= before + 2.0,
    );
    eprintln!(
        "rejected after garbage: {} (before {before})",
        rejected(&c, 0)
    );

    // A flood of the same garbage from one host: every frame is counted, but the
    // log gets one line per reason and host per 10 s, not one per frame.
    let log_lines = |c: &Cluster| {
        std::fs::read_to_string(&c.nodes[0].log)
            .unwrap_or_default()
            .matches("peer frame rejected")
            .count()
    };
    let (before, lines_before) = (rejected(&c, 0), log_lines(&c));
    let flood = 300;
    send_junk_handshakes(peer, flood);
    wait_for(
        "A to count every frame of the flood",
        Duration::from_secs(20),
        || rejected(&c, 0) >= before + flood as f64,
    );
    let logged = log_lines(&c) - lines_before;
    eprintln!("flood: {flood} rejections counted, {logged} log lines");
    assert!(
        logged <= 2,
        "{logged} log lines for {flood} identical rejections from one host"
    );

    // An intruder with a fresh key, seeded with A.
    let intruder = c.add_node_with_key("H", &random_key_line());
    let before = rejected(&c, 0);
    c.start_node(intruder);
    wait_for(
        "A to reject the intruder's handshakes",
        Duration::from_secs(15),
        || rejected(&c, 0) > before,
    );
    never_listed(&c, &members, "H", Duration::from_secs(3));
    // If the intruder still runs, it cannot write through itself: it has no cluster.
    if c.exited(intruder).is_none() {
        if let Ok(r) = c.put(intruder, "intruder-key", b"x", None, Some(1)) {
            assert_ne!(r.status, 204, "a node without the key acknowledged a write");
        }
    }
    still_serves(&c, 0, "after-intruder");
    still_serves(&c, 2, "after-intruder-2");
    c.assert_no_panics();
}

#[test]
fn mismatched_cluster_parameters_are_refused() {
    let mut c = Cluster::start(3, ClusterOpts::fast());
    let key = std::fs::read_to_string(&c.key_file).expect("key file");
    let odd = c.add_node_with_key("G", &key);
    c.nodes[odd].extra_args = vec!["--partitions".into(), "32".into()];
    let before = rejected(&c, 0);
    c.start_node(odd);
    wait_for(
        "A to refuse a node with different partitions",
        Duration::from_secs(15),
        || rejected(&c, 0) > before,
    );
    never_listed(&c, &[0, 1, 2], "G", Duration::from_secs(3));
    // The refused node says why (it exits or keeps logging the refusal).
    let log = c.nodes[odd].log.clone();
    wait_for(
        "the refused node to log the parameter mismatch",
        Duration::from_secs(10),
        || {
            // Lines the node wrote, not the harness's own start lines (which show the flags).
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.starts_with("===== harness"))
                .any(|l| l.to_ascii_lowercase().contains("partitions"))
        },
    );
    still_serves(&c, 1, "after-mismatch");
    c.assert_no_panics();
}
