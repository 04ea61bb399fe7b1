//! Every node `kill -9`ed at once keeps every write it acknowledged, from its own disk.
//!
//! 3 nodes, N=3: each key is written with W=3 (so all three disks hold it), then
//! overwritten with the context of the first write, by 4 writers at once (so group
//! commits carry several batches). Then all three processes are killed with SIGKILL
//! at the same moment: no clean shutdown, no checkpoint — the writes since the last
//! checkpoint live only in each node's write-ahead log. After the restart, anti-entropy
//! is far off (1 h) and R=1 reads ask only the node itself (`--read-fanout quorum`),
//! so every read below is answered from that node's own replayed log: each key must
//! come back as exactly its second value (the overwrite replayed after the write).

use ringlab_tests::{wait_for, Cluster, ClusterOpts};
use std::time::Duration;

const KEYS: usize = 240;
const WRITERS: usize = 4;

#[test]
fn acknowledged_writes_survive_killing_every_node_at_once() {
    let opts = ClusterOpts::fast()
        .set("--anti-entropy-ms", 3_600_000)
        .set("--read-fanout", "quorum");
    let mut c = Cluster::start(3, opts);
    let urls: Vec<String> = (0..3).map(|i| c.url(i)).collect();
    let http = ringlab_tests::Http::new(Duration::from_secs(10));
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let (urls, http) = (&urls, &http);
            s.spawn(move || {
                for k in (w..KEYS).step_by(WRITERS) {
                    let key = format!("crash-{k}");
                    let url = &urls[k % urls.len()];
                    let first = http
                        .put(url, &key, format!("first-{k}").as_bytes(), None, Some(3))
                        .expect("put");
                    assert_eq!(first.status, 204, "{key}: {first:?}");
                    let second = http
                        .put(
                            &urls[(k + 1) % urls.len()],
                            &key,
                            format!("second-{k}").as_bytes(),
                            first.context.as_deref(),
                            Some(3),
                        )
                        .expect("overwrite");
                    assert_eq!(second.status, 204, "{key}: {second:?}");
                }
            });
        }
    });
    // All at once: each kill is a SIGKILL, none waits for the others to stop.
    for i in 0..3 {
        c.kill9(i);
    }
    for i in 0..3 {
        c.start_node(i);
    }
    for i in 0..3 {
        c.wait_healthy(i);
    }
    // The restarted nodes must know each other again before they serve reads of
    // keys whose preference lists name them.
    wait_for("the ring to be back", Duration::from_secs(30), || {
        (0..3).all(|i| c.ring(i).is_some())
    });
    let mut wrong = Vec::new();
    for i in 0..3 {
        for k in 0..KEYS {
            let key = format!("crash-{k}");
            let r = c.get(i, &key, Some(1)).expect("get");
            let want = format!("second-{k}").into_bytes();
            if r.status != 200 || r.values() != vec![want] {
                wrong.push(format!(
                    "{} {key}: {} {:?}",
                    c.nodes[i].id,
                    r.status,
                    String::from_utf8_lossy(&r.body)
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} reads wrong after the crash:\n{}",
        wrong.len(),
        3 * KEYS,
        wrong.join("\n")
    );
    for i in 0..3 {
        wait_for("the objects gauge", Duration::from_secs(5), || {
            c.metric(i, "ringlab_objects")
                .is_some_and(|v| v >= KEYS as f64)
        });
    }
    c.assert_no_panics();
}
