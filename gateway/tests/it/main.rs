//! The gateway's integration tests: one binary (see STYLE.md).

mod gateway;
mod spool;
mod spool_model;
mod support;
