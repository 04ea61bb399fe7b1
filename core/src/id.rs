//! Identifiers. Nodes are small integers so that messages, versions and maps
//! stay cheap to copy and compare; their human names are derived (A, B, C, …).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A physical node of the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u32);

impl NodeId {
    /// The conventional letter name: 0 → A … 25 → Z, then `N26`, `N27`, ….
    pub fn name(self) -> String {
        self.to_string()
    }

    /// Parses a name produced by [`NodeId::name`] (`"A"`, `"n26"`, or a plain number).
    pub fn parse(s: &str) -> Option<NodeId> {
        let s = s.trim();
        if s.len() == 1 {
            let c = s.chars().next()?.to_ascii_uppercase();
            if c.is_ascii_uppercase() {
                return Some(NodeId(c as u32 - 'A' as u32));
            }
        }
        let digits = s.strip_prefix(['N', 'n']).unwrap_or(s);
        digits.parse().ok().map(NodeId)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 < 26 {
            write!(f, "{}", (b'A' + self.0 as u8) as char)
        } else {
            write!(f, "N{}", self.0)
        }
    }
}

/// A client request, numbered by the driver that submitted it. Replies carry it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClientReq(pub u64);

/// An internal request, numbered by the coordinator that started it, unique per node incarnation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReqId(pub u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for i in [0, 1, 6, 25, 26, 1000] {
            let id = NodeId(i);
            assert_eq!(NodeId::parse(&id.name()), Some(id));
        }
        assert_eq!(NodeId(0).name(), "A");
        assert_eq!(NodeId(26).name(), "N26");
        assert_eq!(NodeId::parse("g"), Some(NodeId(6)));
        assert_eq!(NodeId::parse("?"), None);
    }
}
