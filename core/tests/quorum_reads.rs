//! Seeded simulation test of `ReadFanout::Quorum` reads with a replica that has
//! just crashed and is not suspected yet: the speculative retry answers the read
//! in a few round trips, where waiting for `replica_timeout` would take 200 ms.

use bytes::Bytes;
use ringlab_core::sim::{Record, SimConfig, World};
use ringlab_core::{ClientOp, ClientReply, Dur, Event, NodeId, ReadFanout};

const A: NodeId = NodeId(0);
const B: NodeId = NodeId(1);
const C: NodeId = NodeId(2);

fn seeds() -> u64 {
    std::env::var("RINGLAB_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(20, |n: u64| (n / 10).max(5))
}

/// Keys whose preference list is A, B, C: A asks itself and B first.
fn keys(world: &World, count: usize) -> Vec<Bytes> {
    (0..100_000)
        .map(|i| Bytes::from(format!("k{i}")))
        .filter(|k| world.ring().preference_list(k).primaries == [A, B, C])
        .take(count)
        .collect()
}

fn get(key: &Bytes) -> ClientOp {
    ClientOp::Get {
        key: key.clone(),
        r: None,
    }
}

fn run(seed: u64) {
    let mut cfg = SimConfig::new(seed, 3, 1);
    cfg.config.read_fanout = ReadFanout::Quorum;
    let replica_timeout = cfg.config.replica_timeout;
    let mut w = World::new(cfg).unwrap();
    w.run_for(Dur::secs(1));
    let keys = keys(&w, 12);
    for k in &keys {
        let r = w.submit(
            A,
            ClientOp::Put {
                key: k.clone(),
                value: Bytes::from_static(b"v"),
                context: None,
                w: None,
            },
        );
        assert!(
            matches!(
                w.run_until_done(r, Dur::secs(2)),
                Some(Ok(ClientReply::Written { .. }))
            ),
            "seed {seed}: write failed"
        );
    }
    // Healthy reads, answered by A and B: they measure the round trip.
    for k in &keys[..6] {
        let r = w.submit(A, get(k));
        assert!(
            matches!(
                w.run_until_done(r, Dur::secs(2)),
                Some(Ok(ClientReply::Read { .. }))
            ),
            "seed {seed}: healthy read failed"
        );
    }
    w.record_trace(true);
    w.apply(ringlab_core::sim::Action::Crash(B));
    for k in &keys[6..] {
        let r = w.submit(A, get(k));
        let reply = w.run_until_done(r, Dur::secs(2));
        let Some(Ok(ClientReply::Read {
            values,
            answered_by,
            ..
        })) = reply
        else {
            panic!("seed {seed}: read with B crashed failed: {reply:?}")
        };
        assert_eq!(values.len(), 1, "seed {seed}: the written value");
        assert!(!answered_by.contains(&B), "seed {seed}: {answered_by:?}");
        let c = w.client(r).unwrap();
        let took = c.done.as_ref().unwrap().0.since(c.issued);
        // A suspects B only at the first such read's replica_timeout; the retry
        // must answer it long before that.
        assert!(
            took < Dur(replica_timeout.as_millis() / 2),
            "seed {seed}: read took {took:?} with B crashed (replica timeout {replica_timeout:?})"
        );
    }
    let retried = w
        .trace()
        .iter()
        .filter(|e| {
            matches!(&e.record, Record::Event { node, event: Event::ReadRetried { asked, .. } }
                if *node == A && asked == &vec![C])
        })
        .count();
    // The first read retried past B; the later ones asked C at once.
    assert_eq!(retried, 1, "seed {seed}: reads retried at C");
}

#[test]
fn quorum_reads_retry_past_a_crashed_replica() {
    for seed in 0..seeds() {
        run(seed);
    }
}
