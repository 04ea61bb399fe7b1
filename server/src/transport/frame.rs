//! Frame encoding: length prefix, authenticated header, XChaCha20-Poly1305.
//!
//! ```text
//! u32 BE length | header (37 bytes, authenticated data)                    | nonce (24) | ciphertext + tag (16)
//!               | version u8 | cluster id [8] | sender u32 | session [16] | seq u64 |
//! ```
//! The plaintext is a postcard-encoded [`Payload`]. Invariants: the length is
//! checked against the limit before anything is allocated; the tag is verified
//! (trying every accepted key) before the header is trusted or the payload decoded;
//! a frame must carry the session bytes the *receiver* chose for this connection
//! and a sequence number above the last one accepted on it, so a recorded frame can
//! neither be replayed on its connection nor injected into another one.
//!
//! A zero length prefix is not a frame: it is the one plaintext signal, "I cannot
//! authenticate you", sent by a peer whose keys open none of our frames.

use super::keys::KeyRing;
use super::Hello;
use chacha20poly1305::aead::{Aead, Payload as AeadPayload};
use chacha20poly1305::XNonce;
use rand::RngCore;
use ringlab_core::{Message, NodeId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The plaintext preamble each side writes first: magic, then its 16 session bytes.
pub const MAGIC: &[u8; 4] = b"RLB1";
/// Wire format version in every header.
pub const VERSION: u8 = 1;
/// Session (challenge) bytes.
pub const SESSION_LEN: usize = 16;
/// Header bytes.
pub const HEADER_LEN: usize = 1 + 8 + 4 + SESSION_LEN + 8;
/// Nonce bytes.
pub const NONCE_LEN: usize = 24;
/// Tag bytes.
pub const TAG_LEN: usize = 16;
/// Smallest possible frame body.
pub const MIN_FRAME: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;

/// The authenticated frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Wire format version.
    pub version: u8,
    /// First 8 bytes of SHA-256(cluster name).
    pub cluster: [u8; 8],
    /// The sending node.
    pub sender: NodeId,
    /// The receiver's session bytes for this connection.
    pub session: [u8; SESSION_LEN],
    /// Strictly increasing per connection and direction, from 1.
    pub seq: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = self.version;
        h[1..9].copy_from_slice(&self.cluster);
        h[9..13].copy_from_slice(&self.sender.0.to_be_bytes());
        h[13..29].copy_from_slice(&self.session);
        h[29..37].copy_from_slice(&self.seq.to_be_bytes());
        h
    }

    fn decode(h: &[u8; HEADER_LEN]) -> Header {
        let mut cluster = [0u8; 8];
        cluster.copy_from_slice(&h[1..9]);
        let mut sender = [0u8; 4];
        sender.copy_from_slice(&h[9..13]);
        let mut session = [0u8; SESSION_LEN];
        session.copy_from_slice(&h[13..29]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&h[29..37]);
        Header {
            version: h[0],
            cluster,
            sender: NodeId(u32::from_be_bytes(sender)),
            session,
            seq: u64::from_be_bytes(seq),
        }
    }
}

/// The cluster id carried in headers.
pub fn cluster_id(name: &str) -> [u8; 8] {
    let d = Sha256::digest(name.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&d[..8]);
    id
}

/// Why a handshake was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The dialer's cluster name differs.
    ClusterMismatch,
    /// The dialer's n/r/w/partitions differ.
    ParamsMismatch,
    /// Anything else wrong with the handshake.
    Handshake,
}

/// What a frame carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Payload {
    /// The dialer introduces itself (first frame on a connection).
    Hello(Hello),
    /// The acceptor accepts, introducing itself.
    Accept(Hello),
    /// The acceptor refuses; the connection closes.
    Reject {
        /// Why.
        reason: Refusal,
        /// A human-readable explanation for the dialer's error message.
        message: String,
    },
    /// A core message.
    Message(Message),
    /// Several core messages in one frame, in send order: what writers send, so one
    /// seal, one MAC and one header serve every message queued for the peer (the
    /// fixed cost of XChaCha20-Poly1305 dominates for small messages).
    Messages(Vec<Message>),
}

/// [`Payload`] by reference: identical encoding, no clone of the message.
#[derive(Serialize)]
pub(crate) enum PayloadRef<'a> {
    Hello(&'a Hello),
    Accept(&'a Hello),
    Reject {
        reason: Refusal,
        message: &'a str,
    },
    // Writers send `Batch`es; these two spell the message encodings out for tests.
    #[cfg(test)]
    Message(&'a Message),
    #[cfg(test)]
    Messages(&'a [Message]),
}

/// Builds the plaintext of a [`Payload::Messages`] from messages already encoded
/// one by one ([`encode_message`]), without re-encoding them: postcard writes an enum
/// variant and a sequence length as varints followed by the elements, so the
/// concatenation is exactly `postcard::to_allocvec(&Payload::Messages(msgs))`.
#[derive(Debug, Default)]
pub struct Batch {
    parts: Vec<Vec<u8>>,
    bytes: usize,
}

/// [`Payload::Messages`]' variant index.
const MESSAGES_VARIANT: u64 = 4;
/// Room for the variant and count varints.
const BATCH_OVERHEAD: usize = 1 + 10;

impl Batch {
    /// Whether `part` fits beside what is queued in a frame of `max_frame` bytes.
    pub fn fits(&self, part: &[u8], max_frame: usize) -> bool {
        self.bytes + part.len() + BATCH_OVERHEAD + MIN_FRAME <= max_frame
    }

    /// Whether one message of `len` encoded bytes fits a frame on its own.
    pub fn fits_alone(len: usize, max_frame: usize) -> bool {
        len + BATCH_OVERHEAD + MIN_FRAME <= max_frame
    }

    /// Adds one encoded message.
    pub fn push(&mut self, part: Vec<u8>) {
        self.bytes += part.len();
        self.parts.push(part);
    }

    /// Messages queued.
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The plaintext of the frame; empties the batch.
    pub fn take_plaintext(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes + BATCH_OVERHEAD);
        push_varint(&mut out, MESSAGES_VARIANT);
        push_varint(&mut out, self.parts.len() as u64);
        for p in self.parts.drain(..) {
            out.extend_from_slice(&p);
        }
        self.bytes = 0;
        out
    }
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// Encodes one core message for a [`Batch`].
pub fn encode_message(m: &Message) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail.
    postcard::to_allocvec(m).unwrap_or_default()
}

/// Why a frame was rejected; [`FrameError::reason`] is the metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix exceeds the limit (nothing was allocated).
    #[error("frame larger than the limit")]
    Oversize,
    /// No accepted key authenticates the frame.
    #[error("frame does not authenticate (wrong cluster key or tampered)")]
    BadMac,
    /// Wrong session bytes or a sequence number not above the last one.
    #[error("replayed frame (old sequence number or another connection's session)")]
    Replay,
    /// Too short, wrong version, or an authenticated payload that does not decode.
    #[error("malformed frame")]
    Decode,
    /// Authenticated, but from another cluster.
    #[error("frame from another cluster")]
    ClusterMismatch,
    /// The zero-length signal: the peer cannot authenticate our frames.
    #[error("the peer cannot authenticate us (different cluster key)")]
    KeyRefused,
}

impl FrameError {
    /// The `reason` label of `ringlab_frames_rejected_total`.
    pub fn reason(self) -> &'static str {
        match self {
            FrameError::Oversize => "oversize",
            FrameError::BadMac => "bad_mac",
            FrameError::Replay => "replay",
            FrameError::Decode => "decode",
            FrameError::ClusterMismatch => "cluster_mismatch",
            FrameError::KeyRefused => "handshake",
        }
    }
}

/// What the receiving side of a connection expects of the next frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvState {
    /// The session bytes this side chose for the connection.
    pub session: [u8; SESSION_LEN],
    /// The cluster id required in headers (`None` during the handshake, where the
    /// Hello's cluster name is compared instead, for a clearer refusal).
    pub cluster: Option<[u8; 8]>,
    /// The last accepted sequence number (0 before the first frame).
    pub last_seq: u64,
}

/// Encodes a payload with postcard.
pub(crate) fn encode_payload(p: &PayloadRef<'_>) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail; an empty payload would be
    // rejected by the receiver as `decode`, never silently accepted.
    postcard::to_allocvec(p).unwrap_or_default()
}

/// Seals `plaintext` (a postcard [`Payload`]) under the sending key: returns the whole
/// frame, length prefix included.
pub fn seal(keys: &KeyRing, header: &Header, plaintext: &[u8]) -> Vec<u8> {
    let aad = header.encode();
    let mut nonce = [0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut nonce);
    // Encryption only fails for plaintexts beyond 2^38 bytes, far above any frame limit.
    let ct = keys
        .sending()
        .encrypt(
            XNonce::from_slice(&nonce),
            AeadPayload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .unwrap_or_default();
    let len = (HEADER_LEN + NONCE_LEN + ct.len()) as u32;
    let mut f = Vec::with_capacity(4 + len as usize);
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&aad);
    f.extend_from_slice(&nonce);
    f.extend_from_slice(&ct);
    f
}

/// Checks a length prefix before anything is allocated for the body.
pub fn check_len(prefix: [u8; 4], max_frame: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len == 0 {
        Err(FrameError::KeyRefused)
    } else if len > max_frame {
        Err(FrameError::Oversize)
    } else if len < MIN_FRAME {
        Err(FrameError::Decode)
    } else {
        Ok(len)
    }
}

/// Opens a frame body (without its length prefix): authenticates with every accepted
/// key, checks version, cluster, session and sequence, then decodes the payload.
/// Advances `state.last_seq` only for a frame that passes every check.
pub fn open(
    keys: &KeyRing,
    state: &mut RecvState,
    body: &[u8],
) -> Result<(Header, Payload), FrameError> {
    let (aad, rest) = body
        .split_first_chunk::<HEADER_LEN>()
        .ok_or(FrameError::Decode)?;
    let (nonce, ct) = rest
        .split_first_chunk::<NONCE_LEN>()
        .ok_or(FrameError::Decode)?;
    if ct.len() < TAG_LEN {
        return Err(FrameError::Decode);
    }
    let nonce = XNonce::from_slice(nonce);
    let plaintext = keys
        .accepted()
        .iter()
        .find_map(|c| {
            c.decrypt(
                nonce,
                AeadPayload {
                    msg: ct,
                    aad: &aad[..],
                },
            )
            .ok()
        })
        .ok_or(FrameError::BadMac)?;
    let header = Header::decode(aad);
    if header.version != VERSION {
        return Err(FrameError::Decode);
    }
    if state.cluster.is_some_and(|c| c != header.cluster) {
        return Err(FrameError::ClusterMismatch);
    }
    if header.session != state.session || header.seq <= state.last_seq {
        return Err(FrameError::Replay);
    }
    let payload = match postcard::take_from_bytes::<Payload>(&plaintext) {
        Ok((p, [])) => p,
        _ => return Err(FrameError::Decode),
    };
    state.last_seq = header.seq;
    Ok((header, payload))
}

/// Decodes one frame from the start of `buf` (length prefix, then body): the fuzzed
/// entry point. Returns the header, the payload and the bytes consumed.
pub fn decode(
    keys: &KeyRing,
    state: &mut RecvState,
    buf: &[u8],
    max_frame: usize,
) -> Result<(Header, Payload, usize), FrameError> {
    let (prefix, rest) = buf.split_first_chunk::<4>().ok_or(FrameError::Decode)?;
    let len = check_len(*prefix, max_frame)?;
    let body = rest.get(..len).ok_or(FrameError::Decode)?;
    let (h, p) = open(keys, state, body)?;
    Ok((h, p, 4 + len))
}

/// Key of the fuzz corpus (public so the fuzz crate seals and opens with it).
pub const FUZZ_KEY: [u8; 32] = [0x42; 32];
/// Cluster of the fuzz corpus.
pub const FUZZ_CLUSTER: &str = "fuzz";
/// Receiver session of the fuzz corpus.
pub const FUZZ_SESSION: [u8; SESSION_LEN] = [0x17; SESSION_LEN];

/// The fuzz target's body: decodes `data` as a frame sent to a receiver holding
/// [`FUZZ_KEY`] with session [`FUZZ_SESSION`] on cluster [`FUZZ_CLUSTER`]; then seals
/// `data` as the plaintext of an authentic frame and opens that too, so the postcard
/// decoder is fuzzed behind the MAC. Returns the bytes consumed by the first decode.
pub fn fuzz_entry(keys: &KeyRing, data: &[u8]) -> Result<usize, FrameError> {
    let mut state = RecvState {
        session: FUZZ_SESSION,
        cluster: Some(cluster_id(FUZZ_CLUSTER)),
        last_seq: 0,
    };
    let first = decode(keys, &mut state, data, 1 << 20).map(|(_, _, used)| used);
    let header = Header {
        version: VERSION,
        cluster: cluster_id(FUZZ_CLUSTER),
        sender: NodeId(0),
        session: FUZZ_SESSION,
        seq: u64::MAX,
    };
    let sealed = seal(keys, &header, data);
    let mut fresh = RecvState {
        last_seq: 0,
        ..state
    };
    if let Err(e) = decode(keys, &mut fresh, &sealed, usize::MAX) {
        // Behind a valid MAC the only possible failure is the payload itself.
        assert_eq!(e, FrameError::Decode, "authentic frame rejected as {e:?}");
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys(b: u8) -> KeyRing {
        KeyRing::from_keys(&[[b; 32]]).unwrap()
    }

    fn hello() -> Hello {
        Hello {
            id: NodeId(1),
            cluster: "c".into(),
            peer_addr: "127.0.0.1:1".into(),
            http_addr: "127.0.0.1:2".into(),
            zone: "z1".into(),
            n: 3,
            r: 2,
            w: 2,
            partitions: 64,
        }
    }

    fn header(seq: u64) -> Header {
        Header {
            version: VERSION,
            cluster: cluster_id("c"),
            sender: NodeId(1),
            session: [7; SESSION_LEN],
            seq,
        }
    }

    fn state() -> RecvState {
        RecvState {
            session: [7; SESSION_LEN],
            cluster: Some(cluster_id("c")),
            last_seq: 0,
        }
    }

    fn hello_frame(k: &KeyRing, seq: u64) -> Vec<u8> {
        seal(
            k,
            &header(seq),
            &encode_payload(&PayloadRef::Hello(&hello())),
        )
    }

    #[test]
    fn round_trip_and_payload_ref_matches_payload() {
        let k = keys(1);
        let f = hello_frame(&k, 1);
        let mut st = state();
        let (h, p, used) = decode(&k, &mut st, &f, 1 << 20).unwrap();
        assert_eq!((h, p, used), (header(1), Payload::Hello(hello()), f.len()));
        assert_eq!(st.last_seq, 1);
        let reject = PayloadRef::Reject {
            reason: Refusal::ParamsMismatch,
            message: "m",
        };
        assert_eq!(
            encode_payload(&reject),
            postcard::to_allocvec(&Payload::Reject {
                reason: Refusal::ParamsMismatch,
                message: "m".into()
            })
            .unwrap()
        );
    }

    #[test]
    fn every_rejection_has_its_reason() {
        let k = keys(1);
        let f = hello_frame(&k, 5);
        let max = 1 << 20;
        // Wrong key, tampered byte anywhere in the body.
        assert_eq!(
            decode(&keys(2), &mut state(), &f, max).unwrap_err(),
            FrameError::BadMac
        );
        for i in 4..f.len() {
            let mut t = f.clone();
            t[i] ^= 1;
            assert_eq!(
                decode(&k, &mut state(), &t, max).unwrap_err(),
                FrameError::BadMac,
                "byte {i}"
            );
        }
        // A second key in the ring is accepted.
        let both = KeyRing::from_keys(&[[2; 32], [1; 32]]).unwrap();
        assert!(decode(&both, &mut state(), &f, max).is_ok());
        // Replay, older seq, another session.
        let mut st = state();
        decode(&k, &mut st, &f, max).unwrap();
        assert_eq!(
            decode(&k, &mut st, &f, max).unwrap_err(),
            FrameError::Replay
        );
        assert_eq!(
            decode(&k, &mut st, &hello_frame(&k, 4), max).unwrap_err(),
            FrameError::Replay
        );
        let mut other = RecvState {
            session: [8; SESSION_LEN],
            ..state()
        };
        assert_eq!(
            decode(&k, &mut other, &f, max).unwrap_err(),
            FrameError::Replay
        );
        // Other cluster (authenticated header), unless the check is off (handshake).
        let mut st = RecvState {
            cluster: Some(cluster_id("d")),
            ..state()
        };
        assert_eq!(
            decode(&k, &mut st, &f, max).unwrap_err(),
            FrameError::ClusterMismatch
        );
        st.cluster = None;
        assert!(decode(&k, &mut st, &f, max).is_ok());
        // Oversize before allocation, zero-length signal, short.
        assert_eq!(
            decode(&k, &mut state(), &f, f.len() - 5).unwrap_err(),
            FrameError::Oversize
        );
        assert_eq!(
            decode(&k, &mut state(), &[0xff; 4], max).unwrap_err(),
            FrameError::Oversize
        );
        assert_eq!(
            decode(&k, &mut state(), &[0; 4], max).unwrap_err(),
            FrameError::KeyRefused
        );
        assert_eq!(
            decode(&k, &mut state(), &f[..f.len() - 1], max).unwrap_err(),
            FrameError::Decode
        );
        assert_eq!(
            decode(&k, &mut state(), &f[..3], max).unwrap_err(),
            FrameError::Decode
        );
        // Authentic garbage payload, and trailing bytes after a payload.
        let g = seal(&k, &header(1), &[0xff, 0xff, 0xff]);
        assert_eq!(
            decode(&k, &mut state(), &g, max).unwrap_err(),
            FrameError::Decode
        );
        let mut p = encode_payload(&PayloadRef::Hello(&hello()));
        p.push(0);
        let g = seal(&k, &header(1), &p);
        assert_eq!(
            decode(&k, &mut state(), &g, max).unwrap_err(),
            FrameError::Decode
        );
        // Wrong version.
        let g = seal(
            &k,
            &Header {
                version: 9,
                ..header(1)
            },
            &encode_payload(&PayloadRef::Hello(&hello())),
        );
        assert_eq!(
            decode(&k, &mut state(), &g, max).unwrap_err(),
            FrameError::Decode
        );
    }

    /// A `Batch` is byte for byte postcard's encoding of `Payload::Messages`, and
    /// comes out of a sealed frame as the same messages in the same order — also past
    /// 127 messages, where the count takes two varint bytes.
    #[test]
    fn batches_encode_as_payload_messages() {
        use ringlab_core::detector::Msg as D;
        let k = keys(1);
        for n in [1usize, 2, 127, 128, 300] {
            let msgs: Vec<Message> = (0..n as u64)
                .map(|i| {
                    Message::Detector(if i % 2 == 0 {
                        D::Ping { nonce: i }
                    } else {
                        D::Pong { nonce: i << 40 }
                    })
                })
                .collect();
            let mut b = Batch::default();
            for m in &msgs {
                let part = encode_message(m);
                assert!(b.fits(&part, 1 << 20));
                b.push(part);
            }
            assert_eq!(b.len(), n);
            let plain = b.take_plaintext();
            assert!(b.is_empty());
            assert_eq!(
                plain,
                encode_payload(&PayloadRef::Messages(&msgs)),
                "n = {n}"
            );
            let f = seal(&k, &header(1), &plain);
            match decode(&k, &mut state(), &f, 1 << 20).unwrap().1 {
                Payload::Messages(got) => assert_eq!(got, msgs),
                other => panic!("{other:?}"),
            }
        }
        // The frame limit is respected: a part that would overflow does not fit.
        let mut b = Batch::default();
        b.push(vec![0; 100]);
        assert!(!b.fits(&[0; 100], 100 + 100 + MIN_FRAME));
        assert!(b.fits(&[0; 10], 100 + 10 + 11 + MIN_FRAME));
        assert!(!Batch::fits_alone(1000, 1000));
    }

    /// The seed corpus of the fuzz target: each file must be rejected or accepted
    /// without a panic, and the valid seeds must still decode.
    #[test]
    fn fuzz_corpus_and_mutations_never_panic() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/frame");
        let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| std::fs::read(e.ok()?.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        assert!(seeds.len() >= 4, "seed corpus missing in {}", dir.display());
        seeds.sort();
        let k = fuzz_keys();
        let mut accepted = 0;
        for s in &seeds {
            if fuzz_one(&k, s).is_ok() {
                accepted += 1;
            }
        }
        assert!(accepted >= 2, "the valid seeds no longer decode");
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        use rand::{Rng, SeedableRng};
        for i in 0..3000 {
            let mut m = seeds[i % seeds.len()].clone();
            for _ in 0..rng.gen_range(1..4) {
                match rng.gen_range(0..3) {
                    0 if !m.is_empty() => {
                        let j = rng.gen_range(0..m.len());
                        m[j] ^= 1 << rng.gen_range(0..8);
                    }
                    1 if !m.is_empty() => m.truncate(rng.gen_range(0..m.len())),
                    _ => m.push(rng.gen()),
                }
            }
            let orig = &seeds[i % seeds.len()];
            // A mutated body never authenticates; only a mutation past the frame's end
            // (appended bytes) can leave a valid frame.
            if let Ok(used) = fuzz_one(&k, &m) {
                assert_eq!(&m[..used], &orig[..used]);
            }
        }
    }

    /// The key the checked-in corpus was sealed with (also used by the fuzz target).
    pub(crate) fn fuzz_keys() -> KeyRing {
        KeyRing::from_keys(&[FUZZ_KEY]).unwrap()
    }

    fn fuzz_one(k: &KeyRing, data: &[u8]) -> Result<usize, FrameError> {
        super::fuzz_entry(k, data)
    }

    /// Writes the seed corpus (run once: `cargo test -p ringlab-server write_fuzz_corpus -- --ignored`).
    #[test]
    #[ignore]
    fn write_fuzz_corpus() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/frame");
        std::fs::create_dir_all(&dir).unwrap();
        let k = fuzz_keys();
        let h = |seq| Header {
            version: VERSION,
            cluster: cluster_id(FUZZ_CLUSTER),
            sender: NodeId(1),
            session: FUZZ_SESSION,
            seq,
        };
        let msg = ringlab_core::Message::Detector(ringlab_core::detector::Msg::Ping { nonce: 3 });
        let files: Vec<(&str, Vec<u8>)> = vec![
            (
                "hello",
                seal(&k, &h(1), &encode_payload(&PayloadRef::Hello(&hello()))),
            ),
            (
                "message",
                seal(&k, &h(2), &encode_payload(&PayloadRef::Message(&msg))),
            ),
            (
                "messages",
                seal(
                    &k,
                    &h(3),
                    &encode_payload(&PayloadRef::Messages(&[msg.clone(), msg.clone()])),
                ),
            ),
            (
                "reject",
                seal(
                    &k,
                    &h(1),
                    &encode_payload(&PayloadRef::Reject {
                        reason: Refusal::ClusterMismatch,
                        message: "no",
                    }),
                ),
            ),
            (
                "wrong_key",
                seal(
                    &keys(9),
                    &h(1),
                    &encode_payload(&PayloadRef::Hello(&hello())),
                ),
            ),
            ("oversize", vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3]),
            ("zero", vec![0, 0, 0, 0]),
            ("short", vec![0, 0, 0, 80, 1]),
        ];
        // Existing seeds are kept (sealing draws a fresh nonce each time).
        for (name, data) in files {
            if !dir.join(name).exists() {
                std::fs::write(dir.join(name), data).unwrap();
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Random bytes never panic and never authenticate.
        #[test]
        fn random_bytes_are_rejected(data in prop::collection::vec(any::<u8>(), 0..300)) {
            prop_assert!(decode(&fuzz_keys(), &mut state(), &data, 1 << 20).is_err());
        }

        /// Any authenticated plaintext decodes or is rejected as `decode`, never panics.
        #[test]
        fn authentic_garbage_is_a_decode_error(data in prop::collection::vec(any::<u8>(), 0..300)) {
            let k = fuzz_keys();
            let f = seal(&k, &header(1), &data);
            match decode(&k, &mut state(), &f, 1 << 20) {
                Ok((_, p, _)) => prop_assert_eq!(postcard::to_allocvec(&p).unwrap(), data),
                Err(e) => prop_assert_eq!(e, FrameError::Decode),
            }
        }
    }
}
