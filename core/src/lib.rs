//! # ringlab-core
//!
//! The whole Ringlab protocol as pure state machines: a partitioned consistent-hash
//! ring with virtual nodes ([`ring`]), a coordinator with sloppy quorum over the
//! first N *healthy* nodes ([`quorum`]), hinted handoff ([`handoff`]), causal
//! versions with siblings ([`version`]), read repair, Merkle anti-entropy
//! ([`merkle`], [`antientropy`]), local failure detection ([`detector`]), and a
//! deterministic seeded cluster simulator ([`sim`]).
//!
//! There is no I/O here: no sockets, files, threads, clocks or global RNG. Time
//! comes in as [`Time`] with every input; randomness comes from a seeded
//! `ChaCha8Rng` owned by each node; effects come out as [`Output`] values. The same
//! code drives the browser simulator and the native server.
//!
//! ## The drain contract
//!
//! **After every [`Node::handle_input`], call [`Node::poll_output`] until it returns
//! `None`, then read [`Node::poll_timeout`] and call `handle_input(now,
//! Input::Timeout)` no later than that time.** Outputs that depend on storage
//! (acks, replies) are only emitted after [`Storage::apply`] returned `Ok`, so a
//! durable storage makes "acknowledged ⇒ on disk" hold. A host that defers
//! durability (group commit) holds outputs until its sync, except those for which
//! [`Message::may_precede_durability`] is true.
//!
//! ```
//! use ringlab_core::{Config, Input, MemStorage, Node, NodeId, Output, Ring, Time};
//!
//! let ring = Ring::new(64, 3, &[(NodeId(0), "z1".into())]).unwrap();
//! let config = Config { n: 1, r: 1, w: 1, ..Config::default() };
//! let mut node = Node::new(NodeId(0), config, Some(ring), MemStorage::new(), 42, Time(0));
//! let op = ringlab_core::ClientOp::Put {
//!     key: "k".into(), value: "v".into(), context: None, w: None,
//! };
//! node.handle_input(Time(0), Input::Client { req: ringlab_core::ClientReq(1), op });
//! let mut replied = false;
//! while let Some(out) = node.poll_output() {
//!     match out {
//!         Output::Send { .. } => { /* hand to the transport */ }
//!         Output::Reply { result, .. } => replied = result.is_ok(),
//!         Output::Event(_) => { /* log, animate, assert */ }
//!     }
//! }
//! assert!(replied);
//! assert!(node.poll_timeout().is_some()); // probes and hint replay are armed
//! ```
//!
//! ## Key placement (clients rely on this)
//! A key's position is the first 8 bytes of SHA-256(key bytes), read big-endian as
//! a `u64`; with Q partitions its partition is `position / (2^64 / Q)`. The owner of
//! each partition is in the ring; the preference list walks clockwise from it.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod antientropy;
pub mod config;
pub mod detector;
pub mod gossip;
pub mod handoff;
pub mod id;
pub mod merkle;
pub mod message;
pub mod node;
pub mod phi;
pub mod quorum;
pub mod ring;
pub mod sim;
pub mod store;
pub mod time;
pub mod version;

pub use config::{Config, ReadFanout};
pub use id::{ClientReq, NodeId, ReqId};
pub use message::{
    Admin, ClientOp, ClientReply, Event, Input, Message, MessageKind, Output, RequestError,
};
pub use node::{Node, NodeInfo};
pub use ring::{Partition, Ring};
pub use store::{MemStorage, Storage};
pub use time::{Dur, Time};
pub use version::{Dot, Object, VersionVector};
