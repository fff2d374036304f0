//! One module per group of subcommands.

pub mod admin;
pub mod audit;
pub mod checkpoint;
pub mod keys;
pub mod monitor;
pub mod prove;
