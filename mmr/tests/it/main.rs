//! Integration tests of the `mmr` crate: known answers, properties against a reference, hostile input.

// Test trees are small; indexing them with u64 sizes is fine.
#![allow(clippy::cast_possible_truncation)]

mod checkpoints;
mod hostile_proofs;
mod properties;
mod reference;
mod store;
mod support;
mod vectors;
