//! The native Ringlab node: drives `ringlab-core`'s [`ringlab_core::Node`] with real
//! time, a durable redb store, an authenticated TCP transport and an HTTP API.
//! No protocol decision lives here (STYLE.md): the server moves bytes, keeps time,
//! persists, and serves clients.

pub mod api;
pub mod bench;
pub mod client;
pub mod config;
pub mod demo;
pub mod driver;
pub mod metrics;
pub mod peer_stream;
pub mod serve;
pub mod stdout;
pub mod storage;
pub mod transport;
pub mod wal;
