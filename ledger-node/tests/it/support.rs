//! Helpers shared by the ledger node's tests: audit records, Raft entries, signing keys.

use std::collections::{BTreeMap, BTreeSet};

use ledger_node::types::{AppendBatch, Command, Entry, NodeInfo, Record};
use mmr::NoteSigner;
use openraft::{CommittedLeaderId, EntryPayload, LogId, Membership};
use prost::Message as _;

/// The id of test record `n`: a valid, canonical UUIDv7 that differs per `n`.
pub(crate) fn record_id(n: u64) -> String {
    let mut random = [0u8; 10];
    random[2..].copy_from_slice(&n.to_be_bytes());
    uuid::Builder::from_unix_timestamp_millis(1_700_000_000_000 + n, &random)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// The encoded AuditRecord of test record `n`, as a gateway would send it.
pub(crate) fn record_bytes(n: u64) -> Vec<u8> {
    proto::v1::AuditRecord {
        record_id: record_id(n),
        gateway_id: "gw-test".to_owned(),
        tenant: "tenant-a".to_owned(),
        route: "/v1/chat/completions".to_owned(),
        status_code: 200,
        latency_us: n,
        ..Default::default()
    }
    .encode_to_vec()
}

pub(crate) fn record(n: u64) -> Record {
    Record::parse(0, record_bytes(n)).expect("test records are valid")
}

pub(crate) fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// An entry at `index` appending records `numbers`.
pub(crate) fn append_entry(index: u64, numbers: impl IntoIterator<Item = u64>) -> Entry {
    let records = numbers.into_iter().map(record).collect();
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(Command::Append(AppendBatch { records })),
    }
}

/// A signer for node `id`, with a fixed seed so tests are reproducible.
pub(crate) fn signer(id: u64) -> NoteSigner {
    let seed = [u8::try_from(id).expect("small node ids"); 32];
    NoteSigner::from_seed(&format!("aegis-ledger-{id}"), &seed).expect("valid key name")
}

/// A membership entry at `index` making nodes `ids` voters, with their verifier keys.
pub(crate) fn membership_entry(index: u64, ids: &[u64]) -> Entry {
    let voters: BTreeSet<u64> = ids.iter().copied().collect();
    let nodes: BTreeMap<u64, NodeInfo> = ids
        .iter()
        .map(|&id| {
            let info = NodeInfo {
                peer_addr: format!("127.0.0.1:{}", 7000 + id),
                client_addr: format!("127.0.0.1:{}", 8000 + id),
                verifier_key: signer(id).verifier_key().to_string(),
            };
            (id, info)
        })
        .collect();
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)),
    }
}

/// Opens the sled database at `path`. sled's background flusher lets go of a dropped database a
/// moment later: until then its file lock is held, so a reopen right after a drop retries.
pub(crate) fn open_sled(path: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled::Config::new().path(path).open() {
            Ok(db) => return db,
            Err(error) if std::time::Instant::now() < deadline => {
                assert!(error.to_string().contains("lock"), "sled refused to open: {error}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(error) => panic!("sled still refuses to open after 10 s: {error}"),
        }
    }
}
