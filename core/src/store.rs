//! Storage: the one place a node's durable state lives.
//!
//! The core is synchronous and pure, so storage is a synchronous trait the driver
//! supplies. The node collects every change caused by one input into a [`Batch`]
//! and calls [`Storage::apply`] once, *before* emitting any output that depends on
//! it (an ack, a hint-delivery ack, a client reply). A durable implementation that
//! commits (and fsyncs) the batch atomically therefore makes "acknowledged ⇒ on
//! disk" true by construction. [`MemStorage`] is the in-memory implementation used
//! by the simulator and the tests; crashing a simulated node keeps it, wiping a
//! disk replaces it.
//!
//! Hinted replicas live apart from the node's own data, keyed by the intended
//! owner, so a stand-in never serves them as its own and can hand them off and
//! delete them one by one.

use crate::id::NodeId;
use crate::time::Time;
use crate::version::Object;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A hinted replica held by a stand-in for `owner`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hint {
    /// The versions to hand off.
    pub object: Object,
    /// When this stand-in first stored a hint for this key (the hint window counts from here).
    pub stored_at: Time,
}

/// One change to storage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Insert or replace the node's own copy of a key.
    PutObject {
        /// Key.
        key: Bytes,
        /// New state.
        object: Object,
    },
    /// Remove the node's own copy (tombstone purge).
    DeleteObject {
        /// Key.
        key: Bytes,
    },
    /// Insert or replace a hint for `owner`.
    PutHint {
        /// Intended owner.
        owner: NodeId,
        /// Key.
        key: Bytes,
        /// The hint.
        hint: Hint,
    },
    /// Remove a hint (delivered, or dropped).
    DeleteHint {
        /// Intended owner.
        owner: NodeId,
        /// Key.
        key: Bytes,
    },
    /// Small named node metadata (epoch counter, ring, membership).
    PutMeta {
        /// Name.
        name: String,
        /// Encoded value.
        value: Vec<u8>,
    },
}

/// Changes applied atomically, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The operations.
    pub ops: Vec<Op>,
}

impl Batch {
    /// Whether nothing is to be written.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// The storage could not commit a batch. Nothing of the batch is applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("storage failure: {0}")]
pub struct StorageError(pub String);

/// Durable node state as the core sees it.
pub trait Storage {
    /// The node's own copy of `key`.
    fn object(&self, key: &[u8]) -> Option<Object>;
    /// All own keys with their objects, in key order, starting strictly after `after`, at most `limit`.
    fn objects_after(&self, after: Option<&[u8]>, limit: usize) -> Vec<(Bytes, Object)>;
    /// Number of own keys.
    fn object_count(&self) -> usize;
    /// The hint for (`owner`, `key`).
    fn hint(&self, owner: NodeId, key: &[u8]) -> Option<Hint>;
    /// Owners this node holds hints for, ascending.
    fn hint_owners(&self) -> Vec<NodeId>;
    /// Hints for `owner` in key order, at most `limit`.
    fn hints_for(&self, owner: NodeId, limit: usize) -> Vec<(Bytes, Hint)>;
    /// (count, value bytes) of hints held for `owner`.
    fn hint_usage(&self, owner: NodeId) -> (usize, usize);
    /// Named metadata.
    fn meta(&self, name: &str) -> Option<Vec<u8>>;
    /// Commits `batch` atomically (and durably, for a durable implementation).
    fn apply(&mut self, batch: Batch) -> Result<(), StorageError>;
}

/// Hints for one owner, with running usage so limits are O(1) to check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct HintSet {
    hints: BTreeMap<Bytes, Hint>,
    bytes: usize,
}

/// In-memory [`Storage`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemStorage {
    objects: BTreeMap<Bytes, Object>,
    hints: BTreeMap<NodeId, HintSet>,
    meta: BTreeMap<String, Vec<u8>>,
    /// Number of batches applied (a durable store would have fsynced this many times).
    pub commits: u64,
}

impl MemStorage {
    /// Empty storage (a fresh or wiped disk).
    pub fn new() -> Self {
        Self::default()
    }

    /// Total hints held, over all owners.
    pub fn hint_count(&self) -> usize {
        self.hints.values().map(|h| h.hints.len()).sum()
    }

    /// Every hint as (owner, key), for inspection.
    pub fn all_hints(&self) -> Vec<(NodeId, Bytes)> {
        self.hints
            .iter()
            .flat_map(|(o, s)| s.hints.keys().map(move |k| (*o, k.clone())))
            .collect()
    }

    /// The node's own objects, for inspection.
    pub fn objects(&self) -> &BTreeMap<Bytes, Object> {
        &self.objects
    }
}

impl Storage for MemStorage {
    fn object(&self, key: &[u8]) -> Option<Object> {
        self.objects.get(key).cloned()
    }

    fn objects_after(&self, after: Option<&[u8]>, limit: usize) -> Vec<(Bytes, Object)> {
        use std::ops::Bound;
        let lower = match after {
            Some(k) => Bound::Excluded(Bytes::copy_from_slice(k)),
            None => Bound::Unbounded,
        };
        self.objects
            .range((lower, Bound::Unbounded))
            .take(limit)
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect()
    }

    fn object_count(&self) -> usize {
        self.objects.len()
    }

    fn hint(&self, owner: NodeId, key: &[u8]) -> Option<Hint> {
        self.hints.get(&owner)?.hints.get(key).cloned()
    }

    fn hint_owners(&self) -> Vec<NodeId> {
        self.hints.keys().copied().collect()
    }

    fn hints_for(&self, owner: NodeId, limit: usize) -> Vec<(Bytes, Hint)> {
        self.hints
            .get(&owner)
            .map(|s| {
                s.hints
                    .iter()
                    .take(limit)
                    .map(|(k, h)| (k.clone(), h.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn hint_usage(&self, owner: NodeId) -> (usize, usize) {
        self.hints
            .get(&owner)
            .map_or((0, 0), |s| (s.hints.len(), s.bytes))
    }

    fn meta(&self, name: &str) -> Option<Vec<u8>> {
        self.meta.get(name).cloned()
    }

    fn apply(&mut self, batch: Batch) -> Result<(), StorageError> {
        for op in batch.ops {
            match op {
                Op::PutObject { key, object } => {
                    self.objects.insert(key, object);
                }
                Op::DeleteObject { key } => {
                    self.objects.remove(&key);
                }
                Op::PutHint { owner, key, hint } => {
                    let set = self.hints.entry(owner).or_default();
                    set.bytes += hint.object.value_bytes();
                    if let Some(old) = set.hints.insert(key, hint) {
                        set.bytes -= old.object.value_bytes();
                    }
                }
                Op::DeleteHint { owner, key } => {
                    if let Some(set) = self.hints.get_mut(&owner) {
                        if let Some(old) = set.hints.remove(&key) {
                            set.bytes -= old.object.value_bytes();
                        }
                        if set.hints.is_empty() {
                            self.hints.remove(&owner);
                        }
                    }
                }
                Op::PutMeta { name, value } => {
                    self.meta.insert(name, value);
                }
            }
        }
        self.commits += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::{Actor, VersionVector};

    fn obj(v: &str) -> Object {
        let mut o = Object::new();
        o.write(
            Actor {
                node: NodeId(0),
                epoch: 1,
            },
            &VersionVector::new(),
            Some(Bytes::copy_from_slice(v.as_bytes())),
        );
        o
    }

    #[test]
    fn hints_are_kept_apart_and_usage_tracked() {
        let mut s = MemStorage::new();
        let k = Bytes::from_static(b"k");
        s.apply(Batch {
            ops: vec![
                Op::PutObject {
                    key: k.clone(),
                    object: obj("own"),
                },
                Op::PutHint {
                    owner: NodeId(2),
                    key: k.clone(),
                    hint: Hint {
                        object: obj("hinted"),
                        stored_at: Time(5),
                    },
                },
            ],
        })
        .unwrap();
        assert_eq!(s.object(b"k"), Some(obj("own")));
        assert_eq!(s.hint(NodeId(2), b"k").unwrap().object, obj("hinted"));
        assert_eq!(s.hint_usage(NodeId(2)), (1, 6));
        assert_eq!(s.hint_owners(), vec![NodeId(2)]);
        s.apply(Batch {
            ops: vec![Op::DeleteHint {
                owner: NodeId(2),
                key: k,
            }],
        })
        .unwrap();
        assert_eq!(s.hint_usage(NodeId(2)), (0, 0));
        assert!(s.hint_owners().is_empty());
        assert_eq!(s.commits, 2);
    }

    #[test]
    fn objects_after_pages_in_key_order() {
        let mut s = MemStorage::new();
        let ops = ["a", "b", "c", "d"]
            .iter()
            .map(|k| Op::PutObject {
                key: Bytes::copy_from_slice(k.as_bytes()),
                object: obj(k),
            })
            .collect();
        s.apply(Batch { ops }).unwrap();
        let page: Vec<_> = s
            .objects_after(Some(b"a"), 2)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            page,
            vec![Bytes::from_static(b"b"), Bytes::from_static(b"c")]
        );
        assert_eq!(s.object_count(), 4);
    }
}
