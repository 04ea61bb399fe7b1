//! The CLI with nobody reading its output (`ringlab status … | head -0`): a closed
//! stdout is not a crash (std's `println!` panics on it), except where the output
//! is the point — `ringlab keygen` must fail loudly rather than leave a key file
//! that looks written. The read ends are closed before the commands start,
//! so the outcome does not depend on timing.

use ringlab_tests::{ringlab_bin, Cluster, ClusterOpts};
use std::process::{Command, Output};

/// Runs `ringlab args…` with stdout a socket whose reader is already gone (writes
/// fail with EPIPE, as into a closed pipe).
fn with_closed_stdout(args: &[&str]) -> Output {
    let (reader, writer) = std::os::unix::net::UnixStream::pair().expect("socket pair");
    drop(reader);
    Command::new(ringlab_bin())
        .args(args)
        .stdout(std::os::fd::OwnedFd::from(writer))
        .output()
        .expect("running ringlab")
}

#[test]
fn a_closed_stdout_ends_commands_quietly_but_keygen_fails() {
    let c = Cluster::start(1, ClusterOpts::fast());
    let url = c.url(0);
    for args in [
        vec!["status", "--node", url.as_str()],
        vec![
            "bench",
            "--node",
            url.as_str(),
            "--concurrency",
            "1",
            "--keys",
            "20",
            "--duration",
            "200ms",
            "--warmup",
            "0s",
            "--r",
            "1",
            "--w",
            "1",
        ],
    ] {
        let out = with_closed_stdout(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
    }
    let out = with_closed_stdout(&["keygen"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "keygen into a closed pipe succeeded");
    assert!(stderr.contains("cannot write the key"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    c.assert_no_panics();
}
