//! Randomized fault test over many seeds: loss, duplication, reordering (random
//! latency), partitions, one-way cuts and crash/restart while clients read and
//! write. After the faults stop and the cluster settles:
//! * every acknowledged write is readable (R = N), or was superseded by a write
//!   whose client had seen it (its context covers the write's dot) and which was
//!   itself acknowledged or is still present;
//! * no value appears that no client wrote;
//! * every hint has been delivered (hint stores are empty);
//! * every partition's replicas have equal Merkle roots (anti-entropy converged).
//!
//! `RINGLAB_SEEDS=N` sets how many seeds run (default 200); `RINGLAB_SEED=S` replays one.

use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use ringlab_core::sim::{Action, NetConfig, SimConfig, World};
use ringlab_core::{
    ClientOp, ClientReply, ClientReq, Dot, Dur, NodeId, Storage, Time, VersionVector,
};
use std::collections::{BTreeMap, BTreeSet};

const NODES: u32 = 7;
const KEYS: u64 = 12;

struct Issued {
    key: Bytes,
    value: Bytes,
    context: Option<VersionVector>,
}

fn pick(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    rng.next_u64() % n
}

pub fn run_seed(seed: u64) -> Result<(), String> {
    run_seed_with(seed, ringlab_core::ReadFanout::All)
}

/// [`run_seed`] with reads asking `fanout` replicas.
pub fn run_seed_with(seed: u64, fanout: ringlab_core::ReadFanout) -> Result<(), String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xfa17);
    let mut cfg = SimConfig::new(seed, NODES as usize, 3);
    cfg.config.read_fanout = fanout;
    cfg.net = NetConfig {
        latency_min: Dur(1),
        latency_max: Dur(12),
        loss_ppm: 0,
        dup_ppm: 0,
    };
    let mut w = World::new(cfg).map_err(|e| e.to_string())?;
    let keys: Vec<Bytes> = (0..KEYS).map(|i| Bytes::from(format!("key{i}"))).collect();
    let mut ctx: BTreeMap<Bytes, VersionVector> = BTreeMap::new();
    let mut issued: BTreeMap<ClientReq, Issued> = BTreeMap::new();
    let mut seen: BTreeSet<ClientReq> = BTreeSet::new();
    let mut n = 0u64;
    let fault_end = Time(20_000);
    w.run_for(Dur::millis(500));

    // Phase 1: workload under faults.
    while w.now() < fault_end {
        w.run_for(Dur::millis(40));
        // Harvest replies: contexts flow back into the client model.
        for (req, rec) in w.clients().range(ClientReq(0)..) {
            if seen.contains(req) {
                continue;
            }
            if let Some((_, Ok(reply))) = &rec.done {
                let key = rec.op.key().clone();
                let c = match reply {
                    ClientReply::Written { context, .. } | ClientReply::Read { context, .. } => {
                        context
                    }
                };
                let e = ctx.entry(key).or_default();
                e.merge(c);
            }
            if rec.done.is_some() {
                seen.insert(*req);
            }
        }
        let node = NodeId(pick(&mut rng, NODES as u64) as u32);
        let key = keys[pick(&mut rng, KEYS) as usize].clone();
        if pick(&mut rng, 4) == 0 {
            w.submit(node, ClientOp::Get { key, r: None });
        } else {
            n += 1;
            let value = Bytes::from(format!("s{seed}-w{n}"));
            let context = ctx.get(&key).cloned().filter(|_| pick(&mut rng, 5) != 0);
            let op = ClientOp::Put {
                key: key.clone(),
                value: value.clone(),
                context: context.clone(),
                w: None,
            };
            let req = w.submit(node, op);
            issued.insert(
                req,
                Issued {
                    key,
                    value,
                    context,
                },
            );
        }
        // Faults.
        if pick(&mut rng, 25) == 0 {
            let x = NodeId(pick(&mut rng, NODES as u64) as u32);
            let a = match pick(&mut rng, 8) {
                0 | 1 => Action::Crash(x),
                2 | 3 => Action::Restart(x),
                4 => {
                    let cut = 1 + pick(&mut rng, 3) as u32;
                    let g1: Vec<NodeId> = (0..cut).map(|i| NodeId((x.0 + i) % NODES)).collect();
                    let g2: Vec<NodeId> =
                        (0..NODES).map(NodeId).filter(|n| !g1.contains(n)).collect();
                    Action::Partition(vec![g1, g2])
                }
                5 => Action::Block {
                    from: x,
                    to: NodeId(pick(&mut rng, NODES as u64) as u32),
                },
                6 => Action::Heal,
                _ => Action::SetNet(NetConfig {
                    latency_min: Dur(1),
                    latency_max: Dur(1 + pick(&mut rng, 40)),
                    loss_ppm: pick(&mut rng, 150_000) as u32,
                    dup_ppm: pick(&mut rng, 50_000) as u32,
                }),
            };
            w.apply(a);
        }
    }

    // Phase 2: faults stop; the cluster settles.
    w.apply(Action::Heal);
    w.apply(Action::SetNet(NetConfig::default()));
    for i in 0..NODES {
        w.apply(Action::Restart(NodeId(i)));
    }
    w.run_for(Dur::secs(15));
    let hints = w.hints();
    if !hints.is_empty() {
        return Err(format!(
            "{} hints not delivered after settling, e.g. {:?}",
            hints.len(),
            &hints[..hints.len().min(3)]
        ));
    }

    // Anti-entropy brings every partition's replicas to equal Merkle roots.
    let mut waited = 0;
    while !w.divergent_partitions().is_empty() {
        if waited >= 60 {
            return Err(format!(
                "Merkle roots still differ after 60 s in partitions {:?}",
                w.divergent_partitions()
            ));
        }
        w.run_for(Dur::secs(1));
        waited += 1;
    }

    // Final reads with R = N.
    let mut finals: BTreeMap<Bytes, Vec<(Dot, Bytes)>> = BTreeMap::new();
    for (i, key) in keys.iter().enumerate() {
        let r = w.submit(
            NodeId(i as u32 % NODES),
            ClientOp::Get {
                key: key.clone(),
                r: Some(3),
            },
        );
        match w.run_until_done(r, Dur::secs(5)) {
            Some(Ok(ClientReply::Read { values, .. })) => {
                finals.insert(key.clone(), values);
            }
            other => return Err(format!("final read of {key:?} failed: {other:?}")),
        }
    }
    let written: BTreeSet<&Bytes> = issued.values().map(|i| &i.value).collect();
    for (key, values) in &finals {
        for (_, v) in values {
            if !written.contains(v) {
                return Err(format!("{key:?} holds {v:?}, which no client wrote"));
            }
        }
    }
    // Durability: each acknowledged write is (or was superseded) on at least W
    // distinct primaries once hints are handed off.
    let ring = w.ring().clone();
    let wq = w.sim_config().config.w;
    for (req, rec) in w.clients() {
        let Some((_, Ok(ClientReply::Written { dot, .. }))) = &rec.done else {
            continue;
        };
        let key = rec.op.key();
        let covering = ring
            .preference_list(key)
            .primaries
            .iter()
            .filter(|p| {
                w.storage(**p)
                    .and_then(|s| s.object(key))
                    .is_some_and(|o| o.context().covers(dot))
            })
            .count();
        if covering < wq {
            return Err(format!("acknowledged write {req:?} to {key:?} (dot {dot}) is on {covering} primaries, W={wq}"));
        }
    }
    let present = |key: &Bytes, value: &Bytes| {
        finals
            .get(key)
            .is_some_and(|vs| vs.iter().any(|(_, v)| v == value))
    };
    for (req, rec) in w.clients() {
        let Some((_, Ok(ClientReply::Written { dot, .. }))) = &rec.done else {
            continue;
        };
        let Some(write) = issued.get(req) else {
            continue;
        };
        let is_present = finals
            .get(&write.key)
            .is_some_and(|vs| vs.iter().any(|(d, v)| d == dot && *v == write.value));
        if is_present {
            continue;
        }
        let superseded = issued.iter().any(|(r2, w2)| {
            w2.key == write.key
                && w2.context.as_ref().is_some_and(|c| c.covers(dot))
                && (present(&w2.key, &w2.value)
                    || matches!(
                        w.client(*r2).and_then(|c| c.done.as_ref()),
                        Some((_, Ok(_)))
                    ))
        });
        if !superseded {
            return Err(format!(
                "acknowledged write {:?}={:?} (dot {dot}) is lost; final siblings {:?}",
                write.key,
                write.value,
                finals.get(&write.key)
            ));
        }
    }
    Ok(())
}

/// Runs `run(seed)` over `RINGLAB_SEED` alone, or seeds 1..=`RINGLAB_SEEDS`/`share`
/// (default 200), printing each failing seed with its replay command.
fn run_seeds(share: u64, what: &str, filter: &str, run: impl Fn(u64) -> Result<(), String>) {
    let seeds: Vec<u64> = match std::env::var("RINGLAB_SEED") {
        Ok(s) => vec![s.parse().expect("RINGLAB_SEED is a number")],
        Err(_) => {
            let n: u64 = std::env::var("RINGLAB_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(200);
            (1..=n.div_ceil(share)).collect()
        }
    };
    let mut failed = Vec::new();
    for &seed in &seeds {
        if let Err(e) = run(seed) {
            eprintln!("seed {seed} FAILED{what}: {e}\n  replay: RINGLAB_SEED={seed} cargo test -p ringlab-core --test random_faults {filter}");
            failed.push(seed);
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} seeds failed: {failed:?}",
        failed.len(),
        seeds.len()
    );
    eprintln!("{} seeds passed", seeds.len());
}

#[test]
fn acknowledged_writes_survive_random_faults() {
    run_seeds(1, "", "", run_seed);
}

/// The same workload and faults with `ReadFanout::Quorum` reads (a quarter of the
/// seeds): reads that ask only R replicas still see every acknowledged write.
#[test]
fn acknowledged_writes_survive_random_faults_with_quorum_reads() {
    run_seeds(4, " (quorum reads)", "quorum_reads", |seed| {
        run_seed_with(seed, ringlab_core::ReadFanout::Quorum)
    });
}
