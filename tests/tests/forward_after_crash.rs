//! A write that reaches a node outside the key's preference list right after the
//! key's first owner was `kill -9`ed — before any failure detector noticed — still
//! meets W=2: the forwarded write is not accepted by the dead owner within the
//! replica timeout, so the forwarding node marks it down and starts the write again
//! around it (core: `quorum::forward_check`). Without that retry this write failed
//! with 503 "0 of 2 replicas answered" until detection.

use ringlab_tests::{Cluster, ClusterOpts};
use std::time::Instant;

#[test]
fn write_via_non_owner_right_after_owner_crash_succeeds() {
    let mut c = Cluster::start(5, ClusterOpts::fast());
    let (key, prefs, x, coord) = c.key_away_from_seed("fwd-key");
    eprintln!(
        "key {key}: preference list {prefs:?}, killing {}, writing via {}",
        c.nodes[x].id, c.nodes[coord].id
    );

    let r = c.put(coord, &key, b"v1", None, Some(3)).expect("put v1");
    assert_eq!(r.status, 204, "put v1: {r:?}");
    let ctx = r.context.expect("a 204 carries X-Ringlab-Context");

    c.kill9(x);
    // No waiting for detection: the coordinator still believes X is up.
    let t = Instant::now();
    let r = c
        .put(coord, &key, b"v2", Some(&ctx), Some(2))
        .expect("put v2");
    eprintln!(
        "write after the crash answered {} in {:?}",
        r.status,
        t.elapsed()
    );
    assert_eq!(
        r.status,
        204,
        "W=2 write right after the first owner's crash: {}",
        String::from_utf8_lossy(&r.body)
    );
    let r = c.get(coord, &key, Some(2)).expect("get");
    assert!(
        r.values().iter().any(|v| v == b"v2"),
        "R=2 read after the write: {r:?}"
    );
    c.assert_no_panics();
}
