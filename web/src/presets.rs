//! The guided scenarios of SCENARIOS.md. A preset is a cluster configuration and
//! a list of steps; each step is one sentence, the actions "next" applies, how long
//! the clock then runs, and the check the invariants panel shows. Every action goes
//! through [`Sim::act`], so a guided run is an ordinary recorded scenario: it can
//! be scrubbed back, replayed, and shared as a link.
//!
//! Nothing here decides anything about the protocol: the actions are what a user
//! could click, and the checks only read what the simulator reports.

use crate::replay::Sim;
use crate::scenario::{Guide, Scenario};
use bytes::Bytes;
use ringlab_core::sim::{Action, SimConfig, World};
use ringlab_core::{Admin, ClientOp, ClientReply, Dur, NodeId, Partition, Ring, Storage, Time};

const A: NodeId = NodeId(0);
const B: NodeId = NodeId(1);
const C: NodeId = NodeId(2);
const D: NodeId = NodeId(3);
const E: NodeId = NodeId(4);

/// The outcome of a step's check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What is checked.
    pub label: String,
    /// Whether it holds now.
    pub pass: bool,
    /// What the simulator reports.
    pub detail: String,
}

/// One step of a guided scenario.
pub struct Step {
    /// One sentence for the side panel.
    pub text: String,
    /// Actions applied when the step is entered.
    pub actions: Vec<Action>,
    /// Virtual time the clock runs after entering the step.
    pub run: Dur,
    /// The step's check.
    pub check: fn(&Sim, &[u8]) -> Check,
}

/// A guided scenario.
pub struct Preset {
    /// "S1" …
    pub id: &'static str,
    /// Title.
    pub title: &'static str,
    /// The world's configuration.
    pub cfg: SimConfig,
    /// The key the scenario is about.
    pub key: Vec<u8>,
}

/// Every preset id, in menu order.
pub const IDS: [&str; 10] = ["S1", "S2", "S3", "S4", "S5", "S6", "S7", "S7b", "S8", "S9"];

/// The title of a preset.
pub fn title(id: &str) -> &'static str {
    match id {
        "S1" => "S1 · Sloppy quorum and hinted handoff",
        "S2" => "S2 · Hint lost before delivery",
        "S3" => "S3 · Building and updating a Merkle tree",
        "S4" => "S4 · Anti-entropy between two replicas",
        "S5" => "S5 · Membership change with Merkle trees",
        "S6" => "S6 · Gossip spreads membership",
        "S7" => "S7 · Logical partition, no seeds",
        "S7b" => "S7 · Logical partition healed by a seed",
        "S8" => "S8 · Failure detection, temporary vs permanent",
        "S9" => "S9 · Replication across zones",
        _ => "unknown scenario",
    }
}

fn fresh(seed: u64, nodes: usize, seeds: &[NodeId]) -> SimConfig {
    let mut cfg = SimConfig::new(seed, nodes, 1);
    cfg.bootstrap = false;
    cfg.config.seeds = seeds.to_vec();
    cfg
}

fn cfg_of(id: &str) -> SimConfig {
    match id {
        "S1" => SimConfig::new(1, 7, 1),
        "S2" => SimConfig::new(2, 7, 1),
        "S3" | "S4" => {
            let mut c = SimConfig::new(if id == "S3" { 3 } else { 4 }, 3, 1);
            c.config.partitions = 8;
            c
        }
        "S5" => SimConfig::new(5, 4, 1),
        "S6" => fresh(6, 5, &[]),
        "S7" => fresh(7, 4, &[]),
        "S7b" => fresh(7, 4, &[A]),
        "S8" => SimConfig::new(8, 5, 1),
        _ => SimConfig::new(9, 9, 3),
    }
}

/// A key whose preference list starts A, B, C with D the first fallback.
pub fn abcd_key(ring: &Ring) -> Vec<u8> {
    (0..100_000)
        .map(|i| format!("user:{i}").into_bytes())
        .find(|k| {
            let pl = ring.preference_list(k);
            pl.primaries == [A, B, C] && pl.fallbacks.first() == Some(&D)
        })
        .unwrap_or_else(|| b"user:0".to_vec())
}

/// Eight keys of partition 0 (S3's key range).
fn range_keys(ring: &Ring) -> Vec<Bytes> {
    (0..10_000)
        .map(|i| Bytes::from(format!("K{i}")))
        .filter(|k| ring.partition_of(k) == Partition(0))
        .take(8)
        .collect()
}

fn put(node: NodeId, key: &[u8], v: &str, context: Option<ringlab_core::VersionVector>) -> Action {
    Action::Client {
        node,
        op: ClientOp::Put {
            key: Bytes::copy_from_slice(key),
            value: Bytes::from(v.to_owned()),
            context,
            w: None,
        },
    }
}

/// The context of the newest successful reply about `key` (what a client kept).
pub fn last_context(w: &World, key: &[u8]) -> Option<ringlab_core::VersionVector> {
    w.clients().values().rev().find_map(|c| match &c.done {
        Some((_, Ok(ClientReply::Written { context, .. } | ClientReply::Read { context, .. })))
            if c.op.key().as_ref() == key =>
        {
            Some(context.clone())
        }
        _ => None,
    })
}

fn name(n: NodeId) -> String {
    n.name()
}

fn names(v: &[NodeId]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.iter().map(|n| n.name()).collect::<Vec<_>>().join(", ")
    }
}

fn key_str(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// Nodes whose own storage holds `key`.
pub fn holders(w: &World, key: &[u8]) -> Vec<NodeId> {
    w.replicas(key).into_iter().map(|(n, _)| n).collect()
}

fn values_at(w: &World, n: NodeId, key: &[u8]) -> Vec<String> {
    w.storage(n)
        .and_then(|s| s.object(key))
        .map(|o| {
            o.values()
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn running(w: &World) -> Vec<NodeId> {
    (0..w.node_count() as u32)
        .map(NodeId)
        .filter(|&n| w.is_up(n))
        .collect()
}

/// Whether every running node holds the same membership state.
pub fn converged(w: &World) -> bool {
    let hashes: Vec<u64> = running(w)
        .iter()
        .filter_map(|&n| w.node(n).map(|x| x.membership().hash()))
        .collect();
    hashes.windows(2).all(|p| p[0] == p[1])
}

fn ring_members(w: &World, n: NodeId) -> Vec<NodeId> {
    w.node(n)
        .and_then(|x| x.ring())
        .map(|r| r.members().map(|(id, _)| id).collect())
        .unwrap_or_default()
}

fn last_clients_ok(w: &World, count: usize) -> (usize, usize) {
    let recent: Vec<_> = w.clients().values().rev().take(count).collect();
    let ok = recent
        .iter()
        .filter(|c| matches!(c.done, Some((_, Ok(_)))))
        .count();
    (ok, recent.len())
}

fn check(label: &str, pass: bool, detail: String) -> Check {
    Check {
        label: label.into(),
        pass,
        detail,
    }
}

/// Builds a preset's configuration and key.
pub fn preset(id: &str) -> Option<Preset> {
    let id = IDS.iter().find(|x| **x == id)?;
    let cfg = cfg_of(id);
    let key = match *id {
        "S1" | "S2" => {
            let w = World::new(cfg.clone()).ok()?;
            abcd_key(w.ring())
        }
        _ => Vec::new(),
    };
    Some(Preset {
        id,
        title: title(id),
        cfg,
        key,
    })
}

/// The steps of preset `id`, built against the current world (a step's actions
/// may use what the simulator reported so far, e.g. the context of a reply).
pub fn steps(id: &str, w: &World, key: &[u8]) -> Vec<Step> {
    let k = key_str(key);
    match id {
        "S1" | "S2" => {
            let ctx = last_context(w, key);
            let mut s = vec![
                Step {
                    text: format!("Seven nodes A–G, N=3, R=W=2. The key “{k}” has preference list A, B, C; D is the next node clockwise, the first stand-in sloppy quorum would use."),
                    actions: vec![],
                    run: Dur::secs(1),
                    check: |sim, key| {
                        let pl = sim.world().ring().preference_list(key);
                        check("preference list A, B, C then D", pl.primaries == [A, B, C] && pl.fallbacks.first() == Some(&D),
                            format!("primaries {}, first fallback {}", names(&pl.primaries), pl.fallbacks.first().map_or("none".into(), |n| name(*n))))
                    },
                },
                Step {
                    text: "A client writes the key through B (W=2): A, B and C store it.".into(),
                    actions: vec![put(B, key, "v1", None)],
                    run: Dur::secs(1),
                    check: |sim, key| {
                        let h = holders(sim.world(), key);
                        check("A, B, C store the key", h == [A, B, C], format!("replicas: {}", names(&h)))
                    },
                },
                Step {
                    text: "A crashes. B's failure detector misses A's heartbeats and stops routing to A — a local, temporary decision.".into(),
                    actions: vec![Action::Crash(A)],
                    run: Dur::secs(2),
                    check: |sim, _| {
                        let b_sees = sim.world().node(B).map(|b| b.detector().is_reachable(A));
                        check("A is down; B no longer routes to A", b_sees == Some(false) && !sim.world().is_up(A),
                            format!("A running: {}; B sees A reachable: {:?}", sim.world().is_up(A), b_sees))
                    },
                },
                Step {
                    text: "The client writes the key again. The coordinator skips A and sends the replica to D, which stores it with a hint naming A and acks: the write meets W=2.".into(),
                    actions: vec![put(B, key, "v2", ctx)],
                    run: Dur::secs(1),
                    check: |sim, key| {
                        let w = sim.world();
                        let (ok, n) = last_clients_ok(w, 1);
                        let hint = w.hints().iter().any(|(h, o, k)| (*h, *o) == (D, A) && k.as_ref() == key);
                        let own = w.storage(D).and_then(|s| s.object(key)).is_some();
                        check("write acked; D holds a hint for A", ok == n && hint && !own,
                            format!("write ok: {}; hints: {}; D's own copy: {own}", ok == n,
                                w.hints().iter().map(|(h, o, _)| format!("{h}→{o}")).collect::<Vec<_>>().join(" ")))
                    },
                },
            ];
            if id == "S1" {
                s.push(Step {
                    text: "A recovers. D notices A is reachable again and sends it the hinted replica; A stores it and acks.".into(),
                    actions: vec![Action::Restart(A)],
                    run: Dur::secs(2),
                    check: |sim, key| {
                        let delivered = sim.seen(D, "hint-delivered");
                        let a = values_at(sim.world(), A, key);
                        check("D handed the hint off to A", delivered > 0 && a == ["v2"],
                            format!("hints delivered by D: {delivered}; A holds {a:?}"))
                    },
                });
                s.push(Step {
                    text: "D deleted its hinted copy on A's ack. Exactly three replicas exist again — A, B and C — all at v2.".into(),
                    actions: vec![],
                    run: Dur::millis(500),
                    check: |sim, key| {
                        let w = sim.world();
                        let h = holders(w, key);
                        let all_v2 = h.iter().all(|&n| values_at(w, n, key) == ["v2"]);
                        check("no hints; 3 replicas (A, B, C) at v2", w.hints().is_empty() && h == [A, B, C] && all_v2,
                            format!("hints pending: {}; replicas: {} ({}); all v2: {all_v2}", w.hints().len(), h.len(), names(&h)))
                    },
                });
            } else {
                s.push(Step {
                    text: "D dies for good (its disk is wiped) before A recovers, and A restarts. The only copy of the hint was on D: hinted handoff cannot fix A, which still has v1.".into(),
                    actions: vec![Action::Wipe(D), Action::Restart(A)],
                    run: Dur::secs(1),
                    check: |sim, key| {
                        let w = sim.world();
                        let a = values_at(w, A, key);
                        check("hint gone with D; A still at v1", w.hints().is_empty() && a == ["v1"],
                            format!("hints: {}; A holds {a:?}", w.hints().len()))
                    },
                });
                s.push(Step {
                    text: "D comes back empty. Merkle anti-entropy compares A's partition with B's or C's, descends into the differing branch and sends A exactly the key it lacks.".into(),
                    actions: vec![Action::Restart(D)],
                    run: Dur::secs(30),
                    check: |sim, key| {
                        let w = sim.world();
                        let a = values_at(w, A, key);
                        let rep = sim.seen(A, "merkle-repair");
                        check("A repaired by anti-entropy (v2)", a == ["v2"] && rep > 0,
                            format!("A holds {a:?}; Merkle repairs at A: {rep}; divergent partitions: {}", w.divergent_partitions().len()))
                    },
                });
            }
            s
        }
        "S3" => {
            let keys = range_keys(w.ring());
            let ctx = keys.get(1).and_then(|k2| last_context(w, k2));
            vec![
                Step {
                    text: "Three replicas of partition 0 (Q=8). Each keeps a Merkle tree of fixed key-hash buckets; parents hash their two children.".into(),
                    actions: vec![],
                    run: Dur::secs(1),
                    check: |sim, _| {
                        let d = sim.world().divergent_partitions();
                        check("all trees equal", d.is_empty(), format!("divergent partitions: {}", d.len()))
                    },
                },
                Step {
                    text: format!("A client writes keys K1..K8 of partition 0 ({}). Every replica inserts their leaves; the roots agree.", keys.iter().map(|k| key_str(k)).collect::<Vec<_>>().join(", ")),
                    actions: keys.iter().map(|k| put(A, k, "v1", None)).collect(),
                    run: Dur::secs(1),
                    check: |sim, _| {
                        let w = sim.world();
                        let len = w.node(A).and_then(|n| n.merkle_tree(Partition(0))).map_or(0, |t| t.len());
                        check("8 keys in partition 0; roots equal", len == 8 && w.divergent_partitions().is_empty(), format!("keys in A's tree: {len}"))
                    },
                },
                Step {
                    text: "K2's value changes. Only K2's bucket and its ancestors up to the root are rehashed (the path length), and the replicas agree again.".into(),
                    actions: keys.get(1).map(|k2| vec![put(A, k2, "v2", ctx)]).unwrap_or_default(),
                    run: Dur::secs(1),
                    check: |sim, _| {
                        let w = sim.world();
                        let roots: Vec<String> = [A, B, C].iter().filter_map(|&n| w.node(n)?.merkle_root(Partition(0))).map(|h| ringlab_core::merkle::short_hex(&h)).collect();
                        check("roots equal after the update", w.divergent_partitions().is_empty(), format!("roots: {}", roots.join(" ")))
                    },
                },
            ]
        }
        "S4" => {
            let keys: Vec<Bytes> = (0..40).map(|i| Bytes::from(format!("k{i:02}"))).collect();
            vec![
                Step {
                    text: "Three replicas X=A, Y=B, Z=C share every partition (N=3, Q=8).".into(),
                    actions: vec![],
                    run: Dur::secs(1),
                    check: |sim, _| check("trees equal", sim.world().divergent_partitions().is_empty(), String::new()),
                },
                Step {
                    text: "40 keys are written; identical replicas exchange one root hash per range and stop.".into(),
                    actions: keys.iter().enumerate().map(|(i, k)| put(NodeId(i as u32 % 3), k, "base", None)).collect(),
                    run: Dur::secs(3),
                    check: |sim, _| {
                        let d = sim.world().divergent_partitions();
                        check("replicas identical", d.is_empty(), format!("divergent partitions: {}", d.len()))
                    },
                },
                Step {
                    text: "C is cut off from everyone.".into(),
                    actions: vec![Action::Isolate(C)],
                    run: Dur::secs(1),
                    check: |sim, _| {
                        let w = sim.world();
                        let cut = w.net().blocked().filter(|(a, b)| *a == C || *b == C).count();
                        let sees = w.node(A).map(|a| a.detector().is_reachable(C));
                        check("C is cut off", cut > 0, format!("{cut} directed links to or from C cut; A sees C reachable: {sees:?}"))
                    },
                },
                Step {
                    text: "Five keys are written while C is away: C's trees now differ from A's and B's.".into(),
                    actions: keys[..5].iter().map(|k| put(A, k, "new", None)).collect(),
                    run: Dur::secs(1),
                    check: |sim, _| {
                        let d = sim.world().divergent_partitions();
                        check("some partitions diverge", !d.is_empty(), format!("divergent partitions: {}", d.len()))
                    },
                },
                Step {
                    text: "The cut heals. Exchanges compare roots, descend only into differing branches and send exactly the differing keys; bytes grow with the difference, not the data.".into(),
                    actions: vec![Action::Heal],
                    run: Dur::secs(20),
                    check: |sim, _| {
                        let w = sim.world();
                        let d = w.divergent_partitions();
                        let bytes = w.stats().bytes_by_kind.get(&ringlab_core::MessageKind::Merkle).copied().unwrap_or(0);
                        check("all trees equal again", d.is_empty() && sim.seen(C, "merkle-repair") > 0,
                            format!("divergent: {}; repairs at C: {}; Merkle bytes so far: {bytes}", d.len(), sim.seen(C, "merkle-repair")))
                    },
                },
            ]
        }
        "S5" => vec![
            Step {
                text: "Four nodes A–D own the ring; each keeps Merkle trees for the partitions it replicates.".into(),
                actions: (0..30).map(|i| put(NodeId(i % 4), format!("key{i}").as_bytes(), "v", None)).collect(),
                run: Dur::secs(2),
                check: |sim, _| check("trees equal", sim.world().divergent_partitions().is_empty(), format!("trees built so far: {:?}", sim.trees_built().values().sum::<usize>())),
            },
            Step {
                text: "A new node E joins through A and takes over about a fifth of the partitions. Only partitions whose replica set changed get new trees; the rest keep theirs.".into(),
                actions: vec![Action::AddNode { zone: "z1".into() }, Action::Admin { node: E, admin: Admin::Join { contact: A } }],
                run: Dur::secs(10),
                check: |sim, _| {
                    let w = sim.world();
                    let built: Vec<String> = sim.trees_built().iter().map(|(n, c)| format!("{n}:{c}")).collect();
                    check("E owns partitions; membership converged", w.ring().contains(E) && converged(w),
                        format!("E owns {} partitions; trees built per node: {}", w.ring().partitions_owned_by(E).len(), built.join(" ")))
                },
            },
        ],
        "S6" => vec![
            Step {
                text: "Five nodes start alone. A knows B and E; D knows C and E — they join through them.".into(),
                actions: [(A, B), (A, E), (D, C), (D, E)].iter().map(|&(at, contact)| Action::Admin { node: at, admin: Admin::Join { contact } }).collect(),
                run: Dur::secs(1),
                check: |sim, _| check("joins under way", true, format!("converged: {}", converged(sim.world()))),
            },
            Step {
                text: "F joins through A and G through D. Every gossip round each node reconciles with a random peer (push-pull), and fresh changes are rumoured.".into(),
                actions: vec![
                    Action::AddNode { zone: "z1".into() },
                    Action::AddNode { zone: "z1".into() },
                    Action::Admin { node: NodeId(5), admin: Admin::Join { contact: A } },
                    Action::Admin { node: NodeId(6), admin: Admin::Join { contact: D } },
                ],
                run: Dur::secs(10),
                check: |sim, _| {
                    let w = sim.world();
                    let all = running(w);
                    let know = all.iter().all(|&x| all.iter().all(|&y| w.node(x).and_then(|n| n.membership().get(y)).is_some_and(|m| m.generation > 0)));
                    check("every node knows every node; converged", know && converged(w), format!("{} nodes running", all.len()))
                },
            },
        ],
        "S7" | "S7b" => {
            let ring_a = Ring::new(16, 3, &[(A, "z1".to_owned())]).ok();
            let ring_c = Ring::new(16, 3, &[(C, "z1".to_owned())]).ok();
            let mut actions = Vec::new();
            if let (Some(ra), Some(rc)) = (ring_a, ring_c) {
                actions.push(Action::Admin { node: A, admin: Admin::SetRing(ra) });
                actions.push(Action::Admin { node: C, admin: Admin::SetRing(rc) });
            }
            actions.push(Action::Admin { node: B, admin: Admin::Join { contact: A } });
            actions.push(Action::Admin { node: D, admin: Admin::Join { contact: C } });
            let seeded = id == "S7b";
            vec![
                Step {
                    text: if seeded { "Same as before, but A is a seed, known to everyone." } else { "B joins through A and D through C; A and C never met. No seeds are configured." }.into(),
                    actions,
                    run: Dur::secs(2),
                    check: |sim, _| {
                        let w = sim.world();
                        check("two rings formed", ring_members(w, B).contains(&A) && ring_members(w, D).contains(&C),
                            format!("A's ring: {}; C's ring: {}", names(&ring_members(w, A)), names(&ring_members(w, C))))
                    },
                },
                Step {
                    text: if seeded { "Every node regularly syncs with the seed A, so the two rings learn of each other and merge into one." } else { "Time passes. Each ring believes it is whole: gossip never crosses, the UI shows two rings." }.into(),
                    actions: vec![],
                    run: Dur::secs(20),
                    check: if seeded {
                        |sim, _| {
                            let w = sim.world();
                            let merged = [A, B, C, D].iter().all(|&n| ring_members(w, n) == [A, B, C, D]);
                            check("one ring of A, B, C, D", merged && converged(w), format!("A's ring: {}", names(&ring_members(w, A))))
                        }
                    } else {
                        |sim, _| {
                            let w = sim.world();
                            let split = ring_members(w, A) == [A, B] && ring_members(w, C) == [C, D];
                            check("still two rings", split, format!("A's ring: {}; C's ring: {}", names(&ring_members(w, A)), names(&ring_members(w, C))))
                        }
                    },
                },
            ]
        }
        "S8" => vec![
            Step {
                text: "Five nodes A–E, an established ring.".into(),
                actions: vec![],
                run: Dur::secs(1),
                check: |sim, _| check("membership converged", converged(sim.world()), String::new()),
            },
            Step {
                text: "B stops answering. Each node that misses its heartbeats stops routing to B on its own — local and temporary.".into(),
                actions: vec![Action::Crash(B)],
                run: Dur::secs(3),
                check: |sim, _| {
                    let w = sim.world();
                    let all = [A, C, D, E].iter().all(|&n| w.node(n).is_some_and(|x| !x.detector().is_reachable(B)));
                    check("every live node marks B unreachable", all, String::new())
                },
            },
            Step {
                text: "B stays down past dead_after (5 s): every node reports B dead to the administrator — but B stays in the ring and nothing is rebalanced.".into(),
                actions: vec![],
                run: Dur::secs(6),
                check: |sim, _| {
                    let w = sim.world();
                    let reported = [A, C, D, E].iter().filter(|&&n| sim.seen(n, "dead") > 0).count();
                    check("B reported dead; still in the ring", reported == 4 && w.ring().contains(B), format!("{reported} of 4 reported; B owns {} partitions", w.ring().partitions_owned_by(B).len()))
                },
            },
            Step {
                text: "Only an explicit administrator remove changes ownership: B's partitions move and their data streams to the new owners.".into(),
                actions: vec![Action::Admin { node: A, admin: Admin::Remove { node: B } }],
                run: Dur::secs(10),
                check: |sim, _| {
                    let w = sim.world();
                    let gone = [A, C, D, E].iter().all(|&n| !ring_members(w, n).contains(&B));
                    let pulls: u64 = [A, C, D, E].iter().map(|&n| sim.seen(n, "pull")).sum();
                    check("B removed everywhere; data pulled", gone && pulls > 0, format!("partition pulls: {pulls}"))
                },
            },
        ],
        _ => {
            let keys: Vec<Bytes> = (0..20).map(|i| Bytes::from(format!("k{i}"))).collect();
            let live = [NodeId(1), NodeId(2), NodeId(4), NodeId(5), NodeId(7), NodeId(8)];
            vec![
                Step {
                    text: "Nine nodes in three zones (z1: A, D, G). Every key's N=3 replicas span the three zones.".into(),
                    actions: vec![],
                    run: Dur::secs(1),
                    check: |sim, _| {
                        let r = sim.world().ring();
                        let spread = (0..50).all(|i| {
                            let zones: std::collections::BTreeSet<_> = r.preference_list(format!("k{i}").as_bytes()).primaries.iter().filter_map(|n| r.zone(*n)).collect();
                            zones.len() == 3
                        });
                        check("replicas of 50 keys span 3 zones", spread, String::new())
                    },
                },
                Step {
                    text: "Zone z1 fails: A, D and G crash.".into(),
                    actions: vec![Action::Crash(A), Action::Crash(D), Action::Crash(NodeId(6))],
                    run: Dur::secs(2),
                    check: |sim, _| check("z1 down", !sim.world().is_up(A) && !sim.world().is_up(D), String::new()),
                },
                Step {
                    text: "Twenty keys are written at W=2 through the surviving nodes: every write still meets its quorum.".into(),
                    actions: keys.iter().enumerate().map(|(i, k)| Action::Client { node: live[i % live.len()], op: ClientOp::Put { key: k.clone(), value: Bytes::from("x"), context: None, w: Some(2) } }).collect(),
                    run: Dur::secs(2),
                    check: |sim, _| {
                        let (ok, n) = last_clients_ok(sim.world(), 20);
                        check("20 of 20 writes acked", ok == 20 && n == 20, format!("{ok} of {n} acked"))
                    },
                },
                Step {
                    text: "And read back at R=2: every key is readable.".into(),
                    actions: keys.iter().enumerate().map(|(i, k)| Action::Client { node: live[i % live.len()], op: ClientOp::Get { key: k.clone(), r: Some(2) } }).collect(),
                    run: Dur::secs(2),
                    check: |sim, _| {
                        let (ok, n) = last_clients_ok(sim.world(), 20);
                        check("20 of 20 reads answered", ok == 20 && n == 20, format!("{ok} of {n} answered"))
                    },
                },
            ]
        }
    }
}

/// Loads preset `id`: a fresh world, the guide recorded in the scenario, and the
/// first step's actions applied. Returns the sim and the time step 0 runs to.
pub fn load(id: &str) -> Result<(Sim, Time), String> {
    let p = preset(id).ok_or_else(|| format!("no preset {id}"))?;
    let mut sc = Scenario::new(p.cfg);
    sc.guide = Some(Guide {
        preset: p.id.to_owned(),
        marks: Vec::new(),
        key: p.key.clone(),
    });
    let mut sim = Sim::new(sc)?;
    let first = steps(p.id, sim.world(), &p.key);
    let run = first.first().map_or(Dur::ZERO, |s| s.run);
    if let Some(s) = first.into_iter().next() {
        for a in s.actions {
            sim.act(a);
        }
    }
    let until = sim.now() + run;
    Ok((sim, until))
}

/// The guided step shown at the current time (0 = the set-up).
pub fn current_step(sim: &Sim) -> Option<usize> {
    let g = sim.scenario().guide.as_ref()?;
    let now = sim.now();
    Some(g.marks.iter().filter(|m| **m <= now).count())
}

/// Number of steps of the loaded preset.
pub fn step_count(sim: &Sim) -> usize {
    sim.scenario()
        .guide
        .as_ref()
        .map_or(0, |g| steps(&g.preset, sim.world(), &g.key).len())
}

/// The current step's sentence and check.
pub fn current(sim: &Sim) -> Option<(usize, String, Check)> {
    let g = sim.scenario().guide.as_ref()?;
    let i = current_step(sim)?;
    let all = steps(&g.preset, sim.world(), &g.key);
    let s = all.get(i)?;
    Some((i, s.text.clone(), (s.check)(sim, &g.key)))
}

/// Enters the next step: records the mark, applies its actions; returns the time
/// the clock should run to, or `None` at the last step.
pub fn next(sim: &mut Sim) -> Option<Time> {
    let g = sim.scenario().guide.clone()?;
    let i = current_step(sim)?;
    let all = steps(&g.preset, sim.world(), &g.key);
    let s = all.into_iter().nth(i + 1)?;
    let now = sim.now();
    if let Some(gm) = sim.guide_mut() {
        gm.marks.truncate(i);
        gm.marks.push(now);
    }
    for a in s.actions {
        sim.act(a);
    }
    Some(now + s.run)
}

/// Runs a whole preset headlessly (each step's run time), returning every
/// step's check as it stood at the end of the step.
pub fn run_all(id: &str) -> Result<(Sim, Vec<Check>), String> {
    let (mut sim, until) = load(id)?;
    sim.advance(until, None, u64::MAX);
    let mut checks = vec![current(&sim).map(|c| c.2).ok_or("no step")?];
    while let Some(until) = next(&mut sim) {
        sim.advance(until, None, u64::MAX);
        checks.push(current(&sim).map(|c| c.2).ok_or("no step")?);
    }
    Ok((sim, checks))
}
