//! Merkle anti-entropy in the simulator: SCENARIOS.md S2 (a hint lost with its
//! stand-in, repaired by anti-entropy), S4 (two replicas diverge and converge,
//! bytes counted; identical replicas exchange only roots), S5 (a join rebuilds only
//! the trees whose replica set changed) and a wiped disk fully restored.

use bytes::Bytes;
use ringlab_core::sim::{Action, Record, SimConfig, World};
use ringlab_core::{ClientOp, ClientReply, Dur, Event, MessageKind, NodeId, Storage};

const A: NodeId = NodeId(0);
const B: NodeId = NodeId(1);
const C: NodeId = NodeId(2);
const D: NodeId = NodeId(3);

fn put(
    w: &mut World,
    at: NodeId,
    key: &Bytes,
    v: &str,
    ctx: Option<ringlab_core::VersionVector>,
) -> ringlab_core::VersionVector {
    let r = w.submit(
        at,
        ClientOp::Put {
            key: key.clone(),
            value: Bytes::from(v.to_owned()),
            context: ctx,
            w: None,
        },
    );
    match w.run_until_done(r, Dur::secs(3)) {
        Some(Ok(ClientReply::Written { context, .. })) => context,
        other => panic!("write {key:?} at {at}: {other:?}"),
    }
}

fn values_at(w: &World, n: NodeId, key: &[u8]) -> Vec<Bytes> {
    w.storage(n)
        .and_then(|s| s.object(key))
        .map(|o| o.values().map(|(_, v)| v.clone()).collect())
        .unwrap_or_default()
}

/// Runs until every partition's replicas agree, or panics after `limit`.
fn converge(w: &mut World, limit: u64) -> u64 {
    for s in 0..limit {
        if w.divergent_partitions().is_empty() {
            return s;
        }
        w.run_for(Dur::secs(1));
    }
    panic!(
        "not converged after {limit} s: {:?}",
        w.divergent_partitions()
    );
}

#[test]
fn s2_hint_lost_with_its_stand_in_is_repaired_by_anti_entropy() {
    let mut w = World::new(SimConfig::new(2, 7, 1)).unwrap();
    w.record_trace(true);
    let key = (0..100_000)
        .map(|i| Bytes::from(format!("user:{i}")))
        .find(|k| {
            let pl = w.ring().preference_list(k);
            pl.primaries == [A, B, C] && pl.fallbacks.first() == Some(&D)
        })
        .unwrap();
    w.run_for(Dur::secs(1));
    let ctx = put(&mut w, B, &key, "v1", None);
    w.run_for(Dur::millis(100)); // A's copy arrives too
    w.apply(Action::Crash(A));
    w.run_for(Dur::secs(2));
    put(&mut w, B, &key, "v2", Some(ctx));
    w.run_for(Dur::millis(100));
    assert!(w.hints().contains(&(D, A, key.clone())));
    // D dies for good before A recovers: the hint is gone with it.
    w.apply(Action::Wipe(D));
    w.apply(Action::Restart(A));
    w.run_for(Dur::secs(1));
    assert!(w.hints().is_empty(), "the only hint was on D's wiped disk");
    assert_eq!(
        values_at(&w, A, &key),
        vec![Bytes::from("v1")],
        "handoff alone cannot fix A"
    );
    w.apply(Action::Restart(D));
    converge(&mut w, 90);
    assert_eq!(values_at(&w, A, &key), vec![Bytes::from("v2")]);
    let repaired = w.trace().iter().any(|e| {
        matches!(&e.record, Record::Event { node, event: Event::MerkleKeysRepaired { .. } } if *node == A)
    });
    assert!(repaired, "A was repaired by a Merkle exchange");
}

#[test]
fn s4_divergent_replicas_converge_and_identical_ones_exchange_only_roots() {
    let mut cfg = SimConfig::new(4, 3, 1);
    cfg.config.partitions = 8;
    let mut w = World::new(cfg).unwrap();
    w.run_for(Dur::secs(1));
    let keys: Vec<Bytes> = (0..400).map(|i| Bytes::from(format!("k{i:04}"))).collect();
    for (i, k) in keys.iter().enumerate() {
        put(&mut w, NodeId(i as u32 % 3), k, "base", None);
    }
    converge(&mut w, 30);
    // C misses five writes (three nodes, N=3: no stand-in exists).
    w.apply(Action::Isolate(C));
    w.run_for(Dur::secs(1));
    for k in &keys[..5] {
        put(&mut w, A, k, "new", None);
    }
    let before = w
        .stats()
        .bytes_by_kind
        .get(&MessageKind::Merkle)
        .copied()
        .unwrap_or(0);
    w.apply(Action::Heal);
    let secs = converge(&mut w, 60);
    let spent = w
        .stats()
        .bytes_by_kind
        .get(&MessageKind::Merkle)
        .copied()
        .unwrap_or(0)
        - before;
    for k in &keys[..5] {
        assert_eq!(values_at(&w, C, k).len(), 2, "C has both siblings of {k:?}");
    }
    let all_bytes: usize = keys.iter().map(|k| k.len() + 32).sum::<usize>() * 8;
    println!("S4: 5 differing keys of 400 repaired in {secs} s with {spent} Merkle bytes (sending everything: {all_bytes})");
    assert!(spent < all_bytes as u64 / 2, "{spent} bytes");
    // Identical replicas: exchanges end in sync without descending.
    w.record_trace(true);
    w.run_for(Dur::secs(10));
    let (mut started, mut levels) = (0, 0);
    for e in w.trace() {
        if let Record::Event { event, .. } = &e.record {
            match event {
                Event::MerkleExchangeStarted { .. } => started += 1,
                Event::MerkleLevelCompared { .. } | Event::MerkleKeysRepaired { .. } => levels += 1,
                _ => {}
            }
        }
    }
    assert!(
        started > 10 && levels == 0,
        "{started} exchanges, {levels} descents"
    );
}

#[test]
fn wiped_disk_is_fully_restored() {
    let mut w = World::new(SimConfig::new(11, 5, 1)).unwrap();
    w.run_for(Dur::secs(1));
    let keys: Vec<Bytes> = (0..150).map(|i| Bytes::from(format!("key{i}"))).collect();
    for (i, k) in keys.iter().enumerate() {
        put(&mut w, NodeId(i as u32 % 5), k, "v", None);
    }
    w.run_for(Dur::secs(1));
    let owned = w.storage(C).unwrap().object_count();
    assert!(owned > 50);
    w.apply(Action::Wipe(C));
    w.apply(Action::Restart(C));
    assert_eq!(w.storage(C).unwrap().object_count(), 0);
    converge(&mut w, 120);
    assert_eq!(w.storage(C).unwrap().object_count(), owned);
}

#[test]
fn s5_join_rebuilds_only_trees_whose_replica_set_changed() {
    // Ring-level view: which partitions change replica sets when E joins A..D.
    let members: Vec<(NodeId, String)> = (0..4).map(|i| (NodeId(i), "z".to_owned())).collect();
    let before = ringlab_core::Ring::new(64, 3, &members).unwrap();
    let after = before.with_joined(NodeId(4), "z").unwrap();
    let changed: Vec<u32> = (0..64)
        .filter(|&p| {
            before.primaries(ringlab_core::Partition(p))
                != after.primaries(ringlab_core::Partition(p))
        })
        .collect();
    let moved = before.moved_partitions(&after);
    println!("S5: {moved} partitions changed owner; {} of 64 replica sets changed; the rest keep their trees", changed.len());
    assert!(moved <= 64usize.div_ceil(5));
    assert!(changed.len() < 64);
    // Node-level: installing the new ring builds trees only for partitions a node
    // newly replicates (the joiner builds all of its own; the others few or none).
    let mut total = 0;
    for id in (0..5).map(NodeId) {
        let newly = after
            .replicated_by(id)
            .into_iter()
            .filter(|p| !before.replicated_by(id).contains(p))
            .count();
        let mut node = ringlab_core::Node::new(
            id,
            ringlab_core::Config::demo(),
            Some(before.clone()),
            ringlab_core::MemStorage::new(),
            1,
            ringlab_core::Time(0),
        );
        node.handle_input(
            ringlab_core::Time(1),
            ringlab_core::Input::Admin(ringlab_core::Admin::SetRing(after.clone())),
        );
        let built: usize = std::iter::from_fn(|| node.poll_output())
            .filter_map(|o| match o {
                ringlab_core::Output::Event(Event::MerkleTreesBuilt { count }) => Some(count),
                _ => None,
            })
            .sum();
        println!("S5: node {id} built {built} trees (partitions it newly replicates: {newly})");
        assert_eq!(built, newly);
        total += built;
    }
    assert!(total > 0 && total < 5 * 64 * 3 / 5, "{total}");
}
