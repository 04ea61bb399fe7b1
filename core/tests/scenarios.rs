//! Seeded simulation tests of SCENARIOS.md S1 (sloppy quorum and hinted handoff)
//! and S9 (replication across zones), asserting every step.

use bytes::Bytes;
use ringlab_core::sim::{Action, SimConfig, World};
use ringlab_core::{ClientOp, ClientReply, Dur, Event, NodeId, Storage};

const A: NodeId = NodeId(0);
const B: NodeId = NodeId(1);
const C: NodeId = NodeId(2);
const D: NodeId = NodeId(3);

/// A key whose preference list is A, B, C with D the first fallback.
fn s1_key(world: &World) -> Bytes {
    (0..100_000)
        .map(|i| Bytes::from(format!("user:{i}")))
        .find(|k| {
            let pl = world.ring().preference_list(k);
            pl.primaries == [A, B, C] && pl.fallbacks.first() == Some(&D)
        })
        .expect("some key starts its preference list at A, B, C, D")
}

fn put(key: &Bytes, value: &str, context: Option<ringlab_core::VersionVector>) -> ClientOp {
    ClientOp::Put {
        key: key.clone(),
        value: Bytes::from(value.to_owned()),
        context,
        w: None,
    }
}

fn holders(world: &World, key: &[u8]) -> Vec<NodeId> {
    world.replicas(key).into_iter().map(|(n, _)| n).collect()
}

#[test]
fn s1_sloppy_quorum_and_hinted_handoff() {
    let mut w = World::new(SimConfig::new(1, 7, 1)).unwrap();
    w.record_trace(true);
    let key = s1_key(&w);
    w.run_for(Dur::secs(1));

    // Step 2: a client writes the key; A, B, C store it.
    let r = w.submit(B, put(&key, "v1", None));
    let Some(Ok(ClientReply::Written { context, .. })) = w.run_until_done(r, Dur::secs(2)) else {
        panic!("first write failed: {:?}", w.client(r))
    };
    w.run_for(Dur::millis(100));
    assert_eq!(holders(&w, &key), vec![A, B, C]);

    // Step 3: A crashes; B notices on its own (missed probes).
    w.apply(Action::Crash(A));
    w.run_for(Dur::secs(2));
    assert!(
        !w.node(B).unwrap().detector().is_reachable(A),
        "B still routes to A"
    );

    // Step 4: the write skips A and lands on D with a hint naming A; W is met.
    let r = w.submit(B, put(&key, "v2", Some(context)));
    let reply = w.run_until_done(r, Dur::secs(2));
    let Some(Ok(ClientReply::Written {
        stand_ins,
        acked_by,
        dot,
        ..
    })) = reply
    else {
        panic!("second write failed: {reply:?}")
    };
    assert!(acked_by.len() >= 2);
    w.run_for(Dur::millis(100));
    assert_eq!(
        stand_ins.iter().filter(|(s, o)| (*s, *o) == (D, A)).count(),
        usize::from(acked_by.contains(&D))
    );
    let targets = w.trace().iter().rev().find_map(|e| match &e.record {
        ringlab_core::sim::Record::Event {
            event: Event::RequestStarted { targets, .. },
            ..
        } => Some(targets.clone()),
        _ => None,
    });
    assert_eq!(
        targets,
        Some(vec![(B, None), (C, None), (D, Some(A))]),
        "A skipped, D stands in for A"
    );
    assert!(
        w.hints().contains(&(D, A, key.clone())),
        "D holds a hint for A: {:?}",
        w.hints()
    );
    assert!(
        w.storage(D).unwrap().object(&key).is_none(),
        "D keeps the hint apart from its own data"
    );

    // Step 5: A recovers; D notices and hands the hint off.
    w.apply(Action::Restart(A));
    w.run_for(Dur::secs(2));
    let delivered = w.trace().iter().any(|e| {
        matches!(&e.record, ringlab_core::sim::Record::Event { node, event: Event::HintDelivered { owner, key: k } }
            if *node == D && *owner == A && *k == key)
    });
    assert!(delivered, "D reported delivering its hint to A");

    // Step 6: D's hint store is empty; exactly A, B, C hold the key, all at v2.
    assert!(w.storage(D).unwrap().all_hints().is_empty());
    assert!(w.hints().is_empty());
    let replicas = w.replicas(&key);
    assert_eq!(
        replicas.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        vec![A, B, C]
    );
    for (n, o) in &replicas {
        let values: Vec<_> = o.values().map(|(d, v)| (*d, v.clone())).collect();
        assert_eq!(
            values,
            vec![(dot, Bytes::from_static(b"v2"))],
            "replica {n}"
        );
    }
    // No client saw an error.
    assert!(w
        .clients()
        .values()
        .all(|c| matches!(c.done, Some((_, Ok(_))))));
}

#[test]
fn s9_replicas_span_zones_and_survive_a_zone_failure() {
    let mut w = World::new(SimConfig::new(9, 9, 3)).unwrap();
    let ring = w.ring().clone();
    let keys: Vec<Bytes> = (0..200).map(|i| Bytes::from(format!("k{i}"))).collect();
    for k in &keys {
        let zones: std::collections::BTreeSet<_> = ring
            .preference_list(k)
            .primaries
            .iter()
            .map(|n| ring.zone(*n).unwrap().to_owned())
            .collect();
        assert_eq!(zones.len(), 3, "key {k:?} replicas span three zones");
    }
    w.run_for(Dur::secs(1));
    // Fail every node of zone z1.
    let z1: Vec<NodeId> = ring
        .members()
        .filter(|(_, z)| *z == "z1")
        .map(|(n, _)| n)
        .collect();
    assert_eq!(z1.len(), 3);
    for &n in &z1 {
        w.apply(Action::Crash(n));
    }
    w.run_for(Dur::secs(2));
    let live: Vec<NodeId> = ring
        .members()
        .map(|(n, _)| n)
        .filter(|n| !z1.contains(n))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        let at = live[i % live.len()];
        let r = w.submit(
            at,
            ClientOp::Put {
                key: k.clone(),
                value: Bytes::from("x"),
                context: None,
                w: Some(2),
            },
        );
        assert!(
            matches!(w.run_until_done(r, Dur::secs(3)), Some(Ok(_))),
            "write {k:?} at {at}: {:?}",
            w.client(r)
        );
        let r = w.submit(
            at,
            ClientOp::Get {
                key: k.clone(),
                r: Some(2),
            },
        );
        match w.run_until_done(r, Dur::secs(3)) {
            Some(Ok(ClientReply::Read { values, .. })) => assert_eq!(values.len(), 1, "{k:?}"),
            other => panic!("read {k:?} at {at}: {other:?}"),
        }
    }
}
