//! The node's vocabulary: what goes in ([`Input`]), what comes out ([`Output`]),
//! what crosses the network ([`Message`], one `Msg` enum per protocol module), what
//! clients ask ([`ClientOp`]) and are told ([`ClientReply`], [`RequestError`]), and
//! the [`Event`]s that the UI animates, the server logs and the tests assert on.

use crate::id::{ClientReq, NodeId};
use crate::ring::Ring;
use crate::version::{Dot, VersionVector};
use crate::{antientropy, detector, gossip, handoff, quorum};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Everything that can happen to a node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Input {
    /// A message from a peer.
    Message {
        /// Sender (authenticated by the transport).
        from: NodeId,
        /// Payload.
        msg: Message,
    },
    /// A client request; answered by exactly one [`Output::Reply`] with the same `req`.
    Client {
        /// The driver's number for it.
        req: ClientReq,
        /// What to do.
        op: ClientOp,
    },
    /// The time returned by `poll_timeout` has come.
    Timeout,
    /// An administrator's command.
    Admin(Admin),
}

/// Administrative commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Admin {
    /// Install a ring (if newer than the current one): bootstrapping a cluster.
    SetRing(Ring),
    /// Join the cluster through `contact` (a seed or any member).
    Join {
        /// The node to ask.
        contact: NodeId,
    },
    /// Decommission this node: its partitions move to others, then it has left.
    Leave,
    /// Remove a (dead) node from the ring; its partitions are reassigned.
    Remove {
        /// The node to remove.
        node: NodeId,
    },
}

/// Everything a node asks its driver to do or know.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Output {
    /// Send `msg` to `to` (best effort: the protocols tolerate loss).
    Send {
        /// Destination.
        to: NodeId,
        /// Payload.
        msg: Message,
    },
    /// The answer to a client request.
    Reply {
        /// Which request.
        req: ClientReq,
        /// Its outcome.
        result: Result<ClientReply, RequestError>,
    },
    /// Something worth seeing happened.
    Event(Event),
}

/// A network message: one variant per protocol module.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Coordinator ⇄ replica traffic.
    Replica(quorum::Msg),
    /// Hint delivery.
    Handoff(handoff::Msg),
    /// Probes.
    Detector(detector::Msg),
    /// Merkle anti-entropy.
    AntiEntropy(antientropy::Msg),
    /// Membership gossip and partition transfer (boxed: it can carry two rings).
    Gossip(Box<gossip::Msg>),
}

impl Message {
    /// Wraps a gossip message.
    pub fn gossip(m: gossip::Msg) -> Message {
        Message::Gossip(Box::new(m))
    }

    /// Whether a host may send this message before the batch that produced it is
    /// durable (the server does, to overlap its own fsync with the replicas').
    ///
    /// True only for requests that acknowledge nothing: a coordinator's replica
    /// write, replica read and forwarded client request. Acks, read
    /// replies (they may show data of the unsynced batch), hint and handoff traffic,
    /// gossip and anti-entropy wait for the sync. A replica write carries a dot this
    /// node may lose in a crash before the sync; restarts never reissue such dots
    /// (see `Node::new`), so the early write is at worst an unacknowledged write
    /// that survived elsewhere.
    pub fn may_precede_durability(&self) -> bool {
        matches!(
            self,
            Message::Replica(
                quorum::Msg::Store { id: Some(_), .. }
                    | quorum::Msg::Fetch { .. }
                    | quorum::Msg::Forward { .. }
            )
        )
    }

    /// Whether this answers a request this node made: a replica's ack or read
    /// reply, or a forwarded request's acceptance or answer. Handling one changes no
    /// storage of its own, so a host batching inputs can take these first.
    pub fn is_answer(&self) -> bool {
        matches!(
            self,
            Message::Replica(
                quorum::Msg::StoreAck { .. }
                    | quorum::Msg::FetchReply { .. }
                    | quorum::Msg::ForwardReply { .. }
                    | quorum::Msg::ForwardAccepted { .. }
            )
        )
    }

    /// A short name of the message kind, for traces, colours and counters.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Replica(m) => match m {
                quorum::Msg::Forward { .. } => MessageKind::ClientForward,
                quorum::Msg::ForwardReply { .. } | quorum::Msg::ForwardAccepted { .. } => {
                    MessageKind::ClientForward
                }
                quorum::Msg::Store { .. } => MessageKind::ReplicaWrite,
                quorum::Msg::Fetch { .. } => MessageKind::ReplicaRead,
                quorum::Msg::StoreAck { .. } | quorum::Msg::FetchReply { .. } => {
                    MessageKind::ReplicaAck
                }
                quorum::Msg::Purge { .. } => MessageKind::ReplicaWrite,
            },
            Message::Handoff(_) => MessageKind::Hint,
            Message::Detector(_) => MessageKind::Probe,
            Message::AntiEntropy(_) => MessageKind::Merkle,
            Message::Gossip(m) => match **m {
                gossip::Msg::Pull { .. } | gossip::Msg::PullData { .. } => MessageKind::Transfer,
                _ => MessageKind::Gossip,
            },
        }
    }
}

/// Message kinds as the UI colours them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MessageKind {
    /// A client request forwarded to a coordinating replica, or its answer.
    ClientForward,
    /// Replica write (or purge).
    ReplicaWrite,
    /// Replica read.
    ReplicaRead,
    /// Ack or read reply.
    ReplicaAck,
    /// Hint delivery or its ack.
    Hint,
    /// Failure-detector probe.
    Probe,
    /// Merkle exchange or repair.
    Merkle,
    /// Membership gossip.
    Gossip,
    /// Partition data streamed to a new owner.
    Transfer,
}

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientOp {
    /// Write `value`; `context` is what the client read (None: a blind write that
    /// becomes a sibling of concurrent values).
    Put {
        /// Key.
        key: Bytes,
        /// Value.
        value: Bytes,
        /// Causal context from a previous read or write.
        context: Option<VersionVector>,
        /// Write quorum override.
        w: Option<usize>,
    },
    /// Read all current siblings.
    Get {
        /// Key.
        key: Bytes,
        /// Read quorum override.
        r: Option<usize>,
    },
    /// Write a tombstone over what `context` saw.
    Delete {
        /// Key.
        key: Bytes,
        /// Causal context.
        context: Option<VersionVector>,
        /// Write quorum override.
        w: Option<usize>,
    },
}

impl ClientOp {
    /// The key the operation is about.
    pub fn key(&self) -> &Bytes {
        match self {
            ClientOp::Put { key, .. }
            | ClientOp::Get { key, .. }
            | ClientOp::Delete { key, .. } => key,
        }
    }
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientReply {
    /// The write met its quorum.
    Written {
        /// The dot the write created.
        dot: Dot,
        /// Context to pass with the next write of this key.
        context: VersionVector,
        /// Replicas that acknowledged before the reply (stand-ins included).
        acked_by: Vec<NodeId>,
        /// Stand-ins used, each with the owner its hint names.
        stand_ins: Vec<(NodeId, NodeId)>,
    },
    /// The read met its quorum. `values` empty means not found (or deleted).
    Read {
        /// Live siblings, ordered by dot.
        values: Vec<(Dot, Bytes)>,
        /// Context covering everything returned (and tombstones).
        context: VersionVector,
        /// Replicas that answered before the reply.
        answered_by: Vec<NodeId>,
    },
}

/// Why a client request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum RequestError {
    /// Too few replicas answered before the deadline. A write may still have been
    /// applied by the replicas that did answer (it is not rolled back: Dynamo semantics).
    #[error("quorum not reached: {got} of {need} replicas answered before the deadline")]
    QuorumNotReached {
        /// Replicas that answered.
        got: usize,
        /// Replicas needed.
        need: usize,
    },
    /// Fewer healthy nodes than the quorum needs; nothing was sent or changed.
    #[error("not enough reachable replicas: {available} reachable, {need} needed")]
    Unavailable {
        /// Reachable nodes in the preference list.
        available: usize,
        /// Quorum.
        need: usize,
    },
    /// R or W outside 1..=N; nothing changed.
    #[error("invalid quorum {name}={value}: must be between 1 and n={n}")]
    InvalidQuorum {
        /// "r" or "w".
        name: String,
        /// Given value.
        value: usize,
        /// N.
        n: usize,
    },
    /// The write would leave more siblings than allowed; nothing changed.
    #[error("too many siblings: the write would leave {would_have}, the limit is {limit}; write with a context that resolves them")]
    TooManySiblings {
        /// Sibling count after the write.
        would_have: usize,
        /// The cap.
        limit: usize,
    },
    /// The node has no ring yet; nothing changed.
    #[error("this node has no ring yet")]
    NoRing,
    /// Local storage failed; the write may be applied on other replicas.
    #[error("storage failure: {0}")]
    Storage(String),
}

/// Observability feed. Emitted by the node named in the enclosing trace record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A client request started here.
    RequestStarted {
        /// Client request.
        req: ClientReq,
        /// Key.
        key: Bytes,
        /// "put" / "get" / "delete".
        op: String,
        /// The nodes contacted, with the owner a stand-in's hint names.
        targets: Vec<(NodeId, Option<NodeId>)>,
    },
    /// The request was forwarded to a coordinating replica.
    Forwarded {
        /// Client request.
        req: ClientReq,
        /// The replica now coordinating.
        to: NodeId,
    },
    /// A quorum was met.
    QuorumMet {
        /// Client request.
        req: ClientReq,
        /// Key.
        key: Bytes,
        /// Acks/replies counted.
        got: usize,
        /// Needed.
        need: usize,
    },
    /// A request failed.
    RequestFailed {
        /// Client request.
        req: ClientReq,
        /// Key.
        key: Bytes,
        /// Why.
        error: RequestError,
    },
    /// A replica did not answer in time and a stand-in was recruited for `owner`.
    StandInRecruited {
        /// Key.
        key: Bytes,
        /// The owner whose replica the stand-in holds.
        owner: NodeId,
        /// The stand-in.
        stand_in: NodeId,
    },
    /// This node stored a replica (its own copy).
    ReplicaStored {
        /// Key.
        key: Bytes,
        /// Sibling count after the merge.
        siblings: usize,
    },
    /// This node (a stand-in) stored a hinted replica for `owner`.
    HintStored {
        /// Intended owner.
        owner: NodeId,
        /// Key.
        key: Bytes,
    },
    /// A hinted write was refused because the owner's hint budget is full.
    HintRefused {
        /// Intended owner.
        owner: NodeId,
        /// Key.
        key: Bytes,
    },
    /// This stand-in started delivering hints to `owner`.
    HandoffStarted {
        /// Owner.
        owner: NodeId,
        /// Hints in the batch.
        hints: usize,
    },
    /// This node (an owner) merged hints handed off by `from`.
    HandoffReceived {
        /// The stand-in.
        from: NodeId,
        /// Keys merged.
        keys: usize,
    },
    /// The owner acked a hint and this stand-in deleted its copy.
    HintDelivered {
        /// Owner.
        owner: NodeId,
        /// Key.
        key: Bytes,
    },
    /// A hint was dropped (too old); anti-entropy must repair the owner.
    HintDropped {
        /// Owner.
        owner: NodeId,
        /// Key.
        key: Bytes,
        /// Why.
        reason: String,
    },
    /// A read found stale or missing replicas and sent them the merged value.
    ReadRepair {
        /// Key.
        key: Bytes,
        /// Replicas repaired.
        replicas: Vec<NodeId>,
    },
    /// A tombstone was purged from this replica.
    TombstonePurged {
        /// Key.
        key: Bytes,
    },
    /// This node now considers `peer` unreachable.
    PeerUnreachable {
        /// Peer.
        peer: NodeId,
    },
    /// A monitored peer's phi crossed the threshold; indirect probes are under way.
    PeerSuspected {
        /// Peer.
        peer: NodeId,
    },
    /// `peer` has been unreachable longer than `dead_after`: reported dead to the
    /// administrator. It is not removed from the ring and its partitions do not move.
    PeerReportedDead {
        /// Peer.
        peer: NodeId,
    },
    /// This node can reach `peer` again.
    PeerReachable {
        /// Peer.
        peer: NodeId,
    },
    /// A newer ring was installed.
    RingInstalled {
        /// Its version.
        version: u64,
    },
    /// A message was ignored (from a node outside the ring, or unexpected).
    MessageIgnored {
        /// Sender.
        from: NodeId,
        /// Why.
        reason: String,
    },
    /// This node started a Merkle exchange.
    MerkleExchangeStarted {
        /// The co-replica.
        peer: NodeId,
        /// Partition.
        partition: u32,
    },
    /// A level of the descent arrived with this many differing nodes to descend into.
    MerkleLevelCompared {
        /// The co-replica.
        peer: NodeId,
        /// Partition.
        partition: u32,
        /// Differing nodes.
        differing: usize,
    },
    /// Keys received from a co-replica were merged.
    MerkleKeysRepaired {
        /// Sender.
        peer: NodeId,
        /// Partition.
        partition: u32,
        /// Keys that changed here.
        n: usize,
        /// Key and value bytes received.
        bytes: usize,
    },
    /// The exchange found nothing to repair on this side.
    MerkleInSync {
        /// The co-replica.
        peer: NodeId,
        /// Partition.
        partition: u32,
    },
    /// Merkle trees were built for partitions this node newly replicates.
    MerkleTreesBuilt {
        /// How many.
        count: usize,
    },
    /// This node learned a new state of a member.
    MemberStateChanged {
        /// The member.
        member: NodeId,
        /// Its status name.
        status: String,
        /// Its generation.
        generation: u64,
    },
    /// The claimant proposed a pending ring.
    RingProposed {
        /// Its version.
        version: u64,
        /// Partitions whose owner changes.
        moved: usize,
    },
    /// The claimant activated the pending ring (every gaining node pulled its data).
    RingActivated {
        /// Its version.
        version: u64,
    },
    /// A page of a partition's data arrived from a current replica.
    PartitionPulled {
        /// Source.
        from: NodeId,
        /// Partition.
        partition: u32,
        /// Keys in the page.
        keys: usize,
        /// Last page.
        done: bool,
    },
    /// Ownership handoff: a page of this node's own copies of keys it does not
    /// replicate in the ring it adopted was turned into hints for their owners.
    OwnershipHandoff {
        /// The ring the owners are taken from.
        ring_version: u64,
        /// Keys in the page that belong to other nodes.
        keys: usize,
        /// Hints written (one per owner of each such key).
        hints: usize,
        /// The whole store has been scanned.
        done: bool,
    },
    /// Storage failed to commit; dependent outputs were withheld.
    StorageFailed {
        /// The error.
        error: String,
    },
    /// A `ReadFanout::Quorum` read's replicas were slow to answer, so it also
    /// asked `asked` (a speculative retry, or the rest at `replica_timeout`).
    ReadRetried {
        /// Key.
        key: Bytes,
        /// The replicas asked now.
        asked: Vec<NodeId>,
    },
}

impl Event {
    /// A short kind name, for filters.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::RequestStarted { .. } => "request",
            Event::Forwarded { .. } => "forward",
            Event::QuorumMet { .. } => "quorum",
            Event::RequestFailed { .. } => "failed",
            Event::StandInRecruited { .. } => "stand-in",
            Event::ReadRetried { .. } => "read-retry",
            Event::ReplicaStored { .. } => "stored",
            Event::HintStored { .. } => "hint",
            Event::HintRefused { .. } => "hint-refused",
            Event::HandoffStarted { .. } => "handoff",
            Event::HandoffReceived { .. } => "handoff-received",
            Event::HintDelivered { .. } => "hint-delivered",
            Event::HintDropped { .. } => "hint-dropped",
            Event::ReadRepair { .. } => "read-repair",
            Event::TombstonePurged { .. } => "purge",
            Event::PeerUnreachable { .. } => "unreachable",
            Event::PeerReachable { .. } => "reachable",
            Event::PeerReportedDead { .. } => "dead",
            Event::PeerSuspected { .. } => "suspect",
            Event::RingInstalled { .. } => "ring",
            Event::MessageIgnored { .. } => "ignored",
            Event::StorageFailed { .. } => "storage",
            Event::MerkleExchangeStarted { .. } => "merkle-start",
            Event::MerkleLevelCompared { .. } => "merkle-level",
            Event::MerkleKeysRepaired { .. } => "merkle-repair",
            Event::MerkleInSync { .. } => "merkle-in-sync",
            Event::MerkleTreesBuilt { .. } => "merkle-trees",
            Event::MemberStateChanged { .. } => "member",
            Event::RingProposed { .. } => "ring-proposed",
            Event::RingActivated { .. } => "ring-activated",
            Event::PartitionPulled { .. } => "pull",
            Event::OwnershipHandoff { .. } => "ownership-handoff",
        }
    }
}
