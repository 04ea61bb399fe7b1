//! Membership and failure-detection figures for BENCHMARKS.md, measured in the
//! simulator (release build): `cargo run --release -p ringlab-core --example gossip_bench [seeds]`.
//!
//! Protocol settings are `Config::default()` (gossip every 1 s, rumor fanout 3,
//! 4 hops, heartbeats every 500 ms to 3 monitors, phi threshold 8, 3 indirect
//! probes, 1 s suspicion), latency uniform 1–5 ms, as in the foca comparison.

use ringlab_core::sim::{Action, NetConfig, SimConfig, World};
use ringlab_core::{Admin, Config, Dur, MessageKind, NodeId, Ring, Time};

fn world(seed: u64, n: usize, bootstrap: bool, loss_ppm: u32) -> World {
    let mut cfg = SimConfig::new(seed, n, 3);
    cfg.config = Config {
        partitions: 64,
        seeds: vec![NodeId(0)],
        ..Config::default()
    };
    cfg.net = NetConfig {
        latency_min: Dur(1),
        latency_max: Dur(5),
        loss_ppm,
        dup_ppm: 0,
    };
    cfg.bootstrap = bootstrap;
    World::new(cfg).expect("valid config")
}

fn up(w: &World) -> Vec<NodeId> {
    (0..w.node_count() as u32)
        .map(NodeId)
        .filter(|&n| w.is_up(n))
        .collect()
}

fn step_until(
    w: &mut World,
    limit: Dur,
    step: Dur,
    mut done: impl FnMut(&World) -> bool,
) -> Option<Dur> {
    let start = w.now();
    loop {
        if done(w) {
            return Some(w.now().since(start));
        }
        if w.now().since(start) >= limit {
            return None;
        }
        w.run_for(step);
    }
}

fn stats(mut v: Vec<f64>) -> (f64, f64, usize) {
    let misses = v.iter().filter(|x| x.is_nan()).count();
    v.retain(|x| !x.is_nan());
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return (f64::NAN, f64::NAN, misses);
    }
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (q(0.5), q(0.9), misses)
}

fn secs(d: Option<Dur>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_millis() as f64 / 1000.0)
}

/// One change (a new member joining through node A) until every node knows it.
fn one_change(seed: u64, n: usize) -> f64 {
    let mut w = world(seed, n, true, 0);
    w.run_for(Dur::secs(3));
    w.apply(Action::AddNode { zone: "z1".into() });
    let new = NodeId(n as u32);
    w.apply(Action::Admin {
        node: new,
        admin: Admin::Join { contact: NodeId(0) },
    });
    secs(step_until(&mut w, Dur::secs(60), Dur::millis(10), |w| {
        up(w)
            .iter()
            .all(|&x| w.node(x).unwrap().membership().get(new).is_some())
    }))
}

/// All N nodes start within one second and join through one seed, until every
/// node knows every other.
fn mass_join(seed: u64, n: usize) -> f64 {
    let mut w = world(seed, n, false, 0);
    let ring = Ring::new(64, 3, &[(NodeId(0), "z1".to_owned())]).unwrap();
    w.apply(Action::Admin {
        node: NodeId(0),
        admin: Admin::SetRing(ring),
    });
    for i in 1..n as u32 {
        let at = Time(u64::from(i) * 1000 / n as u64);
        w.schedule(
            at,
            Action::Admin {
                node: NodeId(i),
                admin: Admin::Join { contact: NodeId(0) },
            },
        );
    }
    let all = n;
    secs(step_until(&mut w, Dur::secs(120), Dur::millis(100), |w| {
        up(w).iter().all(|&x| {
            w.node(x)
                .unwrap()
                .membership()
                .members()
                .filter(|m| m.generation > 0)
                .count()
                == all
        })
    }))
}

/// A node crashes; time until every live node considers it unreachable.
fn crash_detection(seed: u64, n: usize, loss_ppm: u32) -> f64 {
    let mut w = world(seed, n, true, loss_ppm);
    w.run_for(Dur::secs(10));
    let victim = NodeId(n as u32 / 2);
    w.apply(Action::Crash(victim));
    secs(step_until(&mut w, Dur::secs(60), Dur::millis(50), |w| {
        up(w)
            .iter()
            .all(|&x| !w.node(x).unwrap().detector().is_reachable(victim))
    }))
}

/// 50% loss for 60 s, nobody crashes: live nodes ever unreachable to all others,
/// and "dead" reports made.
fn false_positives(seed: u64, n: usize) -> (usize, usize, usize) {
    let mut w = world(seed, n, true, 0);
    w.run_for(Dur::secs(10));
    w.apply(Action::SetNet(NetConfig {
        latency_min: Dur(1),
        latency_max: Dur(5),
        loss_ppm: 500_000,
        dup_ppm: 0,
    }));
    w.record_trace(true);
    let mut wrongly = std::collections::BTreeSet::new();
    let (mut dead, mut max_pairs) = (0, 0);
    let end = w.now() + Dur::secs(60);
    while w.now() < end {
        w.run_for(Dur::millis(100));
        let nodes = up(&w);
        let mut pairs = 0;
        for &p in &nodes {
            let down_at = nodes
                .iter()
                .filter(|&&x| x != p && !w.node(x).unwrap().detector().is_reachable(p))
                .count();
            pairs += down_at;
            if down_at == nodes.len() - 1 {
                wrongly.insert(p);
            }
        }
        max_pairs = max_pairs.max(pairs);
        dead += w
            .take_trace()
            .iter()
            .filter(|e| {
                matches!(
                    e.record,
                    ringlab_core::sim::Record::Event {
                        event: ringlab_core::Event::PeerReportedDead { .. },
                        ..
                    }
                )
            })
            .count();
    }
    (wrongly.len(), dead, max_pairs)
}

/// Steady-state gossip + detector bytes per node per second.
fn steady_bytes(seed: u64, n: usize) -> (f64, f64) {
    let mut w = world(seed, n, true, 0);
    w.run_for(Dur::secs(10));
    let b0 = w.stats().bytes_by_kind.clone();
    w.run_for(Dur::secs(30));
    let b1 = w.stats().bytes_by_kind.clone();
    let d = |k: MessageKind| {
        (b1.get(&k).copied().unwrap_or(0) - b0.get(&k).copied().unwrap_or(0)) as f64
            / n as f64
            / 30.0
    };
    (d(MessageKind::Gossip), d(MessageKind::Probe))
}

fn main() {
    let seeds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let which = std::env::args().nth(2).unwrap_or_default();
    let run = |name: &str| which.is_empty() || which == name;
    if run("change") {
        println!("## One change (a new member) reaching all N nodes ({seeds} seeds)\n");
        println!("| N | median s | p90 s | rounds (median / 1 s) | log3 N | missed |");
        println!("|---|---|---|---|---|---|");
        let sizes: Vec<usize> = std::env::var("GB_N")
            .ok()
            .map_or(vec![16, 64, 256, 1024], |v| vec![v.parse().unwrap()]);
        for n in sizes {
            let v: Vec<f64> = (1..=seeds).map(|s| one_change(s, n)).collect();
            let (m, p, miss) = stats(v);
            println!(
                "| {n} | {m:.2} | {p:.2} | {:.1} | {:.1} | {miss} |",
                m / 1.0,
                (n as f64).ln() / 3f64.ln()
            );
        }
    }
    if run("mass") {
        println!(
            "\n## Mass join through one seed until every node knows every other ({} seeds)\n",
            seeds
        );
        println!("| N | median s | p90 s | missed (120 s) |");
        println!("|---|---|---|---|");
        let sizes: Vec<usize> = std::env::var("GB_N")
            .ok()
            .map_or(vec![256, 1024], |v| vec![v.parse().unwrap()]);
        for n in sizes {
            let v: Vec<f64> = (1..=seeds).map(|s| mass_join(s, n)).collect();
            let (m, p, miss) = stats(v);
            println!("| {n} | {m:.2} | {p:.2} | {miss} |");
        }
    }
    if run("crash") {
        println!("\n## Crashed node seen unreachable by all live nodes, N=100 ({seeds} seeds)\n");
        println!("| loss | median s | p90 s | missed (60 s) |");
        println!("|---|---|---|---|");
        for loss in [0u32, 500_000] {
            let v: Vec<f64> = (1..=seeds).map(|s| crash_detection(s, 100, loss)).collect();
            let (m, p, miss) = stats(v);
            println!("| {}% | {m:.2} | {p:.2} | {miss} |", loss / 10_000);
        }
    }
    if run("fp") {
        println!(
            "\n## Live nodes wrongly unreachable to all, N=100, 50% loss for 60 s ({} seeds)\n",
            seeds
        );
        println!("| seed | nodes wrongly unreachable-to-all | dead reports | max (viewer, peer) pairs unreachable at once |");
        println!("|---|---|---|---|");
        for s in 1..=seeds {
            let (wrong, dead, pairs) = false_positives(s, 100);
            println!("| {s} | {wrong} | {dead} | {pairs} |");
        }
    }
    if run("bytes") {
        println!("\n## Steady-state bytes per node per second, N=100\n");
        let (g, p) = steady_bytes(1, 100);
        println!("| gossip | heartbeats + probes | total |\n|---|---|---|\n| {g:.0} B/s | {p:.0} B/s | {:.0} B/s |", g + p);
    }
}
