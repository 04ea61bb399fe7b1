//! `ringlab`: run a node (`serve`), talk to one (`put`, `get`, `delete`,
//! `status`, `leave`, `remove`), make a cluster key (`keygen`), start a local 5-node cluster
//! (`demo`), or load-test (`bench`).

/// Every message, request and reply allocates; mimalloc is faster at this pattern
/// than glibc malloc (BENCHMARKS.md, "What moved the figures").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ringlab_server::{bench, client, config::ServeArgs, demo, serve};
use std::process::ExitCode;

/// Ringlab: a Dynamo-style key-value store.
#[derive(Parser, Debug)]
#[command(name = "ringlab", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a node: peer transport, durable storage and the HTTP API.
    Serve(Box<ServeArgs>),
    /// Write a value: `ringlab put KEY VALUE` (VALUE `-` reads stdin). Prints the new context.
    Put(client::PutArgs),
    /// Read a key: prints the value (or every sibling) on stdout and the context on stderr.
    Get(client::GetArgs),
    /// Delete a key (writes a tombstone over what the context saw).
    Delete(client::DeleteArgs),
    /// Show a node's view of the cluster.
    Status(client::NodeArg),
    /// Decommission a node: its partitions stream to their new owners, then it stops serving.
    Leave(client::NodeArg),
    /// Take a dead node out of the ring, asked at a running node: `ringlab remove D`.
    /// Its partitions are reassigned and rebuilt from the other replicas.
    Remove(client::RemoveArgs),
    /// Print a new cluster key file: `ringlab keygen > cluster.key`.
    Keygen,
    /// Start a local cluster of nodes (separate processes) on 127.0.0.1; Ctrl-C stops it.
    Demo(demo::DemoArgs),
    /// Load generator: throughput and latency percentiles against ringlab, redis or etcd.
    Bench(bench::BenchArgs),
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Keygen = cli.cmd {
        // Not through `ringlab_server::out!`: a key that could not be written in
        // full, to a closed pipe too, must fail loudly.
        use std::io::Write as _;
        let key = ringlab_server::transport::KeyRing::generate_file();
        let mut out = std::io::stdout().lock();
        return match out.write_all(key.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: cannot write the key: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // `serve` resolves its configuration first: it chooses the runtime.
    let mut serve_cfg = None;
    if let Cmd::Serve(args) = &cli.cmd {
        match args.clone().resolve() {
            Ok(cfg) => serve_cfg = Some(cfg),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }
    let threads = match &cli.cmd {
        Cmd::Bench(a) => a.threads.map(usize::from),
        _ => serve_cfg.as_ref().map(|c| c.threads),
    };
    let mut builder = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<ExitCode> = runtime.block_on(async move {
        match cli.cmd {
            Cmd::Serve(_) => {
                init_logging();
                let cfg = serve_cfg.context("configuration resolved above")?;
                serve::run(cfg).await?;
                Ok(ExitCode::SUCCESS)
            }
            Cmd::Put(a) => client::put(a).await,
            Cmd::Get(a) => client::get(a).await,
            Cmd::Delete(a) => client::delete(a).await,
            Cmd::Status(a) => client::status(a).await,
            Cmd::Leave(a) => client::leave(a).await,
            Cmd::Remove(a) => client::remove(a).await,
            Cmd::Demo(a) => {
                demo::run(a).await?;
                Ok(ExitCode::SUCCESS)
            }
            Cmd::Bench(a) => {
                bench::run(a).await?;
                Ok(ExitCode::SUCCESS)
            }
            Cmd::Keygen => Ok(ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
