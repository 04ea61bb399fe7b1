//! Prints SCENARIOS.md S1 (sloppy quorum and hinted handoff) as it happens in the
//! simulator: `cargo run --release -p ringlab-core --example s1 [seed]`.

use bytes::Bytes;
use ringlab_core::sim::{Action, Record, SimConfig, World};
use ringlab_core::{ClientOp, ClientReply, Dur, Event, NodeId, Storage};

fn main() {
    let seed = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let (a, b, d) = (NodeId(0), NodeId(1), NodeId(3));
    let mut w = World::new(SimConfig::new(seed, 7, 1)).expect("valid config");
    w.record_trace(true);
    let key = (0..100_000)
        .map(|i| Bytes::from(format!("user:{i}")))
        .find(|k| {
            let pl = w.ring().preference_list(k);
            pl.primaries == [a, b, NodeId(2)] && pl.fallbacks.first() == Some(&d)
        })
        .expect("a key with preference list A, B, C, D");
    let pl = w.ring().preference_list(&key);
    println!(
        "S1 — seed {seed}, 7 nodes A..G, N=3 R=2 W=2, Q={}",
        w.ring().partitions()
    );
    println!(
        "key {:?}: partition {}, preference list {:?}, fallbacks {:?}\n",
        key,
        pl.partition.0,
        pl.primaries.iter().map(|n| n.name()).collect::<Vec<_>>(),
        pl.fallbacks.iter().map(|n| n.name()).collect::<Vec<_>>()
    );
    w.run_for(Dur::secs(1));
    w.take_trace();

    step("2. a client writes the key at B");
    let r = w.submit(
        b,
        ClientOp::Put {
            key: key.clone(),
            value: "v1".into(),
            context: None,
            w: None,
        },
    );
    let ctx = match w.run_until_done(r, Dur::secs(2)) {
        Some(Ok(ClientReply::Written { context, .. })) => context,
        other => panic!("{other:?}"),
    };
    w.run_for(Dur::millis(50));
    show(&mut w, &key);

    step("3. A crashes; B stops routing to A once its probes go unanswered");
    w.apply(Action::Crash(a));
    w.run_for(Dur::secs(2));
    show(&mut w, &key);

    step("4. the client writes again: the coordinator skips A, D stores the replica with a hint for A");
    let r = w.submit(
        b,
        ClientOp::Put {
            key: key.clone(),
            value: "v2".into(),
            context: Some(ctx),
            w: None,
        },
    );
    println!("   reply: {:?}", w.run_until_done(r, Dur::secs(2)));
    w.run_for(Dur::millis(50));
    show(&mut w, &key);

    step("5./6. A recovers; D hands the hint off and deletes its copy");
    w.apply(Action::Restart(a));
    w.run_for(Dur::secs(2));
    show(&mut w, &key);
    println!(
        "\nD's hint store: {:?}",
        w.storage(d).map(|s| s.hint_usage(a))
    );
    println!(
        "replicas: {}  trace hash {:#018x}",
        w.replicas(&key).len(),
        w.trace_hash()
    );
}

fn step(title: &str) {
    println!("\n== {title}");
}

/// Prints the interesting events since the last call, then the replica map.
fn show(w: &mut World, key: &Bytes) {
    for e in w.take_trace() {
        if let Record::Event { node, event } = &e.record {
            if matches!(
                event,
                Event::ReplicaStored { .. }
                    | Event::RequestStarted { .. }
                    | Event::QuorumMet { .. }
                    | Event::HintStored { .. }
                    | Event::HintDelivered { .. }
                    | Event::HandoffStarted { .. }
                    | Event::HandoffReceived { .. }
                    | Event::PeerUnreachable { .. }
                    | Event::PeerReachable { .. }
                    | Event::StandInRecruited { .. }
                    | Event::RequestFailed { .. }
            ) {
                println!("   {:>8} {node}: {event:?}", e.at.to_string());
            }
        }
    }
    let replicas: Vec<String> = w
        .replicas(key)
        .iter()
        .map(|(n, o)| {
            format!(
                "{n}={:?}",
                o.values()
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                    .collect::<Vec<_>>()
            )
        })
        .collect();
    let hints: Vec<String> = w
        .hints()
        .iter()
        .map(|(h, o, _)| format!("{h} holds a hint for {o}"))
        .collect();
    println!(
        "   replicas: {}   hints: {}",
        replicas.join(" "),
        if hints.is_empty() {
            "none".into()
        } else {
            hints.join(", ")
        }
    );
}
