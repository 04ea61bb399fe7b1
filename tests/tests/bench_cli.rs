//! `ringlab bench` against a real 3-node cluster: a short mixed run reports JSON with
//! operations on both sides, ordered percentiles, no not-found reads after the
//! preload, and no errors, on the default runtime and on `--threads 1`; and bad
//! flags are refused with a clear message.

use ringlab_tests::{ringlab_bin, Cluster, ClusterOpts};
use std::process::Command;

#[test]
fn bench_reports_a_clean_mixed_run() {
    let c = Cluster::start(3, ClusterOpts::fast());
    let nodes: Vec<String> = (0..3).map(|i| c.url(i)).collect();
    // The default (multi-thread) runtime, then the current-thread one.
    for threads in [None, Some("1")] {
        check_mixed_run(&nodes, threads);
    }
    c.assert_no_panics();

    for (flag, value) in [("--reads", "2"), ("--threads", "0"), ("--threads", "x")] {
        let bad = Command::new(ringlab_bin())
            .args(["bench", flag, value])
            .output()
            .expect("running ringlab bench");
        assert!(!bad.status.success(), "{flag} {value} was accepted");
        assert!(
            String::from_utf8_lossy(&bad.stderr).contains(flag),
            "{flag} {value}: {}",
            String::from_utf8_lossy(&bad.stderr)
        );
    }
}

fn check_mixed_run(nodes: &[String], threads: Option<&str>) {
    let mut cmd = Command::new(ringlab_bin());
    cmd.args(["bench", "--json", "--node", &nodes.join(",")])
        .args(["--concurrency", "4", "--keys", "200", "--value-size", "64"])
        .args(["--reads", "0.5", "--duration", "2s", "--warmup", "500ms"])
        .args(["--r", "2", "--w", "2"]);
    if let Some(t) = threads {
        cmd.args(["--threads", t]);
    }
    let out = cmd.output().expect("running ringlab bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ringlab bench (threads {threads:?}) failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("bench --json output");
    let num = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {v}"));
    assert!(num("reads") > 0.0 && num("writes") > 0.0, "{v}");
    assert_eq!(num("ops"), num("reads") + num("writes"), "{v}");
    assert_eq!(num("not_found"), 0.0, "preloaded keys must be found: {v}");
    assert!(v["errors"].as_object().is_some_and(|e| e.is_empty()), "{v}");
    assert!(num("p50_ms") > 0.0 && num("p50_ms") <= num("p99_ms"), "{v}");
    assert!(
        num("p99_ms") <= num("p999_ms") && num("p999_ms") <= num("max_ms"),
        "{v}"
    );
}
