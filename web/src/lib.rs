//! # ringlab-web
//!
//! The in-browser cluster explorer. Everything protocol-related happens in
//! `ringlab-core`'s deterministic simulator; this crate records what the user does
//! ([`scenario`]), replays it for time travel ([`replay`]), scripts the guided
//! scenarios of SCENARIOS.md ([`presets`]), reads the checks the UI shows off the
//! world ([`invariants`]) and renders it all with yew ([`app`]). The Live tab
//! ([`live`]) attaches to a real node's event stream instead.
//!
//! The testable logic (URL encoding, replay, presets, invariants) has no browser
//! dependency; the components in [`app`] stay thin.

#![forbid(unsafe_code)]

pub mod app;
pub mod bench;
pub mod invariants;
pub mod live;
pub mod presets;
pub mod replay;
pub mod scenario;
pub mod ui;

pub use replay::Sim;
pub use scenario::Scenario;
