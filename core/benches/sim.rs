//! Simulator throughput: delivered simulated messages per second of wall time,
//! 64 nodes, default demo timers, a client workload, 1–5 ms latency.
//! Criterion reports elements/s = delivered messages/s.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringlab_core::sim::{Action, SimConfig, Workload, World};
use ringlab_core::Dur;

/// `busy`: a client request every virtual millisecond (replica traffic dominates);
/// otherwise an idle cluster (heartbeats, gossip, anti-entropy only).
fn world(nodes: usize, busy: bool) -> World {
    let mut w = World::new(SimConfig::new(7, nodes, 3)).unwrap();
    if busy {
        w.apply(Action::SetWorkload(Some(Workload {
            interval: Dur::millis(1),
            ..Workload::default()
        })));
    }
    w.run_for(Dur::secs(1));
    w
}

fn throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("sim");
    for (nodes, busy) in [(7usize, true), (64, true), (64, false), (1000, false)] {
        // Messages one 1-second slice delivers (deterministic: same seed, same count).
        let mut probe = world(nodes, busy);
        let before = probe.stats().delivered;
        probe.run_for(Dur::secs(1));
        let per_slice = probe.stats().delivered - before;
        g.throughput(Throughput::Elements(per_slice));
        let mix = if busy { "busy" } else { "idle" };
        g.bench_function(format!("delivered_msgs_{nodes}_nodes_{mix}"), |b| {
            b.iter_batched(
                || world(nodes, busy),
                |mut w| {
                    w.run_for(Dur::secs(1));
                    w
                },
                criterion::BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
