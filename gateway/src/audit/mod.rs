//! Audit: each request's record (`draft`), its delivery to the ledger (`sender`, `ledger`),
//! the on-disk spool that holds records while the ledger is away (`spool`), and the record
//! lookup endpoint (`lookup`).

pub mod draft;
pub mod ledger;
pub mod lookup;
pub mod sender;
pub mod spool;
