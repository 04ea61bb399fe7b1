//! `ringlab demo`: a local cluster of separate `ringlab serve` processes on
//! 127.0.0.1 (free ports, zones z1..z3, one data dir each under a temp folder,
//! a fresh cluster key). The first node is its own seed; the others join through
//! it. Ctrl-C (or SIGTERM) stops every child and removes the temp folder.

use anyhow::{bail, Context};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// `ringlab demo` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
    /// Folder for data dirs, logs and the key (default: a new folder under the system temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the folder after Ctrl-C.
    #[arg(long)]
    pub keep: bool,
    /// Show the nodes' logs on this terminal instead of writing them to `<dir>/<id>.log`.
    #[arg(long)]
    pub logs: bool,
}

/// Ports the OS says are free now (each listener is closed before the next is used).
fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .context("cannot find free ports on 127.0.0.1")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

struct DemoNode {
    id: String,
    http: String,
    child: Child,
}

/// Origins of the explorer as `web/serve.sh` serves it.
const EXPLORER_ORIGINS: &str = "http://127.0.0.1:8080,http://localhost:8080";

/// Runs the demo until Ctrl-C.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if !(1..=26).contains(&args.nodes) {
        bail!("--nodes must be between 1 and 26");
    }
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("ringlab-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key_file = dir.join("cluster.key");
    std::fs::write(&key_file, crate::transport::KeyRing::generate_file())
        .with_context(|| format!("cannot write {}", key_file.display()))?;
    let exe = std::env::current_exe().context("cannot find the ringlab executable")?;
    let ports = free_ports(args.nodes * 2)?;
    let first_peer = format!("127.0.0.1:{}", ports[0]);
    let n = args.nodes.min(3);
    let mut nodes: Vec<DemoNode> = Vec::new();
    let result = async {
        for i in 0..args.nodes {
            let id = ((b'A' + i as u8) as char).to_string();
            let peer = format!("127.0.0.1:{}", ports[2 * i]);
            let http = format!("127.0.0.1:{}", ports[2 * i + 1]);
            let mut cmd = Command::new(&exe);
            cmd.arg("serve")
                .args(["--id", &id, "--peer-addr", &peer, "--http", &http])
                .arg("--data-dir")
                .arg(dir.join(&id))
                .args(["--seeds", &first_peer, "--zone", &format!("z{}", i % 3 + 1)])
                .arg("--cluster-key-file")
                .arg(&key_file)
                .args(["--n", &n.to_string(), "--r", &n.min(2).to_string()])
                .args(["--w", &n.min(2).to_string()])
                // The explorer (web/serve.sh, port 8080) may attach to the live events.
                .args(["--allow-origin", EXPLORER_ORIGINS])
                .kill_on_drop(true)
                .stdin(Stdio::null());
            if !args.logs {
                let log = std::fs::File::create(dir.join(format!("{id}.log")))?;
                cmd.stdout(log.try_clone()?).stderr(log);
            }
            let child = cmd
                .spawn()
                .with_context(|| format!("cannot start node {id}"))?;
            nodes.push(DemoNode {
                id: id.clone(),
                http: http.clone(),
                child,
            });
            // The first node must be up before the others can join through it.
            if i == 0 {
                wait_healthy(&http, Duration::from_secs(15)).await?;
            }
        }
        for node in &nodes {
            wait_healthy(&node.http, Duration::from_secs(30)).await?;
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if let Err(e) = result {
        eprintln!(
            "the demo cluster did not start: {e:#}\nlogs are in {}",
            dir.display()
        );
        stop(&mut nodes).await;
        bail!("demo failed");
    }
    crate::outln!(
        "Ringlab demo: {} nodes on 127.0.0.1 (folder {})",
        nodes.len(),
        dir.display()
    );
    for node in &nodes {
        crate::outln!("  node {}  http://{}", node.id, node.http);
    }
    let first = &nodes[0].http;
    crate::outln!("\nTry:");
    crate::outln!("  curl -i -X PUT --data-binary hello http://{first}/kv/greeting");
    crate::outln!("  curl -i http://{first}/kv/greeting");
    crate::outln!("  curl -s http://{first}/cluster");
    crate::outln!("  curl -s http://{first}/metrics | grep ringlab_hints_pending");
    crate::outln!("  ringlab status --node http://{first}");
    crate::outln!("  curl -N http://{first}/events");
    crate::outln!(
        "\nLive view: run `bash web/serve.sh`, open http://127.0.0.1:8080/, tab Live, \
         node http://{first}"
    );
    if !args.logs {
        crate::outln!("\nLogs: {}/<id>.log", dir.display());
    }
    crate::outln!("Ctrl-C stops the cluster.");
    let stop_signal = async {
        // A closed terminal sends SIGHUP to the whole foreground group. The nodes
        // take it as "reload the key file" and keep running, so the demo must stop
        // them itself rather than die of the signal and leave them orphaned.
        #[cfg(unix)]
        if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            tokio::select! {
                _ = crate::serve::shutdown_signal() => {},
                _ = hup.recv() => {},
            }
            return;
        }
        crate::serve::shutdown_signal().await
    };
    tokio::pin!(stop_signal);
    loop {
        tokio::select! {
            _ = &mut stop_signal => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                for node in &mut nodes {
                    if let Ok(Some(status)) = node.child.try_wait() {
                        eprintln!("node {} exited ({status}); see its log", node.id);
                    }
                }
                nodes.retain_mut(|n| !matches!(n.child.try_wait(), Ok(Some(_))));
                if nodes.is_empty() {
                    eprintln!("every node has exited");
                    break;
                }
            }
        }
    }
    crate::outln!("\nstopping…");
    stop(&mut nodes).await;
    if !args.keep && args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// Kills every child and waits for it.
async fn stop(nodes: &mut [DemoNode]) {
    for node in nodes.iter_mut() {
        let _ = node.child.start_kill();
    }
    for node in nodes.iter_mut() {
        let _ = node.child.wait().await;
    }
}

/// Polls `/health` until it answers 200.
async fn wait_healthy(http: &str, within: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let start = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("http://{http}/health")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if start.elapsed() > within {
            bail!("node at {http} not healthy after {} s", within.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
