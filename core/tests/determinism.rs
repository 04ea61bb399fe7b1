//! Same seed, same actions ⇒ same trace, byte for byte. The expected fingerprint is
//! checked in (`reference_trace_hash.txt`) and asserted both here (native) and in
//! `wasm.rs` under headless Chromium, which proves the two platforms agree.
//! If a protocol change alters the trace on purpose, update the file with the
//! printed value.

use ringlab_core::sim::reference_run;

const SEED: u64 = 2026;
const SECS: u64 = 15;

fn golden() -> u64 {
    let s = include_str!("reference_trace_hash.txt").trim();
    u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex hash")
}

#[test]
fn same_seed_same_trace_twice() {
    let a = reference_run(SEED, SECS);
    let b = reference_run(SEED, SECS);
    assert!(
        a.stats().delivered > 2_000,
        "the run does something: {:?}",
        a.stats()
    );
    assert!(a.stats().dropped > 0, "faults happened");
    assert_eq!(a.trace_hash(), b.trace_hash());
    assert_ne!(
        reference_run(SEED + 1, SECS).trace_hash(),
        a.trace_hash(),
        "the seed matters"
    );
    println!("reference trace hash: {:#018x}", a.trace_hash());
    assert_eq!(
        a.trace_hash(),
        golden(),
        "trace changed: got {:#018x}",
        a.trace_hash()
    );
}

#[test]
fn recording_the_trace_does_not_change_it() {
    let mut cfg = ringlab_core::sim::SimConfig::new(5, 5, 2);
    cfg.net.loss_ppm = 50_000;
    let run = |record: bool| {
        let mut w = ringlab_core::sim::World::new(cfg.clone()).unwrap();
        w.record_trace(record);
        w.apply(ringlab_core::sim::Action::SetWorkload(Some(
            Default::default(),
        )));
        w.run_for(ringlab_core::Dur::secs(5));
        (w.trace_hash(), w.trace().len())
    };
    let (h1, n1) = run(true);
    let (h2, n2) = run(false);
    assert_eq!(h1, h2);
    assert!(n1 > 1000 && n2 == 0);
}
