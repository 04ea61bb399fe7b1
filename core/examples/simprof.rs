//! Profiling helper: a 64-node world with a busy workload, run for 20 virtual
//! seconds (`perf record target/release/examples/simprof`).
use ringlab_core::sim::{Action, SimConfig, Workload, World};
use ringlab_core::Dur;
fn main() {
    let mut w = World::new(SimConfig::new(7, 64, 3)).unwrap();
    w.apply(Action::SetWorkload(Some(Workload {
        interval: Dur::millis(1),
        ..Workload::default()
    })));
    w.run_for(Dur::secs(1));
    let t = std::time::Instant::now();
    let before = w.stats().delivered;
    w.run_for(Dur::secs(20));
    let n = w.stats().delivered - before;
    println!(
        "{n} msgs in {:?}: {:.0}/s",
        t.elapsed(),
        n as f64 / t.elapsed().as_secs_f64()
    );
}
