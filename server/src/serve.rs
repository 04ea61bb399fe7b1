//! `ringlab serve`: start-up of one node process.
//!
//! Load the cluster keys, open the database, bind both listeners, start the
//! transport, resolve the seed addresses to node ids by handshaking with them
//! (a seed whose cluster parameters differ stops us with a clear error), then
//! bootstrap (first node: a one-node ring) or join through a seed, and run the
//! driver and the HTTP API until Ctrl-C / SIGTERM or a storage failure.

use crate::api::{self, ApiState};
use crate::config::ServeConfig;
use crate::driver::{Clock, Driver};
use crate::metrics::{Metrics, TransportSnapshot};
use crate::storage::RedbStorage;
use crate::transport::{Hello, KeyRing, Transport, TransportConfig};
use anyhow::{bail, Context};
use ringlab_core::{Admin, Config, Node, NodeId, NodeInfo, Ring};
use std::sync::Arc;
use std::time::Duration;

/// Largest peer frame accepted: a page of partition data or hints can carry many values.
pub const MAX_FRAME: usize = 64 << 20;

/// Runs a node until it is told to stop. `Err` means the process must exit non-zero.
pub async fn run(cfg: ServeConfig) -> anyhow::Result<()> {
    let keys = KeyRing::load(&cfg.cluster_key_file).with_context(|| {
        format!(
            "cannot load the cluster key file {}",
            cfg.cluster_key_file.display()
        )
    })?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
    let storage = RedbStorage::open(&cfg.data_dir)?;
    let peer_listener = tokio::net::TcpListener::bind(&cfg.peer_addr)
        .await
        .with_context(|| format!("cannot listen on --peer-addr {}", cfg.peer_addr))?;
    let http_listener = tokio::net::TcpListener::bind(&cfg.http)
        .await
        .with_context(|| format!("cannot listen on --http {}", cfg.http))?;
    let me = cfg.id;
    let hello = Hello {
        id: me,
        cluster: cfg.cluster.clone(),
        peer_addr: cfg.peer_addr.clone(),
        http_addr: cfg.http.clone(),
        zone: cfg.zone.clone(),
        n: cfg.core.n,
        r: cfg.core.r,
        w: cfg.core.w,
        partitions: cfg.core.partitions,
    };
    let (transport, incoming) = Transport::start(
        peer_listener,
        TransportConfig {
            hello: hello.clone(),
            keys,
            queue_per_peer: cfg.peer_queue,
            max_frame: MAX_FRAME,
        },
    )?;
    #[cfg(unix)]
    reload_keys_on_hangup(transport.clone(), cfg.cluster_key_file.clone())?;
    tracing::info!(
        file = %cfg.cluster_key_file.display(),
        sending = %transport.key_fingerprints()[0],
        accepted = ?transport.key_fingerprints(),
        "cluster keys loaded"
    );

    let has_ring = storage_has_ring(&storage);
    let seeds = resolve_seeds(&transport, &cfg, &hello, has_ring).await?;
    let seed_ids: Vec<NodeId> = seeds.iter().map(|(id, _)| *id).collect();
    let config = Config {
        seeds: seed_ids.clone(),
        ..cfg.core.clone()
    };
    let clock = Clock::new();
    let info = NodeInfo {
        addr: format!("{} {}", cfg.peer_addr, cfg.http),
        zone: cfg.zone.clone(),
    };
    let seed = {
        let mut b = [0u8; 8];
        getrandom::getrandom(&mut b).context("no OS randomness for the node seed")?;
        u64::from_le_bytes(b)
    };
    let node = Node::start(me, info, config, None, storage, seed, clock.now());
    let metrics = Arc::new(Metrics::new());
    {
        let t = transport.clone();
        metrics.set_transport_source(move || snapshot(&t));
    }
    let (driver, handle) = Driver::new(
        node,
        transport.clone(),
        incoming,
        clock,
        metrics,
        cfg.max_queued_requests,
    );
    let mut driver = driver.with_sync_depth(cfg.sync_depth);
    if driver.node().ring().is_none() {
        match seeds.iter().find(|(id, _)| *id != me) {
            Some((contact, addr)) => {
                tracing::info!(contact = %contact, addr, "joining the cluster");
                driver.admin(Admin::Join { contact: *contact });
            }
            None if cfg.seeds.iter().any(|s| *s != cfg.peer_addr) => {
                bail!("no other seed is reachable and this node has no ring: start a seed first, or list only this node's own --peer-addr in --seeds to start a new cluster");
            }
            None => {
                let ring = Ring::new(cfg.core.partitions, cfg.core.n, &[(me, cfg.zone.clone())])
                    .map_err(|e| anyhow::anyhow!("cannot build the initial ring: {e:?}"))?;
                tracing::info!("no ring yet and this node is its own only seed: new cluster");
                driver.admin(Admin::SetRing(ring));
            }
        }
    }
    let state = ApiState {
        handle,
        limits: cfg.limits,
        n: cfg.core.n,
        reply_timeout: Duration::from_millis(cfg.core.request_timeout.as_millis())
            + Duration::from_secs(5),
        allow_origins: cfg.allow_origins.clone(),
    };
    let http = tokio::spawn(api::serve(
        http_listener,
        api::router(state),
        cfg.limits.read_timeout,
    ));
    tracing::info!(
        node = %me,
        peer = %cfg.peer_addr,
        http = %cfg.http,
        data_dir = %cfg.data_dir.display(),
        seeds = ?seed_ids,
        "serving"
    );
    let result = driver.run(shutdown_signal()).await;
    http.abort();
    match &result {
        Ok(()) => tracing::info!(node = %me, "stopped"),
        Err(e) => tracing::error!(node = %me, error = %e, "stopping on a fatal error"),
    }
    result
}

/// Whether the database already holds a ring (a restart, not a fresh node).
fn storage_has_ring(storage: &RedbStorage) -> bool {
    use ringlab_core::Storage as _;
    storage.meta("ring").is_some()
}

/// Resolves `--seeds` to ids. Our own address is ourselves. A fresh node retries
/// for a while (the seed may be starting too); a restarting node, which knows the
/// cluster from its stored membership, does not wait long for absent seeds.
async fn resolve_seeds(
    transport: &Transport,
    cfg: &ServeConfig,
    mine: &Hello,
    has_ring: bool,
) -> anyhow::Result<Vec<(NodeId, String)>> {
    let mut out: Vec<(NodeId, String)> = Vec::new();
    let others = cfg.seeds.iter().filter(|s| **s != cfg.peer_addr).count();
    if others < cfg.seeds.len() {
        out.push((cfg.id, cfg.peer_addr.clone()));
    }
    let attempts = if others == 0 {
        0
    } else if has_ring {
        3
    } else {
        40
    };
    let mut last_error = None;
    for round in 0..attempts {
        for addr in cfg.seeds.iter().filter(|s| **s != cfg.peer_addr) {
            if out.iter().any(|(_, a)| a == addr) {
                continue;
            }
            match transport.hello(addr).await {
                Ok(h) => {
                    check_params(mine, &h, addr)?;
                    if h.id == cfg.id {
                        bail!(
                            "seed {addr} has the same id {} as this node: ids must be unique",
                            h.id
                        );
                    }
                    transport.set_addr(h.id, h.peer_addr.clone());
                    tracing::info!(seed = addr, id = %h.id, "seed resolved");
                    out.push((h.id, addr.clone()));
                }
                Err(e) => {
                    let text = format!("{e:#}");
                    if is_rejection(&text) {
                        bail!("seed {addr} refused this node: {text}");
                    }
                    tracing::warn!(seed = addr, error = %text, round, "seed not reachable yet");
                    last_error = Some(text);
                }
            }
        }
        if out.len() == cfg.seeds.len() || (round + 1 == attempts) {
            break;
        }
        // A fresh node that reached one seed can join through it.
        if !has_ring && out.iter().any(|(id, _)| *id != cfg.id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if out.is_empty() && others > 0 {
        let why = last_error.unwrap_or_default();
        if has_ring {
            tracing::warn!(error = %why, "no seed reachable; continuing from the stored membership");
        } else {
            bail!("no seed reachable ({why}); to start a new cluster list this node's own --peer-addr in --seeds");
        }
    }
    Ok(out)
}

/// A handshake refusal (wrong key, cluster or parameters) rather than a network error.
fn is_rejection(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "reject",
        "refused us",
        "mismatch",
        "different",
        "cluster key",
    ]
    .iter()
    .any(|w| t.contains(w))
}

/// Refuses to run next to a cluster with different parameters.
fn check_params(mine: &Hello, theirs: &Hello, addr: &str) -> anyhow::Result<()> {
    if mine.cluster != theirs.cluster {
        bail!(
            "seed {addr} belongs to cluster {:?}, this node to {:?}",
            theirs.cluster,
            mine.cluster
        );
    }
    let a = (mine.n, mine.r, mine.w, mine.partitions);
    let b = (theirs.n, theirs.r, theirs.w, theirs.partitions);
    if a != b {
        bail!(
            "cluster parameters differ from seed {addr}: this node has n={} r={} w={} partitions={}, the cluster has n={} r={} w={} partitions={}",
            a.0, a.1, a.2, a.3, b.0, b.1, b.2, b.3
        );
    }
    Ok(())
}

/// The transport's counters in the metrics' terms.
fn snapshot(t: &Transport) -> TransportSnapshot {
    let s = t.stats();
    TransportSnapshot {
        frames_sent: s.frames_sent,
        frames_received: s.frames_received,
        bytes_sent: s.bytes_sent,
        bytes_received: s.bytes_received,
        connections_dialed: s.connections_dialed,
        dropped: [
            ("queue_full".to_string(), s.dropped_queue_full),
            ("no_address".to_string(), s.dropped_no_addr),
            ("too_large".to_string(), s.dropped_too_large),
        ]
        .into_iter()
        .collect(),
        rejected: s
            .rejected
            .by_reason()
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        key_fingerprints: t.key_fingerprints(),
        key_reloads: s.key_reloads,
        key_reloads_failed: s.key_reloads_failed,
    }
}

/// Rereads the cluster key file on every SIGHUP, so a key rotation (add, move to
/// the top, remove) needs an edit and a signal per node, not a restart. A file that
/// does not parse is logged and counted, and the node keeps its current keys.
#[cfg(unix)]
fn reload_keys_on_hangup(transport: Transport, path: std::path::PathBuf) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Installed before the node serves: from here on SIGHUP no longer terminates it.
    let mut hup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let (t, p) = (transport.clone(), path.clone());
            // A key file is tiny, but it may sit on a slow mount: not on the node's thread.
            let outcome = tokio::task::spawn_blocking(move || t.reload_keys(&p)).await;
            match outcome {
                Ok(Ok(prints)) => tracing::info!(
                    file = %path.display(),
                    sending = %prints[0],
                    accepted = ?prints,
                    "cluster key file reloaded"
                ),
                Ok(Err(e)) => tracing::error!(
                    file = %path.display(),
                    error = %format!("{e:#}"),
                    "cluster key file not reloaded; the previous keys stay in use"
                ),
                Err(e) => tracing::error!(error = %e, "cluster key reload task failed"),
            }
        }
    });
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
