//! A scenario is everything needed to reproduce a run exactly: the simulator's
//! configuration (which holds the seed), every action with the point at which it
//! was applied, the guided preset (if any) and the position the user was looking
//! at. It is encoded with postcard and base64url into the URL fragment, so a link
//! reproduces the run.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ringlab_core::sim::{Action, SimConfig};
use ringlab_core::{Admin, NodeId, Time};
use serde::{Deserialize, Serialize};

/// One action as it was applied: after `steps` simulator events, at virtual time
/// `at`. Both are needed: several events can share a virtual time, and the action
/// must land between the same two of them on replay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// Events processed before the action.
    pub steps: u64,
    /// Virtual time of the action.
    pub at: Time,
    /// The action.
    pub action: Action,
}

/// A guided preset in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guide {
    /// Preset id ("S1" …).
    pub preset: String,
    /// Virtual time at which each step after the first was entered ("next").
    pub marks: Vec<Time>,
    /// The key the preset is about (chosen from the ring when it was loaded).
    pub key: Vec<u8>,
}

/// A reproducible run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scenario {
    /// The world's configuration (seed included).
    pub cfg: SimConfig,
    /// Every action, in the order applied.
    pub actions: Vec<Recorded>,
    /// The guided preset, if one is loaded.
    pub guide: Option<Guide>,
    /// The virtual time shown when the link was made.
    pub position: Time,
}

/// The prefix of an encoded scenario in the URL fragment (`#s=…`).
pub const FRAGMENT_PREFIX: &str = "s=";

impl Scenario {
    /// A scenario with no actions.
    pub fn new(cfg: SimConfig) -> Self {
        Scenario {
            cfg,
            actions: Vec::new(),
            guide: None,
            position: Time::ZERO,
        }
    }

    /// postcard + base64url (no padding): safe in a URL fragment.
    pub fn encode(&self) -> String {
        let bytes = postcard::to_allocvec(self).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The inverse of [`Scenario::encode`].
    pub fn decode(s: &str) -> Result<Scenario, String> {
        let bytes = URL_SAFE_NO_PAD
            .decode(s.trim().as_bytes())
            .map_err(|e| format!("the link is damaged (base64): {e}"))?;
        let sc: Scenario = postcard::from_bytes(&bytes)
            .map_err(|e| format!("the link is damaged (scenario): {e}"))?;
        sc.validate()?;
        Ok(sc)
    }

    /// Checks what a hand-edited link could get wrong: node ids beyond the nodes
    /// that exist when the action applies, actions out of order.
    pub fn validate(&self) -> Result<(), String> {
        let mut nodes = self.cfg.nodes.len() as u32;
        let mut last = (0, Time::ZERO);
        for (i, r) in self.actions.iter().enumerate() {
            if (r.steps, r.at) < last {
                return Err(format!("the link is damaged: action {i} is out of order"));
            }
            last = (r.steps, r.at);
            let mut ids: Vec<NodeId> = Vec::new();
            match &r.action {
                Action::Crash(n) | Action::Restart(n) | Action::Wipe(n) | Action::Isolate(n) => {
                    ids.push(*n)
                }
                Action::Client { node, .. } => ids.push(*node),
                Action::Admin { node, admin } => {
                    ids.push(*node);
                    match admin {
                        Admin::Join { contact } => ids.push(*contact),
                        Admin::Remove { node } => ids.push(*node),
                        _ => {}
                    }
                }
                Action::Block { from, to } => ids.extend([*from, *to]),
                Action::Partition(groups) => ids.extend(groups.iter().flatten().copied()),
                Action::AddNode { .. } => nodes += 1,
                _ => {}
            }
            if let Some(bad) = ids.iter().find(|n| n.0 >= nodes) {
                return Err(format!(
                    "the link is damaged: action {i} names node {bad}, which does not exist"
                ));
            }
        }
        Ok(())
    }

    /// The URL fragment (without `#`).
    pub fn to_fragment(&self) -> String {
        format!("{FRAGMENT_PREFIX}{}", self.encode())
    }

    /// Parses a URL fragment (with or without `#`); `None` if it holds no scenario.
    pub fn from_fragment(fragment: &str) -> Option<Result<Scenario, String>> {
        let f = fragment.trim_start_matches('#');
        f.strip_prefix(FRAGMENT_PREFIX).map(Scenario::decode)
    }
}
