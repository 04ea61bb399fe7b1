//! S1 with real processes: sloppy quorum and hinted handoff. The first owner X of a
//! key is killed with SIGKILL; once the coordinator has noticed, a write with W=2
//! through another node still succeeds and
//! a stand-in keeps a hint for X; X restarts, the hint is handed off, the stand-in's
//! `ringlab_hints_pending` returns to 0, and X alone (its co-replicas killed) serves the
//! new value with R=1.

use ringlab_tests::{wait_for, wait_until, Cluster, ClusterOpts};
use std::time::Duration;

#[test]
fn s1_write_through_stand_in_then_handoff_to_restarted_owner() {
    let mut c = Cluster::start(5, ClusterOpts::fast());
    // A key whose first owner X is not the seed A, and a coordinator outside its
    // preference list.
    let (key, prefs, x, coord) = c.key_away_from_seed("s1-key");
    assert_eq!(prefs.len(), 3, "preference list {prefs:?}");
    eprintln!(
        "key {key}: preference list {prefs:?}, killing {}, writing via {}",
        c.nodes[x].id, c.nodes[coord].id
    );

    // An initial value everyone holds, so the later read proves X got the *new* one.
    let r = c.put(coord, &key, b"v1", None, Some(3)).expect("put v1");
    assert_eq!(r.status, 204, "put v1: {r:?}");
    let ctx = r.context.expect("a 204 carries X-Ringlab-Context");

    c.kill9(x);
    // As in the core's S1: the coordinator notices the crash on its own (missed
    // heartbeats) before the write, so it routes around X instead of forwarding to it.
    let x_id = c.nodes[x].id.clone();
    c.wait_status(coord, &x_id, "unreachable", Duration::from_secs(15));
    let r = c
        .put(coord, &key, b"v2", Some(&ctx), Some(2))
        .expect("put v2");
    assert_eq!(
        r.status,
        204,
        "W=2 write with the first owner down: {}",
        String::from_utf8_lossy(&r.body)
    );

    // Sloppy quorum keeps N copies: some live node stores a hint for X.
    let live: Vec<usize> = (0..c.nodes.len()).filter(|&i| i != x).collect();
    let stand_in = wait_until("a stand-in to hold a hint", Duration::from_secs(15), || {
        live.iter()
            .copied()
            .find(|&i| c.metric(i, "ringlab_hints_pending").unwrap_or(0.0) >= 1.0)
    });
    eprintln!("stand-in: {}", c.nodes[stand_in].id);
    assert!(
        !prefs.contains(&c.nodes[stand_in].id),
        "a primary holds the hint: {}",
        c.nodes[stand_in].id
    );

    c.start_node(x);
    c.wait_healthy(x);
    wait_for(
        "the stand-in's ringlab_hints_pending to return to 0",
        Duration::from_secs(30),
        || c.metric(stand_in, "ringlab_hints_pending") == Some(0.0),
    );
    let delivered = c
        .metric(stand_in, "ringlab_hints_delivered_total")
        .unwrap_or(0.0);
    assert!(delivered >= 1.0, "hints_delivered_total = {delivered}");

    // X alone: kill its co-replicas, then read with R=1 through X.
    for id in &prefs[1..] {
        let i = c.index_of(id);
        c.kill9(i);
    }
    let r = c.get(x, &key, Some(1)).expect("get from X");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, b"v2".as_slice()),
        "X must hold the handed-off value: {r:?}"
    );
    c.assert_no_panics();
}
