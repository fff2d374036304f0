//! Integration tests of the `proto` crate: conversions to and from `mmr` types, the stability
//! of record encodings, and the embedded file descriptor set.

mod convert;
mod descriptor;
mod record;
