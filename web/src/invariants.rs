//! The live invariants panel: facts read off the world, nothing inferred.

use ringlab_core::sim::World;
use ringlab_core::{ClientReply, NodeId};
use std::collections::BTreeMap;

/// What the invariants panel shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Invariants {
    /// Acknowledged writes (of the newest 200) whose dot is not yet covered on N
    /// replicas' own storage: (key, replicas that have it).
    pub under_replicated: Vec<(String, usize)>,
    /// Acknowledged writes inspected.
    pub acked_checked: usize,
    /// Keys with more than one live sibling on some replica.
    pub keys_with_siblings: Vec<String>,
    /// Hints held in the cluster.
    pub hints_pending: usize,
    /// Replica count per key (own storage, not hints), first 24 keys.
    pub replica_counts: Vec<(String, usize)>,
    /// Keys in the cluster.
    pub keys: usize,
    /// Partitions whose running primaries' Merkle roots differ.
    pub divergent_partitions: usize,
    /// Running nodes sharing the most common membership state / running nodes.
    pub membership: (usize, usize),
}

impl Invariants {
    /// Whether the membership state is the same on every running node.
    pub fn converged(&self) -> bool {
        self.membership.0 == self.membership.1
    }
}

/// Reads the invariants. Bounded work: the newest 200 acked writes, objects of
/// at most 64 nodes.
pub fn compute(w: &World) -> Invariants {
    let n = w.sim_config().config.n;
    let count = w.node_count();
    let ids: Vec<NodeId> = (0..count.min(64) as u32).map(NodeId).collect();
    let mut inv = Invariants::default();
    for c in w.clients().values().rev() {
        if inv.acked_checked == 200 {
            break;
        }
        let Some((_, Ok(ClientReply::Written { dot, .. }))) = &c.done else {
            continue;
        };
        inv.acked_checked += 1;
        let key = c.op.key();
        let have = ids
            .iter()
            .filter(|&&id| {
                w.storage(id)
                    .and_then(|s| s.objects().get(key))
                    .is_some_and(|o| o.context().covers(dot))
            })
            .count();
        if have < n.min(count) {
            inv.under_replicated
                .push((String::from_utf8_lossy(key).into_owned(), have));
        }
    }
    let mut per_key: BTreeMap<&[u8], usize> = BTreeMap::new();
    let mut sib: BTreeMap<&[u8], ()> = BTreeMap::new();
    for &id in &ids {
        if let Some(s) = w.storage(id) {
            for (k, o) in s.objects() {
                if o.is_empty() {
                    continue;
                }
                *per_key.entry(k.as_ref()).or_default() += 1;
                if o.values().count() > 1 {
                    sib.insert(k.as_ref(), ());
                }
            }
        }
    }
    inv.keys = per_key.len();
    inv.replica_counts = per_key
        .iter()
        .take(24)
        .map(|(k, c)| (String::from_utf8_lossy(k).into_owned(), *c))
        .collect();
    inv.keys_with_siblings = sib
        .keys()
        .take(24)
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    inv.hints_pending = (0..count as u32)
        .filter_map(|i| w.storage(NodeId(i)))
        .map(|s| s.hint_count())
        .sum();
    inv.divergent_partitions = if count <= 64 {
        w.divergent_partitions().len()
    } else {
        0
    };
    let mut hashes: BTreeMap<u64, usize> = BTreeMap::new();
    let mut running = 0;
    for i in 0..count as u32 {
        if let Some(node) = w.node(NodeId(i)) {
            running += 1;
            *hashes.entry(node.membership().hash()).or_default() += 1;
        }
    }
    inv.membership = (hashes.values().copied().max().unwrap_or(0), running);
    inv
}
