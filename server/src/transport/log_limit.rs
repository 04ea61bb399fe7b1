//! Rate limit for rejection log lines.
//!
//! Every rejected frame is counted (`ringlab_frames_rejected_total{reason}`), but a
//! peer with the wrong key, a port scanner or a replaying attacker can cause
//! thousands of rejections a second; one warning line each would fill the disk and
//! bury everything else. So per (reason, source host) we log the first rejection,
//! then at most one line per [`WINDOW`], which says how many were suppressed since.
//! The table is bounded: a flood from many hosts shares one catch-all entry per
//! reason once [`MAX_SOURCES`] hosts are tracked.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// At most one line per (reason, host) per window.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Distinct (reason, host) entries tracked before hosts share a catch-all entry.
pub const MAX_SOURCES: usize = 1024;

/// What to do with one rejection.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` similar rejections were not logged since the last line.
    Log { suppressed: u64 },
    /// Count it only.
    Suppress,
}

#[derive(Debug)]
struct Entry {
    logged_at: Instant,
    suppressed: u64,
}

/// The per-source windows (see the module doc).
#[derive(Debug, Default)]
pub struct LogLimiter {
    entries: HashMap<(&'static str, String), Entry>,
}

impl LogLimiter {
    /// Decides whether the rejection of a frame from `peer` (`host:port` or a bare
    /// address) for `reason` at `now` gets a log line.
    pub fn check(&mut self, reason: &'static str, peer: &str, now: Instant) -> Verdict {
        let mut key = (reason, host_of(peer).to_owned());
        if !self.entries.contains_key(&key) && self.entries.len() >= MAX_SOURCES {
            self.entries
                .retain(|_, e| now.saturating_duration_since(e.logged_at) < WINDOW);
            if self.entries.len() >= MAX_SOURCES {
                key.1 = "*".to_owned();
            }
        }
        match self.entries.get_mut(&key) {
            None => {
                self.entries.insert(
                    key,
                    Entry {
                        logged_at: now,
                        suppressed: 0,
                    },
                );
                Verdict::Log { suppressed: 0 }
            }
            Some(e) if now.saturating_duration_since(e.logged_at) >= WINDOW => {
                let suppressed = std::mem::take(&mut e.suppressed);
                e.logged_at = now;
                Verdict::Log { suppressed }
            }
            Some(e) => {
                e.suppressed += 1;
                Verdict::Suppress
            }
        }
    }
}

/// The host part of `host:port` (`[v6]:port` too); the whole string otherwise.
/// Inbound connections come from fresh ephemeral ports, so the port is not the source.
fn host_of(peer: &str) -> &str {
    if let Some(rest) = peer.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(peer);
    }
    match peer.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
        _ => peer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_then_one_per_window_with_the_suppressed_count() {
        let mut l = LogLimiter::default();
        let t0 = Instant::now();
        assert_eq!(
            l.check("bad_mac", "10.0.0.1:4000", t0),
            Verdict::Log { suppressed: 0 }
        );
        // Same host from other ports, within the window: counted, not logged.
        for port in 4001..4100 {
            let peer = format!("10.0.0.1:{port}");
            assert_eq!(
                l.check("bad_mac", &peer, t0 + Duration::from_secs(1)),
                Verdict::Suppress
            );
        }
        // Another reason or another host has its own window.
        assert_eq!(
            l.check("replay", "10.0.0.1:4000", t0),
            Verdict::Log { suppressed: 0 }
        );
        assert_eq!(
            l.check("bad_mac", "10.0.0.2:4000", t0),
            Verdict::Log { suppressed: 0 }
        );
        assert_eq!(
            l.check("bad_mac", "10.0.0.1:5000", t0 + WINDOW),
            Verdict::Log { suppressed: 99 }
        );
        assert_eq!(
            l.check("bad_mac", "10.0.0.1:5000", t0 + WINDOW),
            Verdict::Suppress
        );
        assert_eq!(
            l.check("bad_mac", "10.0.0.1:5000", t0 + WINDOW * 2),
            Verdict::Log { suppressed: 1 }
        );
    }

    #[test]
    fn many_hosts_share_a_catch_all_entry_and_the_table_stays_bounded() {
        let mut l = LogLimiter::default();
        let t0 = Instant::now();
        let mut logged = 0;
        for i in 0..10 * MAX_SOURCES {
            let peer = format!("10.{}.{}.{}:1", i >> 16, (i >> 8) & 255, i & 255);
            if matches!(l.check("bad_mac", &peer, t0), Verdict::Log { .. }) {
                logged += 1;
            }
        }
        // One line per tracked host, plus one for the catch-all.
        assert_eq!(logged, MAX_SOURCES + 1);
        assert!(l.entries.len() <= MAX_SOURCES + 1);
        // After the window, stale entries make room for new hosts again.
        assert_eq!(
            l.check("bad_mac", "192.168.0.1:1", t0 + WINDOW),
            Verdict::Log { suppressed: 0 }
        );
        assert!(l.entries.len() <= MAX_SOURCES + 1);
    }

    #[test]
    fn host_of_strips_ports_only() {
        assert_eq!(host_of("127.0.0.1:7001"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7001"), "::1");
        assert_eq!(host_of("node-a.example:7001"), "node-a.example");
        assert_eq!(host_of("::1"), "::1");
        assert_eq!(host_of("no-port"), "no-port");
    }
}
