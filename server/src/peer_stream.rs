//! The peer-message tap of the live stream (`GET /events?peers=1`): one line per
//! message this node sends to or receives from a peer, so the explorer's Live tab
//! can draw real traffic the way the simulator draws its messages in flight.
//!
//! Why a tap with its own channel and a rate cap, not more core events: a loaded
//! node moves tens of thousands of messages a second, and a person watching needs
//! a few dozen. Nothing is built while nobody listens (one atomic load per
//! message), and at most [`LINES_PER_SECOND`] lines leave per second; the ones
//! over the cap are only counted, and the next line says how many were skipped,
//! so the page can show that it sees a sample.

use ringlab_core::{Message, MessageKind, NodeId};
use serde::Serialize;
use std::sync::Arc;
use tokio::sync::broadcast;

/// Lines published per second at most (the rest are counted in `skipped`).
pub const LINES_PER_SECOND: u32 = 200;

/// Lines buffered per subscriber (a slower one is told how many it missed).
pub const BUFFER: usize = 512;

/// Which way a message went, seen from the node that publishes the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    /// Sent to `peer`.
    Out,
    /// Received from `peer` (after authentication).
    In,
}

/// One line of the tap, as JSON on an `event: peer` message of `GET /events`.
#[derive(Debug, Serialize)]
struct Wire<'a> {
    /// The node's clock, as for core events.
    at_ms: u64,
    /// The publishing node.
    node: &'a str,
    dir: Dir,
    /// The other end.
    peer: String,
    /// The core's message kind (the simulator's colours).
    kind: MessageKind,
    /// Messages not published since the previous line (over the rate cap).
    skipped: u64,
}

/// Publishes peer-message lines while someone listens, at most
/// [`LINES_PER_SECOND`] per second of the node's clock.
#[derive(Debug)]
pub struct PeerTap {
    tx: broadcast::Sender<Arc<String>>,
    node: String,
    /// The second (of `at_ms`) the count below is for.
    second: u64,
    sent_this_second: u32,
    skipped: u64,
}

impl PeerTap {
    /// A tap for `node` with no subscriber yet.
    pub fn new(node: NodeId) -> Self {
        PeerTap {
            tx: broadcast::channel(BUFFER).0,
            node: node.name(),
            second: 0,
            sent_this_second: 0,
            skipped: 0,
        }
    }

    /// The sender subscribers attach to.
    pub fn sender(&self) -> broadcast::Sender<Arc<String>> {
        self.tx.clone()
    }

    /// Records one message `dir` `peer`; `now` reads the node's clock (in ms), only
    /// while someone listens.
    pub fn record(&mut self, now: impl FnOnce() -> u64, dir: Dir, peer: NodeId, msg: &Message) {
        if self.tx.receiver_count() == 0 {
            self.skipped = 0;
            return;
        }
        let at_ms = now();
        let second = at_ms / 1000;
        if second != self.second {
            self.second = second;
            self.sent_this_second = 0;
        }
        if self.sent_this_second >= LINES_PER_SECOND {
            self.skipped += 1;
            return;
        }
        self.sent_this_second += 1;
        let wire = Wire {
            at_ms,
            node: &self.node,
            dir,
            peer: peer.name(),
            kind: msg.kind(),
            skipped: std::mem::take(&mut self.skipped),
        };
        if let Ok(json) = serde_json::to_string(&wire) {
            // No receiver left since the check: the line is simply not needed.
            let _ = self.tx.send(Arc::new(json));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringlab_core::detector;

    fn ping() -> Message {
        Message::Detector(detector::Msg::Ping { nonce: 1 })
    }

    #[test]
    fn nothing_is_built_without_a_subscriber() {
        let mut tap = PeerTap::new(NodeId(0));
        tap.record(|| 5, Dir::Out, NodeId(1), &ping());
        let mut rx = tap.sender().subscribe();
        assert!(
            rx.try_recv().is_err(),
            "no line was kept for later subscribers"
        );
        tap.record(|| 6, Dir::In, NodeId(1), &ping());
        let line: serde_json::Value = serde_json::from_str(&rx.try_recv().unwrap()).unwrap();
        assert_eq!(
            line,
            serde_json::json!({"at_ms": 6, "node": "A", "dir": "in", "peer": "B",
                "kind": "Probe", "skipped": 0})
        );
    }

    #[test]
    fn lines_over_the_cap_are_counted_in_the_next_one() {
        let mut tap = PeerTap::new(NodeId(2));
        let mut rx = tap.sender().subscribe();
        let extra = 7;
        for i in 0..LINES_PER_SECOND + extra {
            tap.record(|| 3_000 + u64::from(i % 1000), Dir::Out, NodeId(0), &ping());
        }
        let mut lines = 0;
        while let Ok(l) = rx.try_recv() {
            lines += 1;
            let v: serde_json::Value = serde_json::from_str(&l).unwrap();
            assert_eq!(v["skipped"], 0, "{v}");
        }
        assert_eq!(lines, LINES_PER_SECOND, "the cap holds within one second");
        // The next second publishes again and reports what the cap held back.
        tap.record(|| 4_000, Dir::Out, NodeId(0), &ping());
        let v: serde_json::Value = serde_json::from_str(&rx.try_recv().unwrap()).unwrap();
        assert_eq!(v["skipped"], u64::from(extra), "{v}");
        assert_eq!(v["node"], "C");
    }
}
