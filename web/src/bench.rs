//! Simulator speed, measured the same way natively and in the page: the
//! criterion bench's world (`core/benches/sim.rs`: seed 7, 3 zones, demo timers,
//! a request every virtual millisecond when busy, 1 s warm-up), then `secs`
//! virtual seconds timed by the caller's clock.

use ringlab_core::sim::{Action, SimConfig, Workload, World};
use ringlab_core::Dur;

/// The bench world after its 1 s warm-up.
pub fn world(nodes: usize, busy: bool) -> World {
    let mut w = World::new(SimConfig::new(7, nodes, 3)).expect("valid bench config");
    if busy {
        w.apply(Action::SetWorkload(Some(Workload {
            interval: Dur::millis(1),
            ..Workload::default()
        })));
    }
    w.run_for(Dur::secs(1));
    w
}

/// Runs `secs` virtual seconds on `w`; returns messages delivered meanwhile.
pub fn run(w: &mut World, secs: u64) -> u64 {
    let before = w.stats().delivered;
    w.run_for(Dur::secs(secs));
    w.stats().delivered - before
}

/// In the browser: (delivered messages, wall ms, virtual ms) for `secs` virtual
/// seconds of the bench world, timed with `performance.now()`.
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn bench_sim(nodes: usize, busy: bool, secs: u32) -> Vec<f64> {
    let perf = web_sys::window().and_then(|w| w.performance());
    let now = || perf.as_ref().map_or(0.0, |p| p.now());
    let mut w = world(nodes, busy);
    let t0 = now();
    let delivered = run(&mut w, u64::from(secs));
    let t1 = now();
    vec![delivered as f64, t1 - t0, f64::from(secs) * 1000.0]
}
