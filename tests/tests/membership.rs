//! Planned membership changes with real processes: a node joins a cluster that holds
//! data and pulls the partitions it gains; later it is decommissioned with
//! `POST /admin/leave` and its partitions stream back; a dead node is taken out with
//! `POST /admin/remove/{id}` and its partitions are rebuilt from the other replicas.
//! A joiner killed in the middle of its pulls leaves the plan waiting, and after a
//! restart pulls again and completes the join. Each step is checked against every
//! node's own disk: a read with R=1 through a replica is answered from its local
//! copy.

use ringlab_tests::{wait_for, wait_until, Cluster, ClusterOpts};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn opts() -> ClusterOpts {
    // 16 partitions keep the pulls short; the protocol is the same as with 64.
    let mut o = ClusterOpts::fast();
    o.partitions = 16;
    o
}

/// Writes `keys` with W=3 (every replica), round-robin over `through`.
fn write_all(c: &Cluster, keys: &[String], through: &[usize]) {
    for (i, k) in keys.iter().enumerate() {
        let r = c
            .put(
                through[i % through.len()],
                k,
                value(k).as_bytes(),
                None,
                Some(3),
            )
            .expect("put");
        assert_eq!(r.status, 204, "put {k}: {r:?}");
    }
}

fn value(key: &str) -> String {
    format!("value of {key}")
}

/// Keys that node `i` replicates in the ring it reports now, read with R=1 through
/// it (its own copy) and compared with the written value. Returns the failures.
fn missing_on(c: &Cluster, i: usize, keys: &[String]) -> Vec<String> {
    let ring = c.ring(i).expect("/cluster");
    let id = &c.nodes[i].id;
    keys.iter()
        .filter(|k| ring.preference_list(k.as_bytes()).contains(id))
        .filter_map(|k| {
            let r = c.get(i, k, Some(1)).expect("get");
            (r.values() != vec![value(k).into_bytes()]).then(|| {
                format!(
                    "{id} {k}: {} {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                )
            })
        })
        .collect()
}

fn assert_all_present(c: &Cluster, nodes: &[usize], keys: &[String]) {
    let missing: Vec<String> = nodes.iter().flat_map(|&i| missing_on(c, i, keys)).collect();
    assert!(
        missing.is_empty(),
        "{} replica copies missing:\n{}",
        missing.len(),
        missing
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Waits until every node in `observers` has no pending ring and an active ring whose
/// owners are exactly `owners`.
fn wait_ring_owners(c: &Cluster, observers: &[usize], owners: &[&str]) {
    let mut want: Vec<String> = owners.iter().map(|s| s.to_string()).collect();
    want.sort();
    wait_for(
        &format!("every node to settle on owners {want:?}"),
        T,
        || {
            observers.iter().all(|&i| {
                let Some(v) = c.cluster(i) else {
                    return false;
                };
                let mut got: Vec<String> = v["partitions"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|o| o.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                got.sort();
                got.dedup();
                v["pending_ring_version"].is_null() && got == want
            })
        },
    );
}

/// Starts A (the seed), then B and C, and waits for the three to form a ring.
fn start_abc(c: &mut Cluster) {
    c.start_node(0);
    c.wait_healthy(0);
    c.start_node(1);
    c.start_node(2);
    wait_for("A, B, C to form a ring", T, || c.formed(&[0, 1, 2]));
}

#[test]
fn a_node_joins_with_data_then_leaves_and_hands_it_back() {
    let mut c = Cluster::new_stopped(4, opts());
    start_abc(&mut c);
    let first: Vec<String> = (0..150).map(|i| format!("before-{i}")).collect();
    write_all(&c, &first, &[0, 1, 2]);

    // D joins: it owns partitions only once it has pulled them.
    c.start_node(3);
    c.wait_healthy(3);
    wait_ring_owners(&c, &[0, 1, 2, 3], &["A", "B", "C", "D"]);
    let ring = c.ring(3).expect("/cluster of D");
    let gained = first
        .iter()
        .filter(|k| {
            ring.preference_list(k.as_bytes())
                .contains(&"D".to_string())
        })
        .count();
    assert!(gained > 0, "D replicates none of the keys");
    assert_all_present(&c, &[3], &first);
    eprintln!("D joined and holds its {gained} of {} keys", first.len());

    // Written while D is an owner: some of these have D as one of their 3 replicas.
    let second: Vec<String> = (0..100).map(|i| format!("during-{i}")).collect();
    write_all(&c, &second, &[0, 1, 2, 3]);

    // D leaves: its partitions go back to A, B and C, which must pull them.
    let r = c
        .http
        .post(&format!("{}/admin/leave", c.url(3)))
        .expect("leave");
    assert_eq!(r.status, 202, "{r:?}");
    wait_ring_owners(&c, &[0, 1, 2], &["A", "B", "C"]);
    c.wait_status(0, "D", "left", T);
    wait_until("D to answer clients with 503 left", T, || {
        c.get(3, "during-0", Some(1))
            .ok()
            .filter(|r| r.status == 503)
    });

    // With three nodes and N=3 every node replicates every key: each holds all 250.
    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    c.kill9(3);
    assert_all_present(&c, &[0, 1, 2], &all);
    c.assert_no_panics();
}

#[test]
fn a_dead_node_is_removed_and_its_partitions_are_rebuilt() {
    let mut c = Cluster::start(4, opts());
    let keys: Vec<String> = (0..150).map(|i| format!("k-{i}")).collect();
    write_all(&c, &keys, &[0, 1, 2, 3]);

    // Removing a live node is refused: that is what leave is for.
    let r = c
        .http
        .post(&format!("{}/admin/remove/D", c.url(0)))
        .expect("remove");
    assert_eq!(r.status, 409, "removing a reachable node: {r:?}");
    let r = c
        .http
        .post(&format!("{}/admin/remove/Q", c.url(0)))
        .expect("remove");
    assert_eq!(r.status, 404, "removing an unknown node: {r:?}");
    let r = c
        .http
        .post(&format!("{}/admin/remove/A", c.url(0)))
        .expect("remove");
    assert_eq!(r.status, 400, "a node removing itself: {r:?}");
    let r = c
        .http
        .post(&format!("{}/admin/remove/%FF%00", c.url(0)))
        .expect("remove");
    assert_eq!(r.status, 400, "a malformed id: {r:?}");
    assert_eq!(r.json()["error"], "invalid_node", "{r:?}");

    // A watches its peers with φ-accrual: low while they beat, climbing once D is gone.
    let phi_of = |c: &Cluster, id: &str| -> Option<f64> {
        c.cluster(0)?["nodes"]
            .as_array()?
            .iter()
            .find(|m| m["id"] == id)?["phi"]
            .as_f64()
    };
    wait_for("A to report φ for its peers", T, || {
        ["B", "C", "D"]
            .iter()
            .all(|id| phi_of(&c, id).is_some_and(|p| p < 8.0))
    });
    assert!(phi_of(&c, "A").is_none(), "no φ for the node itself");

    // D's disk is gone for good; nothing moves until an administrator says so.
    c.kill9(3);
    wait_until("A's φ for D to pass the threshold (8)", T, || {
        phi_of(&c, "D").filter(|&p| p >= 8.0)
    });
    wait_for("A to stop reaching D", T, || {
        matches!(c.status_of(0, "D").as_deref(), Some("unreachable" | "dead"))
    });
    let r = c
        .http
        .post(&format!("{}/admin/remove/D", c.url(0)))
        .expect("remove");
    assert_eq!(r.status, 202, "{r:?}");
    wait_ring_owners(&c, &[0, 1, 2], &["A", "B", "C"]);
    c.wait_status(1, "D", "removed", T);
    assert_all_present(&c, &[0, 1, 2], &keys);
    c.assert_no_panics();
}

#[test]
fn a_joiner_killed_mid_pull_pulls_again_after_a_restart_and_the_join_completes() {
    // Sources serve pages of one key, and D pulls one partition at a time: its pull
    // takes hundreds of round trips, long enough to be caught half-way.
    let mut c = Cluster::new_stopped(4, opts().set("--hint-batch", 1));
    c.nodes[3]
        .extra_args
        .extend(["--pull-concurrency".to_string(), "1".to_string()]);
    start_abc(&mut c);
    let first: Vec<String> = (0..1200).map(|i| format!("k-{i}")).collect();
    write_all(&c, &first, &[0, 1, 2]);
    let before = c.cluster(0).expect("/cluster of A")["ring_version"].clone();

    // D joins; it is killed once it has pulled some pages but the plan still waits.
    c.start_node(3);
    let (planned, pages) = wait_until("D to be half-way through its pulls", T, || {
        let pending = c.cluster(0)?["pending_ring_version"].as_u64()?;
        let pages = c.metric(3, "ringlab_partitions_pulled_total")?;
        (pages >= 20.0).then_some((pending, pages))
    });
    c.kill9(3);
    std::thread::sleep(Duration::from_secs(3));
    let a = c.cluster(0).expect("/cluster of A");
    assert_eq!(
        a["pending_ring_version"].as_u64(),
        Some(planned),
        "the plan waits for D, killed after {pages} pages (had the pull already finished?): {a}"
    );
    assert_eq!(a["ring_version"], before, "nothing was activated: {a}");
    // The cluster goes on serving: writes with W=2 while D is down.
    let during: Vec<String> = (0..50).map(|i| format!("while-d-down-{i}")).collect();
    for (i, k) in during.iter().enumerate() {
        let r = c
            .put(i % 3, k, value(k).as_bytes(), None, Some(2))
            .expect("put");
        assert_eq!(r.status, 204, "put {k} with D down: {r:?}");
    }

    // Restarted, D pulls again (its pulls are not persisted: it starts over) and
    // the join completes; it then holds every key it replicates.
    c.restart(3);
    c.wait_healthy(3);
    wait_ring_owners(&c, &[0, 1, 2, 3], &["A", "B", "C", "D"]);
    assert_all_present(&c, &[3], &first);
    for k in &during {
        let r = c.get(0, k, Some(2)).expect("get");
        assert_eq!(r.values(), vec![value(k).into_bytes()], "{k}: {r:?}");
    }
    eprintln!(
        "D was killed after {pages} pulled pages; after a restart it joined with all its keys"
    );
    c.assert_no_panics();
}
