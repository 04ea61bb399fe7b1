//! `ringlab demo` as a user runs it: five separate node processes in three zones,
//! their URLs on stdout, a working cluster behind them, and a clean stop — on
//! Ctrl-C, and on SIGHUP (a closed terminal), which the nodes themselves take as
//! "reload the key file" and so must not be left running when the demo goes.

use ringlab_tests::{ringlab_bin, wait_for, wait_until, Http};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `ringlab demo` and the node URLs it printed.
struct Demo {
    child: Child,
    urls: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the demo and reads its banner up to the Ctrl-C line.
fn start_demo() -> Demo {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(ringlab_bin())
        .args(["demo", "--dir"])
        .arg(dir.path().join("demo"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting ringlab demo");
    let out = child.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut urls = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(90))
            .expect("the demo printed its banner within 90 s");
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["node", id, url] = words[..] {
            if url.starts_with("http://") {
                urls.push((id.to_string(), url.to_string()));
            }
        }
        if line.contains("Ctrl-C stops the cluster") {
            break;
        }
    }
    Demo {
        child,
        urls,
        _dir: dir,
    }
}

fn answers(http: &Http, url: &str) -> bool {
    http.get(&format!("{url}/health"))
        .is_ok_and(|r| r.status == 200)
}

/// Sends `sig` to the demo and checks that it exits cleanly and takes every node with it.
fn stops_on(sig: &str) {
    let mut demo = start_demo();
    let http = Http::new(Duration::from_secs(5));
    let ids: Vec<&str> = demo.urls.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["A", "B", "C", "D", "E"], "{:?}", demo.urls);
    let first = demo.urls[0].1.clone();

    // One cluster: every node lists all five up, in zones z1..z3.
    for (id, url) in &demo.urls {
        wait_for(
            &format!("{id} to list five members up"),
            Duration::from_secs(60),
            || {
                http.get(&format!("{url}/cluster"))
                    .ok()
                    .and_then(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
                    .and_then(|v| {
                        let nodes = v["nodes"].as_array()?.clone();
                        let up = nodes.iter().filter(|m| m["status"] == "up").count();
                        let zones: std::collections::BTreeSet<String> = nodes
                            .iter()
                            .filter_map(|m| m["zone"].as_str().map(String::from))
                            .collect();
                        Some(up == 5 && zones.len() == 3)
                    })
                    .unwrap_or(false)
            },
        );
    }
    // A write through one node reads back through another with R=2.
    let r = http
        .put(&first, "demo-key", b"hello", None, None)
        .expect("put");
    assert_eq!(r.status, 204, "{r:?}");
    let last = &demo.urls[4].1;
    let got = wait_until("the write to read back", Duration::from_secs(10), || {
        let r = http.get_kv(last, "demo-key", Some(2)).ok()?;
        (r.status == 200).then_some(r.body)
    });
    assert_eq!(got, b"hello");

    let status = Command::new("kill")
        .args(["-s", sig, &demo.child.id().to_string()])
        .status()
        .expect("running kill");
    assert!(status.success());
    let exit = wait_until(
        &format!("the demo to exit on SIG{sig}"),
        Duration::from_secs(20),
        || demo.child.try_wait().ok().flatten(),
    );
    assert!(exit.success(), "the demo exited with {exit} on SIG{sig}");
    for (id, url) in &demo.urls {
        wait_for(
            &format!("node {id} to stop with the demo (SIG{sig})"),
            Duration::from_secs(10),
            || !answers(&http, url),
        );
    }
}

#[test]
fn demo_serves_five_nodes_and_stops_on_ctrl_c() {
    stops_on("INT");
}

#[test]
fn demo_stops_its_nodes_on_sighup() {
    stops_on("HUP");
}
