//! The gateway's integration tests: one binary (see STYLE.md).

mod delivery;
mod detectors;
mod detectors_prop;
mod gateway;
mod sdk;
mod smuggling;
mod spool;
mod spool_model;
mod support;
mod upstreams;
mod waf;
