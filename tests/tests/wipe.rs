//! A wiped data dir is restored by anti-entropy: node X loses its disk (killed, data
//! dir deleted, restarted empty); Merkle exchanges with its co-replicas bring its keys
//! back (`ringlab_objects` climbs again); then, with every other node killed, X alone
//! serves each of its keys with R=1.

use ringlab_tests::{wait_until, Cluster, ClusterOpts};
use std::time::Duration;

const KEYS: usize = 200;

#[test]
fn wiped_node_is_refilled_by_anti_entropy() {
    // 16 partitions and frequent exchanges: a full refill needs one Merkle exchange per
    // partition the node replicates, so this keeps the test well under a minute.
    let mut opts = ClusterOpts::fast().set("--anti-entropy-ms", 200);
    opts.partitions = 16;
    let mut c = Cluster::start(4, opts);
    let ring = c.ring(0).expect("/cluster");
    let x = 1; // not the seed, so it rejoins through A
    let x_id = c.nodes[x].id.clone();

    // Every key on all 3 replicas (W=3), so nothing depends on hints.
    let keys: Vec<String> = (0..KEYS).map(|i| format!("wipe-{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        let r = c
            .put(i % 4, k, format!("val-{i}").as_bytes(), None, Some(3))
            .expect("put");
        assert_eq!(r.status, 204, "put {k}: {r:?}");
    }
    let mine: Vec<(usize, &String)> = keys
        .iter()
        .enumerate()
        .filter(|(_, k)| ring.preference_list(k.as_bytes()).contains(&x_id))
        .collect();
    assert!(
        mine.len() > KEYS / 2,
        "{x_id} replicates {} keys",
        mine.len()
    );
    let before = wait_until("X to report its objects", Duration::from_secs(10), || {
        c.metric(x, "ringlab_objects")
            .filter(|&v| v >= mine.len() as f64)
    });
    eprintln!(
        "{x_id} replicates {} of {KEYS} keys; objects gauge {before}",
        mine.len()
    );

    c.wipe(x);
    c.start_node(x);
    c.wait_healthy(x);
    let start = c.metric(x, "ringlab_objects").unwrap_or(-1.0);
    assert!(
        start < mine.len() as f64,
        "a wiped node cannot start with all its keys (objects = {start})"
    );
    let refill = std::time::Instant::now();
    wait_until(
        "anti-entropy to restore X's keys",
        Duration::from_secs(45),
        || {
            c.metric(x, "ringlab_objects")
                .filter(|&v| v >= mine.len() as f64)
        },
    );
    eprintln!("{x_id} refilled in {:?}", refill.elapsed());

    // X alone: every other node killed, so R=1 can only be answered from X's own disk.
    for i in 0..c.nodes.len() {
        if i != x {
            c.kill9(i);
        }
    }
    let mut missing = Vec::new();
    for (i, k) in &mine {
        let r = c.get(x, k, Some(1)).expect("get from X");
        if r.values() != vec![format!("val-{i}").into_bytes()] {
            missing.push(format!(
                "{k}: {} {:?}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} keys not restored on {x_id}:\n{}",
        missing.len(),
        mine.len(),
        missing.join("\n")
    );
    c.assert_no_panics();
}
