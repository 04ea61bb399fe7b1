//! Timing of the explorer's per-frame work with 1000 nodes, natively (release):
//! `cargo test --release -p ringlab-web --test big -- --ignored --nocapture`.

use ringlab_core::sim::{Action, NetConfig, SimConfig, Workload};
use ringlab_core::{Dur, Time};
use ringlab_web::replay::Sim;
use ringlab_web::scenario::Scenario;
use std::time::Instant;

/// The cluster perf.mjs builds through the settings panel: 1000 nodes, 4 zones,
/// Q = 1024, the form's defaults otherwise (with its 10 req/s workload).
fn page_1000() -> Sim {
    let mut cfg = SimConfig::new(1, 1000, 4);
    cfg.config.partitions = 1024;
    cfg.config.n = 3;
    cfg.config.r = 2;
    cfg.config.w = 2;
    cfg.config.gossip_interval = Dur::millis(250);
    cfg.config.phi_threshold = 8;
    cfg.net = NetConfig {
        latency_min: Dur::millis(2),
        latency_max: Dur::millis(30),
        ..NetConfig::default()
    };
    let mut sim = Sim::new(Scenario::new(cfg)).unwrap();
    sim.act(Action::SetWorkload(Some(Workload {
        interval: Dur::millis(100),
        ..Workload::default()
    })));
    sim
}

#[test]
#[ignore]
fn frame_parts_1000() {
    let t = Instant::now();
    let mut sim = page_1000();
    println!("build: {:?}", t.elapsed());
    for slice in 0..30 {
        let target = Time(sim.now().0 + 100);
        let t = Instant::now();
        let steps0 = sim.steps();
        sim.advance(target, None, u64::MAX);
        let adv = t.elapsed();
        let t = Instant::now();
        let inv = ringlab_web::invariants::compute(sim.world());
        let invt = t.elapsed();
        println!(
            "slice {slice}: t={} ms, {} events, advance {:?}, invariants {:?} (members {:?})",
            sim.now().0,
            sim.steps() - steps0,
            adv,
            invt,
            inv.membership
        );
    }
}

/// The page's loop without the page: from t = 0, advance as fast as possible and
/// print the virtual clock every wall second (compare with web/e2e/perf-big.mjs).
#[test]
#[ignore]
fn clock_1000() {
    let secs: u64 = std::env::var("SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let t = Instant::now();
    let mut sim = page_1000();
    println!("build: {:?}", t.elapsed());
    let start = Instant::now();
    let mut line = Vec::new();
    let mut sec = 1;
    while start.elapsed().as_secs() < secs {
        let target = Time(sim.now().0 + 10_000);
        while !sim.advance(target, None, 500) {
            if start.elapsed().as_secs_f64() >= sec as f64 {
                line.push(format!("{sec}s:{:.2}", sim.now().0 as f64 / 1000.0));
                sec += 1;
            }
        }
    }
    println!("virtual clock (wall s: virtual s): {}", line.join(" "));
    println!(
        "end {:.2} virtual s after {:.2} wall s, {} events",
        sim.now().0 as f64 / 1000.0,
        start.elapsed().as_secs_f64(),
        sim.steps()
    );
}
