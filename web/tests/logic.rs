//! The explorer's logic in headless Chromium (and natively): the URL encoding
//! round-trips, a replay equals the live run event for event (same trace hash),
//! stepping back lands on the previous event, and every guided scenario's steps
//! reach their checks.

use bytes::Bytes;
use ringlab_core::sim::{Action, SimConfig, Workload};
use ringlab_core::{Admin, ClientOp, Dur, NodeId, Ring, Time};
use ringlab_web::presets;
use ringlab_web::replay::Sim;
use ringlab_web::scenario::Scenario;

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;
#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

/// A live run with every kind of action, some applied between two events that
/// share a virtual time (after single steps).
fn live() -> Sim {
    let mut cfg = SimConfig::new(42, 6, 2);
    cfg.net.loss_ppm = 10_000;
    cfg.net.dup_ppm = 5_000;
    let mut sim = Sim::new(Scenario::new(cfg)).unwrap();
    sim.act(Action::SetWorkload(Some(Workload::default())));
    sim.advance(Time(700), None, u64::MAX);
    sim.act(Action::Crash(NodeId(1)));
    for _ in 0..37 {
        sim.step_one();
    }
    sim.act(Action::Client {
        node: NodeId(2),
        op: ClientOp::Put {
            key: Bytes::from("k"),
            value: Bytes::from("v"),
            context: None,
            w: Some(2),
        },
    });
    sim.advance(Time(1_500), None, 500); // a budget-limited frame
    sim.advance(Time(1_500), None, u64::MAX);
    sim.act(Action::Partition(vec![
        vec![NodeId(0), NodeId(2)],
        vec![NodeId(3), NodeId(4), NodeId(5)],
    ]));
    sim.advance(Time(2_300), None, u64::MAX);
    if let Some(m) = sim.world().in_flight().first().map(|m| m.id) {
        sim.act(Action::DropMessage(m));
    }
    sim.act(Action::Heal);
    sim.act(Action::Restart(NodeId(1)));
    sim.advance(Time(3_000), None, u64::MAX);
    sim
}

#[test]
fn url_round_trip() {
    let mut sim = live();
    sim.act(Action::Admin {
        node: NodeId(0),
        admin: Admin::SetRing(Ring::new(16, 3, &[(NodeId(0), "z1".to_owned())]).unwrap()),
    });
    let sc = sim.snapshot();
    assert!(sc.actions.len() >= 7);
    let frag = sc.to_fragment();
    assert!(frag
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_=".contains(c)));
    let back = Scenario::from_fragment(&format!("#{frag}"))
        .unwrap()
        .unwrap();
    assert_eq!(back, sc);
    assert!(Scenario::from_fragment("#s=%%%").unwrap().is_err());
    assert!(Scenario::from_fragment("#s=AAAA").unwrap().is_err());
    assert!(Scenario::from_fragment("#other").is_none());
    // A hand-edited link naming a node that does not exist is refused, not run.
    let mut bad = sc.clone();
    bad.actions.push(ringlab_web::scenario::Recorded {
        steps: u64::MAX,
        at: Time(u64::MAX),
        action: Action::Admin {
            node: NodeId(99),
            admin: Admin::Leave,
        },
    });
    assert!(Scenario::decode(&bad.encode()).is_err());
}

#[test]
fn replay_equals_live_run() {
    let sim = live();
    let sc = sim.snapshot();
    let replayed = Sim::replay_to(sc.clone(), sim.now()).unwrap();
    assert_eq!(replayed.steps(), sim.steps());
    assert_eq!(replayed.world().trace_hash(), sim.world().trace_hash());
    // Through the URL too.
    let decoded = Scenario::decode(&sc.encode()).unwrap();
    let again = Sim::replay_to(decoded, sim.now()).unwrap();
    assert_eq!(again.world().trace_hash(), sim.world().trace_hash());
    // Replaying by event count lands on the same state as well.
    let by_steps = Sim::replay_steps(sc, sim.steps()).unwrap();
    assert_eq!(by_steps.world().trace_hash(), sim.world().trace_hash());
}

#[test]
fn step_back_then_forward_replays_the_recorded_future() {
    let mut sim = live();
    let steps = sim.steps();
    let mut prev = Sim::replay_steps(sim.snapshot(), steps - 1).unwrap();
    assert_eq!(prev.steps(), steps - 1);
    assert!(prev.now() <= sim.now());
    // Going back in time and playing forward again replays the same run.
    let mut back = Sim::replay_to(sim.snapshot(), Time(1_000)).unwrap();
    assert!(back.has_future());
    back.advance(sim.now(), None, u64::MAX);
    assert_eq!(back.world().trace_hash(), sim.world().trace_hash());
    // A new action in the past starts a new branch.
    prev.act(Action::Crash(NodeId(0)));
    assert!(!prev.has_future());
    sim.advance(sim.now() + Dur::millis(1), None, u64::MAX);
}

#[test]
fn s1_steps_reach_their_checks() {
    let (sim, checks) = presets::run_all("S1").unwrap();
    assert_eq!(checks.len(), 6);
    for (i, c) in checks.iter().enumerate() {
        assert!(c.pass, "S1 step {}: {} — {}", i + 1, c.label, c.detail);
    }
    // Replaying the guided run from its URL reaches the same end state.
    let again = Sim::replay_to(
        Scenario::decode(&sim.snapshot().encode()).unwrap(),
        sim.now(),
    )
    .unwrap();
    assert_eq!(again.world().trace_hash(), sim.world().trace_hash());
    assert_eq!(
        presets::current(&again).map(|c| c.2.pass),
        Some(true),
        "the replayed guide is on its last step, passing"
    );
}

#[test]
fn every_preset_reaches_its_checks() {
    for id in presets::IDS {
        if id == "S1" {
            continue;
        }
        let (_, checks) = presets::run_all(id).unwrap();
        for (i, c) in checks.iter().enumerate() {
            assert!(c.pass, "{id} step {}: {} — {}", i + 1, c.label, c.detail);
        }
    }
}

/// The frame loop's chunks: about 3 ms of events at the measured cost, within
/// [32, 1000], and the floor when the budget is spent.
#[test]
fn frame_chunks_follow_event_cost() {
    use ringlab_web::app::chunk_events;
    assert_eq!(chunk_events(14.0, 0.0078125), 384);
    assert_eq!(chunk_events(1.0, 0.0078125), 128);
    assert_eq!(chunk_events(0.0, 0.0078125), 32);
    assert_eq!(chunk_events(14.0, 0.0), 1000);
    assert_eq!(chunk_events(14.0, 1.0), 32);
}

/// The Live tab decodes a server's event line (the JSON `ringlab serve` writes on
/// `GET /events`) in the browser exactly as natively.
#[test]
fn a_live_event_line_decodes_in_the_browser() {
    let event = ringlab_core::Event::ReplicaStored {
        key: Bytes::from_static(b"greeting"),
        siblings: 1,
    };
    let json = format!(
        r#"{{"at_ms":42,"node":"B","kind":"{}","event":{}}}"#,
        event.kind(),
        serde_json::to_string(&event).unwrap()
    );
    let line = ringlab_web::live::parse_event(&json).unwrap();
    assert_eq!(
        (line.at_ms, line.node.as_str(), line.kind.as_str()),
        (42, "B", "stored")
    );
    assert!(line.text.starts_with("stored greeting"), "{}", line.text);
    assert!(ringlab_web::live::parse_event("{").is_err());
}
