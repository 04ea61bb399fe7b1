//! The authenticated, encrypted inter-node transport (TCP).
//!
//! Every node listens for peers; for each peer it sends to, one writer task dials,
//! handshakes and writes frames from a bounded queue, reconnecting with capped
//! exponential backoff.
//!
//! A pair of nodes shares the connection the *lower* id dialed: the higher one sends
//! its frames back over it instead of dialing its own, once that connection is up.
//! One connection each way would work as well, but then each side's kernel acknowledges
//! every frame it drains with a segment of its own (≈ 0.7 pure ACKs per 16-client read);
//! on a shared connection the replies carry them. The higher id still dials when it has
//! something to send and no connection from the lower one (a joiner the seeds do not
//! know yet), and moves to the lower one's connection when it arrives.
//!
//! Handshake (see [`frame`] for the frame layout):
//! ```text
//! dialer                                   acceptor
//!   MAGIC + session_d   ───────────────▶
//!                       ◀───────────────   MAGIC + session_a
//!   Hello(seq 1, session_a) ───────────▶   authenticate; compare cluster and n/r/w/partitions
//!                       ◀───────────────   Accept(hello, seq 1, session_d) | Reject(reason) | 0-length (bad key)
//!   Message(seq 2, 3, …, session_a) ───▶   Incoming::Message { from: authenticated id }
//!                       ◀───────────────   Message(seq 2, 3, …, session_d), when the dialer's id is lower
//! ```
//! Both sides report the other's Hello as [`Incoming::Peer`] once the handshake succeeded
//! (the dialer only for its writers' connections, not for [`Transport::hello`]).
//!
//! Invariants: nothing reaches the driver from a connection before its Hello
//! authenticated and matched our cluster and parameters; every frame after it must
//! carry the acceptor's session bytes and a growing sequence number; any rejected
//! frame is counted by reason, logged, and closes the connection. [`Transport::send`]
//! never blocks: a full queue or an unknown address drops the message (the protocols
//! tolerate loss) and counts it.

pub mod frame;
pub mod keys;
mod log_limit;

pub use keys::{KeyError, KeyRing};

use frame::{FrameError, Header, Payload, PayloadRef, RecvState, Refusal, MAGIC, SESSION_LEN};
use rand::RngCore;
use ringlab_core::{Message, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

/// How long a connect or a handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// First reconnect delay; doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Reconnect delay cap.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Inbound connections served at once (more wait in the kernel's backlog).
const MAX_INBOUND: usize = 1024;
/// Frames written per flush at most.
const WRITE_BATCH: usize = 256;
/// Frame limit before the peer authenticated (Hello, Accept and Reject are small).
const HANDSHAKE_MAX_FRAME: usize = 64 << 10;
/// Capacity of the channel to the driver (a slow driver backpressures the sockets).
const INCOMING_CAPACITY: usize = 4096;

/// What each side of a connection tells the other in the handshake.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Hello {
    /// The node's id.
    pub id: NodeId,
    /// Cluster name; must match.
    pub cluster: String,
    /// Where it listens for peers.
    pub peer_addr: String,
    /// Where it serves clients.
    pub http_addr: String,
    /// Its zone.
    pub zone: String,
    /// Replicas per key; must match.
    pub n: usize,
    /// Read quorum; must match.
    pub r: usize,
    /// Write quorum; must match.
    pub w: usize,
    /// Partition count; must match.
    pub partitions: u32,
}

impl Hello {
    /// Why `other` cannot join a cluster this node belongs to, if it cannot.
    pub fn incompatibility(&self, other: &Hello) -> Option<(Refusal, String)> {
        if self.cluster != other.cluster {
            return Some((
                Refusal::ClusterMismatch,
                format!(
                    "node {} ({}) is in cluster {:?}, node {} is in cluster {:?}",
                    other.id, other.peer_addr, other.cluster, self.id, self.cluster
                ),
            ));
        }
        let p = |h: &Hello| (h.n, h.r, h.w, h.partitions);
        if p(self) != p(other) {
            return Some((
                Refusal::ParamsMismatch,
                format!(
                    "cluster parameters differ: node {} ({}) has n={} r={} w={} partitions={}, node {} has n={} r={} w={} partitions={}",
                    other.id, other.peer_addr, other.n, other.r, other.w, other.partitions,
                    self.id, self.n, self.r, self.w, self.partitions
                ),
            ));
        }
        None
    }
}

/// Transport settings.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// This node's introduction.
    pub hello: Hello,
    /// Cluster keys.
    pub keys: KeyRing,
    /// Messages queued per peer before sends are dropped.
    pub queue_per_peer: usize,
    /// Largest accepted frame body in bytes.
    pub max_frame: usize,
}

/// What the transport delivers to the driver.
#[derive(Clone, Debug, PartialEq)]
pub enum Incoming {
    /// A message from an authenticated peer.
    Message {
        /// The id authenticated in the connection's handshake.
        from: NodeId,
        /// Payload.
        msg: Message,
    },
    /// A peer completed a handshake (inbound or outbound).
    Peer(Hello),
}

/// Frames rejected, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rejected {
    /// No accepted key authenticates the frame.
    pub bad_mac: u64,
    /// Replayed (old sequence number or another connection's session).
    pub replay: u64,
    /// Length above the limit.
    pub oversize: u64,
    /// Malformed frame or payload.
    pub decode: u64,
    /// Another cluster.
    pub cluster_mismatch: u64,
    /// Different n/r/w/partitions.
    pub params_mismatch: u64,
    /// Any other handshake failure (bad preamble, timeout, unexpected payload, key refused).
    pub handshake: u64,
}

impl Rejected {
    /// (reason label, count) for every reason.
    pub fn by_reason(&self) -> [(&'static str, u64); 7] {
        [
            ("bad_mac", self.bad_mac),
            ("replay", self.replay),
            ("oversize", self.oversize),
            ("decode", self.decode),
            ("cluster_mismatch", self.cluster_mismatch),
            ("params_mismatch", self.params_mismatch),
            ("handshake", self.handshake),
        ]
    }

    /// Sum over reasons.
    pub fn total(&self) -> u64 {
        self.by_reason().iter().map(|(_, n)| n).sum()
    }
}

/// Transport counters since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Frames written (handshakes included).
    pub frames_sent: u64,
    /// Bytes written.
    pub bytes_sent: u64,
    /// Frames accepted.
    pub frames_received: u64,
    /// Bytes of accepted frames.
    pub bytes_received: u64,
    /// Messages dropped because the peer's queue was full.
    pub dropped_queue_full: u64,
    /// Messages dropped because the peer's address is unknown.
    pub dropped_no_addr: u64,
    /// Messages dropped because their frame would exceed `max_frame` (the peer would
    /// refuse it and close the connection).
    pub dropped_too_large: u64,
    /// Connections our writers dialed and handshook (reconnects count; a pair of
    /// nodes shares the one its lower id dialed, so the higher id's stays near 0).
    pub connections_dialed: u64,
    /// Rejections by reason.
    pub rejected: Rejected,
    /// Keys accepted now (the first seals what this node sends).
    pub keys: u64,
    /// Key file reloads that replaced the keys.
    pub key_reloads: u64,
    /// Key file reloads refused (unreadable or malformed file; the keys stayed).
    pub key_reloads_failed: u64,
}

#[derive(Default)]
struct Counters {
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_no_addr: AtomicU64,
    dropped_too_large: AtomicU64,
    connections_dialed: AtomicU64,
    rejected: [AtomicU64; 7],
    key_reloads: AtomicU64,
    key_reloads_failed: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// The cluster keys, replaced whole by a reload. Every seal and every open reads
/// the current ring, so a reload applies to the next frame on every connection
/// (a connection is not bound to a key: its frames are sealed one by one).
struct KeyCell(RwLock<Arc<KeyRing>>);

impl KeyCell {
    fn get(&self) -> Arc<KeyRing> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, keys: KeyRing) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
    }
}

struct Inner {
    hello: Hello,
    keys: KeyCell,
    cluster: [u8; 8],
    queue_per_peer: usize,
    max_frame: usize,
    book: Mutex<HashMap<NodeId, String>>,
    peers: Mutex<HashMap<NodeId, mpsc::Sender<Vec<u8>>>>,
    /// Write halves of connections a lower id dialed to us, for our writer to that
    /// peer to take (the newest wins); `reverse_gen` counts arrivals so writers notice.
    reverse: Mutex<HashMap<NodeId, OutConn>>,
    reverse_gen: watch::Sender<u64>,
    counters: Counters,
    /// Keeps a rejection flood from flooding the log (every rejection is still counted).
    log_limit: Mutex<log_limit::LogLimiter>,
    shutdown: watch::Sender<bool>,
    local_addr: SocketAddr,
    /// To the driver; outbound handshakes report `Peer` here too (never blocking).
    incoming: mpsc::Sender<Incoming>,
}

impl Inner {
    fn reject(&self, reason: &'static str, peer: &str, detail: &dyn std::fmt::Display) {
        let i = match reason {
            "bad_mac" => 0,
            "replay" => 1,
            "oversize" => 2,
            "decode" => 3,
            "cluster_mismatch" => 4,
            "params_mismatch" => 5,
            _ => 6,
        };
        bump(&self.counters.rejected[i], 1);
        let verdict = self
            .log_limit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(reason, peer, std::time::Instant::now());
        match verdict {
            log_limit::Verdict::Log { suppressed: 0 } => {
                tracing::warn!(peer, reason, "peer frame rejected: {detail}")
            }
            log_limit::Verdict::Log { suppressed } => tracing::warn!(
                peer,
                reason,
                suppressed,
                "peer frame rejected: {detail} ({suppressed} more from this host for this reason in the last {} s were counted, not logged)",
                log_limit::WINDOW.as_secs()
            ),
            log_limit::Verdict::Suppress => {}
        }
    }

    fn header(&self, session: [u8; SESSION_LEN], seq: u64) -> Header {
        Header {
            version: frame::VERSION,
            cluster: self.cluster,
            sender: self.hello.id,
            session,
            seq,
        }
    }
}

/// A handle on the transport; cheap to clone.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("id", &self.inner.hello.id)
            .field("local_addr", &self.inner.local_addr)
            .finish()
    }
}

#[derive(Debug)]
enum ConnError {
    Io(std::io::Error),
    Frame(FrameError),
}

impl From<std::io::Error> for ConnError {
    fn from(e: std::io::Error) -> Self {
        ConnError::Io(e)
    }
}

async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    keys: &KeyCell,
    state: &mut RecvState,
    max_frame: usize,
) -> Result<(Header, Payload, usize), ConnError> {
    let mut prefix = [0u8; 4];
    r.read_exact(&mut prefix).await?;
    let len = frame::check_len(prefix, max_frame).map_err(ConnError::Frame)?;
    // Grow with the bytes that actually arrive: announcing a large frame and then
    // trickling costs the sender as much as us.
    let mut body = Vec::with_capacity(len.min(64 << 10));
    (&mut *r).take(len as u64).read_to_end(&mut body).await?;
    if body.len() != len {
        return Err(ConnError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    let (h, p) = frame::open(&keys.get(), state, &body).map_err(ConnError::Frame)?;
    Ok((h, p, 4 + len))
}

async fn preamble<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    mine: [u8; SESSION_LEN],
) -> std::io::Result<Option<[u8; SESSION_LEN]>> {
    let mut out = [0u8; 4 + SESSION_LEN];
    out[..4].copy_from_slice(MAGIC);
    out[4..].copy_from_slice(&mine);
    s.write_all(&out).await?;
    let mut theirs = [0u8; 4 + SESSION_LEN];
    s.read_exact(&mut theirs).await?;
    if &theirs[..4] != MAGIC {
        return Ok(None);
    }
    let mut session = [0u8; SESSION_LEN];
    session.copy_from_slice(&theirs[4..]);
    Ok(Some(session))
}

fn new_session() -> [u8; SESSION_LEN] {
    let mut s = [0u8; SESSION_LEN];
    rand::thread_rng().fill_bytes(&mut s);
    s
}

/// The sending side of an established connection (dialed by us, or a lower id's
/// connection to us).
struct OutConn {
    w: BufWriter<OwnedWriteHalf>,
    /// The receiver's session bytes.
    session: [u8; SESSION_LEN],
    seq: u64,
    /// Set when the connection's read side ended (closed, reset, or a rejected frame):
    /// the writer stops using it before its next write.
    closed: Arc<std::sync::atomic::AtomicBool>,
}

/// The receiving side of a connection we dialed: the acceptor writes on it when its
/// id is higher than ours.
struct InConn {
    r: tokio::net::tcp::OwnedReadHalf,
    state: RecvState,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl OutConn {
    /// Seals and buffers one payload (already postcard-encoded).
    async fn write(&mut self, inner: &Inner, plaintext: &[u8]) -> std::io::Result<()> {
        self.seq += 1;
        let f = frame::seal(
            &inner.keys.get(),
            &inner.header(self.session, self.seq),
            plaintext,
        );
        self.w.write_all(&f).await?;
        bump(&inner.counters.frames_sent, 1);
        bump(&inner.counters.bytes_sent, f.len() as u64);
        Ok(())
    }
}

/// Dials `addr` and handshakes; returns the peer's Hello and the connection.
async fn dial(inner: &Inner, addr: &str) -> anyhow::Result<(Hello, OutConn, InConn)> {
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to peer {addr} timed out"))?
        .map_err(|e| anyhow::anyhow!("cannot connect to peer {addr}: {e}"))?;
    stream.set_nodelay(true)?;
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake_out(inner, addr, stream))
        .await
        .map_err(|_| anyhow::anyhow!("handshake with peer {addr} timed out"))?
}

async fn handshake_out(
    inner: &Inner,
    addr: &str,
    mut stream: TcpStream,
) -> anyhow::Result<(Hello, OutConn, InConn)> {
    let mine = new_session();
    let Some(theirs) = preamble(&mut stream, mine).await? else {
        inner.reject("handshake", addr, &"not a ringlab peer (bad preamble)");
        anyhow::bail!("{addr} is not a ringlab peer port (bad preamble)");
    };
    let hello = frame::encode_payload(&PayloadRef::Hello(&inner.hello));
    let f = frame::seal(&inner.keys.get(), &inner.header(theirs, 1), &hello);
    stream.write_all(&f).await?;
    bump(&inner.counters.frames_sent, 1);
    bump(&inner.counters.bytes_sent, f.len() as u64);
    let mut state = RecvState {
        session: mine,
        cluster: None,
        last_seq: 0,
    };
    let reply = read_frame(
        &mut stream,
        &inner.keys,
        &mut state,
        inner.max_frame.min(HANDSHAKE_MAX_FRAME),
    )
    .await;
    let (header, payload, len) = match reply {
        Ok(r) => r,
        Err(ConnError::Io(e)) => anyhow::bail!(
            "peer {addr} closed the connection during the handshake ({e}); see its log for why"
        ),
        Err(ConnError::Frame(FrameError::KeyRefused)) => {
            inner.reject("handshake", addr, &"the peer cannot authenticate our key");
            anyhow::bail!(
                "peer {addr} refused us: it cannot authenticate our frames (different cluster key)"
            )
        }
        Err(ConnError::Frame(e)) => {
            inner.reject(e.reason(), addr, &e);
            anyhow::bail!("peer {addr}: its handshake reply was rejected: {e}")
        }
    };
    match payload {
        Payload::Accept(h) if h.id == header.sender => {
            if let Some((refusal, msg)) = inner.hello.incompatibility(&h) {
                inner.reject(refusal_reason(refusal), addr, &msg);
                anyhow::bail!("peer {addr} is incompatible: {msg}");
            }
            bump(&inner.counters.frames_received, 1);
            bump(&inner.counters.bytes_received, len as u64);
            let (r, w) = stream.into_split();
            let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let conn = OutConn {
                w: BufWriter::new(w),
                session: theirs,
                seq: 1,
                closed: closed.clone(),
            };
            state.cluster = Some(inner.cluster);
            Ok((h, conn, InConn { r, state, closed }))
        }
        Payload::Reject { reason, message } => {
            inner.reject(refusal_reason(reason), addr, &message);
            anyhow::bail!("peer {addr} refused us: {message}")
        }
        _ => {
            inner.reject("handshake", addr, &"unexpected handshake reply");
            anyhow::bail!("peer {addr} sent an unexpected handshake reply")
        }
    }
}

fn refusal_reason(r: Refusal) -> &'static str {
    match r {
        Refusal::ClusterMismatch => "cluster_mismatch",
        Refusal::ParamsMismatch => "params_mismatch",
        Refusal::Handshake => "handshake",
    }
}

/// Serves one inbound connection: handshake, then deliver messages until it closes.
async fn serve_conn(
    inner: Arc<Inner>,
    mut stream: TcpStream,
    peer: SocketAddr,
    tx: mpsc::Sender<Incoming>,
) {
    let peer_s = peer.to_string();
    let _ = stream.set_nodelay(true);
    let mine = new_session();
    let shake = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let theirs = match preamble(&mut stream, mine).await {
            Ok(Some(t)) => t,
            Ok(None) => {
                inner.reject("handshake", &peer_s, &"bad preamble");
                return None;
            }
            Err(_) => return None,
        };
        let mut state = RecvState {
            session: mine,
            cluster: None,
            last_seq: 0,
        };
        match read_frame(
            &mut stream,
            &inner.keys,
            &mut state,
            inner.max_frame.min(HANDSHAKE_MAX_FRAME),
        )
        .await
        {
            Ok((header, Payload::Hello(h), len)) if h.id == header.sender => {
                if let Some((refusal, msg)) = inner.hello.incompatibility(&h) {
                    inner.reject(refusal_reason(refusal), &peer_s, &msg);
                    let p = frame::encode_payload(&PayloadRef::Reject {
                        reason: refusal,
                        message: &msg,
                    });
                    let f = frame::seal(&inner.keys.get(), &inner.header(theirs, 1), &p);
                    let _ = stream.write_all(&f).await;
                    return None;
                }
                bump(&inner.counters.frames_received, 1);
                bump(&inner.counters.bytes_received, len as u64);
                let p = frame::encode_payload(&PayloadRef::Accept(&inner.hello));
                let f = frame::seal(&inner.keys.get(), &inner.header(theirs, 1), &p);
                stream.write_all(&f).await.ok()?;
                bump(&inner.counters.frames_sent, 1);
                bump(&inner.counters.bytes_sent, f.len() as u64);
                state.cluster = Some(inner.cluster);
                Some((h, state, theirs))
            }
            Ok(_) => {
                inner.reject("handshake", &peer_s, &"first frame is not a valid Hello");
                None
            }
            Err(ConnError::Frame(FrameError::BadMac)) => {
                inner.reject(
                    "bad_mac",
                    &peer_s,
                    &"handshake does not authenticate (wrong cluster key?)",
                );
                // The one plaintext signal, so the dialer can print a clear error.
                let _ = stream.write_all(&[0, 0, 0, 0]).await;
                None
            }
            Err(ConnError::Frame(e)) => {
                inner.reject(e.reason(), &peer_s, &e);
                None
            }
            Err(ConnError::Io(_)) => None,
        }
    })
    .await;
    let Some((hello, state, theirs)) = shake.unwrap_or_else(|_| {
        inner.reject("handshake", &peer_s, &"handshake timed out");
        None
    }) else {
        return;
    };
    let from = hello.id;
    tracing::debug!(peer = %peer_s, %from, "peer connected");
    if tx.send(Incoming::Peer(hello)).await.is_err() {
        return;
    }
    let (r, w) = stream.into_split();
    let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A lower id's connection carries our frames to it too (module docs), once it
    // has carried one of its own: `Transport::hello` probes never send any.
    let (share, _w) = if from < inner.hello.id {
        let conn = OutConn {
            w: BufWriter::new(w),
            session: theirs,
            seq: 1,
            closed: closed.clone(),
        };
        (Some(conn), None)
    } else {
        (None, Some(w))
    };
    read_messages(&inner, r, state, from, &peer_s, &tx, share).await;
    closed.store(true, Ordering::Relaxed);
    if let Ok(mut rev) = inner.reverse.lock() {
        if rev
            .get(&from)
            .is_some_and(|c| Arc::ptr_eq(&c.closed, &closed))
        {
            rev.remove(&from);
        }
    }
}

/// Delivers the messages of an authenticated connection until it closes or a frame
/// is rejected. `share`, the connection's sending side, is offered to our writer to
/// `from` once the first frame authenticated.
async fn read_messages<R: AsyncRead + Unpin>(
    inner: &Inner,
    r: R,
    mut state: RecvState,
    from: NodeId,
    peer_s: &str,
    tx: &mpsc::Sender<Incoming>,
    mut share: Option<OutConn>,
) {
    let mut r = tokio::io::BufReader::new(r);
    loop {
        let frame = read_frame(&mut r, &inner.keys, &mut state, inner.max_frame).await;
        if let Ok((header, _, _)) = &frame {
            if let Some(conn) = share.take_if(|_| header.sender == from) {
                if let Ok(mut rev) = inner.reverse.lock() {
                    rev.insert(from, conn);
                }
                inner.reverse_gen.send_modify(|g| *g += 1);
            }
        }
        match frame {
            Ok((header, Payload::Message(msg), len)) if header.sender == from => {
                bump(&inner.counters.frames_received, 1);
                bump(&inner.counters.bytes_received, len as u64);
                if tx.send(Incoming::Message { from, msg }).await.is_err() {
                    return;
                }
            }
            Ok((header, Payload::Messages(msgs), len)) if header.sender == from => {
                bump(&inner.counters.frames_received, 1);
                bump(&inner.counters.bytes_received, len as u64);
                for msg in msgs {
                    if tx.send(Incoming::Message { from, msg }).await.is_err() {
                        return;
                    }
                }
            }
            Ok(_) => {
                inner.reject("handshake", peer_s, &"unexpected frame after the handshake");
                return;
            }
            Err(ConnError::Frame(e)) => {
                inner.reject(e.reason(), peer_s, &e);
                return;
            }
            Err(ConnError::Io(_)) => return,
        }
    }
}

/// Why [`write_queued`] stopped.
enum WriteEnd {
    /// The queue closed: the transport is gone.
    Closed,
    /// The connection failed or its read side ended.
    Failed,
    /// A lower id's connection to us arrived: send over it instead.
    Switch,
}

/// One peer's writer: take the lower id's connection to us or dial, then write
/// queued messages; reconnect with backoff.
async fn writer(inner: Arc<Inner>, to: NodeId, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0u32;
    let mut arrivals = inner.reverse_gen.subscribe();
    // Survives a switch of connection: what was received but not yet written.
    let mut queued = Vec::with_capacity(WRITE_BATCH);
    loop {
        arrivals.borrow_and_update();
        let reverse = inner
            .reverse
            .lock()
            .ok()
            .and_then(|mut r| r.remove(&to))
            .filter(|c| !c.closed.load(Ordering::Relaxed));
        let conn = match reverse {
            Some(conn) => Some(conn),
            None => dial_peer(&inner, to, &mut failures).await,
        };
        if let Some(conn) = conn {
            failures = 0;
            backoff = BACKOFF_MIN;
            match write_queued(&inner, to, &mut rx, &mut queued, &mut arrivals, conn).await {
                WriteEnd::Closed => return,
                WriteEnd::Switch => continue,
                WriteEnd::Failed => {}
            }
        }
        let mut stop = inner.shutdown.subscribe();
        let deadline = tokio::time::Instant::now() + backoff;
        let mut watching = true;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                // The lower id connected to us: no need to wait for our own dial.
                // (Another peer's arrival is not a reason to retry early.)
                changed = arrivals.changed(), if watching => match changed {
                    Err(_) => watching = false,
                    Ok(()) if inner.reverse.lock().is_ok_and(|r| r.contains_key(&to)) => break,
                    Ok(()) => {}
                },
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Dials `to` at its known address; on success reports its Hello, starts reading
/// what it sends back, and returns the sending side. Failures are counted in
/// `failures` (logged at warn the first time, then at debug).
async fn dial_peer(inner: &Arc<Inner>, to: NodeId, failures: &mut u32) -> Option<OutConn> {
    let addr = inner.book.lock().ok().and_then(|b| b.get(&to).cloned())?;
    match dial(inner, &addr).await {
        Ok((h, conn, incoming)) if h.id == to => {
            if *failures > 0 {
                tracing::info!(peer = %to, %addr, "reconnected to peer");
            }
            // Best effort: a full channel means the driver is busy, and the
            // peer's inbound handshake reports it as well.
            let _ = inner.incoming.try_send(Incoming::Peer(h));
            bump(&inner.counters.connections_dialed, 1);
            spawn_reader(inner.clone(), to, addr, incoming);
            Some(conn)
        }
        Ok((h, _, _)) => {
            *failures += 1;
            tracing::warn!(peer = %to, %addr, "address {addr} belongs to {}, not {to}", h.id);
            None
        }
        Err(e) => {
            *failures += 1;
            if *failures == 1 {
                tracing::warn!(peer = %to, "{e:#}");
            } else {
                tracing::debug!(peer = %to, failures = *failures, "{e:#}");
            }
            None
        }
    }
}

/// Writes queued messages over `conn` until the queue closes, the connection fails,
/// or another connection should take over. Everything queued goes out in as few
/// frames as fit.
async fn write_queued(
    inner: &Inner,
    to: NodeId,
    rx: &mut mpsc::Receiver<Vec<u8>>,
    queued: &mut Vec<Vec<u8>>,
    arrivals: &mut watch::Receiver<u64>,
    mut conn: OutConn,
) -> WriteEnd {
    let mut frame = frame::Batch::default();
    loop {
        if queued.is_empty() && rx.recv_many(queued, WRITE_BATCH).await == 0 {
            return WriteEnd::Closed;
        }
        // `recv_many` took everything queued: on the node's current-thread runtime
        // that is all the node task emitted for this peer in its last turn. No
        // `yield_now` to wait for more: it defers this task past a zero-timeout
        // `epoll_wait` and a whole scheduler tick for every frame, and measured on
        // 2026-12-04 that cost more than the frames it saved (16-client reads: 0.90 →
        // 1.11 frames per read without it, yet node CPU per read 96 → 85 µs and
        // reads/s higher in 11 of 13 alternated rounds; BENCHMARKS.md).
        if conn.closed.load(Ordering::Relaxed) {
            return WriteEnd::Failed;
        }
        if arrivals.has_changed().unwrap_or(false) {
            arrivals.borrow_and_update();
            if inner.reverse.lock().is_ok_and(|r| r.contains_key(&to)) {
                return WriteEnd::Switch;
            }
        }
        let mut ok = true;
        for m in queued.drain(..) {
            if !frame.fits(&m, inner.max_frame) {
                ok = ok && conn.write(inner, &frame.take_plaintext()).await.is_ok();
            }
            frame.push(m);
        }
        if !frame.is_empty() {
            ok = ok && conn.write(inner, &frame.take_plaintext()).await.is_ok();
        }
        if !ok || conn.w.flush().await.is_err() {
            return WriteEnd::Failed;
        }
    }
}

/// Delivers what the acceptor of a connection we dialed sends back on it, until the
/// connection closes or the transport stops.
fn spawn_reader(inner: Arc<Inner>, from: NodeId, addr: String, conn: InConn) {
    let mut stop = inner.shutdown.subscribe();
    tokio::spawn(async move {
        let tx = inner.incoming.clone();
        tokio::select! {
            _ = read_messages(&inner, conn.r, conn.state, from, &addr, &tx, None) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
        conn.closed.store(true, Ordering::Relaxed);
    });
}

impl Transport {
    /// Starts accepting peers on `listener`. Returns the handle and the stream of
    /// authenticated inputs for the driver.
    pub fn start(
        listener: TcpListener,
        cfg: TransportConfig,
    ) -> anyhow::Result<(Transport, mpsc::Receiver<Incoming>)> {
        anyhow::ensure!(cfg.queue_per_peer > 0, "queue_per_peer must be at least 1");
        anyhow::ensure!(
            cfg.max_frame >= frame::MIN_FRAME,
            "max_frame must be at least {} bytes",
            frame::MIN_FRAME
        );
        let local_addr = listener.local_addr()?;
        let (shutdown, _) = watch::channel(false);
        let (tx, rx) = mpsc::channel(INCOMING_CAPACITY);
        let inner = Arc::new(Inner {
            cluster: frame::cluster_id(&cfg.hello.cluster),
            hello: cfg.hello,
            keys: KeyCell(RwLock::new(Arc::new(cfg.keys))),
            queue_per_peer: cfg.queue_per_peer,
            max_frame: cfg.max_frame,
            book: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            reverse: Mutex::new(HashMap::new()),
            reverse_gen: watch::channel(0).0,
            counters: Counters::default(),
            log_limit: Mutex::new(log_limit::LogLimiter::default()),
            shutdown,
            local_addr,
            incoming: tx.clone(),
        });
        let acc = inner.clone();
        tokio::spawn(async move {
            let limit = Arc::new(Semaphore::new(MAX_INBOUND));
            let mut stop = acc.shutdown.subscribe();
            loop {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop.wait_for(|s| *s) => return,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        let (inner, tx) = (acc.clone(), tx.clone());
                        let mut stop = acc.shutdown.subscribe();
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = serve_conn(inner, stream, peer, tx) => {}
                                _ = stop.wait_for(|s| *s) => {}
                            }
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        // E.g. out of file descriptors: back off instead of spinning.
                        tracing::warn!("accepting a peer connection failed: {e}");
                        tokio::time::sleep(BACKOFF_MIN).await;
                    }
                }
            }
        });
        Ok((Transport { inner }, rx))
    }

    /// The address the transport listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Records (or updates) where `id` listens for peers.
    pub fn set_addr(&self, id: NodeId, peer_addr: String) {
        if let Ok(mut b) = self.inner.book.lock() {
            b.insert(id, peer_addr);
        }
    }

    /// Queues `msg` for `to` without blocking; drops and counts it when the peer's
    /// queue is full or its address unknown.
    pub fn send(&self, to: NodeId, msg: &Message) {
        let inner = &self.inner;
        if *inner.shutdown.borrow() {
            return;
        }
        let Ok(mut peers) = inner.peers.lock() else {
            return;
        };
        let queue = match peers.get(&to) {
            Some(q) => q.clone(),
            None => {
                let known = inner.book.lock().is_ok_and(|b| b.contains_key(&to));
                if !known {
                    bump(&inner.counters.dropped_no_addr, 1);
                    return;
                }
                let (qtx, qrx) = mpsc::channel(inner.queue_per_peer);
                tokio::spawn(writer(self.inner.clone(), to, qrx));
                peers.insert(to, qtx.clone());
                qtx
            }
        };
        drop(peers);
        let plaintext = frame::encode_message(msg);
        if !frame::Batch::fits_alone(plaintext.len(), inner.max_frame) {
            bump(&inner.counters.dropped_too_large, 1);
            tracing::error!(peer = %to, bytes = plaintext.len(), max_frame = inner.max_frame,
                "message too large for one frame, dropped");
            return;
        }
        if queue.try_send(plaintext).is_err() {
            bump(&inner.counters.dropped_queue_full, 1);
        }
    }

    /// Connects to `peer_addr`, handshakes and returns the peer's Hello (resolving a
    /// seed address to an id). A clear error when the peer refuses us (wrong key,
    /// cluster or parameters) or is unreachable.
    pub async fn hello(&self, peer_addr: &str) -> anyhow::Result<Hello> {
        let (h, _, _) = dial(&self.inner, peer_addr).await?;
        Ok(h)
    }

    /// Counters since start.
    pub fn stats(&self) -> TransportStats {
        let c = &self.inner.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TransportStats {
            frames_sent: g(&c.frames_sent),
            bytes_sent: g(&c.bytes_sent),
            frames_received: g(&c.frames_received),
            bytes_received: g(&c.bytes_received),
            dropped_queue_full: g(&c.dropped_queue_full),
            dropped_no_addr: g(&c.dropped_no_addr),
            dropped_too_large: g(&c.dropped_too_large),
            connections_dialed: g(&c.connections_dialed),
            rejected: Rejected {
                bad_mac: g(&c.rejected[0]),
                replay: g(&c.rejected[1]),
                oversize: g(&c.rejected[2]),
                decode: g(&c.rejected[3]),
                cluster_mismatch: g(&c.rejected[4]),
                params_mismatch: g(&c.rejected[5]),
                handshake: g(&c.rejected[6]),
            },
            keys: self.inner.keys.get().len() as u64,
            key_reloads: g(&c.key_reloads),
            key_reloads_failed: g(&c.key_reloads_failed),
        }
    }

    /// Fingerprints of the keys in use, the sending key's first.
    pub fn key_fingerprints(&self) -> Vec<String> {
        self.inner.keys.get().fingerprints().to_vec()
    }

    /// Replaces the cluster keys with those in `path` (SIGHUP in `ringlab serve`):
    /// the next frame on every connection is sealed with the new first key and
    /// opened with any new key, and connections stay up. A file that cannot be read
    /// or parsed changes nothing: the error says why and the old keys stay, because
    /// a node left with no usable key would cut itself off the cluster. Returns the
    /// new keys' fingerprints.
    pub fn reload_keys(&self, path: &Path) -> anyhow::Result<Vec<String>> {
        match KeyRing::load(path) {
            Ok(keys) => {
                let prints = keys.fingerprints().to_vec();
                self.inner.keys.set(keys);
                bump(&self.inner.counters.key_reloads, 1);
                Ok(prints)
            }
            Err(e) => {
                bump(&self.inner.counters.key_reloads_failed, 1);
                Err(e)
            }
        }
    }

    /// Stops accepting, closes every connection and writer; later sends are ignored.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        if let Ok(mut p) = self.inner.peers.lock() {
            p.clear();
        }
        if let Ok(mut r) = self.inner.reverse.lock() {
            r.clear();
        }
    }
}

#[cfg(test)]
mod tests;
