//! Ring benchmarks: the per-request lookup (must be trivially cheap, it runs on
//! every client request) and membership changes at the largest supported
//! partition count (must stay well under 100 ms, they run on every node).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ringlab_core::id::NodeId;
use ringlab_core::ring::Ring;

fn members(s: u32, zones: u32) -> Vec<(NodeId, String)> {
    (0..s)
        .map(|i| (NodeId(i), format!("z{}", i % zones)))
        .collect()
}

fn lookup(c: &mut Criterion) {
    let ring = Ring::new(1024, 3, &members(64, 1)).unwrap();
    let keys: Vec<Vec<u8>> = (0..1024u32)
        .map(|i| format!("key-{i}").into_bytes())
        .collect();
    let mut i = 0;
    c.bench_function(
        "lookup: partition_of + primaries (S=64, Q=1024, N=3)",
        |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                let p = ring.partition_of(black_box(&keys[i]));
                black_box(ring.primaries(p)[0])
            })
        },
    );
    c.bench_function("preference_walk first N+2 (S=64, Q=1024, N=3)", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            let p = ring.partition_of(black_box(&keys[i]));
            black_box(ring.preference_walk(p).take(5).last())
        })
    });
    c.bench_function("preference_list, full (S=64, Q=1024, N=3)", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(ring.preference_list(black_box(&keys[i])))
        })
    });
}

fn membership(c: &mut Criterion) {
    let ring = Ring::new(4096, 3, &members(64, 1)).unwrap();
    c.bench_function("with_joined (S=64 -> 65, Q=4096, N=3)", |b| {
        b.iter(|| black_box(ring.with_joined(NodeId(64), "z0").unwrap()))
    });
    let zoned = Ring::new(4096, 3, &members(64, 4)).unwrap();
    c.bench_function("with_joined, 4 zones (S=64 -> 65, Q=4096, N=3)", |b| {
        b.iter(|| black_box(zoned.with_joined(NodeId(64), "z1").unwrap()))
    });
    c.bench_function("with_removed (S=64 -> 63, Q=4096, N=3)", |b| {
        b.iter(|| black_box(ring.with_removed(NodeId(7)).unwrap()))
    });
}

criterion_group!(benches, lookup, membership);
criterion_main!(benches);
