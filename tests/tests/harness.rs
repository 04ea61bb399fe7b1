//! The harness finds (and builds) the `ringlab` binary, and the binary documents its CLI.

use ringlab_tests::ringlab_bin;
use std::process::Command;

#[test]
fn binary_is_built_and_documents_serve() {
    let bin = ringlab_bin();
    let out = Command::new(&bin)
        .args(["serve", "--help"])
        .output()
        .expect("running ringlab serve --help");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ringlab serve --help failed: {out:?}");
    for flag in [
        "--id",
        "--peer-addr",
        "--http",
        "--data-dir",
        "--seeds",
        "--zone",
        "--cluster-key-file",
        "--n",
        "--partitions",
    ] {
        assert!(
            text.contains(flag),
            "`ringlab serve --help` lacks {flag}:\n{text}"
        );
    }
}
