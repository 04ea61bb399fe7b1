//! The determinism test in headless Chromium: the reference run must produce the
//! same trace fingerprint in WASM as natively (`determinism.rs` asserts the same
//! checked-in value).
#![cfg(target_arch = "wasm32")]

use ringlab_core::sim::reference_run;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
fn reference_trace_matches_native() {
    let s = include_str!("reference_trace_hash.txt").trim();
    let golden = u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    let w = reference_run(2026, 15);
    assert_eq!(
        w.trace_hash(),
        golden,
        "wasm trace {:#018x}",
        w.trace_hash()
    );
}

#[wasm_bindgen_test]
fn s1_hint_round_trip_in_the_browser() {
    use bytes::Bytes;
    use ringlab_core::sim::{Action, SimConfig, World};
    use ringlab_core::{ClientOp, Dur, NodeId};
    let mut w = World::new(SimConfig::new(1, 7, 1)).unwrap();
    let key = Bytes::from_static(b"k");
    w.run_for(Dur::secs(1));
    let owner = w.ring().preference_list(&key).primaries[0];
    w.apply(Action::Crash(owner));
    w.run_for(Dur::secs(2));
    let at = NodeId((owner.0 + 1) % 7);
    let r = w.submit(
        at,
        ClientOp::Put {
            key: key.clone(),
            value: Bytes::from_static(b"v"),
            context: None,
            w: None,
        },
    );
    assert!(matches!(w.run_until_done(r, Dur::secs(2)), Some(Ok(_))));
    assert_eq!(w.hints().len(), 1);
    w.apply(Action::Restart(owner));
    w.run_for(Dur::secs(2));
    assert!(w.hints().is_empty());
    assert_eq!(w.replicas(&key).len(), 3);
}
