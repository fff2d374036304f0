//! The ledger state machine's domain logic: apply, idempotency, restart checks, corruption,
//! snapshots and publications — synchronous, on a temporary sled database.

use ledger_node::read_pool::ReadPool;
use ledger_node::storage::ledger::{Ledger, OpenError};
use ledger_node::storage::reader::LedgerReader;
use ledger_node::types::{Command, Entry, PublishCheckpoint};
use mmr::{Checkpoint, LeafIndex, MemStore, Mmr, NodePos, NodeReader, TreeSize, leaf_hash};
use openraft::EntryPayload;

use crate::support::{append_entry, log_id, membership_entry, record_bytes, signer};

const ORIGIN: &str = "aegis.test/ledger";

fn open_db(dir: &tempfile::TempDir) -> sled::Db {
    crate::support::open_sled(dir.path())
}

fn open(db: &sled::Db) -> Result<Ledger, OpenError> {
    Ledger::open(LedgerReader::open(db).expect("tree opens"), ORIGIN)
}

/// The MMR the ledger should hold after appending records `0..count` once each.
fn expected_mmr(count: u64) -> Mmr<MemStore> {
    let mut mmr = Mmr::new(MemStore::new());
    for n in 0..count {
        mmr.append(&record_bytes(n)).expect("append");
    }
    mmr
}

#[test]
fn applied_records_get_contiguous_indexes_and_the_expected_root() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = open_db(&dir);
    let mut ledger = open(&db).expect("empty ledger opens");
    let outcomes = ledger
        .apply(vec![append_entry(1, 0..3), append_entry(2, 3..10), append_entry(3, 10..11)])
        .expect("apply");
    let indexes: Vec<Vec<u64>> =
        outcomes.iter().map(|outcome| outcome.leaves.iter().map(|leaf| leaf.leaf_index).collect()).collect();
    assert_eq!(indexes, vec![vec![0, 1, 2], vec![3, 4, 5, 6, 7, 8, 9], vec![10]]);
    assert_eq!(outcomes.iter().map(|outcome| outcome.tree_size).collect::<Vec<_>>(), vec![3, 10, 11]);
    let state = ledger.state();
    assert_eq!(state.size, TreeSize(11));
    assert_eq!(state.root, expected_mmr(11).root());
    assert_eq!(state.last_applied, Some(log_id(1, 3)));
    // Leaves are the exact bytes; proofs from the reader verify against the root.
    let reader = ledger.reader();
    assert_eq!(reader.leaf(7).expect("read").expect("present"), record_bytes(7));
    let proof = reader.view(TreeSize(11)).inclusion_proof(LeafIndex(7), TreeSize(11)).expect("proof");
    assert_eq!(proof.verify(&leaf_hash(&record_bytes(7)), &state.root), Ok(()));
}

/// Every stored node, read through `reader` (twice: the second read of an upper node is a
/// cache hit), equals the node of an in-memory MMR of the same records; so do proofs.
fn check_reads_match(db: &sled::Db, reader: &LedgerReader, size: u64) {
    let expected = expected_mmr(size);
    let cold = LedgerReader::open(db).expect("a second reader, with its own empty cache");
    for pos in (0..TreeSize(size).node_count()).map(NodePos) {
        let stored = expected.store().get(pos).expect("in memory");
        assert!(stored.is_some(), "node {pos} of {size} leaves");
        assert_eq!(reader.get(pos).expect("read"), stored, "node {pos}, first read");
        assert_eq!(reader.get(pos).expect("read"), stored, "node {pos}, second read");
        assert_eq!(cold.get(pos).expect("read"), stored, "node {pos}, uncached");
    }
    assert_eq!(reader.get(NodePos(TreeSize(size).node_count() + 5000)).expect("read"), None);
    let view = reader.view(TreeSize(size));
    for index in (0..size).step_by(37).chain([size - 1]) {
        for proof_size in [index + 1, size] {
            let proof = view.inclusion_proof(LeafIndex(index), TreeSize(proof_size)).expect("proof");
            let want = expected.inclusion_proof(LeafIndex(index), TreeSize(proof_size)).expect("proof");
            assert_eq!(proof, want, "leaf {index} in {proof_size}");
        }
    }
    let old = size / 3;
    assert_eq!(
        view.consistency_proof(TreeSize(old), TreeSize(size)).expect("proof"),
        expected.consistency_proof(TreeSize(old), TreeSize(size)).expect("proof")
    );
}

#[test]
fn cached_node_reads_are_exactly_the_stored_nodes_as_the_tree_grows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = open_db(&dir);
    let mut ledger = open(&db).expect("opens");
    // Sizes that end inside node blocks (partial blocks are rewritten as the tree grows) and
    // trees tall enough for cached nodes (height ≥ 6) across several 1024-node blocks.
    let mut size = 0;
    for (entry, end) in [700u64, 1500, 2049, 3333].into_iter().enumerate() {
        ledger.apply(vec![append_entry(entry as u64 + 1, size..end)]).expect("apply");
        size = end;
        check_reads_match(&db, ledger.reader(), size);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_pool_runs_every_proof_it_is_given() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = open_db(&dir);
    let mut ledger = open(&db).expect("opens");
    ledger.apply(vec![append_entry(1, 0..500)]).expect("apply");
    let root = ledger.state().root;
    let pool = ReadPool::start(ledger.reader()).expect("threads start");
    let mut proofs = tokio::task::JoinSet::new();
    for index in 0..500 {
        let pool = pool.clone();
        proofs.spawn(async move {
            let proof = pool
                .run(move |reader| {
                    reader.view(TreeSize(500)).inclusion_proof(LeafIndex(index), TreeSize(500))
                })
                .await
                .expect("the pool runs it")
                .expect("proof");
            (index, proof)
        });
    }
    let mut seen = 0;
    while let Some(joined) = proofs.join_next().await {
        let (index, proof) = joined.expect("task");
        assert_eq!(proof.verify(&leaf_hash(&record_bytes(index)), &root), Ok(()), "leaf {index}");
        seen += 1;
    }
    assert_eq!(seen, 500);
}

#[test]
fn duplicate_record_ids_are_not_appended_twice() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = open_db(&dir);
    let mut ledger = open(&db).expect("opens");
    ledger.apply(vec![append_entry(1, 0..5)]).expect("apply");
    // Record 2 again in a later entry, record 7 twice in one entry, record 4 in the same call.
    let outcomes = ledger.apply(vec![append_entry(2, [2, 7, 7]), append_entry(3, [4, 8])]).expect("apply");
    let leaves: Vec<(u64, bool)> = outcomes
        .iter()
        .flat_map(|o| o.leaves.iter().map(|leaf| (leaf.leaf_index, leaf.already_present)))
        .collect();
    assert_eq!(leaves, vec![(2, true), (5, false), (5, true), (4, true), (6, false)]);
    assert_eq!(ledger.state().size, TreeSize(7));
    let mut expected = expected_mmr(5);
    expected.append(&record_bytes(7)).expect("append");
    expected.append(&record_bytes(8)).expect("append");
    assert_eq!(ledger.state().root, expected.root());
}

#[test]
fn reopening_restores_the_state_and_keeps_appending() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = open_db(&dir);
    let mut ledger = open(&db).expect("opens");
    ledger.apply(vec![membership_entry(1, &[1, 2, 3]), append_entry(2, 0..100)]).expect("apply");
    let before = ledger.state();
    drop(ledger);
    drop(db);
    let db = open_db(&dir);
    let mut ledger = open(&db).expect("reopens");
    assert_eq!(ledger.state(), before);
    assert_eq!(ledger.membership().membership().voter_ids().collect::<Vec<_>>(), vec![1, 2, 3]);
    ledger.apply(vec![append_entry(3, 100..150)]).expect("apply after reopen");
    assert_eq!(ledger.state().root, expected_mmr(150).root());
}

#[test]
fn a_corrupted_node_is_detected_at_start_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = open_db(&dir);
    let mut ledger = open(&db).expect("opens");
    ledger.apply(vec![append_entry(1, 0..100)]).expect("apply");
    drop(ledger);
    // 100 leaves: peaks of heights 6, 5 and 2. The 197 nodes were applied together, so they
    // form one run stored under position 0. Flip a bit of the first peak (position 126).
    let tree = db.open_tree("ledger").expect("tree");
    let key = [&[b'n'][..], &0u64.to_be_bytes()].concat();
    let run = tree.get(&key).expect("read").expect("the node run is stored").to_vec();
    assert_eq!(run.len(), 197 * 32);
    let mut corrupted = run.clone();
    corrupted[126 * 32] ^= 1;
    tree.insert(&key, corrupted).expect("corrupt it");
    assert!(matches!(open(&db), Err(OpenError::RootMismatch { size: TreeSize(100), .. })));

    // A run that is not whole hashes is corrupt too.
    tree.insert(&key, &run[..run.len() - 1]).expect("truncate it");
    let error = open(&db).expect_err("a malformed run must be refused").to_string();
    assert!(error.contains("malformed"), "{error}");
}

#[test]
fn snapshots_rebuild_the_same_ledger_and_refuse_damage() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = open_db(&dir);
    let mut ledger = open(&db).expect("opens");
    ledger.apply(vec![membership_entry(1, &[1, 2, 3]), append_entry(2, 0..1000)]).expect("apply");
    let header = ledger.snapshot_header("test-snapshot".to_owned());
    // Appends after the header do not leak into the snapshot.
    ledger.apply(vec![append_entry(3, 1000..1010)]).expect("apply");
    let bytes = Ledger::export_snapshot(ledger.reader(), &header, Vec::new()).expect("export");

    let target_dir = tempfile::tempdir().expect("temp dir");
    let target_db = open_db(&target_dir);
    let reader = LedgerReader::open(&target_db).expect("tree");
    let installed = Ledger::install_snapshot(reader.clone(), ORIGIN, bytes.as_slice(), 64).expect("install");
    assert_eq!(installed.state().size, TreeSize(1000));
    assert_eq!(installed.state().root, expected_mmr(1000).root());
    assert_eq!(installed.state().last_applied, Some(log_id(1, 2)));
    assert_eq!(installed.membership().membership().voter_ids().count(), 3);
    assert_eq!(reader.leaf_index_of(&crate::support::record(999).id).expect("read"), Some(999));

    // Truncated: refused, and the half-installed tree is discarded at the next open.
    let truncated = &bytes[..bytes.len() / 2];
    assert!(Ledger::install_snapshot(reader.clone(), ORIGIN, truncated, 64).is_err());
    let reopened = Ledger::open(reader.clone(), ORIGIN).expect("opens empty");
    assert_eq!(reopened.state().size, TreeSize(0));

    // A flipped byte inside a record changes the rebuilt root: refused.
    let mut damaged = bytes.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x40;
    assert!(Ledger::install_snapshot(reader, ORIGIN, damaged.as_slice(), 64).is_err());
}

fn publish_entry(index: u64, note: String) -> Entry {
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(Command::Publish(PublishCheckpoint { note })),
    }
}

#[test]
fn only_majority_signed_checkpoints_of_this_tree_are_published() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = open_db(&dir);
    let mut ledger = open(&db).expect("opens");
    ledger.apply(vec![membership_entry(1, &[1, 2, 3]), append_entry(2, 0..20)]).expect("apply");
    let root_at_20 = ledger.state().root;
    let checkpoint = Checkpoint::new(ORIGIN, TreeSize(20), root_at_20);
    let (one, two, three) = (signer(1), signer(2), signer(3));

    let only_one = checkpoint.sign(&[&one]).expect("sign").to_string();
    let wrong_root =
        Checkpoint::new(ORIGIN, TreeSize(20), leaf_hash(b"other")).sign(&[&one, &two]).expect("sign");
    let wrong_origin =
        Checkpoint::new("other/log", TreeSize(20), root_at_20).sign(&[&one, &two]).expect("sign");
    let outsider = signer(9);
    let outsiders = checkpoint.sign(&[&one, &outsider]).expect("sign").to_string();
    ledger
        .apply(vec![
            publish_entry(3, only_one),
            publish_entry(4, wrong_root.to_string()),
            publish_entry(5, wrong_origin.to_string()),
            publish_entry(6, outsiders),
        ])
        .expect("refused publications are not errors");
    assert_eq!(ledger.reader().latest_published().expect("read"), None);

    let majority = checkpoint.sign(&[&two, &three]).expect("sign").to_string();
    // Appends continue between signing and publication: the root is checked at the note's size.
    ledger.apply(vec![append_entry(7, 20..30), publish_entry(8, majority.clone())]).expect("apply");
    assert_eq!(ledger.reader().latest_published().expect("read"), Some((20, majority)));
}
