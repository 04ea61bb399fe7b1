//! The write-ahead log that makes a group commit cost one small sequential write.
//!
//! Why: a redb commit writes every B-tree page the group touched (copy on write,
//! ~8 scattered pages for one small write) before its `fdatasync`; on this
//! project's disks that is 2–5× the cost of one appended record (BENCHMARKS.md).
//! So a group commit appends the group's operations as **one record** to a
//! preallocated log file and `fdatasync`s it; the redb transaction that holds the
//! same changes (and serves reads) stays open and is committed only at a
//! *checkpoint*, which also records the last log sequence number (LSN) it covers.
//! After a checkpoint the log starts again at offset 0.
//!
//! Record layout (little endian): `magic "RLW1" | payload len u32 | lsn u64 |
//! crc32 u32 | payload`, the CRC over the 16 header bytes before it and the
//! payload. The payload is the group's [`EncOp`]s, each a tag byte and its fields
//! (byte strings as u32 length + bytes), in the order they were applied.
//!
//! Recovery reads records from offset 0 while each one is whole, its CRC matches
//! and its LSN is exactly the previous one plus one (starting after the
//! checkpoint's). The first record that fails is the end: a group whose write was
//! torn by a crash was never acknowledged (the ack waits for the `fdatasync`).
//! Records left over from before the last checkpoint have smaller LSNs and so can
//! never be taken for new ones. A *valid* record with a later LSN found after the
//! end means a record in the middle was damaged: that is reported as corruption
//! rather than silently dropping acknowledged writes. The one exception is the
//! pipeline: up to [`MAX_IN_FLIGHT`] records are written and synced at once, so a
//! torn record may be followed by whole ones that were in flight with it — never
//! acknowledged, because a group's outputs wait for every earlier group's sync.
//! Those are dropped, and recovery's checkpoint moves past their LSNs so the new
//! log cannot be mistaken for their continuation. (The cost: damage to the second
//! to last record alone is read as such a crash, not reported.)
//!
//! The file is zero-filled to its capacity when created, so appends overwrite
//! allocated blocks and `fdatasync` has no file-size metadata to journal.

use bytes::Bytes;
use ringlab_core::store::StorageError;
use ringlab_core::NodeId;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The log's file name inside the data directory.
pub const WAL_FILE: &str = "ringlab.wal";

/// Default log capacity: a checkpoint is forced before a record would pass it.
pub const DEFAULT_CAPACITY: u64 = 16 << 20;

const MAGIC: [u8; 4] = *b"RLW1";
/// Bytes before a record's payload.
pub const HEADER: usize = 20;

/// One storage change with its value already encoded (postcard), as both the redb
/// tables and the log store it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EncOp {
    /// Insert or replace an object.
    PutObject {
        /// Key.
        key: Bytes,
        /// postcard(`Object`).
        value: Vec<u8>,
    },
    /// Remove an object.
    DeleteObject {
        /// Key.
        key: Bytes,
    },
    /// Insert or replace a hint.
    PutHint {
        /// Intended owner.
        owner: NodeId,
        /// Key.
        key: Bytes,
        /// postcard(`Hint`).
        value: Vec<u8>,
        /// The hinted object's value bytes (for the per-owner usage counters).
        value_bytes: usize,
    },
    /// Remove a hint.
    DeleteHint {
        /// Intended owner.
        owner: NodeId,
        /// Key.
        key: Bytes,
    },
    /// Named metadata.
    PutMeta {
        /// Name.
        name: String,
        /// Value.
        value: Vec<u8>,
    },
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

impl EncOp {
    /// Appends this op's log encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            EncOp::PutObject { key, value } => {
                out.push(1);
                put_bytes(out, key);
                put_bytes(out, value);
            }
            EncOp::DeleteObject { key } => {
                out.push(2);
                put_bytes(out, key);
            }
            EncOp::PutHint {
                owner, key, value, ..
            } => {
                out.push(3);
                out.extend_from_slice(&owner.0.to_le_bytes());
                put_bytes(out, key);
                put_bytes(out, value);
            }
            EncOp::DeleteHint { owner, key } => {
                out.push(4);
                out.extend_from_slice(&owner.0.to_le_bytes());
                put_bytes(out, key);
            }
            EncOp::PutMeta { name, value } => {
                out.push(5);
                put_bytes(out, name.as_bytes());
                put_bytes(out, value);
            }
        }
    }
}

/// Reads a payload back into ops; `hint_bytes` gives a hint value's object size.
/// Errors on anything that is not a whole, well-formed sequence of ops.
pub fn decode_payload(
    mut p: &[u8],
    hint_bytes: impl Fn(&[u8]) -> Result<usize, String>,
) -> Result<Vec<EncOp>, String> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if p.len() < n {
            return Err("op cut short".into());
        }
        let (a, b) = p.split_at(n);
        *p = b;
        Ok(a)
    }
    fn u32_of(p: &mut &[u8]) -> Result<u32, String> {
        let b = take(p, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn bytes_of<'a>(p: &mut &'a [u8]) -> Result<&'a [u8], String> {
        let n = u32_of(p)? as usize;
        take(p, n)
    }
    let mut ops = Vec::new();
    while let Some((&tag, rest)) = p.split_first() {
        p = rest;
        let op = match tag {
            1 => EncOp::PutObject {
                key: Bytes::copy_from_slice(bytes_of(&mut p)?),
                value: bytes_of(&mut p)?.to_vec(),
            },
            2 => EncOp::DeleteObject {
                key: Bytes::copy_from_slice(bytes_of(&mut p)?),
            },
            3 => {
                let owner = NodeId(u32_of(&mut p)?);
                let key = Bytes::copy_from_slice(bytes_of(&mut p)?);
                let value = bytes_of(&mut p)?.to_vec();
                let value_bytes = hint_bytes(&value)?;
                EncOp::PutHint {
                    owner,
                    key,
                    value,
                    value_bytes,
                }
            }
            4 => EncOp::DeleteHint {
                owner: NodeId(u32_of(&mut p)?),
                key: Bytes::copy_from_slice(bytes_of(&mut p)?),
            },
            5 => EncOp::PutMeta {
                name: String::from_utf8(bytes_of(&mut p)?.to_vec())
                    .map_err(|_| "meta name is not UTF-8".to_string())?,
                value: bytes_of(&mut p)?.to_vec(),
            },
            t => return Err(format!("unknown op tag {t}")),
        };
        ops.push(op);
    }
    Ok(ops)
}

fn header_bytes(len: u32, lsn: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&MAGIC);
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h[8..16].copy_from_slice(&lsn.to_le_bytes());
    h
}

/// A whole record: header and payload.
pub fn record(lsn: u64, payload: &[u8]) -> Vec<u8> {
    let h = header_bytes(payload.len() as u32, lsn);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h);
    crc.update(payload);
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&h);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Parses the record at the start of `buf`: its LSN, payload and whole length, or
/// `None` if no whole record with a matching CRC starts there.
pub fn parse(buf: &[u8]) -> Option<(u64, &[u8], usize)> {
    let h = buf.get(..HEADER)?;
    if h[..4] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
    let lsn = u64::from_le_bytes(h[8..16].try_into().ok()?);
    let want = u32::from_le_bytes([h[16], h[17], h[18], h[19]]);
    let payload = buf.get(HEADER..HEADER.checked_add(len)?)?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h[..16]);
    crc.update(payload);
    (crc.finalize() == want).then_some((lsn, payload, HEADER + len))
}

/// Records (LSN, payload) to replay, in order.
pub type Records<'a> = Vec<(u64, &'a [u8])>;

/// Log records being written and synced at once, at most. A crash can tear any of
/// them, so after a torn record up to `MAX_IN_FLIGHT - 1` whole records with the
/// next LSNs may follow it; none of them was acknowledged (releases wait for every
/// earlier record, see `driver`), so they are dropped, not taken for damage.
pub const MAX_IN_FLIGHT: usize = 2;

/// What [`scan`] found.
#[derive(Debug)]
pub struct Scan<'a> {
    /// The records to replay, in order.
    pub records: Records<'a>,
    /// Where the valid log ends.
    pub end: usize,
    /// The highest LSN seen: the last record replayed, or a whole record written
    /// alongside the torn one (dropped). The next record must use a higher LSN, so
    /// such a leftover can never be read as the new log's continuation.
    pub newest: u64,
}

/// The records to replay after a checkpoint at `checkpoint`, in order, and where
/// the valid log ends. Errors if a valid record with a later LSN lies beyond the
/// end (a damaged record in the middle), unless it is one that was in flight with
/// the torn record (an LSN less than [`MAX_IN_FLIGHT`] after it).
pub fn scan(buf: &[u8], checkpoint: u64) -> Result<Scan<'_>, String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    let mut expect = checkpoint + 1;
    while let Some((lsn, payload, len)) = buf.get(at..).and_then(parse) {
        if lsn != expect {
            break;
        }
        out.push((lsn, payload));
        at += len;
        expect += 1;
    }
    let mut newest = expect - 1;
    // Anything valid and newer further on, beyond the in-flight window, was
    // acknowledged: the log is damaged.
    let mut i = at + 1;
    while i + HEADER <= buf.len() {
        if buf[i..i + 4] == MAGIC {
            if let Some((lsn, _, _)) = parse(&buf[i..]) {
                if lsn > expect && lsn < expect + MAX_IN_FLIGHT as u64 {
                    newest = newest.max(lsn);
                } else if lsn >= expect {
                    return Err(format!(
                        "record {} at offset {at} is damaged but record {lsn} follows at offset {i}",
                        expect
                    ));
                }
            }
        }
        i += 1;
    }
    Ok(Scan {
        records: out,
        end: at,
        newest,
    })
}

/// The log file and where the next record goes.
pub struct Wal {
    file: Arc<File>,
    path: PathBuf,
    capacity: u64,
    /// Offset of the next record.
    offset: u64,
    /// LSN of the next record.
    next_lsn: u64,
    /// The ops of the group being collected (the next record's payload).
    group: Vec<u8>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("path", &self.path)
            .field("offset", &self.offset)
            .field("next_lsn", &self.next_lsn)
            .field("group", &self.group.len())
            .finish()
    }
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> StorageError {
    StorageError(format!("{what} {}: {e}", path.display()))
}

impl Wal {
    /// Opens (creating and zero-filling it if needed) the log in `dir` and returns
    /// it with its whole contents for [`scan`]. The log is positioned at the start;
    /// call [`Wal::recovered`] once the records are replayed and checkpointed.
    pub fn open(dir: &Path, capacity: u64) -> Result<(Wal, Vec<u8>), StorageError> {
        let path = dir.join(WAL_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_err(&path, "cannot open", e))?;
        let len = file
            .metadata()
            .map_err(|e| io_err(&path, "cannot stat", e))?
            .len();
        let mut data = vec![0u8; len as usize];
        file.read_exact_at(&mut data, 0)
            .map_err(|e| io_err(&path, "cannot read", e))?;
        if len < capacity {
            if len > 0 {
                tracing::warn!(file = %path.display(), len, capacity, "write-ahead log is shorter than its capacity (truncated?); extending it");
            }
            // Real zeroes, not a sparse hole: later appends then overwrite
            // allocated blocks, and their fdatasync journals no metadata.
            let zeros = vec![0u8; 1 << 20];
            let mut at = len;
            while at < capacity {
                let n = (capacity - at).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], at)
                    .map_err(|e| io_err(&path, "cannot extend", e))?;
                at += n as u64;
            }
            file.sync_all()
                .map_err(|e| io_err(&path, "cannot sync", e))?;
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok((
            Wal {
                file: Arc::new(file),
                path,
                capacity: capacity.max(len),
                offset: 0,
                next_lsn: 1,
                group: Vec::new(),
            },
            data,
        ))
    }

    /// After recovery checkpointed everything up to `checkpoint`: the next record
    /// is `checkpoint + 1`, at offset 0.
    pub fn recovered(&mut self, checkpoint: u64) {
        self.next_lsn = checkpoint + 1;
        self.offset = 0;
        self.group.clear();
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds `op` to the group being collected.
    pub fn push(&mut self, op: &EncOp) {
        op.encode(&mut self.group);
    }

    /// Drops the group being collected (its batches were never made durable).
    pub fn discard_group(&mut self) {
        self.group.clear();
    }

    /// Whether the collected group would still fit in the log as one record.
    pub fn group_fits(&self) -> bool {
        self.offset + (HEADER + self.group.len()) as u64 <= self.capacity
    }

    /// Takes the collected group as a record write (to run on another thread) and
    /// reserves its place: the next record goes after it, with the next LSN, even
    /// while this one is still being written ([`MAX_IN_FLIGHT`] at most).
    pub fn take_write(&mut self) -> WalWrite {
        let rec = record(self.next_lsn, &self.group);
        self.group.clear();
        let offset = self.offset;
        self.offset += rec.len() as u64;
        self.next_lsn += 1;
        WalWrite {
            file: self.file.clone(),
            path: self.path.clone(),
            offset,
            rec,
        }
    }

    /// The LSN a checkpoint taken now covers (every record taken so far, which the
    /// caller has seen written; the group being collected goes into the checkpoint
    /// itself, without a record).
    pub fn checkpoint_lsn(&self) -> u64 {
        self.next_lsn - 1
    }

    /// A checkpoint is durable: the log starts again at offset 0.
    pub fn checkpointed(&mut self) {
        self.group.clear();
        self.offset = 0;
    }

    /// Bytes of records since the last checkpoint.
    pub fn used(&self) -> u64 {
        self.offset
    }
}

/// One record to write and `fdatasync`.
pub struct WalWrite {
    file: Arc<File>,
    path: PathBuf,
    offset: u64,
    rec: Vec<u8>,
}

impl WalWrite {
    /// Record length.
    pub fn len(&self) -> usize {
        self.rec.len()
    }

    /// Whether the record is empty (never: a record has a header).
    pub fn is_empty(&self) -> bool {
        self.rec.is_empty()
    }

    /// Writes the record and waits until it is on disk.
    pub fn run(self) -> Result<(), StorageError> {
        self.file
            .write_all_at(&self.rec, self.offset)
            .map_err(|e| io_err(&self.path, "write-ahead log write to", e))?;
        self.file
            .sync_data()
            .map_err(|e| io_err(&self.path, "write-ahead log fdatasync of", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn no_hints(_: &[u8]) -> Result<usize, String> {
        Ok(0)
    }

    fn ops() -> Vec<EncOp> {
        vec![
            EncOp::PutObject {
                key: Bytes::from_static(b"k"),
                value: vec![1, 2, 3],
            },
            EncOp::DeleteObject {
                key: Bytes::from_static(b""),
            },
            EncOp::PutHint {
                owner: NodeId(7),
                key: Bytes::from_static(b"h"),
                value: vec![9; 300],
                value_bytes: 0,
            },
            EncOp::DeleteHint {
                owner: NodeId(u32::MAX),
                key: Bytes::from_static(b"x"),
            },
            EncOp::PutMeta {
                name: "epoch".into(),
                value: vec![],
            },
        ]
    }

    #[test]
    fn payload_round_trips_and_garbage_is_an_error() {
        let mut p = Vec::new();
        for op in ops() {
            op.encode(&mut p);
        }
        assert_eq!(decode_payload(&p, no_hints).unwrap(), ops());
        for cut in 1..p.len() {
            // Cutting inside an op is an error; at an op boundary it is fewer ops.
            if let Ok(got) = decode_payload(&p[..cut], no_hints) {
                assert!(got.len() < ops().len());
            }
        }
        assert!(decode_payload(&[9], no_hints).is_err());
        assert!(decode_payload(&[1, 255, 255, 255, 255], no_hints).is_err());
    }

    #[test]
    fn scan_stops_at_a_torn_or_stale_record() {
        let mut log = Vec::new();
        for lsn in 5..9u64 {
            log.extend(record(lsn, &lsn.to_le_bytes()));
        }
        let whole = log.len();
        let got = scan(&log, 4).unwrap();
        assert_eq!(
            got.records.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![5, 6, 7, 8]
        );
        assert_eq!((got.end, got.newest), (whole, 8));
        // A checkpoint past all of them (the log then starts over): they are
        // stale, nothing replays.
        let got = scan(&log, 8).unwrap();
        assert!(got.records.is_empty());
        assert_eq!((got.end, got.newest), (0, 8));
        // Torn last record: the ones before it replay.
        for cut in whole - 8..whole {
            let got = scan(&log[..cut], 4).unwrap();
            assert_eq!((got.records.len(), got.newest), (3, 7));
        }
        // Zeroes after the end are fine.
        log.extend(vec![0; 100]);
        assert_eq!(scan(&log, 4).unwrap().records.len(), 4);
    }

    /// Records `lsns`, each with the payload "payload" (so `HEADER + 7` bytes long).
    fn log_of(lsns: std::ops::Range<u64>) -> Vec<u8> {
        lsns.flat_map(|lsn| record(lsn, b"payload")).collect()
    }

    #[test]
    fn damage_in_the_middle_is_an_error_not_a_silent_loss() {
        let mut log = log_of(1..5);
        let second = HEADER + 7;
        log[second + HEADER + 2] ^= 1; // record 2's payload
        let err = scan(&log, 0).unwrap_err();
        assert!(
            err.contains("record 3 at offset") || err.contains("follows"),
            "{err}"
        );
        // Damage in the last record alone is a torn tail, not an error.
        let mut log = log_of(1..4);
        let n = log.len();
        log[n - 1] ^= 1;
        assert_eq!(scan(&log, 0).unwrap().records.len(), 2);
    }

    /// Two records in flight at a crash: the first torn, the second whole. The
    /// second was never acknowledged (it waits for the first), so it is dropped,
    /// and `newest` makes the next log skip its LSN.
    #[test]
    fn a_whole_record_after_a_torn_one_in_flight_with_it_is_dropped() {
        let mut log = log_of(1..5);
        let rec = HEADER + 7;
        log[2 * rec + HEADER + 1] ^= 1; // record 3 torn, record 4 whole
        let got = scan(&log, 0).unwrap();
        assert_eq!(got.records.len(), 2);
        assert_eq!((got.end, got.newest), (2 * rec, 4));
        // Two records later than the torn one cannot both have been in flight.
        log.extend(record(5, b"payload"));
        assert!(scan(&log, 0).unwrap_err().contains("record 5 follows"));
    }

    #[test]
    fn write_then_reopen_reads_the_records_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, data) = Wal::open(dir.path(), 4096).unwrap();
        assert_eq!(data.len(), 0);
        w.recovered(0);
        for op in ops() {
            w.push(&op);
        }
        assert!(w.group_fits());
        let write = w.take_write();
        let len = write.len();
        write.run().unwrap();
        drop(w);
        let (_, data) = Wal::open(dir.path(), 4096).unwrap();
        assert_eq!(data.len(), 4096, "zero-filled to capacity");
        let got = scan(&data, 0).unwrap();
        assert_eq!(got.end, len);
        assert_eq!(decode_payload(got.records[0].1, no_hints).unwrap(), ops());
    }

    proptest! {
        /// Whatever bytes follow the valid records, scan never panics and never
        /// returns a record it was not given.
        #[test]
        fn scan_survives_garbage(tail in prop::collection::vec(any::<u8>(), 0..400), n in 0u64..4) {
            let mut log = Vec::new();
            for lsn in 1..=n {
                log.extend(record(lsn, &[lsn as u8; 3]));
            }
            log.extend(tail);
            if let Ok(got) = scan(&log, 0) {
                let recs = got.records;
                prop_assert!(recs.len() as u64 >= n);
                for (i, (lsn, p)) in recs.iter().enumerate().take(n as usize) {
                    prop_assert_eq!(*lsn, i as u64 + 1);
                    prop_assert_eq!(*p, &[*lsn as u8; 3][..]);
                }
            }
        }
    }
}
