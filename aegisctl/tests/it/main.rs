//! `aegisctl` against live clusters of real `aegis-ledger` processes: every command as a user
//! runs it, checking its JSON output and exit status.

mod admin;
mod audit;
mod keys;
mod monitor;
mod prove;
mod support;
