//! Integration tests of the ledger node.
