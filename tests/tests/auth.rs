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

/// Node `i`'s cluster keys from `/metrics`: (role, fingerprint), sending key first.
fn keys_of(c: &Cluster, i: usize) -> Vec<(String, String)> {
    let text = c.metrics(i).expect("/metrics answers");
    let mut keys: Vec<(String, String)> =
        ringlab_tests::metric_samples(&text, "ringlab_cluster_key")
            .into_iter()
            .filter(|(_, v)| *v == 1.0)
            .filter_map(|(labels, _)| {
                let get = |k: &str| {
                    let at = labels.find(&format!("{k}=\""))? + k.len() + 2;
                    Some(labels[at..].split('"').next()?.to_string())
                };
                Some((get("role")?, get("fingerprint")?))
            })
            .collect();
    keys.sort_by_key(|(role, _)| role != "send");
    keys
}

fn reloads(c: &Cluster, i: usize, outcome: &str) -> f64 {
    let text = c.metrics(i).unwrap_or_default();
    ringlab_tests::metric_samples(&text, "ringlab_key_reloads_total")
        .into_iter()
        .find(|(l, _)| l.contains(&format!("outcome=\"{outcome}\"")))
        .map_or(0.0, |(_, v)| v)
}

/// The documented rotation — add the new key, move it to the top, remove the old one —
/// done on a running cluster with one SIGHUP per node per step: no node restarts, no
/// frame is rejected along the way, writes with W=2 keep succeeding between the steps,
/// and afterwards the old key is locked out. A broken key file is refused on reload
/// and the node keeps its keys.
#[test]
fn keys_rotate_on_a_running_cluster_with_sighup() {
    let mut c = Cluster::start(3, ClusterOpts::fast());
    let old = std::fs::read_to_string(&c.key_file).expect("key file");
    let new = random_key_line();
    let old_fp = keys_of(&c, 0);
    assert_eq!(old_fp.len(), 1, "{old_fp:?}");
    let old_fp = old_fp[0].1.clone();
    let rejected_before: Vec<f64> = (0..3).map(|i| rejected(&c, i)).collect();

    let step = |c: &Cluster, n: usize, file: String, what: &str| {
        std::fs::write(&c.key_file, file).expect("writing the key file");
        for i in 0..3 {
            let before = reloads(c, i, "ok");
            c.signal(i, "HUP");
            wait_for(
                &format!("{} to reload the key file ({what})", c.nodes[i].id),
                Duration::from_secs(10),
                || reloads(c, i, "ok") > before,
            );
            assert_eq!(keys_of(c, i).len(), n, "{what} on {}", c.nodes[i].id);
            still_serves(c, i, &format!("rotation-{what}-{i}"));
        }
    };
    // 1. Add the new key below the old one everywhere (all still send with the old).
    step(&c, 2, format!("{old}{new}"), "add");
    for i in 0..3 {
        assert_eq!(keys_of(&c, i)[0], ("send".to_string(), old_fp.clone()));
    }
    // 2. Move it to the top, node by node: for a while nodes send with different
    // keys, and each accepts both.
    step(&c, 2, format!("{new}{old}"), "top");
    let new_fp = keys_of(&c, 0)[0].1.clone();
    assert_ne!(new_fp, old_fp);
    for i in 0..3 {
        assert_eq!(keys_of(&c, i)[0], ("send".to_string(), new_fp.clone()));
    }
    // 3. Remove the old key.
    step(&c, 1, new.clone(), "remove");
    for (i, before) in rejected_before.into_iter().enumerate() {
        assert!(c.exited(i).is_none(), "{} stopped", c.nodes[i].id);
        assert_eq!(
            rejected(&c, i),
            before,
            "{} rejected frames during the rotation",
            c.nodes[i].id
        );
    }
    let r = c.get(2, "rotation-add-0", Some(3)).expect("get");
    assert_eq!(
        r.status, 200,
        "a write from before the last step, R=3: {r:?}"
    );

    // The retired key no longer gets in.
    let retired = c.add_node_with_key("H", &old);
    let before = rejected(&c, 0);
    c.start_node(retired);
    wait_for(
        "A to reject a node with the retired key",
        Duration::from_secs(15),
        || rejected(&c, 0) > before,
    );
    never_listed(&c, &[0, 1, 2], "H", Duration::from_secs(2));

    // A broken file is refused and changes nothing.
    std::fs::write(&c.key_file, "not a key\n").expect("writing the key file");
    c.signal(1, "HUP");
    wait_for(
        "B to count the refused reload",
        Duration::from_secs(10),
        || reloads(&c, 1, "error") >= 1.0,
    );
    assert_eq!(keys_of(&c, 1), [("send".to_string(), new_fp)]);
    assert!(c.exited(1).is_none(), "B stopped on a broken key file");
    still_serves(&c, 1, "after-broken-reload");
    c.assert_no_panics();
}
