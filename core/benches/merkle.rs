//! Criterion benches for the per-partition Merkle tree: one-key updates and a
//! full exchange (diff) between two 10^5-key replicas that differ in 10 keys;
//! one page of a partition pull.

use criterion::{criterion_group, criterion_main, Criterion};
use ringlab_core::merkle::{run_exchange, Hash, MerkleConfig, MerkleTree};
use sha2::{Digest, Sha256};
use std::hint::black_box;

const N: u64 = 100_000;

fn key(i: u64) -> Vec<u8> {
    format!("user:{i:010}").into_bytes()
}

fn item(key: &[u8], version: u64) -> Hash {
    let mut h = Sha256::new();
    h.update(key);
    h.update(version.to_be_bytes());
    h.finalize().into()
}

fn tree(n: u64) -> MerkleTree {
    MerkleTree::from_items(
        MerkleConfig::default(),
        (0..n).map(|i| (key(i), item(&key(i), 0))),
    )
}

fn update(c: &mut Criterion) {
    let mut t = tree(N);
    let keys: Vec<Vec<u8>> = (0..N).map(key).collect();
    let items: Vec<Hash> = (1..=64).map(|v| item(b"v", v)).collect();
    let mut i = 0usize;
    c.bench_function("update existing key (1e5 keys, depth 10)", |b| {
        b.iter(|| {
            i += 1;
            let k = &keys[(i * 7919) % keys.len()];
            black_box(t.insert(k, items[i % items.len()]))
        })
    });
    // "user:…42x" sorts right after "user:…42": a uniformly random position in
    // its bucket, so this pays the average leaf shift (about m/2 hashes).
    let new_keys: Vec<Vec<u8>> = (0..1000u64)
        .map(|i| [key(i * 97), b"x".to_vec()].concat())
        .collect();
    c.bench_function("insert + remove new key (1e5 keys, depth 10)", |b| {
        b.iter(|| {
            i += 1;
            let k = &new_keys[i % new_keys.len()];
            black_box(t.insert(k, items[i % items.len()]) + t.remove(k))
        })
    });
}

fn exchange(c: &mut Criterion) {
    let a = tree(N);
    let mut b = a.clone();
    for j in 0..10 {
        let i = j * (N / 10);
        b.insert(&key(i), item(&key(i), 1));
    }
    c.bench_function("exchange 1e5 vs 1e5, 10 differing keys", |bench| {
        bench.iter(|| {
            let r = run_exchange(black_box(&a), black_box(&b)).unwrap();
            assert_eq!(r.a_sends.len(), 10);
            r.bytes
        })
    });
    let same = a.clone();
    c.bench_function("exchange 1e5 vs 1e5, identical", |bench| {
        bench.iter(|| run_exchange(black_box(&a), black_box(&same)).unwrap().bytes)
    });
}

/// One page of a partition pull (64 keys after a cursor) from a 10^4-key
/// partition tree: the tree-order cursor the node uses, against collecting and
/// sorting every key per page as pulls did before.
fn pull_page(c: &mut Criterion) {
    let t = tree(10_000);
    let order: Vec<Vec<u8>> = t.iter().map(|(k, _)| k.to_vec()).collect();
    let cursor = order[order.len() / 2].clone();
    c.bench_function(
        "pull page of 64 after a cursor (1e4 keys): tree order",
        |b| {
            b.iter(|| {
                t.iter_after(Some(black_box(&cursor[..])))
                    .take(65)
                    .map(|(k, _)| k.len())
                    .sum::<usize>()
            })
        },
    );
    let mut sorted = order.clone();
    sorted.sort();
    let key_cursor = sorted[sorted.len() / 2].clone();
    c.bench_function(
        "pull page of 64 after a cursor (1e4 keys): sort every key",
        |b| {
            b.iter(|| {
                let mut keys: Vec<Vec<u8>> = t
                    .iter()
                    .map(|(k, _)| k.to_vec())
                    .filter(|k| k.as_slice() > black_box(&key_cursor[..]))
                    .collect();
                keys.sort();
                keys.into_iter().take(65).map(|k| k.len()).sum::<usize>()
            })
        },
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = update, exchange, pull_page
}
criterion_main!(benches);
