//! The Live tab: the explorer attached to a running `ringlab serve` node instead of
//! the simulator. It reads the node's core events as server-sent events
//! (`GET /events`) and its membership view (`GET /cluster`), and shows them with the
//! same wording as the simulated event log — so what a user learned by breaking the
//! simulated cluster can be watched on real processes and real disks.
//!
//! The node must allow this page's origin (`ringlab serve --allow-origin`;
//! `ringlab demo` allows web/serve.sh's). Decoding is plain functions
//! ([`parse_event`], [`parse_cluster`], [`base_url`]) so it is tested without a
//! browser; the component only wires them to `EventSource` and `fetch`.

use serde::Deserialize;
use std::collections::{BTreeMap, VecDeque};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use yew::prelude::*;

/// Lines kept on screen (the newest first).
pub const KEEP: usize = 400;

/// One event of the stream, decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveLine {
    /// The node's clock (ms since it started).
    pub at_ms: u64,
    /// The node that emitted it.
    pub node: String,
    /// `Event::kind`.
    pub kind: String,
    /// The explorer's wording of the event.
    pub text: String,
}

#[derive(Deserialize)]
struct Wire {
    at_ms: u64,
    node: String,
    kind: String,
    event: ringlab_core::Event,
}

/// Decodes one `data:` payload of `GET /events`: `{at_ms, node, kind, event}`,
/// with `event` in the core's serde form.
pub fn parse_event(data: &str) -> Result<LiveLine, String> {
    let w: Wire = serde_json::from_str(data).map_err(|e| format!("undecodable event: {e}"))?;
    Ok(LiveLine {
        text: crate::app::event_text(&w.event),
        at_ms: w.at_ms,
        node: w.node,
        kind: w.kind,
    })
}

/// One peer message the node sent or received (`event: peer` of
/// `GET /events?peers=1`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct PeerLine {
    /// The node's clock (ms).
    pub at_ms: u64,
    /// The node that saw it.
    pub node: String,
    /// `out` (sent to `peer`) or `in` (received from it).
    pub dir: String,
    /// The other end.
    pub peer: String,
    /// The core's message kind.
    pub kind: ringlab_core::MessageKind,
    /// Messages the node did not report since the previous line (its rate cap).
    pub skipped: u64,
}

impl PeerLine {
    /// Sender and receiver.
    pub fn ends(&self) -> (&str, &str) {
        if self.dir == "in" {
            (&self.peer, &self.node)
        } else {
            (&self.node, &self.peer)
        }
    }
}

/// Decodes one `event: peer` payload.
pub fn parse_peer(data: &str) -> Result<PeerLine, String> {
    let p: PeerLine =
        serde_json::from_str(data).map_err(|e| format!("undecodable peer message: {e}"))?;
    if p.dir != "in" && p.dir != "out" {
        return Err(format!("undecodable peer message: direction {:?}", p.dir));
    }
    Ok(p)
}

/// How long a message's dot takes to cross the ring (ms; the CSS animation).
const FLIGHT_MS: f64 = 900.0;
/// Dots on screen at most (the oldest go first).
const MAX_FLIGHTS: usize = 48;

/// A message being drawn.
#[derive(Clone, Debug)]
struct Flight {
    id: u64,
    from: String,
    to: String,
    kind: ringlab_core::MessageKind,
    born_ms: f64,
}

/// One member of `GET /cluster`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Member {
    /// Id.
    pub id: String,
    /// `up`, `unreachable`, `dead`, `joining`, `leaving`, `left` or `removed`.
    pub status: String,
    /// Zone.
    pub zone: String,
    /// Restart generation.
    pub generation: u64,
    /// Its HTTP API.
    pub http_addr: String,
    /// The answering node's φ-accrual suspicion of it (members it monitors).
    #[serde(default)]
    pub phi: Option<f64>,
}

/// A node's membership view (`GET /cluster`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ClusterView {
    /// The node answering.
    pub node: String,
    /// Active ring version.
    pub ring_version: u64,
    /// Replicas per key.
    pub n: usize,
    /// Owner of each partition.
    pub partitions: Vec<String>,
    /// Every known member.
    pub nodes: Vec<Member>,
    /// The ring being moved to, during a join or leave.
    #[serde(default)]
    pub pending_ring_version: Option<u64>,
}

impl ClusterView {
    /// Partitions owned by `id`.
    pub fn owned(&self, id: &str) -> usize {
        self.partitions.iter().filter(|o| *o == id).count()
    }

    /// The node's active ring, rebuilt with the core's rules: the owners as listed,
    /// each with the zone the node reports for it.
    pub fn ring(&self) -> Result<ringlab_core::Ring, String> {
        let id = |s: &str| {
            ringlab_core::NodeId::parse(s).ok_or_else(|| format!("{s:?} is not a node id"))
        };
        let owners = self
            .partitions
            .iter()
            .map(|o| id(o))
            .collect::<Result<Vec<_>, _>>()?;
        let mut zones = BTreeMap::new();
        for m in &self.nodes {
            let i = id(&m.id)?;
            if owners.contains(&i) {
                zones.insert(i, m.zone.clone());
            }
        }
        ringlab_core::Ring::from_owners(self.ring_version, self.n, owners, zones)
            .map_err(|e| format!("the node's ring is not valid: {e}"))
    }

    /// Where `key` lives in this view: its partition and its N replicas, in order.
    pub fn replicas_of(&self, key: &str) -> Result<(u32, Vec<String>), String> {
        Ok(replicas(&self.ring()?, key))
    }
}

/// `key`'s partition and its N replicas in `ring`, in order.
fn replicas(ring: &ringlab_core::Ring, key: &str) -> (u32, Vec<String>) {
    let pl = ring.preference_list(key.as_bytes());
    (
        pl.partition.0,
        pl.primaries.iter().map(|n| n.to_string()).collect(),
    )
}

/// The `ringlab_hints_pending` gauge of a node's `GET /metrics` (hints it holds for
/// others), if the text has it.
pub fn hints_pending(metrics: &str) -> Option<u64> {
    metrics.lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        (parts.next()? == "ringlab_hints_pending")
            .then(|| parts.next()?.parse::<f64>().ok())
            .flatten()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(|v| v as u64)
    })
}

/// Decodes `GET /cluster`.
pub fn parse_cluster(json: &str) -> Result<ClusterView, String> {
    serde_json::from_str(json).map_err(|e| format!("unexpected /cluster answer: {e}"))
}

/// What the user typed, as a node's base URL: `host:port` gets `http://`, a
/// trailing `/` goes; anything that is not an http(s) URL without spaces is refused.
pub fn base_url(input: &str) -> Result<String, String> {
    let s = input.trim();
    let (scheme, rest) = match s.split_once("://") {
        Some((scheme @ ("http" | "https"), rest)) => (scheme, rest),
        Some(_) => return Err(format!("{input:?} is not an http:// or https:// address")),
        None => ("http", s),
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains(char::is_whitespace) || rest.contains(['/', '?', '#']) {
        return Err(format!(
            "{input:?} is not a node address (expected e.g. http://127.0.0.1:8001)"
        ));
    }
    Ok(format!("{scheme}://{rest}"))
}

/// Kinds after which the membership view is fetched again.
fn changes_membership(kind: &str) -> bool {
    matches!(
        kind,
        "member"
            | "ring"
            | "ring-proposed"
            | "ring-activated"
            | "unreachable"
            | "reachable"
            | "dead"
    )
}

/// Connection state.
#[derive(Clone, Debug, PartialEq)]
enum State {
    Idle,
    Connecting,
    Open,
    /// Was open; the browser is reconnecting.
    Retrying,
    Failed(String),
}

/// Messages of [`LiveView`].
pub enum Msg {
    /// The address field changed.
    Url(String),
    /// Connect to the address.
    Connect,
    /// Close the stream.
    Disconnect,
    /// The stream opened.
    Opened,
    /// One `data:` payload.
    Data(String),
    /// One `event: peer` payload of the attached node's stream.
    Peer(String),
    /// One `event: peer` payload of another member's peers-only stream.
    MemberPeer(String, String),
    /// The node skipped this many events for us (`event: lagged`).
    Lagged(String),
    /// The stream failed.
    Failed,
    /// A `/cluster` answer.
    Cluster(Result<ClusterView, String>),
    /// Clear the log.
    Clear,
    /// The key looked up on the ring changed.
    Key(String),
    /// Time to read `/cluster` and the members' hint counts again.
    Refresh,
    /// A member's `ringlab_hints_pending`.
    Hints(String, Result<u64, String>),
}

/// An open `EventSource` and the callbacks it holds (closed on drop).
struct Stream {
    source: web_sys::EventSource,
    _callbacks: Vec<Closure<dyn FnMut(web_sys::MessageEvent)>>,
    _on_error: Closure<dyn FnMut(web_sys::Event)>,
    /// Other nodes' hint counts change without an event on this stream: poll.
    _refresh: gloo_timers::callback::Interval,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.source.close();
    }
}

/// Another member's `GET /events?peers=only` (closed on drop): its own sends, so
/// the ring shows the whole cluster's traffic, each message once.
struct MemberStream {
    source: web_sys::EventSource,
    _on_peer: Closure<dyn FnMut(web_sys::MessageEvent)>,
}

impl Drop for MemberStream {
    fn drop(&mut self) {
        self.source.close();
    }
}

/// The Live tab's component.
pub struct LiveView {
    input: String,
    base: Option<String>,
    state: State,
    stream: Option<Stream>,
    lines: VecDeque<LiveLine>,
    counts: BTreeMap<String, u64>,
    received: u64,
    skipped: u64,
    undecodable: Option<String>,
    cluster: Option<Result<ClusterView, String>>,
    last_fetch_ms: f64,
    key: String,
    hints: BTreeMap<String, Result<u64, String>>,
    flights: VecDeque<Flight>,
    next_flight: u64,
    /// Peer messages reported, by kind, and those the node left out (rate cap).
    peer_counts: BTreeMap<ringlab_core::MessageKind, u64>,
    peer_skipped: u64,
    /// Other members' peer streams, by id.
    members: BTreeMap<String, MemberStream>,
}

/// The `?live=` query parameter of the page, if any.
pub fn live_param() -> Option<String> {
    let search = web_sys::window()?.location().search().ok()?;
    search
        .trim_start_matches('?')
        .split('&')
        .find_map(|kv| kv.strip_prefix("live="))
        .map(|v| {
            js_sys::decode_uri_component(v)
                .ok()
                .and_then(|s| s.as_string())
                .unwrap_or_else(|| v.to_string())
        })
}

impl Component for LiveView {
    type Message = Msg;
    type Properties = ();

    fn create(ctx: &Context<Self>) -> Self {
        let param = live_param();
        if param.is_some() {
            ctx.link().send_message(Msg::Connect);
        }
        LiveView {
            input: param.unwrap_or_else(|| "http://127.0.0.1:8001".into()),
            base: None,
            state: State::Idle,
            stream: None,
            lines: VecDeque::new(),
            counts: BTreeMap::new(),
            received: 0,
            skipped: 0,
            undecodable: None,
            cluster: None,
            last_fetch_ms: f64::NEG_INFINITY,
            key: String::new(),
            hints: BTreeMap::new(),
            flights: VecDeque::new(),
            next_flight: 0,
            peer_counts: BTreeMap::new(),
            peer_skipped: 0,
            members: BTreeMap::new(),
        }
    }

    fn update(&mut self, ctx: &Context<Self>, msg: Msg) -> bool {
        match msg {
            Msg::Url(u) => self.input = u,
            Msg::Connect => {
                self.stream = None;
                self.members.clear();
                match base_url(&self.input).and_then(|b| open(ctx, &b).map(|s| (b, s))) {
                    Ok((base, stream)) => {
                        self.stream = Some(stream);
                        self.state = State::Connecting;
                        self.cluster = None;
                        self.hints.clear();
                        fetch_cluster(ctx, &base);
                        self.last_fetch_ms = js_sys::Date::now();
                        self.base = Some(base);
                    }
                    Err(e) => self.state = State::Failed(e),
                }
            }
            Msg::Disconnect => {
                self.stream = None;
                self.members.clear();
                self.state = State::Idle;
            }
            Msg::Opened => self.state = State::Open,
            Msg::Failed => {
                self.state = match self.state {
                    // Never opened: give up (the browser would retry forever).
                    State::Connecting => {
                        self.stream = None;
                        State::Failed(format!(
                            "cannot read {}/events: is the node running, and started with \
                             --allow-origin {}?",
                            self.base.clone().unwrap_or_default(),
                            origin()
                        ))
                    }
                    State::Open | State::Retrying => State::Retrying,
                    ref s => s.clone(),
                };
            }
            Msg::Data(d) => match parse_event(&d) {
                Ok(line) => {
                    self.received += 1;
                    *self.counts.entry(line.kind.clone()).or_default() += 1;
                    let now = js_sys::Date::now();
                    if changes_membership(&line.kind) && now - self.last_fetch_ms > 500.0 {
                        if let Some(b) = &self.base {
                            fetch_cluster(ctx, b);
                            self.last_fetch_ms = now;
                        }
                    }
                    self.lines.push_front(line);
                    self.lines.truncate(KEEP);
                }
                Err(e) => self.undecodable = Some(e),
            },
            Msg::Peer(d) => match parse_peer(&d) {
                // A message in from a member whose own stream is open is drawn
                // from that stream, as its send.
                Ok(p) if p.dir == "in" && self.members.contains_key(&p.peer) => return false,
                Ok(p) => self.add_flight(p),
                Err(e) => self.undecodable = Some(e),
            },
            Msg::MemberPeer(id, d) => match parse_peer(&d) {
                Ok(p) if p.dir == "out" && p.node == id => self.add_flight(p),
                Ok(_) => return false,
                Err(e) => self.undecodable = Some(e),
            },
            Msg::Lagged(n) => self.skipped += n.trim().parse::<u64>().unwrap_or(0),
            Msg::Cluster(c) => {
                if let (Ok(view), Some(_)) = (&c, &self.stream) {
                    self.sync_member_streams(ctx, view);
                }
                if let (Ok(view), Some(base)) = (&c, &self.base) {
                    for m in &view.nodes {
                        if matches!(m.status.as_str(), "left" | "removed") || m.http_addr.is_empty()
                        {
                            continue;
                        }
                        let url = if m.id == view.node {
                            format!("{base}/metrics")
                        } else {
                            format!("http://{}/metrics", m.http_addr)
                        };
                        fetch_hints(ctx, m.id.clone(), url);
                    }
                }
                self.cluster = Some(c);
            }
            Msg::Refresh => {
                if let (Some(base), Some(_)) = (&self.base, &self.stream) {
                    fetch_cluster(ctx, base);
                    self.last_fetch_ms = js_sys::Date::now();
                }
                // Dots that have landed go (their animation ended invisible).
                let before = self.flights.len();
                self.prune_flights();
                return self.flights.len() != before;
            }
            Msg::Hints(id, h) => {
                self.hints.insert(id, h);
            }
            Msg::Key(k) => self.key = k,
            Msg::Clear => {
                self.lines.clear();
                self.counts.clear();
                self.received = 0;
                self.skipped = 0;
                self.flights.clear();
                self.peer_counts.clear();
                self.peer_skipped = 0;
            }
        }
        true
    }

    fn view(&self, ctx: &Context<Self>) -> Html {
        let link = ctx.link();
        let (state, text) = match &self.state {
            State::Idle => ("idle", "not connected".to_string()),
            State::Connecting => ("connecting", "connecting…".to_string()),
            State::Open => ("open", format!("live: {} event(s)", self.received)),
            State::Retrying => (
                "retrying",
                "connection lost; the browser is retrying…".to_string(),
            ),
            State::Failed(e) => ("failed", e.clone()),
        };
        let connected = self.stream.is_some();
        let oninput = link.callback(|e: InputEvent| {
            Msg::Url(
                e.target_dyn_into::<web_sys::HtmlInputElement>()
                    .map(|i| i.value())
                    .unwrap_or_default(),
            )
        });
        let onkeydown =
            link.batch_callback(|e: KeyboardEvent| (e.key() == "Enter").then_some(Msg::Connect));
        html! {
            <div class="panel live" data-testid="live">
                <p class="small muted">{ "Attach to a running ringlab node: its core events (GET /events) and membership (GET /cluster), live. The node must allow this page's origin: " }
                    <code>{ format!("ringlab serve … --allow-origin {}", origin()) }</code>{ " (ringlab demo does)." }</p>
                <div class="row">
                    <input data-testid="live-url" placeholder="http://127.0.0.1:8001" value={self.input.clone()} {oninput} {onkeydown}/>
                    if connected {
                        <button data-testid="live-disconnect" onclick={link.callback(|_| Msg::Disconnect)}>{"Disconnect"}</button>
                    } else {
                        <button data-testid="live-connect" onclick={link.callback(|_| Msg::Connect)}>{"Connect"}</button>
                    }
                    <button data-testid="live-clear" onclick={link.callback(|_| Msg::Clear)}>{"Clear"}</button>
                </div>
                <div class="small" data-testid="live-status" data-state={state}>{ text }
                    if self.skipped > 0 { { format!(" · {} skipped by the node (this page fell behind)", self.skipped) } }
                </div>
                if let Some(e) = &self.undecodable { <div class="small muted">{ e }</div> }
                { self.cluster_view(ctx) }
                if !self.peer_counts.is_empty() {
                    <div class="small" data-testid="live-peers" data-streams={(self.members.len() + 1).to_string()}
                        title="messages between the members, by kind: the attached node's, and every other member's sends where it allows this page (a sample under load: a node reports at most 200 a second)">
                        { format!("peer messages: {}", self.peer_counts.values().sum::<u64>()) }
                        if self.peer_skipped > 0 { { format!(" (+{} not reported)", self.peer_skipped) } }
                        { for self.peer_counts.iter().map(|(k, n)| html!{
                            <span class="chip" style={format!("border-color: {}", crate::app::kind_color(*k))}>{ format!("{k:?} {n}") }</span>
                        }) }
                    </div>
                }
                if !self.counts.is_empty() {
                    <div class="small" data-testid="live-counts">{ for self.counts.iter().map(|(k, n)| html!{ <span class="chip">{ format!("{k} {n}") }</span> }) }</div>
                }
                <div class="logrows" data-testid="live-log">{ for self.lines.iter().map(|l| html!{
                    <div class="logrow">
                        <span class="t">{ clock(l.at_ms) }</span>
                        <span class="k">{ &l.kind }</span>
                        <span>{ format!("{}: {}", l.node, l.text) }</span>
                    </div>
                }) }</div>
            </div>
        }
    }
}

impl LiveView {
    /// Counts a peer message and starts its dot.
    fn add_flight(&mut self, p: PeerLine) {
        *self.peer_counts.entry(p.kind).or_default() += 1;
        self.peer_skipped += p.skipped;
        let (from, to) = p.ends();
        self.flights.push_back(Flight {
            id: self.next_flight,
            from: from.to_owned(),
            to: to.to_owned(),
            kind: p.kind,
            born_ms: js_sys::Date::now(),
        });
        self.next_flight += 1;
        self.prune_flights();
    }

    /// Opens a peers-only stream to every other live member of `view` with an
    /// HTTP address, and closes those of members that left it.
    fn sync_member_streams(&mut self, ctx: &Context<Self>, view: &ClusterView) {
        let live: BTreeMap<&str, &str> = view
            .nodes
            .iter()
            .filter(|m| {
                m.id != view.node
                    && !m.http_addr.is_empty()
                    && !matches!(m.status.as_str(), "left" | "removed")
            })
            .map(|m| (m.id.as_str(), m.http_addr.as_str()))
            .collect();
        self.members.retain(|id, _| live.contains_key(id.as_str()));
        for (id, addr) in live {
            if self.members.contains_key(id) {
                continue;
            }
            let url = format!("http://{addr}/events?peers=only");
            if let Ok(m) = open_member(ctx, id.to_owned(), &url) {
                self.members.insert(id.to_owned(), m);
            }
        }
    }

    /// Drops dots that have landed, and the oldest beyond [`MAX_FLIGHTS`].
    fn prune_flights(&mut self) {
        let now = js_sys::Date::now();
        while self
            .flights
            .front()
            .is_some_and(|f| now - f.born_ms > FLIGHT_MS || self.flights.len() > MAX_FLIGHTS)
        {
            self.flights.pop_front();
        }
    }

    fn cluster_view(&self, ctx: &Context<Self>) -> Html {
        match &self.cluster {
            None => html! {},
            Some(Err(e)) => {
                html! { <div class="small muted" data-testid="live-cluster-error">{ e }</div> }
            }
            Some(Ok(c)) => html! {
                <div data-testid="live-cluster">
                    <div class="small">{ format!("{}'s view: ring v{}{}, N = {}, {} partitions", c.node, c.ring_version,
                        c.pending_ring_version.map(|v| format!(" (moving to v{v})")).unwrap_or_default(), c.n, c.partitions.len()) }</div>
                    <table class="small">
                        <tr><th>{"node"}</th><th>{"status"}</th><th>{"zone"}</th><th>{"gen"}</th><th>{"φ"}</th><th>{"partitions"}</th><th title="hints this node holds for others (its /metrics ringlab_hints_pending)">{"hints"}</th><th>{"http"}</th></tr>
                        { for c.nodes.iter().map(|m| html!{
                            <tr data-testid={format!("live-member-{}", m.id)}>
                                <td>{ &m.id }</td><td>{ &m.status }</td><td>{ &m.zone }</td><td>{ m.generation }</td>
                                <td title="φ-accrual suspicion (suspected above the threshold, 8 by default)">{ m.phi.map(|p| format!("{p:.1}")).unwrap_or_default() }</td>
                                <td>{ c.owned(&m.id) }</td>
                                <td data-testid={format!("live-hints-{}", m.id)}>{ match self.hints.get(&m.id) {
                                    Some(Ok(n)) => html!{ { n } },
                                    Some(Err(e)) => html!{ <span title={e.clone()}>{"?"}</span> },
                                    None => html!{},
                                } }</td>
                                <td>{ &m.http_addr }</td>
                            </tr>
                        }) }
                    </table>
                    { self.ring_view(ctx, c) }
                </div>
            },
        }
    }

    /// The node's ring: partition arcs in their owner's colour, members around it in
    /// their status's colour, and the replicas of a typed key.
    fn ring_view(&self, ctx: &Context<Self>, c: &ClusterView) -> Html {
        use crate::app::{key_angle, node_pos, owner_color, partition_arcs, CX, CY, R_PART};
        let color_of = |id: &str| {
            owner_color(
                ringlab_core::NodeId::parse(id)
                    .map(|n| n.0)
                    .unwrap_or_default(),
            )
        };
        let ring = c.ring();
        let arcs = ring
            .as_ref()
            .map(|r| partition_arcs(r, true))
            .unwrap_or_default();
        let lookup = (!self.key.is_empty()).then(|| {
            ring.as_ref()
                .map(|r| replicas(r, &self.key))
                .map_err(Clone::clone)
        });
        let replicas: Vec<String> = match &lookup {
            Some(Ok((_, r))) => r.clone(),
            _ => Vec::new(),
        };
        // The key's position, as the simulator's ring marks it.
        let tick = matches!(lookup, Some(Ok(_))).then(|| {
            let a = key_angle(self.key.as_bytes());
            let at = |r: f64| (format!("{:.1}", CX + r * a.cos()), format!("{:.1}", CY + r * a.sin()));
            let ((x0, y0), (x1, y1)) = (at(R_PART - 20.0), at(R_PART + 12.0));
            html! { <line x1={x0} y1={y0} x2={x1} y2={y1} stroke="#111" stroke-width="5" data-testid="live-key-tick"/> }
        });
        let count = c.nodes.len();
        let nodes = c.nodes.iter().enumerate().map(|(i, m)| {
            let (x, y) = node_pos(i, count);
            let fill = match m.status.as_str() {
                "up" => "#4caf50",
                "unreachable" => "#ff9800",
                "dead" => "#d32f2f",
                "joining" => "#03a9f4",
                "leaving" => "#9c27b0",
                _ => "#777",
            };
            let replica = replicas.contains(&m.id);
            html! { <g data-testid={format!("live-ring-node-{}", m.id)} data-replica={replica.to_string()}>
                <circle cx={format!("{x:.1}")} cy={format!("{y:.1}")} r="26" fill="none" stroke={color_of(&m.id)} stroke-width="6"/>
                <circle cx={format!("{x:.1}")} cy={format!("{y:.1}")} r="20" fill={fill}
                    stroke={if replica { "#f5b700" } else { "#fff" }} stroke-width={if replica { "6" } else { "2" }}/>
                <text x={format!("{x:.1}")} y={format!("{:.1}", y + 7.0)} text-anchor="middle" class="nodename">{ &m.id }</text>
                <title>{ format!("{} ({}): {}", m.id, m.zone, m.status) }</title>
            </g> }
        });
        // Messages in flight: a dot from sender to receiver (the CSS animation moves
        // it by --dx/--dy), in the simulator's colour for its kind.
        let pos: BTreeMap<&str, (f64, f64)> = c
            .nodes
            .iter()
            .enumerate()
            .map(|(i, m)| (m.id.as_str(), node_pos(i, count)))
            .collect();
        let flights = self.flights.iter().filter_map(|f| {
            let ((x0, y0), (x1, y1)) = (*pos.get(f.from.as_str())?, *pos.get(f.to.as_str())?);
            Some(html! {
                <circle key={f.id} class="flight" data-testid="live-flight" data-kind={format!("{:?}", f.kind)}
                    data-from={f.from.clone()} data-to={f.to.clone()}
                    cx={format!("{x0:.1}")} cy={format!("{y0:.1}")} r="9" fill={crate::app::kind_color(f.kind)}
                    style={format!("--dx: {:.1}px; --dy: {:.1}px; animation-duration: {FLIGHT_MS}ms", x1 - x0, y1 - y0)}/>
            })
        });
        let oninput = ctx.link().callback(|e: InputEvent| {
            Msg::Key(
                e.target_dyn_into::<web_sys::HtmlInputElement>()
                    .map(|i| i.value())
                    .unwrap_or_default(),
            )
        });
        html! {
            <div class="liveringbox">
                <svg viewBox="0 0 640 640" class="livering" data-testid="live-ring">
                    <circle cx={CX.to_string()} cy={CY.to_string()} r={R_PART.to_string()} fill="none" stroke="#eee" stroke-width="20"/>
                    { for arcs }
                    { for tick }
                    { for nodes }
                    <g class="flights">{ for flights }</g>
                    <text x="320" y="326" text-anchor="middle" class="center">{ format!("ring v{} · Q={}", c.ring_version, c.partitions.len()) }</text>
                </svg>
                <div class="row small">
                    <input data-testid="live-key" placeholder="a key: where does it live?" value={self.key.clone()} {oninput}/>
                </div>
                <div class="small" data-testid="live-key-replicas">{ match &lookup {
                    None => String::new(),
                    Some(Ok((p, r))) => format!("{:?} → partition {p}, replicas {}", self.key, r.join(", ")),
                    Some(Err(e)) => e.clone(),
                } }</div>
            </div>
        }
    }
}

/// A node's time (ms since the Unix epoch) as UTC `HH:MM:SS.mmm`.
pub fn clock(at_ms: u64) -> String {
    let ms = at_ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// This page's origin (what `--allow-origin` must list).
fn origin() -> String {
    web_sys::window()
        .and_then(|w| w.location().origin().ok())
        .unwrap_or_default()
}

/// Opens the event stream of the node at `base`.
fn open(ctx: &Context<LiveView>, base: &str) -> Result<Stream, String> {
    let source = web_sys::EventSource::new(&format!("{base}/events?peers=1"))
        .map_err(|e| format!("cannot open {base}/events: {e:?}"))?;
    let link = ctx.link().clone();
    let on_open =
        Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |_| link.send_message(Msg::Opened));
    let link = ctx.link().clone();
    let on_data =
        Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |e: web_sys::MessageEvent| {
            link.send_message(Msg::Data(e.data().as_string().unwrap_or_default()));
        });
    let link = ctx.link().clone();
    let on_lagged =
        Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |e: web_sys::MessageEvent| {
            link.send_message(Msg::Lagged(e.data().as_string().unwrap_or_default()));
        });
    let link = ctx.link().clone();
    let on_peer =
        Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |e: web_sys::MessageEvent| {
            link.send_message(Msg::Peer(e.data().as_string().unwrap_or_default()));
        });
    let link = ctx.link().clone();
    let on_error =
        Closure::<dyn FnMut(web_sys::Event)>::new(move |_| link.send_message(Msg::Failed));
    source.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    source.set_onmessage(Some(on_data.as_ref().unchecked_ref()));
    source.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    source
        .add_event_listener_with_callback("lagged", on_lagged.as_ref().unchecked_ref())
        .map_err(|e| format!("cannot listen for lagged events: {e:?}"))?;
    source
        .add_event_listener_with_callback("peer", on_peer.as_ref().unchecked_ref())
        .map_err(|e| format!("cannot listen for peer messages: {e:?}"))?;
    let link = ctx.link().clone();
    Ok(Stream {
        source,
        _callbacks: vec![on_open, on_data, on_lagged, on_peer],
        _on_error: on_error,
        _refresh: gloo_timers::callback::Interval::new(2_000, move || {
            link.send_message(Msg::Refresh)
        }),
    })
}

/// Opens another member's peers-only stream at `url`.
fn open_member(ctx: &Context<LiveView>, id: String, url: &str) -> Result<MemberStream, String> {
    let source = web_sys::EventSource::new(url).map_err(|e| format!("cannot open {url}: {e:?}"))?;
    let link = ctx.link().clone();
    let on_peer =
        Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |e: web_sys::MessageEvent| {
            link.send_message(Msg::MemberPeer(
                id.clone(),
                e.data().as_string().unwrap_or_default(),
            ));
        });
    source
        .add_event_listener_with_callback("peer", on_peer.as_ref().unchecked_ref())
        .map_err(|e| format!("cannot listen for peer messages: {e:?}"))?;
    Ok(MemberStream {
        source,
        _on_peer: on_peer,
    })
}

/// GETs `url` as text (an error names the URL).
async fn fetch_text(url: &str) -> Result<String, String> {
    let js = |e: JsValue| {
        format!(
            "cannot read {url}: {}",
            e.as_string().unwrap_or_else(|| format!("{e:?}"))
        )
    };
    let window = web_sys::window().ok_or("no window")?;
    let resp: web_sys::Response = wasm_bindgen_futures::JsFuture::from(window.fetch_with_str(url))
        .await
        .map_err(js)?
        .dyn_into()
        .map_err(js)?;
    if !resp.ok() {
        return Err(format!("{url} answered {}", resp.status()));
    }
    let text = wasm_bindgen_futures::JsFuture::from(resp.text().map_err(js)?)
        .await
        .map_err(js)?;
    Ok(text.as_string().unwrap_or_default())
}

/// Fetches `base/cluster` and reports it to the component.
fn fetch_cluster(ctx: &Context<LiveView>, base: &str) {
    let link = ctx.link().clone();
    let url = format!("{base}/cluster");
    wasm_bindgen_futures::spawn_local(async move {
        let result = fetch_text(&url).await.and_then(|t| parse_cluster(&t));
        link.send_message(Msg::Cluster(result));
    });
}

/// Fetches a member's `/metrics` and reports its hint count (a node that does not
/// allow this page's origin shows as an error, not as 0).
fn fetch_hints(ctx: &Context<LiveView>, id: String, url: String) {
    let link = ctx.link().clone();
    wasm_bindgen_futures::spawn_local(async move {
        let result = fetch_text(&url).await.and_then(|t| {
            hints_pending(&t).ok_or_else(|| format!("{url} has no ringlab_hints_pending"))
        });
        link.send_message(Msg::Hints(id, result));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact form `ringlab serve` sends (see server/src/driver.rs `on_event`).
    #[test]
    fn a_server_event_line_decodes_to_the_explorers_wording() {
        let event = ringlab_core::Event::HintStored {
            owner: ringlab_core::NodeId(0),
            key: bytes::Bytes::from_static(b"greeting"),
        };
        let json =
            serde_json::json!({"at_ms": 1234, "node": "D", "kind": event.kind(), "event": &event})
                .to_string();
        let line = parse_event(&json).unwrap();
        assert_eq!(line.at_ms, 1234);
        assert_eq!(line.node, "D");
        assert_eq!(line.kind, "hint");
        assert_eq!(line.text, crate::app::event_text(&event));
        assert!(line.text.contains("greeting"), "{}", line.text);
        for bad in [
            "",
            "{}",
            "not json",
            r#"{"at_ms":1,"node":"A","kind":"x","event":{"Nope":{}}}"#,
        ] {
            assert!(parse_event(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn peer_lines_decode_with_their_direction() {
        let p = parse_peer(
            r#"{"at_ms":7,"node":"B","dir":"in","peer":"A","kind":"ReplicaWrite","skipped":3}"#,
        )
        .unwrap();
        assert_eq!(p.kind, ringlab_core::MessageKind::ReplicaWrite);
        assert_eq!((p.at_ms, p.skipped), (7, 3));
        assert_eq!(p.ends(), ("A", "B"), "in: the peer sent it to the node");
        let out = parse_peer(
            r#"{"at_ms":8,"node":"B","dir":"out","peer":"C","kind":"Probe","skipped":0}"#,
        )
        .unwrap();
        assert_eq!(out.ends(), ("B", "C"));
        for bad in [
            r#"{"at_ms":8,"node":"B","dir":"up","peer":"C","kind":"Probe","skipped":0}"#,
            r#"{"at_ms":8,"node":"B","dir":"out","peer":"C","kind":"Telepathy","skipped":0}"#,
            "not json",
        ] {
            assert!(parse_peer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cluster_views_decode_and_count_partitions() {
        let c = parse_cluster(
            r#"{"node":"A","ring_version":3,"n":3,"partitions":["A","B","A","C"],
                "nodes":[{"id":"A","peer_addr":"127.0.0.1:7001","http_addr":"127.0.0.1:8001","zone":"z1","status":"up","generation":2},
                         {"id":"B","peer_addr":"127.0.0.1:7002","http_addr":"127.0.0.1:8002","zone":"z2","status":"up","generation":1,"phi":0.42}],
                "pending_ring_version":null,"self_status":"up"}"#,
        )
        .unwrap();
        assert_eq!((c.ring_version, c.owned("A"), c.owned("C")), (3, 2, 1));
        assert_eq!(c.nodes[0].status, "up");
        assert_eq!((c.nodes[0].phi, c.nodes[1].phi), (None, Some(0.42)));
        assert!(parse_cluster("{}").is_err());
    }

    /// The Live tab's replicas of a key are the core's preference list for the ring
    /// the node reports (zones included), not a re-implementation.
    #[test]
    fn a_keys_replicas_are_the_cores_preference_list_for_the_reported_ring() {
        use ringlab_core::{NodeId, Ring};
        let members: Vec<(NodeId, String)> = (0..5)
            .map(|i| (NodeId(i), format!("z{}", i % 3 + 1)))
            .collect();
        let ring = Ring::new(16, 3, &members).unwrap();
        let view = ClusterView {
            node: "A".into(),
            ring_version: 1,
            n: 3,
            partitions: ring.owners().iter().map(|o| o.to_string()).collect(),
            nodes: members
                .iter()
                .map(|(id, zone)| Member {
                    id: id.to_string(),
                    status: "up".into(),
                    zone: zone.clone(),
                    generation: 1,
                    http_addr: String::new(),
                    phi: None,
                })
                .collect(),
            pending_ring_version: None,
        };
        for key in ["greeting", "k-1", "k-2", "", "∂"] {
            let pl = ring.preference_list(key.as_bytes());
            let want: Vec<String> = pl.primaries.iter().map(|n| n.to_string()).collect();
            assert_eq!(
                view.replicas_of(key).unwrap(),
                (pl.partition.0, want),
                "{key:?}"
            );
        }
        // A member that owns nothing (a joiner) does not change the answer.
        let mut joining = view.clone();
        joining.nodes.push(Member {
            id: "F".into(),
            status: "joining".into(),
            zone: "z9".into(),
            generation: 1,
            http_addr: String::new(),
            phi: None,
        });
        assert_eq!(
            joining.replicas_of("greeting"),
            view.replicas_of("greeting")
        );
        // Views that are not a ring say so instead of guessing.
        let mut bad = view.clone();
        bad.partitions.pop();
        assert!(bad.replicas_of("greeting").is_err(), "15 partitions");
        let mut bad = view.clone();
        bad.partitions[0] = "??".into();
        assert!(bad.replicas_of("greeting").is_err(), "unknown owner");
        let mut bad = view;
        bad.nodes.remove(0);
        assert!(
            bad.replicas_of("greeting").is_err(),
            "an owner without a zone"
        );
    }

    #[test]
    fn the_hint_gauge_is_read_from_metrics_text() {
        let text = "# HELP ringlab_hints_pending Hints held for others.\n\
                    # TYPE ringlab_hints_pending gauge\n\
                    ringlab_hints_pending_bytes 512\n\
                    ringlab_hints_pending 7\n";
        assert_eq!(hints_pending(text), Some(7));
        assert_eq!(hints_pending("ringlab_hints_pending_bytes 512\n"), None);
        assert_eq!(hints_pending(""), None);
        assert_eq!(hints_pending("ringlab_hints_pending nope\n"), None);
        assert_eq!(hints_pending("ringlab_hints_pending -1\n"), None);
    }

    #[test]
    fn node_times_show_as_utc_clock() {
        // 2026-12-02 01:02:03.456 UTC
        assert_eq!(clock(1_796_173_323_456), "01:02:03.456");
        assert_eq!(clock(0), "00:00:00.000");
    }

    #[test]
    fn addresses_are_normalised_or_refused() {
        assert_eq!(base_url("127.0.0.1:8001").unwrap(), "http://127.0.0.1:8001");
        assert_eq!(base_url(" http://h:1/ ").unwrap(), "http://h:1");
        assert_eq!(base_url("https://h").unwrap(), "https://h");
        for bad in [
            "",
            "ftp://x",
            "http://",
            "http://a b",
            "http://h/events",
            "h:1?x",
        ] {
            assert!(base_url(bad).is_err(), "{bad:?}");
        }
    }
}
