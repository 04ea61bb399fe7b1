//! Membership through gossip in the simulator: SCENARIOS.md S6 (gossip spreads
//! changes), S7 (logical partition, with and without seeds), S8 (temporary vs
//! permanent failure), join and leave under a running workload with no
//! acknowledged write lost, a restarted node's new generation, and a partitioned
//! minority rejoining.

use ringlab_core::gossip::Status;
use ringlab_core::sim::{Action, Record, SimConfig, Workload, World};
use ringlab_core::{Admin, ClientOp, ClientReply, Dur, Event, NodeId, Ring, Storage, Time};

const A: NodeId = NodeId(0);
const B: NodeId = NodeId(1);
const C: NodeId = NodeId(2);
const D: NodeId = NodeId(3);
const E: NodeId = NodeId(4);
const F: NodeId = NodeId(5);

fn admin(w: &mut World, node: NodeId, admin: Admin) {
    w.apply(Action::Admin { node, admin });
}

fn running(w: &World) -> Vec<NodeId> {
    (0..w.node_count() as u32)
        .map(NodeId)
        .filter(|&n| w.is_up(n))
        .collect()
}

/// Whether every running node holds the same membership state.
fn converged(w: &World) -> bool {
    let hashes: Vec<u64> = running(w)
        .iter()
        .map(|&n| w.node(n).unwrap().membership().hash())
        .collect();
    hashes.windows(2).all(|p| p[0] == p[1])
}

fn knows(w: &World, at: NodeId, who: NodeId) -> bool {
    w.node(at)
        .unwrap()
        .membership()
        .get(who)
        .is_some_and(|m| m.generation > 0)
}

/// Runs in 100 ms steps until `done` or `limit`; returns the time it took.
fn run_until(w: &mut World, limit: Dur, mut done: impl FnMut(&World) -> bool) -> Option<Dur> {
    let start = w.now();
    while w.now().since(start) < limit {
        if done(w) {
            return Some(w.now().since(start));
        }
        w.run_for(Dur::millis(100));
    }
    done(w).then(|| w.now().since(start))
}

fn fresh_world(seed: u64, nodes: usize, seeds: &[NodeId]) -> World {
    let mut cfg = SimConfig::new(seed, nodes, 1);
    cfg.bootstrap = false;
    cfg.config.seeds = seeds.to_vec();
    World::new(cfg).unwrap()
}

#[test]
fn s6_gossip_spreads_every_change_to_every_node() {
    let mut w = fresh_world(6, 5, &[]);
    // A knows B and E; D knows C and E.
    for (at, contact) in [(A, B), (A, E), (D, C), (D, E)] {
        admin(&mut w, at, Admin::Join { contact });
    }
    // A handles a change (F joins through A); D makes one too (G joins through D).
    w.apply(Action::AddNode { zone: "z1".into() });
    w.apply(Action::AddNode { zone: "z1".into() });
    let (f, g) = (NodeId(5), NodeId(6));
    admin(&mut w, f, Admin::Join { contact: A });
    admin(&mut w, g, Admin::Join { contact: D });
    let took = run_until(&mut w, Dur::secs(20), |w| {
        converged(w)
            && running(w)
                .iter()
                .all(|&x| running(w).iter().all(|&y| knows(w, x, y)))
    });
    let took = took.expect("every node learns every change");
    let rounds = took.as_millis() / w.sim_config().config.gossip_interval.as_millis();
    println!("S6: 7 nodes converged in {took} ≈ {rounds} gossip rounds (log2 7 ≈ 2.8)");
    assert!(rounds <= 12, "{rounds} rounds");
}

/// Two rings formed through contacts that never met: {A, B} and {C, D}.
fn two_rings(seeds: &[NodeId]) -> World {
    let mut w = fresh_world(7, 4, seeds);
    for first in [A, C] {
        let ring = Ring::new(16, 3, &[(first, "z1".to_owned())]).unwrap();
        admin(&mut w, first, Admin::SetRing(ring));
    }
    admin(&mut w, B, Admin::Join { contact: A });
    admin(&mut w, D, Admin::Join { contact: C });
    w
}

fn ring_members(w: &World, n: NodeId) -> Vec<NodeId> {
    w.node(n)
        .unwrap()
        .ring()
        .map(|r| r.members().map(|(id, _)| id).collect())
        .unwrap_or_default()
}

#[test]
fn s7_without_seeds_two_rings_stay_split() {
    let mut w = two_rings(&[]);
    w.run_for(Dur::secs(30));
    assert_eq!(ring_members(&w, A), vec![A, B]);
    assert_eq!(ring_members(&w, B), vec![A, B]);
    assert_eq!(ring_members(&w, C), vec![C, D]);
    assert_eq!(ring_members(&w, D), vec![C, D]);
    assert!(
        !knows(&w, A, C) && !knows(&w, C, A),
        "each ring believes it is whole"
    );
}

#[test]
fn s7_with_seeds_the_two_rings_merge() {
    let mut w = two_rings(&[A]);
    let took = run_until(&mut w, Dur::secs(30), |w| {
        [A, B, C, D]
            .iter()
            .all(|&n| ring_members(w, n) == vec![A, B, C, D])
            && converged(w)
    });
    println!("S7: rings merged through seed A in {took:?}");
    assert!(
        took.is_some(),
        "rings: {:?}",
        [A, B, C, D].map(|n| ring_members(&w, n))
    );
}

/// S7 with data: two rings of three take writes while they cannot reach each other
/// (a network cut keeps D, E and F from the seed), then the cut heals and the rings
/// merge. One ring's ownership wins; the other ring's nodes hold keys they no longer
/// replicate, and in the final six-node ring some partitions have no replica from
/// that side, so only ownership handoff (the keys become hints for the new owners)
/// keeps those writes. Every acknowledged write on either side must be readable with
/// R=3 afterwards. Replay a failing seed with RINGLAB_SEED=<seed>.
#[test]
fn s7_writes_on_both_rings_survive_the_merge() {
    // RINGLAB_SEED=S replays one seed; otherwise seeds 1..=RINGLAB_SEEDS/10 (default 20).
    let seeds: Vec<u64> = match std::env::var("RINGLAB_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(s) => vec![s],
        None => {
            let n: u64 = std::env::var("RINGLAB_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(200);
            (1..=(n / 10).max(1)).collect()
        }
    };
    for seed in seeds {
        s7_with_data(seed);
    }
}

/// The setup of S7 with data: six nodes (A the only seed) cut into A, B, C and
/// D, E, F, each side forming its own ring of three and taking 100 writes with
/// W=2. Returns the world (trace on, still partitioned) and the acknowledged
/// writes with their dots. `configure` adjusts the nodes' config first.
fn split_rings_with_writes(
    seed: u64,
    configure: impl FnOnce(&mut ringlab_core::Config),
) -> (World, Vec<(bytes::Bytes, ringlab_core::Dot)>) {
    let mut cfg = SimConfig::new(seed, 6, 1);
    cfg.bootstrap = false;
    cfg.config.seeds = vec![A];
    configure(&mut cfg.config);
    let mut w = World::new(cfg).unwrap();
    w.record_trace(true);
    w.apply(Action::Partition(vec![vec![A, B, C], vec![D, E, F]]));
    for first in [A, D] {
        let ring = Ring::new(16, 3, &[(first, "z1".to_owned())]).unwrap();
        admin(&mut w, first, Admin::SetRing(ring));
    }
    for (n, contact) in [(B, A), (C, A), (E, D), (F, D)] {
        admin(&mut w, n, Admin::Join { contact });
    }
    let formed = run_until(&mut w, Dur::secs(30), |w| {
        [A, B, C]
            .iter()
            .all(|&n| ring_members(w, n) == vec![A, B, C])
            && [D, E, F]
                .iter()
                .all(|&n| ring_members(w, n) == vec![D, E, F])
    });
    assert!(formed.is_some(), "seed {seed}: the two rings did not form");
    // 100 keys written on each side, W=2.
    let mut acked = Vec::new();
    for i in 0..200u32 {
        let (at, side) = if i % 2 == 0 { (A, "abc") } else { (D, "def") };
        let key = bytes::Bytes::from(format!("{side}-{i}"));
        let r = w.submit(
            at,
            ClientOp::Put {
                key: key.clone(),
                value: bytes::Bytes::from(format!("v{i}")),
                context: None,
                w: Some(2),
            },
        );
        match w.run_until_done(r, Dur::secs(5)) {
            Some(Ok(ClientReply::Written { dot, .. })) => acked.push((key, dot)),
            other => panic!("seed {seed}: write {i} at {at} was not acknowledged: {other:?}"),
        }
    }
    (w, acked)
}

/// Nodes that handed own copies of keys off (an `OwnershipHandoff` with keys).
fn handing_nodes(w: &World) -> std::collections::BTreeSet<NodeId> {
    w.trace()
        .iter()
        .filter_map(|e| match &e.record {
            Record::Event {
                node,
                event: Event::OwnershipHandoff { keys, .. },
            } if *keys > 0 => Some(*node),
            _ => None,
        })
        .collect()
}

/// Own copies `n` holds of keys it does not replicate in its ring.
fn stale_own_copies(w: &World, n: NodeId) -> Vec<bytes::Bytes> {
    let node = w.node(n).unwrap();
    let ring = node.ring().unwrap();
    node.storage()
        .objects()
        .keys()
        .filter(|k| !ring.primaries(ring.partition_of(k)).contains(&n))
        .cloned()
        .collect()
}

/// Reads every acknowledged write through B with R=3: the keys whose read does
/// not cover the write's dot (a failed read fails the test).
fn lost_writes(
    w: &mut World,
    acked: &[(bytes::Bytes, ringlab_core::Dot)],
    seed: u64,
) -> Vec<bytes::Bytes> {
    let mut lost = Vec::new();
    for (key, dot) in acked {
        let r = w.submit(
            B,
            ClientOp::Get {
                key: key.clone(),
                r: Some(3),
            },
        );
        match w.run_until_done(r, Dur::secs(5)) {
            Some(Ok(ClientReply::Read { context, .. })) if context.covers(dot) => {}
            Some(Ok(ClientReply::Read { .. })) => lost.push(key.clone()),
            other => panic!("seed {seed}: read of {key:?} failed: {other:?}"),
        }
    }
    lost
}

fn s7_with_data(seed: u64) {
    let all = vec![A, B, C, D, E, F];
    let (mut w, acked) = split_rings_with_writes(seed, |_| {});
    w.apply(Action::Heal);
    let merged = run_until(&mut w, Dur::secs(120), |w| {
        all.iter().all(|&n| ring_members(w, n) == all)
            && converged(w)
            && all.iter().all(|&n| {
                let node = w.node(n).unwrap();
                !node.ownership_handoff_in_progress() && node.storage().hint_count() == 0
            })
    });
    assert!(
        merged.is_some(),
        "seed {seed}: rings {:?}, hints {:?}",
        all.iter().map(|&n| ring_members(&w, n)).collect::<Vec<_>>(),
        all.iter()
            .map(|&n| w.node(n).unwrap().storage().hint_count())
            .collect::<Vec<_>>()
    );
    let handed: usize = w
        .trace()
        .iter()
        .filter_map(|e| match &e.record {
            Record::Event {
                event: Event::OwnershipHandoff { keys, .. },
                ..
            } => Some(*keys),
            _ => None,
        })
        .sum();
    // Let anti-entropy settle the final ring, then read everything with R=3.
    w.run_for(Dur::secs(30));
    let lost = lost_writes(&mut w, &acked, seed);
    assert!(
        lost.is_empty(),
        "seed {seed}: {} of {} acknowledged writes lost in the merge: {lost:?}",
        lost.len(),
        acked.len()
    );
    assert!(
        handed > 0,
        "seed {seed}: the losing ring handed nothing off"
    );
    // Nodes that handed keys off no longer hold their own copies of them: every own
    // copy left there is of a key they replicate in the final ring.
    let handing = handing_nodes(&w);
    for &n in &handing {
        let stale = stale_own_copies(&w, n);
        assert!(
            stale.is_empty(),
            "seed {seed}: {n} still holds {} own copies it handed off: {stale:?}",
            stale.len()
        );
    }
    println!("S7 with data (seed {seed}): merged after {merged:?}; {handed} own copies handed off, 0 of 200 writes lost");
}

#[test]
fn s8_crash_is_temporary_remove_is_permanent() {
    let mut w = World::new(SimConfig::new(8, 5, 1)).unwrap();
    w.record_trace(true);
    w.run_for(Dur::secs(1));
    let ring_before = w.ring().clone();
    w.apply(Action::Crash(B));
    // Each node stops routing to B on its own…
    let took = run_until(&mut w, Dur::secs(5), |w| {
        [A, C, D, E]
            .iter()
            .all(|&n| !w.node(n).unwrap().detector().is_reachable(B))
    });
    assert!(
        took.is_some(),
        "every live node marks B unreachable locally"
    );
    // …reports it dead after `dead_after`, but nothing moves.
    w.run_for(w.sim_config().config.dead_after + Dur::secs(1));
    let reported: Vec<NodeId> = w
        .trace()
        .iter()
        .filter_map(|e| match &e.record {
            Record::Event {
                node,
                event: Event::PeerReportedDead { peer },
            } if *peer == B => Some(*node),
            _ => None,
        })
        .collect();
    assert_eq!(
        reported.len(),
        4,
        "each live node reports B dead once: {reported:?}"
    );
    assert_eq!(w.ring(), &ring_before, "a crash never rebalances");
    // Only an explicit remove changes ownership; B's partitions stream to new owners.
    admin(&mut w, A, Admin::Remove { node: B });
    let took = run_until(&mut w, Dur::secs(20), |w| {
        [A, C, D, E]
            .iter()
            .all(|&n| !ring_members(w, n).contains(&B))
    });
    assert!(took.is_some(), "B is removed from every node's ring");
    let after = w.ring().clone();
    assert!(after.version() > ring_before.version());
    assert_eq!(
        after.moved_partitions(&ring_before),
        ring_before.partitions_owned_by(B).len()
    );
    let pulled = w.trace().iter().any(|e| {
        matches!(
            &e.record,
            Record::Event {
                event: Event::PartitionPulled { .. },
                ..
            }
        )
    });
    assert!(pulled, "new owners pulled the data of B's partitions");
}

/// Every acknowledged write's dot is covered by the final read's context: it is
/// present, or a later write that saw it replaced it. A lost write is covered by nothing.
fn assert_no_acked_write_lost(w: &mut World) {
    let acked: Vec<(bytes::Bytes, ringlab_core::Dot)> = w
        .clients()
        .values()
        .filter_map(|c| match &c.done {
            Some((_, Ok(ClientReply::Written { dot, .. }))) => Some((c.op.key().clone(), *dot)),
            _ => None,
        })
        .collect();
    assert!(acked.len() > 100, "the workload wrote: {}", acked.len());
    let keys: std::collections::BTreeSet<bytes::Bytes> =
        acked.iter().map(|(k, _)| k.clone()).collect();
    let at = running(w)[0];
    for key in keys {
        let r = w.submit(
            at,
            ClientOp::Get {
                key: key.clone(),
                r: Some(3),
            },
        );
        let Some(Ok(ClientReply::Read { context, .. })) = w.run_until_done(r, Dur::secs(5)) else {
            panic!("final read of {key:?} failed: {:?}", w.client(r));
        };
        for (k, dot) in &acked {
            if *k == key {
                assert!(
                    context.covers(dot),
                    "acknowledged write {dot} to {key:?} is lost"
                );
            }
        }
    }
}

#[test]
fn join_and_leave_under_a_running_workload_lose_no_acknowledged_write() {
    let mut w = World::new(SimConfig::new(9, 5, 1)).unwrap();
    w.record_trace(true);
    w.apply(Action::SetWorkload(Some(Workload {
        interval: Dur::millis(20),
        keys: 40,
        ..Workload::default()
    })));
    w.run_for(Dur::secs(3));
    // F joins through A.
    w.apply(Action::AddNode { zone: "z1".into() });
    let f = NodeId(5);
    admin(&mut w, f, Admin::Join { contact: A });
    let took = run_until(&mut w, Dur::secs(20), |w| {
        ring_members(w, A).contains(&f) && converged(w)
    });
    assert!(took.is_some(), "F becomes an owner");
    assert_eq!(
        w.node(f).unwrap().membership().get(f).unwrap().status,
        Status::Up
    );
    let owned = w.ring().partitions_owned_by(f).len();
    assert!(
        (10..=11).contains(&owned),
        "F took ⌊64/6⌋ or ⌈64/6⌉ partitions: {owned}"
    );
    w.run_for(Dur::secs(2));
    // C leaves.
    admin(&mut w, C, Admin::Leave);
    let took = run_until(&mut w, Dur::secs(20), |w| {
        !ring_members(w, A).contains(&C)
            && w.node(C).unwrap().membership().get(C).unwrap().status == Status::Left
    });
    assert!(took.is_some(), "C hands its partitions over and leaves");
    w.run_for(Dur::secs(2));
    w.apply(Action::SetWorkload(None));
    w.apply(Action::Crash(C));
    // Settle: anti-entropy finishes whatever the transfer raced with.
    run_until(&mut w, Dur::secs(60), |w| {
        w.divergent_partitions().is_empty()
    })
    .expect("replicas converge");
    assert_no_acked_write_lost(&mut w);
}

#[test]
fn a_restarted_node_is_accepted_with_its_new_generation() {
    let mut w = World::new(SimConfig::new(10, 5, 1)).unwrap();
    w.run_for(Dur::secs(2));
    assert!(converged(&w));
    let gen = |w: &World, at: NodeId| w.node(at).unwrap().membership().get(D).unwrap().generation;
    assert_eq!(gen(&w, A), 1);
    w.apply(Action::Crash(D));
    w.run_for(Dur::secs(1));
    w.apply(Action::Restart(D));
    let took = run_until(&mut w, Dur::secs(10), |w| {
        running(w).iter().all(|&n| gen(w, n) == 2) && converged(w)
    });
    assert!(took.is_some(), "every node sees D's generation 2");
    assert_eq!(
        w.node(A).unwrap().membership().get(D).unwrap().status,
        Status::Up
    );
}

#[test]
fn a_partitioned_minority_rejoins() {
    let mut w = World::new(SimConfig::new(12, 5, 1)).unwrap();
    w.run_for(Dur::secs(1));
    w.apply(Action::Partition(vec![vec![A, B], vec![C, D, E]]));
    // Both sides keep changing membership: D restarts (new generation) inside the majority.
    w.apply(Action::Crash(D));
    w.run_for(Dur::secs(1));
    w.apply(Action::Restart(D));
    w.run_for(Dur::secs(5));
    assert!(!converged(&w), "the minority has not heard of D's restart");
    w.apply(Action::Heal);
    let took = run_until(&mut w, Dur::secs(10), converged);
    println!("minority rejoined and converged in {took:?}");
    assert!(took.is_some());
    assert!(w.now() > Time(0));
}

/// S8 step 3 during a join: F dies while it pulls the partitions it gains, so the
/// pending ring can never activate (it waits for F's `ready`). Nothing moves on the
/// crash alone; once an administrator removes F, the claimant plans again from the
/// active ring and the cluster settles on a ring without F. No write is lost.
#[test]
fn a_joiner_that_dies_mid_pull_is_removed_and_the_ring_moves_on() {
    for seed in seeds(30, 3) {
        joiner_dies_mid_pull(seed);
    }
}

/// `RINGLAB_SEED=S` alone, or seeds 1..=`RINGLAB_SEEDS`/`share` (default 100), at
/// least `min` of them.
fn seeds(share: u64, min: u64) -> Vec<u64> {
    if let Some(s) = std::env::var("RINGLAB_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![s];
    }
    let n: u64 = std::env::var("RINGLAB_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    (1..=(n / share).max(min)).collect()
}

fn joiner_dies_mid_pull(seed: u64) {
    let mut w = World::new(SimConfig::new(seed, 5, 1)).unwrap();
    w.apply(Action::SetWorkload(Some(Workload {
        interval: Dur::millis(20),
        keys: 40,
        ..Workload::default()
    })));
    w.run_for(Dur::secs(3));
    let before = w.ring().clone();
    w.apply(Action::AddNode { zone: "z1".into() });
    let f = NodeId(5);
    admin(&mut w, f, Admin::Join { contact: A });
    // Crash F as soon as a plan that includes it exists, before it has pulled.
    let pending_with_f = |w: &World| {
        w.node(A)
            .unwrap()
            .membership()
            .pending()
            .is_some_and(|p| p.contains(f))
    };
    let start = w.now();
    while !pending_with_f(&w) {
        assert!(
            w.now().since(start) < Dur::secs(10),
            "seed {seed}: no plan for F"
        );
        w.run_for(Dur::millis(1));
    }
    let planned = w.node(A).unwrap().membership().pending().unwrap().version();
    let f_ready = w.node(A).unwrap().membership().get(f).unwrap().ready;
    assert!(f_ready < planned, "seed {seed}: F pulled before the crash");
    w.apply(Action::Crash(f));
    w.run_for(Dur::secs(5));
    assert_eq!(
        w.node(A).unwrap().membership().pending().map(Ring::version),
        Some(planned),
        "seed {seed}: the plan waits for F (a crash alone moves nothing)"
    );
    assert_eq!(w.ring(), &before, "seed {seed}: nothing activated");
    // The administrator removes F; the cluster must move on without it.
    admin(&mut w, B, Admin::Remove { node: f });
    let took = run_until(&mut w, Dur::secs(30), |w| {
        running(w).iter().all(|&n| {
            let m = w.node(n).unwrap().membership();
            m.pending().is_none()
                && m.ring()
                    .is_some_and(|r| r.version() > planned && !r.contains(f))
        })
    });
    assert!(
        took.is_some(),
        "seed {seed}: the abandoned plan is replaced (A sees pending {:?}, ring {:?})",
        w.node(A).unwrap().membership().pending().map(Ring::version),
        w.node(A).unwrap().membership().ring().map(Ring::version)
    );
    assert_eq!(
        w.ring().moved_partitions(&before),
        0,
        "seed {seed}: F was the only change, so ownership is as before"
    );
    w.apply(Action::SetWorkload(None));
    run_until(&mut w, Dur::secs(60), |w| {
        w.divergent_partitions().is_empty()
    })
    .unwrap_or_else(|| panic!("seed {seed}: replicas converge"));
    assert_no_acked_write_lost(&mut w);
}

/// A joiner pulls at most `pull_concurrency` partitions at once: at no point of
/// the trace has it received part of more partitions than that without finishing
/// them (a started, unfinished partition holds a slot). With more than one slot the
/// slots are actually used, and with one the partitions come strictly one after
/// another. Every acknowledged write survives the join.
#[test]
fn a_joiner_pulls_at_most_pull_concurrency_partitions_at_once() {
    for (seed, limit) in [(21, 1), (22, 3)] {
        let mut cfg = SimConfig::new(seed, 5, 1);
        cfg.config.pull_concurrency = limit;
        cfg.config.hint_batch = 2; // pages of two keys: most pulls take several
        let mut w = World::new(cfg).unwrap();
        w.record_trace(true);
        w.apply(Action::SetWorkload(Some(Workload {
            interval: Dur::millis(5),
            keys: 600,
            ..Workload::default()
        })));
        w.run_for(Dur::secs(3));
        w.apply(Action::SetWorkload(None));
        w.run_for(Dur::secs(1));
        w.apply(Action::AddNode { zone: "z1".into() });
        let f = NodeId(5);
        admin(&mut w, f, Admin::Join { contact: A });
        let took = run_until(&mut w, Dur::secs(60), |w| {
            ring_members(w, A).contains(&f) && converged(w)
        });
        assert!(took.is_some(), "seed {seed}: F becomes an owner");
        let mut open = std::collections::BTreeSet::new();
        let (mut most, mut pages, mut partitions) = (0, 0, 0);
        for e in w.trace() {
            if let Record::Event {
                node,
                event:
                    Event::PartitionPulled {
                        partition, done, ..
                    },
            } = &e.record
            {
                if *node != f {
                    continue;
                }
                pages += 1;
                open.insert(*partition);
                most = most.max(open.len());
                if *done {
                    open.remove(partition);
                    partitions += 1;
                }
            }
        }
        assert!(
            pages > partitions,
            "seed {seed}: some pulls took several pages ({pages} pages, {partitions} partitions)"
        );
        assert!(
            most <= limit,
            "seed {seed}: {most} partitions were being pulled at once, limit {limit}"
        );
        assert_eq!(
            most, limit,
            "seed {seed}: the {limit} slots were used ({pages} pages, {partitions} partitions)"
        );
        run_until(&mut w, Dur::secs(60), |w| {
            w.divergent_partitions().is_empty()
        })
        .unwrap_or_else(|| panic!("seed {seed}: replicas converge"));
        assert_no_acked_write_lost(&mut w);
        println!("pull_concurrency {limit} (seed {seed}): {partitions} partitions in {pages} pages, at most {most} at once, join took {took:?}");
    }
}

/// S7 with data, and one owner of handed-off keys down for longer than the hint
/// window while the merge's ownership handoff runs. The orphan copies' hints for it
/// must outlive the window (nothing else would ever move those copies, and the
/// handing nodes keep them until every owner has acked), so once it is back the
/// handoff completes: no node keeps an own copy of a key it does not replicate, no
/// hint is left, and every acknowledged write reads back with R=3.
#[test]
fn s7_orphan_hints_wait_for_an_owner_down_past_the_hint_window() {
    for seed in seeds(50, 2) {
        orphan_hints_outlive_the_window(seed);
    }
}

fn orphan_hints_outlive_the_window(seed: u64) {
    let all = vec![A, B, C, D, E, F];
    let window = Dur::secs(20);
    let (mut w, acked) = split_rings_with_writes(seed, |c| c.hint_window = window);
    w.apply(Action::Heal);
    // The first owner some node holds hints for goes down at once.
    let mut down = None;
    let start = w.now();
    while down.is_none() {
        assert!(
            w.now().since(start) < Dur::secs(120),
            "seed {seed}: no ownership handoff started after the merge"
        );
        // One step per millisecond: a hint lives at least a message round trip
        // (2 ms at the simulator's minimum latency), and with 10-ms steps seed 262
        // stored and delivered all of its hints between two looks.
        w.run_for(Dur::millis(1));
        // Each side wrote within its own ring of three (no stand-ins), so after the
        // heal every hint is an orphan copy's.
        down = all.iter().find_map(|&n| {
            let node = w.node(n)?;
            node.storage().hint_owners().into_iter().find(|&o| o != n)
        });
    }
    let down = down.unwrap();
    w.apply(Action::Crash(down));
    w.run_for(window + Dur::secs(15));
    w.apply(Action::Restart(down));
    let done = run_until(&mut w, Dur::secs(120), |w| {
        all.iter().all(|&n| ring_members(w, n) == all)
            && converged(w)
            && all.iter().all(|&n| {
                let node = w.node(n).unwrap();
                !node.ownership_handoff_in_progress() && node.storage().hint_count() == 0
            })
    });
    assert!(
        done.is_some(),
        "seed {seed}: handoff did not complete; hints {:?}",
        all.iter()
            .map(|&n| w.node(n).unwrap().storage().hint_count())
            .collect::<Vec<_>>()
    );
    w.run_for(Dur::secs(30));
    // Nodes that handed own copies off keep none of them: every own copy left
    // there is of a key they replicate in the final ring.
    let handing = handing_nodes(&w);
    assert!(!handing.is_empty(), "seed {seed}: nothing was handed off");
    for &n in &handing {
        let stale = stale_own_copies(&w, n);
        assert!(
            stale.is_empty(),
            "seed {seed}: with {down} down past the hint window, {n} still holds {} own copies it does not replicate: {stale:?}",
            stale.len()
        );
    }
    let lost = lost_writes(&mut w, &acked, seed);
    assert!(lost.is_empty(), "seed {seed}: lost {lost:?}");
    println!(
        "S7, {down} down past the hint window (seed {seed}): handoff completed after its restart"
    );
}
