//! The sled Raft log store: openraft's conformance suite, what survives a reopen, when appends
//! are acknowledged, group commit, and corrupt bytes on disk.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;

use ledger_node::storage::durable::{SyncMode, Syncer};
use ledger_node::storage::log_store::{LOG_TREE, LogStore, META_TREE};
use ledger_node::storage::state_machine::StateMachineStore;
use ledger_node::storage::watermark::{Mark, Watermark, WatermarkError};
use ledger_node::types::{Entry, StorageError, TypeConfig, Vote};
use openraft::storage::{RaftLogReader, RaftLogStorage};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{LogState, OptionalSend};
use tokio::sync::oneshot;

use crate::support::{append_entry, log_id, membership_entry};

/// Every store in these tests lives in `<temp dir>/sled`.
struct TestStore {
    // Field order is drop order: the database closes before its directory is deleted.
    store: LogStore,
    syncer: Syncer,
    db: sled::Db,
    dir: tempfile::TempDir,
}

impl TestStore {
    fn new() -> TestStore {
        let dir = tempfile::tempdir().expect("temp dir");
        let (db, syncer, store) = open_store(&dir.path().join("sled"));
        TestStore { store, syncer, db, dir }
    }

    /// Drops every handle on the database (which joins the syncer thread and releases sled's
    /// file lock) and opens it again from disk.
    fn reopen(self) -> TestStore {
        let TestStore { store, syncer, db, dir } = self;
        drop((store, syncer, db));
        let (db, syncer, store) = open_store(&dir.path().join("sled"));
        TestStore { store, syncer, db, dir }
    }

    fn sled_dir(&self) -> PathBuf {
        self.dir.path().join("sled")
    }
}

/// Opens the store in `path`, with its watermark in `path`'s parent, and checks the watermark.
fn open_store(path: &Path) -> (sled::Db, Syncer, LogStore) {
    let (db, syncer, store, mark) = open_unchecked(path);
    store.check_watermark(mark).expect("the log is not behind its watermark");
    (db, syncer, store)
}

fn open_unchecked(path: &Path) -> (sled::Db, Syncer, LogStore, Mark) {
    let db = crate::support::open_sled(path);
    let syncer = Syncer::new(&db, path, SyncMode::Fdatasync).expect("syncer starts");
    let (watermark, mark) = Watermark::open(path.parent().expect("a parent")).expect("the watermark opens");
    let store = LogStore::open(&db, syncer.clone(), watermark).expect("log store opens");
    (db, syncer, store, mark)
}

/// Appends `entries` and waits until the store reports them durable.
async fn append(store: &mut LogStore, entries: Vec<Entry>) {
    let (done, durable) = oneshot::channel();
    store
        .append_then(entries, move |result| {
            let _ = done.send(result);
        })
        .await
        .expect("append");
    durable.await.expect("the callback is called").expect("durable");
}

/// Blocks the syncer thread until the returned sender is used (or dropped): the completion
/// callback of a sync request waits on it. Returns once the thread is blocked.
async fn block_syncer(syncer: &Syncer) -> std_mpsc::Sender<()> {
    let (release, released) = std_mpsc::channel::<()>();
    let (blocked, is_blocked) = oneshot::channel();
    syncer
        .sync_then(move |result| {
            let _ = blocked.send(result);
            let _ = released.recv();
        })
        .await;
    is_blocked.await.expect("the gate callback runs").expect("the gate's flush succeeds");
    release
}

/// Reads `range` and checks which indexes come back.
async fn check_range<RB>(store: &LogStore, range: RB, expected: &[u64])
where
    RB: RangeBounds<u64> + Clone + Debug + OptionalSend,
{
    let mut reader = store.clone();
    let entries = reader.try_get_log_entries(range.clone()).await.expect("read");
    let indexes: Vec<u64> = entries.iter().map(|entry| entry.log_id.index).collect();
    assert_eq!(indexes, expected, "range {range:?}");
}

fn expect_read_error<T: Debug>(result: Result<T, StorageError>, expected_prefix: &str) {
    let error = result.expect_err("corrupt bytes are an error");
    assert!(matches!(error, StorageError::IO { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.starts_with(expected_prefix), "{message:?} should start with {expected_prefix:?}");
}

/// Builds the sled log store and the ledger state machine, sharing one database, for
/// openraft's conformance suite.
struct SledStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for SledStoreBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (db, syncer, store) = open_store(&dir.path().join("sled"));
        let state_machine =
            StateMachineStore::open(&db, &dir.path().join("snapshots"), "aegis.test/ledger", syncer)
                .expect("an empty ledger opens");
        Ok((dir, store, state_machine))
    }
}

#[test]
fn openraft_conformance_suite() {
    // The suite runs every case in a runtime of its own: this test must not be async.
    Suite::test_all(SledStoreBuilder).expect("the suite passes");
}

#[tokio::test]
async fn vote_committed_entries_and_purge_survive_reopening() {
    let mut test = TestStore::new();
    let entries: Vec<Entry> = (0..=20)
        .map(|index| if index == 0 { membership_entry(0, &[1, 2, 3]) } else { append_entry(index, [index]) })
        .collect();
    append(&mut test.store, entries.clone()).await;
    let vote = Vote::new_committed(3, 2);
    test.store.save_vote(&vote).await.expect("save vote");
    test.store.save_committed(Some(log_id(1, 15))).await.expect("save committed");
    test.store.purge(log_id(1, 5)).await.expect("purge");
    test.store.truncate(log_id(1, 18)).await.expect("truncate");
    // Truncation and purge ride along with the next durable write.
    test.syncer.sync().await.expect("sync");

    let mut test = test.reopen();
    assert_eq!(test.store.read_vote().await.expect("read vote"), Some(vote));
    assert_eq!(test.store.read_committed().await.expect("read committed"), Some(log_id(1, 15)));
    assert_eq!(
        test.store.get_log_state().await.expect("log state"),
        LogState { last_purged_log_id: Some(log_id(1, 5)), last_log_id: Some(log_id(1, 17)) }
    );
    let read = test.store.try_get_log_entries(..).await.expect("read");
    assert_eq!(read, entries[6..=17].to_vec());
}

#[tokio::test]
async fn a_purged_empty_log_reports_the_purged_id_as_last() {
    let mut test = TestStore::new();
    append(&mut test.store, (0..3).map(|index| append_entry(index, [index])).collect()).await;
    test.store.purge(log_id(1, 7)).await.expect("purge beyond the last entry");
    let expected = LogState { last_purged_log_id: Some(log_id(1, 7)), last_log_id: Some(log_id(1, 7)) };
    assert_eq!(test.store.get_log_state().await.expect("log state"), expected);
    test.syncer.sync().await.expect("sync");

    let mut test = test.reopen();
    assert_eq!(test.store.get_log_state().await.expect("log state"), expected);
    assert!(test.store.try_get_log_entries(..).await.expect("read").is_empty());
}

#[tokio::test]
async fn reads_honour_every_kind_of_range() {
    let mut test = TestStore::new();
    append(&mut test.store, (5..=15).map(|index| append_entry(index, [index])).collect()).await;
    let all: Vec<u64> = (5..=15).collect();
    let store = &test.store;
    check_range(store, .., &all).await;
    check_range(store, 0.., &all).await;
    check_range(store, 7..9, &[7, 8]).await;
    check_range(store, 7..=9, &[7, 8, 9]).await;
    check_range(store, ..7, &[5, 6]).await;
    check_range(store, ..=5, &[5]).await;
    check_range(store, (Bound::Excluded(7), Bound::Included(9)), &[8, 9]).await;
    check_range(store, (Bound::Excluded(7), Bound::Excluded(9)), &[8]).await;
    check_range(store, 14..100, &[14, 15]).await;
    check_range(store, 16.., &[]).await;
    check_range(store, 0..5, &[]).await;
    check_range(store, 9..9, &[]).await;
    check_range(store, (Bound::Included(9), Bound::Excluded(7)), &[]).await;
    check_range(store, (Bound::Excluded(u64::MAX), Bound::Unbounded), &[]).await;
    check_range(store, u64::MAX.., &[]).await;
}

#[tokio::test]
async fn append_is_acknowledged_only_after_a_group_flush_that_started_later() {
    let mut test = TestStore::new();
    let release = block_syncer(&test.syncer).await;
    let flushes_before = test.syncer.group_flushes();

    let (done, mut durable) = oneshot::channel();
    let syncer = test.syncer.clone();
    test.store
        .append_then([append_entry(0, [0])], move |result| {
            let thread_name = std::thread::current().name().map(str::to_owned);
            let _ = done.send((result, syncer.group_flushes(), thread_name));
        })
        .await
        .expect("append");

    // Readable as soon as append returns, though not yet durable.
    assert_eq!(test.store.try_get_log_entries(0..1).await.expect("read"), vec![append_entry(0, [0])]);
    // The syncer thread is blocked, and only it completes appends.
    assert_eq!(durable.try_recv().err(), Some(oneshot::error::TryRecvError::Empty));

    release.send(()).expect("the gate is waiting");
    let (result, flushes_seen, thread_name) = durable.await.expect("the callback is called");
    result.expect("durable");
    assert_eq!(flushes_seen, flushes_before + 1, "completed by the first flush after the append");
    assert_eq!(thread_name.as_deref(), Some("aegis-syncer"));
}

#[tokio::test]
async fn queued_appends_share_one_group_flush() {
    const APPENDS: u64 = 100;
    let mut test = TestStore::new();
    let completed_before = test.syncer.requests_completed();
    let release = block_syncer(&test.syncer).await;
    let flushes_before = test.syncer.group_flushes();

    let (done, mut durable) = tokio::sync::mpsc::unbounded_channel();
    for index in 0..APPENDS {
        let done = done.clone();
        test.store
            .append_then([append_entry(index, [index])], move |result| {
                let _ = done.send((index, result));
            })
            .await
            .expect("append");
    }
    drop(done);
    release.send(()).expect("the gate is waiting");

    let mut completed = Vec::new();
    while let Some((index, result)) = durable.recv().await {
        result.expect("durable");
        completed.push(index);
    }
    assert_eq!(completed, (0..APPENDS).collect::<Vec<_>>(), "completed once each, in order");
    assert_eq!(test.syncer.group_flushes(), flushes_before + 1, "all queued appends share one flush");
    // Plus the gate's own request.
    assert_eq!(test.syncer.requests_completed(), completed_before + APPENDS + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_are_coalesced_under_load() {
    const WRITERS: u64 = 8;
    const APPENDS_PER_WRITER: u64 = 50;
    let test = TestStore::new();
    let flushes_before = test.syncer.group_flushes();

    // Concurrent writers on disjoint index ranges: openraft serializes its appends, but a
    // leader's appends and a vote, or the state machine's syncs, do arrive together.
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let mut store = test.store.clone();
            tokio::spawn(async move {
                for offset in 0..APPENDS_PER_WRITER {
                    let index = writer * APPENDS_PER_WRITER + offset;
                    append(&mut store, vec![append_entry(index, [index])]).await;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }

    let appends = WRITERS * APPENDS_PER_WRITER;
    let flushes = test.syncer.group_flushes() - flushes_before;
    assert!(flushes < appends, "{flushes} group flushes for {appends} appends");
    let mut reader = test.store.clone();
    let read = reader.try_get_log_entries(..).await.expect("read");
    assert_eq!(read.len() as u64, appends);
}

#[tokio::test]
async fn an_entry_larger_than_a_sled_blob_is_synced_and_read_back() {
    let mut test = TestStore::new();
    // ~150 bytes per record: about 300 KB, above sled's 131 052-byte blob threshold.
    let large = append_entry(0, 0..2000);
    append(&mut test.store, vec![large.clone()]).await;
    let blobs = std::fs::read_dir(test.sled_dir().join("blobs")).expect("blobs dir").count();
    assert!(blobs > 0, "the entry went to a blob file");

    let mut test = test.reopen();
    assert_eq!(test.store.try_get_log_entries(0..1).await.expect("read"), vec![large]);
}

#[tokio::test]
async fn corrupt_bytes_on_disk_are_storage_errors() {
    let mut test = TestStore::new();
    append(&mut test.store, (0..3).map(|index| append_entry(index, [index])).collect()).await;
    let log = test.db.open_tree(LOG_TREE).expect("log tree");
    let meta = test.db.open_tree(META_TREE).expect("meta tree");

    log.insert(3u64.to_be_bytes(), &[0xff; 5][..]).expect("write garbage");
    expect_read_error(test.store.try_get_log_entries(0..5).await, "when Read LogIndex(3)");
    expect_read_error(test.store.get_log_state().await, "when Read LogIndex(3)");

    // A valid entry under the wrong index.
    let misplaced = postcard::to_allocvec(&append_entry(9, [9])).expect("encode");
    log.insert(3u64.to_be_bytes(), misplaced).expect("write misplaced entry");
    expect_read_error(test.store.try_get_log_entries(3..4).await, "when Read LogIndex(3)");

    // A hole: index 3 missing between 2 and 4.
    log.remove(3u64.to_be_bytes()).expect("remove");
    let four = postcard::to_allocvec(&append_entry(4, [4])).expect("encode");
    log.insert(4u64.to_be_bytes(), four).expect("write entry 4");
    expect_read_error(test.store.try_get_log_entries(..).await, "when Read LogIndex(3)");
    log.remove(4u64.to_be_bytes()).expect("remove");

    log.insert(b"short", &b"x"[..]).expect("write a bad key");
    expect_read_error(test.store.try_get_log_entries(..).await, "when Read Logs");
    log.remove(b"short").expect("remove");

    meta.insert("vote", &[0xff; 3][..]).expect("write garbage vote");
    expect_read_error(test.store.read_vote().await, "when Read Vote");
    meta.insert("last_purged", &[0xff; 3][..]).expect("write garbage pointer");
    expect_read_error(test.store.get_log_state().await, "when Read Logs");

    // The store still works for what is intact.
    assert_eq!(test.store.try_get_log_entries(0..3).await.expect("read").len(), 3);
}

/// sled recovers a damaged data file by silently dropping everything after the damage: the
/// node must notice that its log or vote went back and refuse it.
#[tokio::test]
async fn a_log_or_vote_behind_what_was_made_durable_is_refused_at_open() {
    use ledger_node::storage::log_store::WatermarkCheckError;
    let mut test = TestStore::new();
    append(&mut test.store, (0..10).map(|index| append_entry(index, [index])).collect()).await;
    test.store.save_vote(&Vote::new_committed(3, 2)).await.expect("save vote");
    // What sled's recovery does with a damaged tail: the last entries are gone.
    let log = test.db.open_tree(LOG_TREE).expect("log tree");
    for index in 7..10u64 {
        log.remove(index.to_be_bytes()).expect("remove");
    }
    test.syncer.sync().await.expect("sync");
    drop(log);
    let TestStore { store, syncer, db, dir } = test;
    drop((store, syncer, db));
    let (_db, _syncer, store, mark) = open_unchecked(&dir.path().join("sled"));
    assert_eq!(mark, Mark { log_end: 10, vote_term: 3 });
    let error = store.check_watermark(mark).expect_err("a log that lost durable entries");
    assert!(
        matches!(error, WatermarkCheckError::Behind(WatermarkError::LogRegressed { expected: 10, found: 7 })),
        "{error:?}"
    );
    assert!(error.to_string().contains("sled's data files are damaged"), "{error}");

    // An older vote than the one made durable.
    let meta = _db.open_tree(META_TREE).expect("meta tree");
    let old_vote = postcard::to_allocvec(&Vote::new_committed(2, 1)).expect("encode");
    meta.insert("vote", old_vote).expect("write the older vote");
    let error = store.check_watermark(Mark { log_end: 7, vote_term: 3 }).expect_err("an older vote");
    assert!(matches!(
        error,
        WatermarkCheckError::Behind(WatermarkError::VoteRegressed { expected: 3, found: 2 })
    ));
}

#[tokio::test]
async fn sync_without_writes_succeeds_and_counts_one_flush() {
    let test = TestStore::new();
    let before = test.syncer.group_flushes();
    test.syncer.sync().await.expect("sync");
    assert_eq!(test.syncer.group_flushes(), before + 1);
    assert_eq!(test.syncer.mode(), SyncMode::Fdatasync);
}

#[test]
fn a_directory_without_a_sled_database_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = sled::Config::new().path(dir.path().join("sled")).open().expect("sled opens");
    let error = Syncer::new(&db, dir.path().join("elsewhere"), SyncMode::Fdatasync).expect_err("no db file");
    assert_eq!(error.kind(), io::ErrorKind::NotFound);
}
