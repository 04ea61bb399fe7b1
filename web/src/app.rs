//! The yew components. Thin: they read the world and the UI state and turn clicks
//! into [`Action`]s (recorded by [`Sim::act`]) or [`UiAction`]s.

use crate::invariants;
use crate::presets;
use crate::replay::Sim;
use crate::scenario::Scenario;
use crate::ui::{parse_groups, Tab, UiAction, UiState, SPEEDS};
use bytes::Bytes;
use gloo_render::{request_animation_frame, AnimationFrame};
use ringlab_core::gossip::Status;
use ringlab_core::sim::{Action, DropReason, NetConfig, SimConfig, Workload};
use ringlab_core::{Admin, ClientOp, ClientReply, Dur, MessageKind, NodeId, Partition, Time};
use std::f64::consts::PI;
use wasm_bindgen::JsCast;
use yew::prelude::*;

/// Messages of the root component.
pub enum Msg {
    /// An animation frame (timestamp in ms).
    Frame(f64),
    /// A UI-only change.
    Ui(UiAction),
    /// A user action on the cluster.
    Act(Action),
    /// Several user actions.
    ActMany(Vec<Action>),
    /// Edit UI state with a function (form fields).
    Edit(Box<dyn FnOnce(&mut UiState)>),
    /// Submit the client form.
    Submit,
    /// Step one event forward.
    StepFwd,
    /// Step one event back.
    StepBack,
    /// Scrub to a virtual time (ms).
    Seek(u64),
    /// Load a guided preset.
    Preset(String),
    /// Guided "next".
    Next,
    /// Apply the settings form (new scenario).
    ApplySettings,
    /// Apply the network form.
    ApplyNet,
    /// Partition the cluster per the form.
    ApplyGroups,
    /// Add a node and join it through the selected node.
    AddNode,
    /// A key press (space, arrows).
    Key(String),
    /// A click on the ring at SVG coordinates: drops the nearest message.
    ClickRing(f64, f64),
}

/// The root component: owns the simulator (outside any reducer) and the UI state.
pub struct App {
    sim: Sim,
    ui: UiState,
    frame: Option<AnimationFrame>,
    last_ts: Option<f64>,
    frame_start: f64,
    _keys: Option<gloo_events::EventListener>,
    url_dirty: bool,
    canvas: NodeRef,
    last_render: f64,
    /// When the last frame's simulation ended (performance.now()).
    sim_end: f64,
    /// Wall ms per simulated event (moving average, sizes the frame's chunks).
    ms_per_event: f64,
    /// Wall ms of the last render (view, DOM patch, canvas) after a frame.
    render_ms: f64,
}

thread_local! {
    /// `window.performance`, looked up once: the frame loop reads the clock
    /// after every chunk of events.
    static PERF: Option<web_sys::Performance> = web_sys::window().and_then(|w| w.performance());
}

fn perf_now() -> f64 {
    PERF.with(|p| p.as_ref().map_or(0.0, |p| p.now()))
}

fn push_perf(work_ms: f64) {
    let Some(win) = web_sys::window() else { return };
    let key = wasm_bindgen::JsValue::from_str("__ringlabWork");
    let arr = js_sys::Reflect::get(&win, &key)
        .ok()
        .and_then(|v| v.dyn_into::<js_sys::Array>().ok());
    if let Some(arr) = arr {
        if arr.length() < 100_000 {
            arr.push(&wasm_bindgen::JsValue::from_f64(work_ms));
        }
    }
}

thread_local! {
    /// Per-frame timings while playing, five numbers a frame: rAF timestamp,
    /// simulation ms, render ms (view + DOM patch + canvas; 0 when the frame was
    /// not rendered), virtual ms advanced, events processed. Read (and emptied)
    /// by [`frame_stats`].
    static FRAMES: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Drains the per-frame timings recorded since the last call (see `FRAMES`):
/// five numbers per frame, for web/e2e/perf.mjs.
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn frame_stats() -> Vec<f64> {
    FRAMES.with(|f| std::mem::take(&mut *f.borrow_mut()))
}

fn push_frame(v: [f64; 5]) {
    FRAMES.with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < 500_000 {
            f.extend_from_slice(&v);
        }
    });
}

/// Adds the render time to the newest frame recorded by [`push_frame`].
fn set_frame_render(ms: f64) {
    FRAMES.with(|f| {
        let mut f = f.borrow_mut();
        let n = f.len();
        if n >= 5 {
            f[n - 3] = ms;
        }
    });
}

/// Events to simulate in the next chunk of a frame: about 3 ms' worth (or what
/// is left of the budget) at `ms_per_event`, at least 32, at most 1000 (the
/// cost of an event can jump fiftyfold when a big cluster starts gossiping).
pub fn chunk_events(left_ms: f64, ms_per_event: f64) -> u64 {
    let ms = left_ms.clamp(0.0, 3.0);
    (ms / ms_per_event.max(1e-4)).clamp(32.0, 1000.0) as u64
}

fn default_scenario() -> Scenario {
    let mut cfg = SimConfig::new(1, 7, 3);
    cfg.net = NetConfig {
        latency_min: Dur::millis(2),
        latency_max: Dur::millis(30),
        ..NetConfig::default()
    };
    Scenario::new(cfg)
}

pub(crate) fn kind_color(k: MessageKind) -> &'static str {
    match k {
        MessageKind::ClientForward => "#1f77b4",
        MessageKind::ReplicaWrite => "#2ca02c",
        MessageKind::ReplicaRead => "#17becf",
        MessageKind::ReplicaAck => "#8fd17f",
        MessageKind::Hint => "#ff7f0e",
        MessageKind::Probe => "#a0a0a0",
        MessageKind::Merkle => "#9467bd",
        MessageKind::Gossip => "#e377c2",
        MessageKind::Transfer => "#8c564b",
    }
}

const KINDS: [(MessageKind, &str); 9] = [
    (MessageKind::ClientForward, "client"),
    (MessageKind::ReplicaWrite, "replica write"),
    (MessageKind::ReplicaRead, "replica read"),
    (MessageKind::ReplicaAck, "ack / reply"),
    (MessageKind::Hint, "hint delivery"),
    (MessageKind::Probe, "heartbeat / probe"),
    (MessageKind::Merkle, "Merkle exchange"),
    (MessageKind::Gossip, "gossip"),
    (MessageKind::Transfer, "partition transfer"),
];

pub(crate) fn owner_color(i: u32) -> String {
    format!("hsl({:.0},60%,62%)", (f64::from(i) * 137.508) % 360.0)
}

pub(crate) const CX: f64 = 320.0;
pub(crate) const CY: f64 = 320.0;
pub(crate) const R_PART: f64 = 215.0;
const R_NODE: f64 = 270.0;

fn node_angle(i: usize, n: usize) -> f64 {
    2.0 * PI * i as f64 / n.max(1) as f64 - PI / 2.0
}

pub(crate) fn node_pos(i: usize, n: usize) -> (f64, f64) {
    let a = node_angle(i, n);
    (CX + R_NODE * a.cos(), CY + R_NODE * a.sin())
}

/// The ring's partitions as arcs in their owner's colour, merged into runs of one
/// owner (the simulator's ring and the Live tab's).
pub(crate) fn partition_arcs(ring: &ringlab_core::Ring, titles: bool) -> Vec<Html> {
    let q = ring.partitions();
    let mut arcs = Vec::new();
    let mut start = 0u32;
    for p in 1..=q {
        let same = p < q && ring.owner(Partition(p)) == ring.owner(Partition(start));
        if !same {
            let a0 = 2.0 * PI * f64::from(start) / f64::from(q) - PI / 2.0;
            let a1 = 2.0 * PI * f64::from(p) / f64::from(q) - PI / 2.0;
            let owner = ring.owner(Partition(start));
            arcs.push(html! { <path d={arc(R_PART, a0 + 0.004, a1 - 0.004)} stroke={owner_color(owner.0)} stroke-width="18" fill="none">
                if titles { <title>{ format!("partitions {start}–{} owned by {owner}", p - 1) }</title> }</path> });
            start = p;
        }
    }
    arcs
}

/// Where a key sits on the drawn ring (radians, 0 at the top, clockwise).
pub(crate) fn key_angle(key: &[u8]) -> f64 {
    let pos = ringlab_core::ring::key_position(key);
    (pos as f64 / 18_446_744_073_709_551_616.0) * 2.0 * PI - PI / 2.0
}

pub(crate) fn arc(r: f64, a0: f64, a1: f64) -> String {
    let (x0, y0) = (CX + r * a0.cos(), CY + r * a0.sin());
    let (x1, y1) = (CX + r * a1.cos(), CY + r * a1.sin());
    let large = i32::from(a1 - a0 > PI);
    format!("M{x0:.1},{y0:.1} A{r},{r} 0 {large} 1 {x1:.1},{y1:.1}")
}

fn parse_num<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{what}: “{s}” is not a valid number"))
}

impl App {
    fn set_sim(&mut self, r: Result<Sim, String>) {
        match r {
            Ok(sim) => {
                self.sim = sim;
                let n = self.sim.world().node_count() as u32;
                if self.ui.selected.0 >= n {
                    self.ui.selected = NodeId(0);
                }
                self.ui.error = None;
            }
            Err(e) => self.ui.error = Some(e),
        }
        self.url_dirty = true;
    }

    fn write_url(&mut self) {
        if !self.url_dirty {
            return;
        }
        self.url_dirty = false;
        let frag = format!("#{}", self.sim.snapshot().to_fragment());
        if let Some(h) = web_sys::window().and_then(|w| w.history().ok()) {
            let _ = h.replace_state_with_url(&wasm_bindgen::JsValue::NULL, "", Some(&frag));
        }
    }

    fn seek(&mut self, t: Time) {
        if t >= self.sim.now() {
            self.sim.advance(t, None, u64::MAX);
        } else {
            let sc = self.sim.scenario().clone();
            let r = Sim::replay_to(sc, t);
            self.set_sim(r);
        }
        self.url_dirty = true;
    }

    fn act(&mut self, a: Action) {
        if let Action::Client { .. } = &a {
            if let Some(req) = self.sim.act(a) {
                self.ui.my_requests.push(req);
            }
        } else {
            self.sim.act(a);
        }
        self.url_dirty = true;
    }

    fn submit(&mut self) {
        let key = Bytes::from(self.ui.key.clone().into_bytes());
        if key.is_empty() {
            self.ui.error = Some("type a key first".into());
            return;
        }
        let q = if self.ui.quorum.trim().is_empty() {
            None
        } else {
            match parse_num::<usize>(&self.ui.quorum, "quorum") {
                Ok(v) => Some(v),
                Err(e) => {
                    self.ui.error = Some(e);
                    return;
                }
            }
        };
        let context = if self.ui.use_context {
            presets::last_context(self.sim.world(), &key)
        } else {
            None
        };
        let op = match self.ui.op.as_str() {
            "get" => ClientOp::Get { key, r: q },
            "delete" => ClientOp::Delete { key, context, w: q },
            _ => ClientOp::Put {
                key,
                value: Bytes::from(self.ui.value.clone().into_bytes()),
                context,
                w: q,
            },
        };
        self.ui.error = None;
        self.act(Action::Client {
            node: self.ui.selected,
            op,
        });
    }

    fn apply_settings(&mut self) {
        let f = self.ui.settings.clone();
        let parsed = (|| -> Result<Scenario, String> {
            let nodes: usize = parse_num(&f.nodes, "nodes")?;
            if !(1..=1000).contains(&nodes) {
                return Err("nodes: 1 to 1000".into());
            }
            let zones: usize = parse_num(&f.zones, "zones")?;
            let mut cfg = SimConfig::new(parse_num(&f.seed, "seed")?, nodes, zones.max(1));
            cfg.config.partitions = parse_num(&f.q, "Q")?;
            cfg.config.n = parse_num(&f.n, "N")?;
            cfg.config.r = parse_num(&f.r, "R")?;
            cfg.config.w = parse_num(&f.w, "W")?;
            cfg.config.gossip_interval = Dur::millis(parse_num(&f.gossip_ms, "gossip interval")?);
            cfg.config.phi_threshold = parse_num(&f.phi, "phi threshold")?;
            cfg.net = NetConfig {
                latency_min: Dur::millis(2),
                latency_max: Dur::millis(30),
                ..NetConfig::default()
            };
            Ok(Scenario::new(cfg))
        })();
        match parsed.and_then(Sim::new) {
            Ok(mut sim) => {
                if f.workload {
                    sim.act(Action::SetWorkload(Some(Workload {
                        interval: Dur::millis(100),
                        ..Workload::default()
                    })));
                }
                self.set_sim(Ok(sim));
                self.ui.my_requests.clear();
            }
            Err(e) => self.ui.error = Some(e),
        }
    }

    fn frame(&mut self, ts: f64, ctx: &Context<Self>) -> bool {
        self.frame_start = perf_now();
        let dt = self.last_ts.map_or(0.0, |l| (ts - l).clamp(0.0, 100.0));
        self.last_ts = Some(ts);
        let link = ctx.link().clone();
        self.frame = Some(request_animation_frame(move |t| {
            link.send_message(Msg::Frame(t))
        }));
        if !self.ui.playing {
            return false;
        }
        let mut target = Time(self.sim.now().0 + (dt * self.ui.speed_factor()).round() as u64);
        if let Some(until) = self.ui.play_until {
            if target >= until {
                target = until;
            }
        }
        // A time budget keeps a frame short even with 1000 nodes; the clock then
        // lags behind real time × speed instead of freezing the page. Big
        // clusters redraw 4×/s: a frame that redraws leaves the render's time
        // (measured) out of the simulation's budget so it still fits one frame.
        let big = self.sim.world().node_count() > 64;
        let budget = if !big {
            10.0
        } else if ts - self.last_render >= 250.0 {
            (14.0 - self.render_ms).max(3.0)
        } else {
            14.0
        };
        let (v0, e0) = (self.sim.now().0, self.sim.steps());
        let t0 = perf_now();
        let mut now = t0;
        // Events go in chunks sized from the measured cost of an event (a
        // thousand nodes' start-up events cost ~50× an idle 64-node one), so the
        // clock is read often enough to end near the budget, not 60 ms past it.
        loop {
            let chunk = chunk_events(budget - (now - t0), self.ms_per_event);
            let s0 = self.sim.steps();
            let reached = self.sim.advance(target, None, chunk);
            let t = perf_now();
            let n = self.sim.steps() - s0;
            if n >= 16 {
                self.ms_per_event = 0.5 * self.ms_per_event + 0.5 * (t - now) / n as f64;
            }
            now = t;
            if reached || now - t0 >= budget {
                break;
            }
        }
        let t1 = perf_now();
        self.sim_end = t1;
        push_frame([
            ts,
            t1 - t0,
            0.0,
            (self.sim.now().0 - v0) as f64,
            (self.sim.steps() - e0) as f64,
        ]);
        if self.ui.play_until.is_some_and(|u| self.sim.now() >= u) {
            self.ui.reduce(UiAction::Pause);
            self.url_dirty = true;
            self.write_url();
            return true;
        }
        // Reduced drawing for big clusters: the SVG (a thousand nodes and arcs)
        // is redrawn four times a second, leaving the frames to the simulator.
        if self.sim.world().node_count() > 64 {
            if ts - self.last_render < 250.0 {
                self.frame_start = 0.0;
                self.sim_end = 0.0;
                return false;
            }
            self.last_render = ts;
        }
        true
    }
}

impl Component for App {
    type Message = Msg;
    type Properties = ();

    fn create(ctx: &Context<Self>) -> Self {
        let hash = web_sys::window()
            .and_then(|w| w.location().hash().ok())
            .unwrap_or_default();
        let mut error = None;
        let sim = match Scenario::from_fragment(&hash) {
            Some(Ok(sc)) => {
                let pos = sc.position;
                Sim::replay_to(sc, pos).map_err(|e| error = Some(e)).ok()
            }
            Some(Err(e)) => {
                error = Some(e);
                None
            }
            None => None,
        };
        let sim = match sim {
            Some(s) => s,
            None => {
                let mut s = Sim::new(default_scenario()).expect("the default cluster is valid");
                s.act(Action::SetWorkload(Some(Workload {
                    interval: Dur::millis(200),
                    ..Workload::default()
                })));
                s
            }
        };
        let link = ctx.link().clone();
        let keys = web_sys::window().and_then(|w| w.document()).map(|doc| {
            gloo_events::EventListener::new_with_options(
                &doc,
                "keydown",
                gloo_events::EventListenerOptions::enable_prevent_default(),
                move |e| {
                    let Some(ke) = e.dyn_ref::<web_sys::KeyboardEvent>() else {
                        return;
                    };
                    let in_form = ke
                        .target()
                        .and_then(|t| t.dyn_into::<web_sys::Element>().ok())
                        .is_some_and(|el| {
                            matches!(el.tag_name().as_str(), "INPUT" | "SELECT" | "TEXTAREA")
                        });
                    if in_form {
                        return;
                    }
                    let k = ke.key();
                    if matches!(k.as_str(), " " | "ArrowRight" | "ArrowLeft") {
                        ke.prevent_default();
                        link.send_message(Msg::Key(k));
                    }
                },
            )
        });
        let mut ui = UiState {
            error,
            ..UiState::default()
        };
        if sim.scenario().guide.is_none() && sim.scenario().actions.len() <= 1 {
            ui.playing = true;
        }
        if crate::live::live_param().is_some() {
            ui.tab = Tab::Live; // `?live=URL`: open attached to that node
        }
        App {
            sim,
            ui,
            frame: None,
            last_ts: None,
            frame_start: 0.0,
            _keys: keys,
            url_dirty: true,
            canvas: NodeRef::default(),
            last_render: 0.0,
            sim_end: 0.0,
            ms_per_event: 0.01,
            render_ms: 0.0,
        }
    }

    fn update(&mut self, ctx: &Context<Self>, msg: Msg) -> bool {
        match msg {
            Msg::Frame(ts) => return self.frame(ts, ctx),
            Msg::Ui(a) => {
                self.ui.reduce(a);
                self.url_dirty = true;
            }
            Msg::Act(a) => self.act(a),
            Msg::ActMany(v) => v.into_iter().for_each(|a| self.act(a)),
            Msg::Edit(f) => f(&mut self.ui),
            Msg::Submit => self.submit(),
            Msg::StepFwd => {
                self.ui.reduce(UiAction::Pause);
                self.sim.step_one();
                self.url_dirty = true;
            }
            Msg::StepBack => {
                self.ui.reduce(UiAction::Pause);
                let target = self.sim.steps().saturating_sub(1);
                let sc = self.sim.scenario().clone();
                let r = Sim::replay_steps(sc, target);
                self.set_sim(r);
            }
            Msg::Seek(ms) => {
                self.ui.reduce(UiAction::Pause);
                self.seek(Time(ms));
            }
            Msg::Preset(id) => match presets::load(&id) {
                Ok((sim, until)) => {
                    self.set_sim(Ok(sim));
                    self.ui.my_requests.clear();
                    if let Some(k) = self.sim.scenario().guide.as_ref().map(|g| g.key.clone()) {
                        if !k.is_empty() {
                            self.ui.key = String::from_utf8_lossy(&k).into_owned();
                        }
                    }
                    self.ui.reduce(UiAction::PlayUntil(until));
                }
                Err(e) => self.ui.error = Some(e),
            },
            Msg::Next => {
                if let Some(until) = presets::next(&mut self.sim) {
                    self.ui.reduce(UiAction::PlayUntil(until));
                }
                self.url_dirty = true;
            }
            Msg::ApplySettings => self.apply_settings(),
            Msg::ApplyNet => {
                let r = (|| -> Result<NetConfig, String> {
                    let loss: f64 = parse_num(&self.ui.loss, "loss %")?;
                    let dup: f64 = parse_num(&self.ui.dup, "duplication %")?;
                    let lo: u64 = parse_num(&self.ui.lat_min, "latency min")?;
                    let hi: u64 = parse_num(&self.ui.lat_max, "latency max")?;
                    if !(0.0..=100.0).contains(&loss) || !(0.0..=100.0).contains(&dup) || lo > hi {
                        return Err("loss and duplication are 0–100 %, latency min ≤ max".into());
                    }
                    Ok(NetConfig {
                        latency_min: Dur::millis(lo),
                        latency_max: Dur::millis(hi),
                        loss_ppm: (loss * 10_000.0) as u32,
                        dup_ppm: (dup * 10_000.0) as u32,
                    })
                })();
                match r {
                    Ok(c) => self.act(Action::SetNet(c)),
                    Err(e) => self.ui.error = Some(e),
                }
            }
            Msg::ApplyGroups => match parse_groups(&self.ui.groups, self.sim.world().node_count()) {
                Some(g) => self.act(Action::Partition(g)),
                None => self.ui.error = Some(
                    "partition: two or more groups of node names separated by |, e.g. “A B | C D”"
                        .into(),
                ),
            },
            Msg::AddNode => {
                let id = NodeId(self.sim.world().node_count() as u32);
                let contact = self.ui.selected;
                let zone = self
                    .sim
                    .world()
                    .ring()
                    .zone(contact)
                    .unwrap_or("z1")
                    .to_owned();
                self.act(Action::AddNode { zone });
                self.act(Action::Admin {
                    node: id,
                    admin: Admin::Join { contact },
                });
            }
            Msg::ClickRing(x, y) => {
                let hit = self
                    .flights()
                    .into_iter()
                    .map(|(id, mx, my, _)| (id, (mx - x).powi(2) + (my - y).powi(2)))
                    .filter(|(_, d2)| *d2 <= 100.0)
                    .min_by(|a, b| a.1.total_cmp(&b.1));
                match hit {
                    Some((id, _)) => self.act(Action::DropMessage(id)),
                    None => return false,
                }
            }
            Msg::Key(k) => match k.as_str() {
                " " => self.ui.reduce(UiAction::TogglePlay),
                "ArrowRight" => return <Self as Component>::update(self, ctx, Msg::StepFwd),
                "ArrowLeft" => return <Self as Component>::update(self, ctx, Msg::StepBack),
                _ => return false,
            },
        }
        if !self.ui.playing {
            self.write_url();
        }
        true
    }

    fn rendered(&mut self, ctx: &Context<Self>, first_render: bool) {
        self.draw_messages();
        if first_render {
            let link = ctx.link().clone();
            self.frame = Some(request_animation_frame(move |t| {
                link.send_message(Msg::Frame(t))
            }));
        } else if self.frame_start > 0.0 {
            let now = perf_now();
            push_perf(now - self.frame_start);
            if self.sim_end > 0.0 {
                self.render_ms = now - self.sim_end;
                set_frame_render(self.render_ms);
                self.sim_end = 0.0;
            }
            self.frame_start = 0.0;
        }
    }

    fn view(&self, ctx: &Context<Self>) -> Html {
        let link = ctx.link();
        html! {
            <div class="app">
                { self.header(link) }
                if let Some(e) = &self.ui.error {
                    <div class="error" data-testid="error">{ e }
                        <button onclick={link.callback(|_| Msg::Ui(UiAction::Error(None)))}>{"×"}</button>
                    </div>
                }
                <div class="main">
                    <div class="col-ring">
                        { self.ring(link) }
                        { self.timeline(link) }
                        { self.legend() }
                    </div>
                    <div class="col-mid">
                        { self.guide(link) }
                        { self.invariants() }
                        { self.client(link) }
                    </div>
                    <div class="col-right">
                        <div class="tabs">
                            { for Tab::ALL.iter().map(|&t| {
                                let cls = if t == self.ui.tab { "tab active" } else { "tab" };
                                html!{ <button class={cls} data-testid={format!("tab-{}", t.label())}
                                    onclick={link.callback(move |_| Msg::Ui(UiAction::Tab(t)))}>{ t.label() }</button> }
                            }) }
                        </div>
                        { match self.ui.tab {
                            Tab::Faults => self.faults(link),
                            Tab::Hints => self.hints(),
                            Tab::Log => self.log(link),
                            Tab::Merkle => self.merkle(link),
                            Tab::Members => self.members(),
                            Tab::Settings => self.settings(link),
                            Tab::Live => html! {},
                        } }
                        // Kept mounted while other tabs show, so the stream stays attached.
                        <div hidden={self.ui.tab != Tab::Live}><crate::live::LiveView /></div>
                    </div>
                </div>
            </div>
        }
    }
}

fn input_cb(link: &yew::html::Scope<App>, f: fn(&mut UiState, String)) -> Callback<InputEvent> {
    link.callback(move |e: InputEvent| {
        let v = e
            .target_dyn_into::<web_sys::HtmlInputElement>()
            .map(|i| i.value())
            .unwrap_or_default();
        Msg::Edit(Box::new(move |ui: &mut UiState| f(ui, v)))
    })
}

fn select_cb(link: &yew::html::Scope<App>, f: fn(&mut UiState, String)) -> Callback<Event> {
    link.callback(move |e: Event| {
        let v = e
            .target_dyn_into::<web_sys::HtmlSelectElement>()
            .map(|i| i.value())
            .unwrap_or_default();
        Msg::Edit(Box::new(move |ui: &mut UiState| f(ui, v)))
    })
}

impl App {
    /// Messages in flight as (id, x, y, kind) at `(now − sent)/(deliver − sent)`
    /// along their path (at most 1500; 300 when more than 64 nodes).
    fn flights(&self) -> Vec<(u64, f64, f64, MessageKind)> {
        let w = self.sim.world();
        let count = w.node_count();
        let now = w.now();
        let max_drawn = if count > 64 { 300 } else { 1500 };
        w.in_flight()
            .iter()
            .take(max_drawn)
            .map(|m| {
                let span = m.deliver.0.saturating_sub(m.sent.0).max(1) as f64;
                let f = (now.0.saturating_sub(m.sent.0) as f64 / span).clamp(0.0, 1.0);
                let (x0, y0) = node_pos(m.from.0 as usize, count);
                let (x1, y1) = node_pos(m.to.0 as usize, count);
                (m.id, x0 + (x1 - x0) * f, y0 + (y1 - y0) * f, m.msg.kind())
            })
            .collect()
    }

    /// Draws messages in flight and fading drops on the canvas over the ring
    /// (a canvas, not SVG elements: hundreds of moving dots every frame).
    fn draw_messages(&self) {
        let Some(canvas) = self.canvas.cast::<web_sys::HtmlCanvasElement>() else {
            return;
        };
        let Some(cx) = canvas
            .get_context("2d")
            .ok()
            .flatten()
            .and_then(|c| c.dyn_into::<web_sys::CanvasRenderingContext2d>().ok())
        else {
            return;
        };
        cx.clear_rect(0.0, 0.0, 640.0, 640.0);
        let w = self.sim.world();
        let count = w.node_count();
        let now = w.now();
        let r = if count > 64 { 2.5 } else { 5.0 };
        let flights = self.flights();
        for (kind, _) in KINDS {
            cx.set_fill_style_str(kind_color(kind));
            cx.begin_path();
            for &(_, x, y, k) in &flights {
                if k == kind {
                    cx.move_to(x + r, y);
                    let _ = cx.arc(x, y, r, 0.0, 2.0 * PI);
                }
            }
            cx.fill();
        }
        cx.set_stroke_style_str("#d32f2f");
        cx.set_line_width(2.0);
        for d in w
            .recent_drops()
            .filter(|d| now.0.saturating_sub(d.at.0) < 800)
        {
            let age = now.0.saturating_sub(d.at.0) as f64 / 800.0;
            let f = match d.reason {
                DropReason::Loss => 0.1,
                DropReason::Manual => 0.5,
                _ => 0.9,
            };
            let (x0, y0) = node_pos(d.from.0 as usize, count);
            let (x1, y1) = node_pos(d.to.0 as usize, count);
            let (x, y) = (x0 + (x1 - x0) * f, y0 + (y1 - y0) * f);
            cx.set_global_alpha(1.0 - age);
            cx.begin_path();
            cx.move_to(x - 5.0, y - 5.0);
            cx.line_to(x + 5.0, y + 5.0);
            cx.move_to(x + 5.0, y - 5.0);
            cx.line_to(x - 5.0, y + 5.0);
            let _ = cx.arc(x, y, 8.0, 0.0, 2.0 * PI);
            cx.stroke();
        }
        cx.set_global_alpha(1.0);
    }

    fn header(&self, link: &yew::html::Scope<App>) -> Html {
        let w = self.sim.world();
        let speed = self.ui.speed;
        html! {
            <header>
                <h1>{"Ringlab"}<span class="sub">{" cluster explorer"}</span></h1>
                <div class="controls">
                    <button data-testid="step-back" title="Step back one event (←)" onclick={link.callback(|_| Msg::StepBack)}>{"◀ back"}</button>
                    <button data-testid="play" title="Play / pause (space)" onclick={link.callback(|_| Msg::Ui(UiAction::TogglePlay))}>
                        { if self.ui.playing { "❚❚ Pause" } else { "▶ Play" } }</button>
                    <button data-testid="step" title="Step one event (→)" onclick={link.callback(|_| Msg::StepFwd)}>{"step ▶"}</button>
                    <label>{"speed "}
                        <select data-testid="speed" onchange={link.callback(|e: Event| {
                            let v = e.target_dyn_into::<web_sys::HtmlSelectElement>().and_then(|s| s.value().parse().ok()).unwrap_or(3);
                            Msg::Ui(UiAction::Speed(v))
                        })}>
                            { for SPEEDS.iter().enumerate().map(|(i, s)| html!{
                                <option value={i.to_string()} selected={i == speed}>{ format!("{s}×") }</option>
                            }) }
                        </select>
                    </label>
                    <span class="time" data-testid="time">{ format!("t = {:.3} s", w.now().0 as f64 / 1000.0) }</span>
                    <span class="muted">{ format!("event #{}", self.sim.steps()) }</span>
                </div>
                <div class="presets">
                    <span class="muted">{"Guided: "}</span>
                    { for presets::IDS.iter().map(|id| {
                        let id2 = id.to_string();
                        html!{ <button class="preset" data-testid={format!("preset-{id}")} title={presets::title(id)}
                            onclick={link.callback(move |_| Msg::Preset(id2.clone()))}>{ *id }</button> }
                    }) }
                </div>
            </header>
        }
    }

    fn node_status(&self, i: usize) -> (&'static str, &'static str) {
        let w = self.sim.world();
        let id = NodeId(i as u32);
        let sel = self.ui.selected;
        let Some(viewer) = w.node(sel) else {
            // The selected node is down: show the simulator's ground truth.
            return if w.is_up(id) {
                ("up", "#4caf50")
            } else {
                ("down", "#555")
            };
        };
        if id == sel {
            return ("up (self)", "#4caf50");
        }
        let status = viewer.membership().get(id).map(|m| m.status);
        match status {
            Some(Status::Left) | Some(Status::Removed) => return ("left", "#777"),
            Some(Status::Joining) => return ("joining", "#03a9f4"),
            Some(Status::Leaving) => return ("leaving", "#9c27b0"),
            _ => {}
        }
        match viewer.detector().view(id) {
            Some(v) if v.reported_dead => ("dead-reported", "#d32f2f"),
            Some(v) if !v.reachable() => ("unreachable", "#ff9800"),
            _ if status.is_none() && !viewer.ring().is_some_and(|r| r.contains(id)) => {
                ("unknown", "#bbb")
            }
            _ => ("up", "#4caf50"),
        }
    }

    fn ring(&self, link: &yew::html::Scope<App>) -> Html {
        let w = self.sim.world();
        let ring = w.ring();
        let count = w.node_count();
        let big = count > 64;
        let q = ring.partitions();
        let arcs = partition_arcs(ring, !big);
        // The typed key: its position and preference list.
        let key = self.ui.key.as_bytes();
        let mut key_marks = Html::default();
        let mut primaries = Vec::new();
        let mut fallbacks = Vec::new();
        if !key.is_empty() {
            let a = key_angle(key);
            let pl = ring.preference_list(key);
            primaries = pl.primaries.clone();
            fallbacks = pl.fallbacks.iter().take(2).copied().collect();
            let (x0, y0) = (
                CX + (R_PART - 20.0) * a.cos(),
                CY + (R_PART - 20.0) * a.sin(),
            );
            let (x1, y1) = (
                CX + (R_PART + 12.0) * a.cos(),
                CY + (R_PART + 12.0) * a.sin(),
            );
            key_marks = html! { <g>
                <line x1={format!("{x0:.1}")} y1={format!("{y0:.1}")} x2={format!("{x1:.1}")} y2={format!("{y1:.1}")} stroke="#111" stroke-width="3"/>
                <text x={format!("{:.1}", CX + (R_PART - 34.0) * a.cos())} y={format!("{:.1}", CY + (R_PART - 34.0) * a.sin())} class="keylabel" text-anchor="middle">{ format!("{} (p{})", self.ui.key, pl.partition.0) }</text>
            </g> };
        }
        // Cuts in force.
        let cuts: Vec<Html> = if big {
            Vec::new()
        } else {
            w.net().blocked().filter(|(a, b)| a.0 < b.0).map(|(a, b)| {
                let (x0, y0) = node_pos(a.0 as usize, count);
                let (x1, y1) = node_pos(b.0 as usize, count);
                html! { <line x1={format!("{x0:.1}")} y1={format!("{y0:.1}")} x2={format!("{x1:.1}")} y2={format!("{y1:.1}")} class="cut"/> }
            }).collect()
        };
        let total_flights = w.in_flight().len();
        let on_click = link.callback(|e: MouseEvent| {
            let on_node = e
                .target_dyn_into::<web_sys::Element>()
                .and_then(|el| el.closest(".node").ok().flatten())
                .is_some();
            let svg = e
                .current_target()
                .and_then(|t| t.dyn_into::<web_sys::Element>().ok());
            let width = svg.map_or(640.0, |s| f64::from(s.client_width().max(1)));
            let scale = 640.0 / width;
            if on_node {
                Msg::Edit(Box::new(|_| {}))
            } else {
                Msg::ClickRing(
                    f64::from(e.offset_x()) * scale,
                    f64::from(e.offset_y()) * scale,
                )
            }
        });
        let nodes: Vec<Html> = (0..count).map(|i| {
            let id = NodeId(i as u32);
            let (x, y) = node_pos(i, count);
            let (status, color) = self.node_status(i);
            let up = w.is_up(id);
            let sel = id == self.ui.selected;
            let role = if primaries.contains(&id) { " primary" } else if fallbacks.contains(&id) { " fallback" } else { "" };
            let zone = w.sim_config().nodes.get(i).map(|n| n.zone.clone()).unwrap_or_default();
            let r = if big { 3.0 } else { 15.0 };
            let stroke = if sel { "#111" } else if !role.is_empty() { "#f5b700" } else { "#fff" };
            let (lx, ly) = (CX + (R_NODE + 28.0) * node_angle(i, count).cos(), CY + (R_NODE + 28.0) * node_angle(i, count).sin());
            html! { <g class={format!("node{}", if up { "" } else { " down" })} data-testid={format!("node-{id}")} data-status={status}
                onclick={link.callback(move |_| Msg::Ui(UiAction::Select(id)))}>
                if !big {
                    <circle cx={format!("{x:.1}")} cy={format!("{y:.1}")} r={(r + 5.0).to_string()} fill="none" stroke={owner_color(id.0)} stroke-width="4"/>
                }
                <circle cx={format!("{x:.1}")} cy={format!("{y:.1}")} r={r.to_string()} fill={color} stroke={stroke}
                    stroke-width={if sel || !role.is_empty() { "4" } else { "2" }} stroke-dasharray={if up { "none" } else { "4 3" }}/>
                if !big {
                    <text x={format!("{x:.1}")} y={format!("{:.1}", y + 5.0)} text-anchor="middle" class="nodename">{ id.to_string() }</text>
                    <text x={format!("{lx:.1}")} y={format!("{ly:.1}")} text-anchor="middle" class="zone">{ zone.clone() }</text>
                }
                if !big { <title>{ format!("{id} ({zone}): {status} in {}'s view{}{}", self.ui.selected, if up { "" } else { "; crashed" }, role) }</title> }
            </g> }
        }).collect();
        html! {
            <div class="ringbox">
                <canvas ref={self.canvas.clone()} width="640" height="640" class="msgs"></canvas>
                <svg viewBox="0 0 640 640" class="ring" data-testid="ring" onclick={on_click}>
                    <circle cx="320" cy="320" r={R_PART.to_string()} fill="none" stroke="#eee" stroke-width="20"/>
                    { for arcs }
                    { key_marks }
                    { for cuts }
                    { for nodes }
                    <text x="320" y="312" text-anchor="middle" class="center">{ format!("{} nodes · Q={q} · N={}", count, w.sim_config().config.n) }</text>
                    <text x="320" y="332" text-anchor="middle" class="center muted" data-testid="inflight">{ format!("{total_flights} messages in flight") }</text>
                    <text x="320" y="350" text-anchor="middle" class="center muted">{ format!("view of {}", self.ui.selected) }</text>
                </svg>
            </div>
        }
    }

    fn timeline(&self, link: &yew::html::Scope<App>) -> Html {
        let horizon = self.sim.horizon().0.max(1);
        let now = self.sim.now().0;
        html! {
            <div class="timeline">
                <input type="range" min="0" max={horizon.to_string()} value={now.to_string()} data-testid="scrubber"
                    onchange={link.callback(|e: Event| {
                        let v = e.target_dyn_into::<web_sys::HtmlInputElement>().and_then(|i| i.value().parse().ok()).unwrap_or(0);
                        Msg::Seek(v)
                    })}/>
                <span class="muted">{ format!("{:.1} s / {:.1} s{}", now as f64 / 1000.0, horizon as f64 / 1000.0,
                    if self.sim.has_future() { " · recorded future ahead" } else { "" }) }</span>
            </div>
        }
    }

    fn legend(&self) -> Html {
        html! {
            <div class="legend">
                { for KINDS.iter().map(|(k, label)| html!{ <span><i style={format!("background:{}", kind_color(*k))}></i>{ *label }</span> }) }
                <span><i style="background:#4caf50"></i>{"up"}</span>
                <span><i style="background:#ff9800"></i>{"unreachable"}</span>
                <span><i style="background:#d32f2f"></i>{"dead-reported"}</span>
                <span><i style="background:#777"></i>{"left"}</span>
                <span><i class="dashed"></i>{"crashed (dashed)"}</span>
                <span class="muted">{"Click a node to select it, a message to drop it. Keys: space, →, ←."}</span>
            </div>
        }
    }

    fn guide(&self, link: &yew::html::Scope<App>) -> Html {
        let Some(g) = self.sim.scenario().guide.as_ref() else {
            return html! { <div class="panel guide"><h3>{"Guided scenarios"}</h3>
            <p class="muted">{"Pick S1–S9 above: the cluster is set up, a sentence explains each step, “next” runs it and the check below shows it passing."}</p></div> };
        };
        let total = presets::step_count(&self.sim);
        let Some((i, text, check)) = presets::current(&self.sim) else {
            return Html::default();
        };
        let w = self.sim.world();
        let key = &g.key;
        let replicas = if key.is_empty() {
            Html::default()
        } else {
            let h = presets::holders(w, key);
            let hints: Vec<String> = w
                .hints()
                .iter()
                .filter(|(_, _, k)| k.as_ref() == key.as_slice())
                .map(|(h, o, _)| format!("{h} holds a hint for {o}"))
                .collect();
            html! { <div class="keyline">
                <div data-testid="guide-replicas" data-count={h.len().to_string()}>{ format!("“{}” replicas: {} ({})", String::from_utf8_lossy(key), h.len(),
                    h.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")) }</div>
                <div data-testid="guide-hints" data-count={hints.len().to_string()}>{ if hints.is_empty() { "no hints for it".to_string() } else { hints.join("; ") } }</div>
            </div> }
        };
        let running = self.ui.play_until.is_some() && self.ui.playing;
        html! {
            <div class="panel guide" data-testid="guide">
                <h3>{ presets::title(&g.preset) }</h3>
                <div class="stepno" data-testid="guide-step" data-step={i.to_string()}>{ format!("Step {} of {}", i + 1, total) }</div>
                <p data-testid="guide-text">{ text }</p>
                { replicas }
                <div class={if check.pass { "check pass" } else { "check" }} data-testid="check" data-pass={check.pass.to_string()}>
                    <b>{ if check.pass { "✔ " } else if running { "… " } else { "✘ " } }{ &check.label }</b>
                    <div class="muted">{ &check.detail }</div>
                </div>
                <button data-testid="guide-next" disabled={i + 1 >= total} onclick={link.callback(|_| Msg::Next)}>{"Next ▶"}</button>
            </div>
        }
    }

    fn invariants(&self) -> Html {
        let inv = invariants::compute(self.sim.world());
        let b = |ok: bool| if ok { "ok" } else { "warn" };
        html! {
            <div class="panel inv" data-testid="invariants">
                <h3>{"Invariants"}</h3>
                <table>
                    <tr class={b(inv.under_replicated.is_empty())}><td>{"acked writes not yet on N replicas"}</td>
                        <td data-testid="inv-under">{ format!("{} of {}", inv.under_replicated.len(), inv.acked_checked) }</td></tr>
                    <tr class={b(inv.keys_with_siblings.is_empty())}><td>{"keys with siblings"}</td>
                        <td>{ inv.keys_with_siblings.len() }</td></tr>
                    <tr class={b(inv.hints_pending == 0)}><td>{"hints pending"}</td><td data-testid="inv-hints">{ inv.hints_pending }</td></tr>
                    <tr class={b(inv.divergent_partitions == 0)}><td>{"Merkle roots"}</td>
                        <td>{ if inv.divergent_partitions == 0 { "equal".to_string() } else { format!("{} partitions differ", inv.divergent_partitions) } }</td></tr>
                    <tr class={b(inv.converged())}><td>{"membership"}</td>
                        <td data-testid="inv-members">{ format!("{} ({}/{})", if inv.converged() { "converged" } else { "not converged" }, inv.membership.0, inv.membership.1) }</td></tr>
                </table>
                <div class="muted small">{ format!("replicas per key ({} keys): ", inv.keys) }
                    { for inv.replica_counts.iter().map(|(k, c)| html!{ <span class="chip">{ format!("{k}:{c}") }</span> }) }
                </div>
            </div>
        }
    }

    fn client(&self, link: &yew::html::Scope<App>) -> Html {
        let w = self.sim.world();
        let last: Vec<Html> = self.ui.my_requests.iter().rev().take(3).filter_map(|r| {
            let c = w.client(*r)?;
            let head = format!("{} {} at {}", match &c.op { ClientOp::Put { .. } => "put", ClientOp::Get { .. } => "get", ClientOp::Delete { .. } => "delete" },
                String::from_utf8_lossy(c.op.key()), c.node);
            let body = match &c.done {
                None => html!{ <span class="muted">{"pending…"}</span> },
                Some((t, Err(e))) => html!{ <span class="bad">{ format!("{e} (at {:.3} s)", t.0 as f64 / 1000.0) }</span> },
                Some((t, Ok(ClientReply::Written { dot, context, acked_by, stand_ins }))) => html!{ <div>
                    <span class="good">{ format!("quorum met at {:.3} s, dot {dot}", t.0 as f64 / 1000.0) }</span>
                    <div>{ format!("acked by: {}", acked_by.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")) }</div>
                    <div>{ format!("stand-ins: {}", if stand_ins.is_empty() { "none".into() } else { stand_ins.iter().map(|(s, o)| format!("{s} (hint for {o})")).collect::<Vec<_>>().join(", ") }) }</div>
                    <div class="muted small">{ format!("context {}", context.to_token()) }</div>
                </div> },
                Some((t, Ok(ClientReply::Read { values, context, answered_by }))) => html!{ <div>
                    <span class="good">{ format!("read quorum met at {:.3} s: {}", t.0 as f64 / 1000.0, if values.is_empty() { "not found".to_string() } else { format!("{} sibling(s)", values.len()) }) }</span>
                    { for values.iter().map(|(d, v)| html!{ <div>{ format!("{d}: {}", String::from_utf8_lossy(v)) }</div> }) }
                    <div>{ format!("answered by: {}", answered_by.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")) }</div>
                    <div class="muted small">{ format!("context {}", context.to_token()) }</div>
                </div> },
            };
            Some(html!{ <div class="reply"><b>{ head }</b>{ body }</div> })
        }).collect();
        let c = w.sim_config().config.clone();
        html! {
            <div class="panel client">
                <h3>{ format!("Client → {}", self.ui.selected) }</h3>
                <div class="row">
                    <select onchange={select_cb(link, |ui, v| ui.op = v)}>
                        { for ["put", "get", "delete"].iter().map(|o| html!{ <option value={*o} selected={self.ui.op == *o}>{ *o }</option> }) }
                    </select>
                    <input data-testid="client-key" placeholder="key" value={self.ui.key.clone()} oninput={input_cb(link, |ui, v| ui.key = v)}/>
                    <input placeholder="value" value={self.ui.value.clone()} oninput={input_cb(link, |ui, v| ui.value = v)}/>
                </div>
                <div class="row">
                    <input class="short" placeholder={format!("R/W ({}/{})", c.r, c.w)} value={self.ui.quorum.clone()} oninput={input_cb(link, |ui, v| ui.quorum = v)}/>
                    <span class="muted small">{ format!("N={} (cluster-wide)", c.n) }</span>
                    <label class="small"><input type="checkbox" checked={self.ui.use_context}
                        onclick={link.callback(|_| Msg::Edit(Box::new(|ui: &mut UiState| ui.use_context = !ui.use_context)))}/>{"send context"}</label>
                    <button data-testid="client-send" onclick={link.callback(|_| Msg::Submit)}>{"Send"}</button>
                </div>
                if !self.ui.key.is_empty() {
                    <div class="small" data-testid="preflist">{ {
                        let pl = w.ring().preference_list(self.ui.key.as_bytes());
                        let pos = ringlab_core::ring::key_position(self.ui.key.as_bytes());
                        format!("position {:.4} of the ring, partition {}: replicas {}; stand-ins in order {}",
                            pos as f64 / 18_446_744_073_709_551_616.0, pl.partition.0,
                            pl.primaries.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", "),
                            pl.fallbacks.iter().take(4).map(|n| n.to_string()).collect::<Vec<_>>().join(", "))
                    } }</div>
                }
                { for last }
            </div>
        }
    }

    fn faults(&self, link: &yew::html::Scope<App>) -> Html {
        let sel = self.ui.selected;
        let w = self.sim.world();
        let cfg = &w.net().config;
        html! {
            <div class="panel">
                <h3>{ format!("Node {sel}{}", if w.is_up(sel) { "" } else { " (crashed)" }) }</h3>
                <div class="row wrap">
                    <button data-testid="crash" onclick={link.callback(move |_| Msg::Act(Action::Crash(sel)))}>{"Crash"}</button>
                    <button data-testid="restart" onclick={link.callback(move |_| Msg::Act(Action::Restart(sel)))}>{"Restart"}</button>
                    <button onclick={link.callback(move |_| Msg::Act(Action::Isolate(sel)))}>{"Cut off"}</button>
                    <button onclick={link.callback(move |_| Msg::Act(Action::Wipe(sel)))}>{"Wipe disk"}</button>
                    <button onclick={link.callback(move |_| Msg::Act(Action::Admin { node: sel, admin: Admin::Leave }))}>{"Decommission"}</button>
                    <button title="Remove this (dead) node from the ring, asked at another running node"
                        onclick={link.callback(move |_| Msg::Edit(Box::new(|_| {})))}
                        onmousedown={
                            let other = (0..w.node_count() as u32).map(NodeId).find(|&n| n != sel && w.is_up(n));
                            link.batch_callback(move |_: MouseEvent| other.map(|o| Msg::Act(Action::Admin { node: o, admin: Admin::Remove { node: sel } })))
                        }>{"Remove"}</button>
                </div>
                <div class="row wrap">
                    <button onclick={link.callback(|_| Msg::AddNode)}>{ format!("Add node (joins via {sel})") }</button>
                    <button onclick={link.callback(|_| Msg::Act(Action::Heal))}>{"Heal all cuts"}</button>
                </div>
                <h3>{"Partition"}</h3>
                <div class="row">
                    <input value={self.ui.groups.clone()} oninput={input_cb(link, |ui, v| ui.groups = v)}/>
                    <button onclick={link.callback(|_| Msg::ApplyGroups)}>{"Cut"}</button>
                </div>
                <h3>{"Network"}</h3>
                <div class="muted small">{ format!("now: latency {}–{} ms, loss {:.1} %, duplication {:.1} %", cfg.latency_min.0, cfg.latency_max.0,
                    f64::from(cfg.loss_ppm) / 10_000.0, f64::from(cfg.dup_ppm) / 10_000.0) }</div>
                <div class="row">
                    <label class="small">{"loss %"}<input class="short" value={self.ui.loss.clone()} oninput={input_cb(link, |ui, v| ui.loss = v)}/></label>
                    <label class="small">{"dup %"}<input class="short" value={self.ui.dup.clone()} oninput={input_cb(link, |ui, v| ui.dup = v)}/></label>
                    <label class="small">{"latency"}<input class="short" data-testid="lat-min" value={self.ui.lat_min.clone()} oninput={input_cb(link, |ui, v| ui.lat_min = v)}/>
                        {"–"}<input class="short" data-testid="lat-max" value={self.ui.lat_max.clone()} oninput={input_cb(link, |ui, v| ui.lat_max = v)}/>{"ms"}</label>
                    <button data-testid="net-set" onclick={link.callback(|_| Msg::ApplyNet)}>{"Set"}</button>
                </div>
                <h3>{"Workload"}</h3>
                <div class="row">
                    <button onclick={link.callback(|_| Msg::Act(Action::SetWorkload(Some(Workload { interval: Dur::millis(100), ..Workload::default() }))))}>{"Start (10 req/s)"}</button>
                    <button data-testid="workload-heavy" onclick={link.callback(|_| Msg::Act(Action::SetWorkload(Some(Workload { interval: Dur::millis(5), ..Workload::default() }))))}>{"Heavy (200 req/s)"}</button>
                    <button onclick={link.callback(|_| Msg::Act(Action::SetWorkload(None)))}>{"Stop"}</button>
                </div>
            </div>
        }
    }

    fn hints(&self) -> Html {
        let w = self.sim.world();
        let rows: Vec<Html> = (0..w.node_count() as u32).map(NodeId).filter_map(|n| {
            let hs = w.storage(n)?.all_hints();
            if hs.is_empty() { return None; }
            let mut by_owner: std::collections::BTreeMap<NodeId, Vec<String>> = Default::default();
            for (o, k) in hs { by_owner.entry(o).or_default().push(String::from_utf8_lossy(&k).into_owned()); }
            Some(html!{ <div class="hintrow">
                <b>{ format!("{n} holds:") }</b>
                { for by_owner.iter().map(|(o, ks)| html!{ <div data-testid={format!("hint-{n}-{o}")}>{ format!("{} hint(s) for {o}: {}{}", ks.len(),
                    ks.iter().take(6).cloned().collect::<Vec<_>>().join(", "), if ks.len() > 6 { " …" } else { "" }) }</div> }) }
            </div> })
        }).collect();
        let recent: Vec<Html> = self.sim.log().iter().rev().filter(|e| matches!(e.kind(), "hint" | "handoff" | "handoff-received" | "hint-delivered" | "hint-dropped"))
            .take(12).map(|e| html!{ <div class="small">{ format!("{:.3} s {}", e.entry.at.0 as f64 / 1000.0, describe(&e.entry.record)) }</div> }).collect();
        html! {
            <div class="panel" data-testid="hints">
                <h3>{ format!("Hints ({})", w.hints().len()) }</h3>
                if rows.is_empty() { <p class="muted">{"No node holds a hint."}</p> }
                { for rows }
                <h3>{"Recent handoff"}</h3>
                { for recent }
            </div>
        }
    }

    fn log(&self, link: &yew::html::Scope<App>) -> Html {
        let node_f = NodeId::parse(&self.ui.log_node);
        let kind_f = self.ui.log_kind.trim().to_owned();
        let rows: Vec<Html> = self.sim.log().iter().rev()
            .filter(|e| e.kind() != "deliver" || kind_f == "deliver")
            .filter(|e| node_f.is_none() || e.node() == node_f)
            .filter(|e| kind_f.is_empty() || e.kind().contains(kind_f.as_str()))
            .take(150)
            .map(|e| {
                let at = e.entry.at;
                html!{ <div class="logrow" onclick={link.callback(move |_| Msg::Seek(at.0))} title="jump the timeline here">
                    <span class="t">{ format!("{:.3}", at.0 as f64 / 1000.0) }</span>
                    <span class="k">{ e.kind() }</span>
                    <span>{ describe(&e.entry.record) }</span>
                </div> }
            }).collect();
        html! {
            <div class="panel log">
                <div class="row">
                    <input class="short" placeholder="node" value={self.ui.log_node.clone()} oninput={input_cb(link, |ui, v| ui.log_node = v)}/>
                    <input placeholder="kind (hint, quorum, merkle, member, deliver…)" value={self.ui.log_kind.clone()} oninput={input_cb(link, |ui, v| ui.log_kind = v)}/>
                </div>
                if self.sim.world().node_count() > crate::replay::TRACE_MAX_NODES {
                    <p class="muted">{"The event log is off above 64 nodes (reduced drawing)."}</p>
                }
                <div class="logrows">{ for rows }</div>
            </div>
        }
    }

    fn merkle(&self, link: &yew::html::Scope<App>) -> Html {
        let w = self.sim.world();
        let ring = w.ring();
        let q = ring.partitions();
        let p = Partition(self.ui.merkle_p.min(q - 1));
        let prim = ring.primaries(p).to_vec();
        let x = prim
            .get(self.ui.merkle_x.min(prim.len().saturating_sub(1)))
            .copied();
        let y = prim
            .get(self.ui.merkle_y.min(prim.len().saturating_sub(1)))
            .copied();
        let tx = x.and_then(|n| w.node(n)).and_then(|n| n.merkle_tree(p));
        let ty = y.and_then(|n| w.node(n)).and_then(|n| n.merkle_tree(p));
        let draw = |t: Option<&ringlab_core::merkle::MerkleTree>,
                    other: Option<&ringlab_core::merkle::MerkleTree>,
                    who: Option<NodeId>|
         -> Html {
            let Some(t) = t else {
                return html! { <div class="muted">{ format!("{}: no tree (down or not a replica)", who.map(|n| n.to_string()).unwrap_or_default()) }</div> };
            };
            let depth = t.depth();
            let shown = depth.min(6);
            let rows: Vec<Html> = (0..=shown).rev().map(|lvl| {
                let level = lvl + depth - shown;
                let width = 1u64 << (depth - level);
                let cells: Vec<Html> = (0..width.min(64)).map(|i| {
                    let h = t.node(level, i);
                    let differs = other.is_some_and(|o| o.node(level, i) != h);
                    let n = t.node_len(level, i);
                    html!{ <span class={if differs { "mcell diff" } else if n > 0 { "mcell full" } else { "mcell" }}
                        title={format!("level {level} node {i}: {} item(s), {}", n, ringlab_core::merkle::short_hex(&h))}></span> }
                }).collect();
                html!{ <div class="mrow">{ for cells }</div> }
            }).collect();
            html! { <div class="mtree">
                <div><b>{ who.map(|n| n.to_string()).unwrap_or_default() }</b>{ format!(" root {} · {} keys", ringlab_core::merkle::short_hex(&t.root()), t.len()) }</div>
                { for rows }
            </div> }
        };
        let bytes = w
            .stats()
            .bytes_by_kind
            .get(&MessageKind::Merkle)
            .copied()
            .unwrap_or(0);
        let divergent = if w.node_count() <= 64 {
            w.divergent_partitions()
        } else {
            Vec::new()
        };
        let repairs: Vec<Html> = self.sim.log().iter().rev().filter_map(|e| match &e.entry.record {
            ringlab_core::sim::Record::Event { node, event: ringlab_core::Event::MerkleKeysRepaired { peer, partition, n, bytes } } =>
                Some(html!{ <div class="small">{ format!("{:.3} s: {node} repaired {n} key(s) of p{partition} from {peer} ({bytes} B)", e.entry.at.0 as f64 / 1000.0) }</div> }),
            ringlab_core::sim::Record::Event { node, event: ringlab_core::Event::MerkleLevelCompared { peer, partition, differing } } if *partition == p.0 =>
                Some(html!{ <div class="small">{ format!("{:.3} s: {node}↔{peer} p{partition}: {differing} differing node(s) at this level", e.entry.at.0 as f64 / 1000.0) }</div> }),
            _ => None,
        }).take(10).collect();
        html! {
            <div class="panel">
                <div class="row">
                    <label class="small">{"partition "}<input class="short" type="number" min="0" max={(q - 1).to_string()} value={p.0.to_string()}
                        oninput={input_cb(link, |ui, v| ui.merkle_p = v.parse().unwrap_or(0))}/></label>
                    <label class="small">{"replicas "}
                        <select onchange={select_cb(link, |ui, v| ui.merkle_x = v.parse().unwrap_or(0))}>
                            { for prim.iter().enumerate().map(|(i, n)| html!{ <option value={i.to_string()} selected={i == self.ui.merkle_x}>{ n.to_string() }</option> }) }
                        </select>
                        <select onchange={select_cb(link, |ui, v| ui.merkle_y = v.parse().unwrap_or(1))}>
                            { for prim.iter().enumerate().map(|(i, n)| html!{ <option value={i.to_string()} selected={i == self.ui.merkle_y}>{ n.to_string() }</option> }) }
                        </select>
                    </label>
                </div>
                <div class="small">{"partitions whose replicas' roots differ: "}
                    if divergent.is_empty() { <span class="good">{"none"}</span> }
                    { for divergent.iter().take(16).map(|d| {
                        let d = d.0;
                        html!{ <button class="chip" onclick={link.callback(move |_| Msg::Edit(Box::new(move |ui: &mut UiState| ui.merkle_p = d)))}>{ format!("p{d}") }</button> }
                    }) }
                </div>
                <div class="muted small">{ format!("Merkle bytes sent so far: {bytes}. Red: nodes that differ between the two trees (bottom row = buckets).") }</div>
                <div class="mpair">{ draw(tx, ty, x) }{ draw(ty, tx, y) }</div>
                <h3>{"Recent exchanges"}</h3>
                { for repairs }
            </div>
        }
    }

    fn members(&self) -> Html {
        let w = self.sim.world();
        let count = w.node_count();
        let inv_members = {
            let mut rings: std::collections::BTreeMap<Vec<NodeId>, Vec<NodeId>> =
                Default::default();
            for i in 0..count as u32 {
                if let Some(r) = w.node(NodeId(i)).and_then(|n| n.ring()) {
                    rings
                        .entry(r.members().map(|(id, _)| id).collect())
                        .or_default()
                        .push(NodeId(i));
                }
            }
            rings
        };
        let seeds = &w.sim_config().config.seeds;
        let split = inv_members.len() > 1;
        let mini: Vec<Html> = inv_members.iter().enumerate().map(|(ri, (members, holders))| {
            let m = members.len().max(1);
            let dots: Vec<Html> = members.iter().enumerate().map(|(i, id)| {
                let a = 2.0 * PI * i as f64 / m as f64 - PI / 2.0;
                let (x, y) = (60.0 + 40.0 * a.cos(), 60.0 + 40.0 * a.sin());
                html!{ <g><circle cx={format!("{x:.1}")} cy={format!("{y:.1}")} r="10" fill={owner_color(id.0)}/>
                    <text x={format!("{x:.1}")} y={format!("{:.1}", y + 4.0)} text-anchor="middle" class="nodename small">{ id.to_string() }</text></g> }
            }).collect();
            html!{ <div class="mini" data-testid={format!("ring-{ri}")}>
                <svg viewBox="0 0 120 120" width="120" height="120"><circle cx="60" cy="60" r="40" fill="none" stroke="#ccc" stroke-width="6"/>{ for dots }</svg>
                <div class="small">{ format!("held by {}", holders.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")) }</div>
            </div> }
        }).collect();
        let matrix = if count > 16 {
            html! { <p class="muted">{"The matrix is shown for up to 16 nodes."}</p> }
        } else {
            let now = w.now();
            html! { <table class="matrix">
                <tr><th>{"view of ↓ / about →"}</th>{ for (0..count as u32).map(|j| html!{ <th>{ NodeId(j).to_string() }{ if seeds.contains(&NodeId(j)) { "★" } else { "" } }</th> }) }</tr>
                { for (0..count as u32).map(|i| {
                    let obs = w.node(NodeId(i));
                    html!{ <tr><th>{ NodeId(i).to_string() }</th>
                        { for (0..count as u32).map(|j| {
                            let Some(o) = obs else { return html!{ <td class="na">{"—"}</td> } };
                            let m = o.membership().get(NodeId(j));
                            let st = m.map_or("?", |m| m.status.name());
                            let v = o.detector().view(NodeId(j));
                            let cls = if i == j { "self" } else if v.is_some_and(|v| v.reported_dead) { "dead" } else if v.is_some_and(|v| !v.reachable()) { "unr" } else if m.is_none() { "na" } else { st };
                            let age = v.and_then(|v| v.last_heard).map(|t| format!(" {:.1}s", now.since(t).0 as f64 / 1000.0)).unwrap_or_default();
                            html!{ <td class={cls.to_string()} title={format!("{} about {}: {st}{age}", NodeId(i), NodeId(j))}>{ format!("{}{}", &st[..1.min(st.len())], if i == j { String::new() } else { age }) }</td> }
                        }) }
                    </tr> }
                }) }
            </table> }
        };
        let inv = invariants::compute(w);
        html! {
            <div class="panel">
                <h3>{ format!("Membership: {} of {} running nodes agree{}", inv.membership.0, inv.membership.1, if split { " · SPLIT: separate rings" } else { "" }) }</h3>
                <div class="muted small">{ format!("convergence {:.0} %; ★ = seed; cells: status letter and age of the last message heard", 100.0 * inv.membership.0 as f64 / inv.membership.1.max(1) as f64) }</div>
                <div class="minis" data-testid="rings" data-count={inv_members.len().to_string()}>{ for mini }</div>
                { matrix }
            </div>
        }
    }

    fn settings(&self, link: &yew::html::Scope<App>) -> Html {
        let f = &self.ui.settings;
        let field = |label: &'static str, v: &String, cb: fn(&mut UiState, String)| {
            html! {
                <label class="field">{ label }<input class="short" value={v.clone()} oninput={input_cb(link, cb)}/></label>
            }
        };
        html! {
            <div class="panel">
                <h3>{"New cluster"}</h3>
                <div class="fields">
                    { field("nodes (≤64 drawn, ≤1000)", &f.nodes, |ui, v| ui.settings.nodes = v) }
                    { field("zones", &f.zones, |ui, v| ui.settings.zones = v) }
                    { field("Q partitions", &f.q, |ui, v| ui.settings.q = v) }
                    { field("N", &f.n, |ui, v| ui.settings.n = v) }
                    { field("R", &f.r, |ui, v| ui.settings.r = v) }
                    { field("W", &f.w, |ui, v| ui.settings.w = v) }
                    { field("gossip interval ms", &f.gossip_ms, |ui, v| ui.settings.gossip_ms = v) }
                    { field("detector φ threshold", &f.phi, |ui, v| ui.settings.phi = v) }
                    { field("seed", &f.seed, |ui, v| ui.settings.seed = v) }
                </div>
                <label class="small"><input type="checkbox" checked={f.workload}
                    onclick={link.callback(|_| Msg::Edit(Box::new(|ui: &mut UiState| ui.settings.workload = !ui.settings.workload)))}/>{"start a client workload"}</label>
                <div><button data-testid="apply-settings" onclick={link.callback(|_| Msg::ApplySettings)}>{"Build cluster"}</button></div>
                <p class="muted small">{"The scenario (seed, settings and every action) is in the page's URL: copy it to share this exact run."}</p>
            </div>
        }
    }
}

/// One line for the event log.
pub fn describe(r: &ringlab_core::sim::Record) -> String {
    use ringlab_core::sim::Record;
    match r {
        Record::Deliver { from, to, msg, .. } => format!("{from}→{to} {:?}", msg.kind()),
        Record::Event { node, event } => format!("{node}: {}", event_text(event)),
        Record::Reply { node, req, result } => match result {
            Ok(_) => format!("{node} answered request {}", req.0),
            Err(e) => format!("{node} failed request {}: {e}", req.0),
        },
        Record::Drop(d) => format!("{}→{} {:?} dropped ({:?})", d.from, d.to, d.kind, d.reason),
        Record::Action(a) => format!("action: {}", action_text(a)),
    }
}

fn action_text(a: &Action) -> String {
    match a {
        Action::Client { node, op } => format!(
            "client {} {} at {node}",
            match op {
                ClientOp::Put { .. } => "put",
                ClientOp::Get { .. } => "get",
                ClientOp::Delete { .. } => "delete",
            },
            String::from_utf8_lossy(op.key())
        ),
        Action::Admin { node, admin } => match admin {
            Admin::SetRing(r) => format!("{node} gets a ring of {}", r.member_count()),
            Admin::Join { contact } => format!("{node} joins via {contact}"),
            Admin::Leave => format!("{node} decommissioned"),
            Admin::Remove { node: x } => format!("{node} removes {x}"),
        },
        Action::SetNet(_) => "network settings changed".into(),
        Action::SetWorkload(w) => {
            if w.is_some() {
                "workload started".into()
            } else {
                "workload stopped".into()
            }
        }
        Action::Partition(g) => format!(
            "partition {}",
            g.iter()
                .map(|x| x
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(" "))
                .collect::<Vec<_>>()
                .join(" | ")
        ),
        other => format!("{other:?}"),
    }
}

pub(crate) fn event_text(e: &ringlab_core::Event) -> String {
    use ringlab_core::Event as E;
    let k = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
    match e {
        E::HintStored { owner, key } => format!("stored a hint for {owner} ({})", k(key)),
        E::HintDelivered { owner, key } => {
            format!("delivered its hint to {owner} and deleted it ({})", k(key))
        }
        E::HandoffStarted { owner, hints } => format!("handing {hints} hint(s) to {owner}"),
        E::HandoffReceived { from, keys } => format!("merged {keys} key(s) handed off by {from}"),
        E::OwnershipHandoff {
            ring_version,
            keys,
            hints,
            done,
        } => format!(
            "holds {keys} key(s) it does not replicate in ring v{ring_version}: {hints} hint(s) for their owners{}",
            if *done { " (store scanned)" } else { "" }
        ),
        E::ReplicaStored { key, siblings } => format!("stored {} ({siblings} sibling(s))", k(key)),
        E::QuorumMet { key, got, need, .. } => format!("quorum met for {} ({got}/{need})", k(key)),
        E::RequestFailed { key, error, .. } => format!("request on {} failed: {error}", k(key)),
        E::StandInRecruited {
            key,
            owner,
            stand_in,
        } => format!("{stand_in} stands in for {owner} ({})", k(key)),
        E::ReadRetried { key, asked } => format!(
            "read of {} slow: also asking {}",
            k(key),
            asked
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        E::PeerUnreachable { peer } => format!("{peer} unreachable"),
        E::PeerReachable { peer } => format!("{peer} reachable again"),
        E::PeerReportedDead { peer } => format!("reports {peer} dead"),
        E::MemberStateChanged {
            member,
            status,
            generation,
        } => format!("learned {member} is {status} (gen {generation})"),
        E::RequestStarted {
            req,
            key,
            op,
            targets,
        } => {
            let to: Vec<String> = targets
                .iter()
                .map(|(n, hint)| match hint {
                    Some(o) => format!("{n} (for {o})"),
                    None => n.to_string(),
                })
                .collect();
            format!("starts {op} #{} of {} → {}", req.0, k(key), to.join(", "))
        }
        E::Forwarded { req, to } => format!("forwards request #{} to {to}", req.0),
        E::HintDropped { owner, key, reason } => {
            format!("dropped the hint for {owner} ({}): {reason}", k(key))
        }
        E::HintRefused { owner, key } => {
            format!("refused a hint for {owner} ({}): hint store full", k(key))
        }
        E::ReadRepair { key, replicas } => {
            let to: Vec<String> = replicas.iter().map(ToString::to_string).collect();
            format!("read repair of {} → {}", k(key), to.join(", "))
        }
        E::TombstonePurged { key } => format!("purged the tombstone of {}", k(key)),
        E::PeerSuspected { peer } => format!("suspects {peer}"),
        E::MessageIgnored { from, reason } => format!("ignored a message from {from}: {reason}"),
        E::StorageFailed { error } => format!("storage failed: {error}"),
        E::MerkleExchangeStarted { peer, partition } => {
            format!("Merkle exchange with {peer} on p{partition}")
        }
        E::MerkleLevelCompared {
            peer,
            partition,
            differing,
        } => format!("p{partition} vs {peer}: {differing} differing node(s) at this level"),
        E::MerkleKeysRepaired {
            peer,
            partition,
            n,
            bytes,
        } => format!("repaired {n} key(s) of p{partition} from {peer} ({bytes} B)"),
        E::MerkleInSync { peer, partition } => format!("p{partition} in sync with {peer}"),
        E::MerkleTreesBuilt { count } => format!("built {count} Merkle tree(s)"),
        E::PartitionPulled {
            from,
            partition,
            keys,
            done,
        } => format!(
            "pulled {keys} key(s) of p{partition} from {from}{}",
            if *done { " (done)" } else { "" }
        ),
        E::RingProposed { version, moved } => {
            format!("proposes ring v{version} ({moved} partition(s) move)")
        }
        E::RingActivated { version } => format!("activates ring v{version}"),
        E::RingInstalled { version } => format!("uses ring v{version}"),
    }
}
