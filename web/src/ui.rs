//! UI-only state and its reducer: selection, speed, play/pause, forms, tabs. The
//! simulator is not in here (see [`crate::replay::Sim`]).

use ringlab_core::{NodeId, Time};

/// Speeds offered (virtual time per real time).
pub const SPEEDS: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0];

/// Right-hand tabs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tab {
    /// Fault injection.
    Faults,
    /// Hints per node.
    Hints,
    /// Event log.
    Log,
    /// Merkle trees.
    Merkle,
    /// Membership matrix.
    Members,
    /// Cluster settings.
    Settings,
    /// A real node's live events.
    Live,
}

impl Tab {
    /// Every tab.
    pub const ALL: [Tab; 7] = [
        Tab::Faults,
        Tab::Hints,
        Tab::Log,
        Tab::Merkle,
        Tab::Members,
        Tab::Settings,
        Tab::Live,
    ];

    /// Label.
    pub fn label(self) -> &'static str {
        match self {
            Tab::Faults => "Faults",
            Tab::Hints => "Hints",
            Tab::Log => "Events",
            Tab::Merkle => "Merkle",
            Tab::Members => "Membership",
            Tab::Settings => "Settings",
            Tab::Live => "Live",
        }
    }
}

/// The settings form (strings as typed; parsed when applied).
#[derive(Clone, Debug, PartialEq)]
pub struct SettingsForm {
    /// Nodes.
    pub nodes: String,
    /// Zones.
    pub zones: String,
    /// Q.
    pub q: String,
    /// N.
    pub n: String,
    /// R.
    pub r: String,
    /// W.
    pub w: String,
    /// Gossip interval (ms).
    pub gossip_ms: String,
    /// Phi threshold.
    pub phi: String,
    /// Seed.
    pub seed: String,
    /// Start the client workload.
    pub workload: bool,
}

impl Default for SettingsForm {
    fn default() -> Self {
        SettingsForm {
            nodes: "7".into(),
            zones: "3".into(),
            q: "64".into(),
            n: "3".into(),
            r: "2".into(),
            w: "2".into(),
            gossip_ms: "250".into(),
            phi: "8".into(),
            seed: "1".into(),
            workload: true,
        }
    }
}

/// Everything the UI remembers that is not the simulation.
#[derive(Clone, Debug, PartialEq)]
pub struct UiState {
    /// The clock runs.
    pub playing: bool,
    /// Index into [`SPEEDS`].
    pub speed: usize,
    /// Selected node (its view colours the ring).
    pub selected: NodeId,
    /// Pause when the clock reaches this (end of a guided step).
    pub play_until: Option<Time>,
    /// Right-hand tab.
    pub tab: Tab,
    /// Client form.
    pub key: String,
    /// Client form.
    pub value: String,
    /// Client form: "put" / "get" / "delete".
    pub op: String,
    /// Client form: R or W override ("" = cluster default).
    pub quorum: String,
    /// Client form: send the context of the last reply for this key.
    pub use_context: bool,
    /// Client requests made from the panel, newest last.
    pub my_requests: Vec<ringlab_core::ClientReq>,
    /// Event log filters.
    pub log_node: String,
    /// Event log filters.
    pub log_kind: String,
    /// Merkle panel: partition and the two replicas.
    pub merkle_p: u32,
    /// Merkle panel.
    pub merkle_x: usize,
    /// Merkle panel.
    pub merkle_y: usize,
    /// Faults form: partition groups, e.g. "A B C | D E F G".
    pub groups: String,
    /// Faults form: loss %, duplication %, latency min/max ms.
    pub loss: String,
    /// Faults form.
    pub dup: String,
    /// Faults form.
    pub lat_min: String,
    /// Faults form.
    pub lat_max: String,
    /// Settings form.
    pub settings: SettingsForm,
    /// A readable error to show (bad input, bad link).
    pub error: Option<String>,
}

impl Default for UiState {
    fn default() -> Self {
        UiState {
            playing: false,
            speed: 3,
            selected: NodeId(0),
            play_until: None,
            tab: Tab::Faults,
            key: "user:42".into(),
            value: "hello".into(),
            op: "put".into(),
            quorum: String::new(),
            use_context: true,
            my_requests: Vec::new(),
            log_node: String::new(),
            log_kind: String::new(),
            merkle_p: 0,
            merkle_x: 0,
            merkle_y: 1,
            groups: "A B C | D E F G".into(),
            loss: "0".into(),
            dup: "0".into(),
            lat_min: "2".into(),
            lat_max: "30".into(),
            settings: SettingsForm::default(),
            error: None,
        }
    }
}

/// UI-only changes.
#[derive(Clone, Debug, PartialEq)]
pub enum UiAction {
    /// Play or pause.
    TogglePlay,
    /// Pause.
    Pause,
    /// Play until a time (a guided step), then pause.
    PlayUntil(Time),
    /// Faster / slower / exact speed index.
    Speed(usize),
    /// Select a node.
    Select(NodeId),
    /// Show a tab.
    Tab(Tab),
    /// Show an error (or clear it).
    Error(Option<String>),
}

impl UiState {
    /// The reducer.
    pub fn reduce(&mut self, a: UiAction) {
        match a {
            UiAction::TogglePlay => {
                self.playing = !self.playing;
                self.play_until = None;
            }
            UiAction::Pause => {
                self.playing = false;
                self.play_until = None;
            }
            UiAction::PlayUntil(t) => {
                self.playing = true;
                self.play_until = Some(t);
            }
            UiAction::Speed(i) => self.speed = i.min(SPEEDS.len() - 1),
            UiAction::Select(n) => self.selected = n,
            UiAction::Tab(t) => self.tab = t,
            UiAction::Error(e) => self.error = e,
        }
    }

    /// Current speed factor.
    pub fn speed_factor(&self) -> f64 {
        SPEEDS[self.speed.min(SPEEDS.len() - 1)]
    }
}

/// Parses "A B C | D E" into partition groups; `None` if a name is unknown.
pub fn parse_groups(s: &str, nodes: usize) -> Option<Vec<Vec<NodeId>>> {
    let groups: Vec<Vec<NodeId>> = s
        .split('|')
        .map(|g| {
            g.split(|c: char| c.is_whitespace() || c == ',')
                .filter(|t| !t.is_empty())
                .map(|t| NodeId::parse(t).filter(|n| (n.0 as usize) < nodes))
                .collect::<Option<Vec<_>>>()
        })
        .collect::<Option<Vec<_>>>()?;
    (groups.len() >= 2 && groups.iter().all(|g| !g.is_empty())).then_some(groups)
}
