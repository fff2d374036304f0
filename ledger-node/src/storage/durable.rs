//! Group commit on sled: one dedicated thread turns "make my writes durable" requests into one
//! `sled::Db::flush` plus `fdatasync` of sled's files, then completes all of them.
//!
//! # Why sled's flush is not enough (sled 0.34.7, read in its source)
//!
//! - `Tree::flush` (`src/tree.rs:798`) is documented as "flushes all dirty IO buffers and calls
//!   fsync", but it goes `PageCache::flush` (`src/pagecache/mod.rs:761`) → `Log::flush`
//!   (`src/pagecache/logger.rs:36`) → `iobuf::flush` (`src/pagecache/iobuf.rs:1011`) →
//!   `make_stable`, which waits until `IoBufs::write_to_log` (`src/pagecache/iobuf.rs:569`) wrote
//!   the buffers. That write is a `pwrite` followed, on Linux without the non-default `io_uring`
//!   feature, by `libc::sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)`
//!   (`src/pagecache/iobuf.rs:736`); `sync_all` is only a fallback for `ENOSYS` and for
//!   non-Linux targets. `sync_file_range` neither flushes the drive's volatile write cache nor
//!   persists the file size of a file that grew, so a flushed write survives a process kill but
//!   not a power loss.
//! - The real `fsync` (`File::sync_all` on the `db` file) happens in sled's background flusher
//!   every `flush_every_ms` (default 500 ms, `src/config.rs:238`; the call is at
//!   `src/flusher.rs:137`), when a log segment is truncated (`src/pagecache/segment.rs:1103`),
//!   when the database is dropped (`src/pagecache/logger.rs:467`) and around sled's own snapshot
//!   files (`src/pagecache/snapshot.rs:556`).
//!
//! # Which files we sync, and why
//!
//! sled 0.34 keeps one directory: `db` (the log-structured data file, all trees), `conf`
//! (storage parameters, written once at creation without any sync: `src/config.rs:666`),
//! `blobs/<lsn>` (one file per page update whose encoding plus a 32-byte header exceeds
//! `segment_size / 4 - 20`, i.e. 131 052 bytes with the default 512 KiB segments:
//! `src/pagecache/logger.rs:162-173`; written with plain `write_all` and never synced by sled:
//! `src/pagecache/blob_io.rs:65`) and `snap.<lsn>` (a recovery accelerator that sled writes
//! with `sync_all` then renames).
//!
//! - `db`: `fdatasync` after every group flush. It makes the flushed log durable, including the
//!   file size when the log grew; `fdatasync` rather than `fsync` because no other inode metadata
//!   is needed to read the data back.
//! - `blobs/*`: a log record may point into a blob, so a blob MUST be durable before the record
//!   that points to it. After sled's flush (which waits for every writer of the flushed buffers,
//!   and blobs are written inside the writer's reservation) and before the `db` fdatasync, every
//!   blob not yet synced at its current length is `fdatasync`ed, then the `blobs` directory is
//!   `fsync`ed so the new names survive too. Blobs are rare for us: a Raft entry must exceed
//!   ~128 KiB.
//! - `conf`, `blobs/`, the database directory and its parent: `fsync`ed once when the syncer
//!   starts, so that a freshly created database's files and names are durable.
//! - `snap.*`: not synced. sled syncs their contents itself, and a lost snapshot only makes
//!   recovery scan more of the log.
//!
//! Known gaps, both sled's: its background work (segment reuse after garbage collection) relies
//! on its periodic fsync, and that fsync may make a record durable before its blob. This module
//! only guarantees the records flushed for a request.
//!
//! # Cost
//!
//! Measured on the development VM (ext4 on a virtio disk with a write-back cache; debug build,
//! 500 single-entry appends): `sled::Db::flush` alone p50 103 µs; the added `fdatasync` p50
//! 111 µs. One append acknowledged through the syncer: p50 ~220 µs with
//! [`SyncMode::SledFlushOnly`], ~350 µs with [`SyncMode::Fdatasync`]. A disk that honours cache
//! flushes is slower, which is what group commit amortizes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

/// How far a group commit goes to make writes durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// `sled::Db::flush`, then `fdatasync` of sled's data file (and of new blob files): an
    /// acknowledged write survives power loss.
    #[default]
    Fdatasync,
    /// `sled::Db::flush` only (`pwrite` + `sync_file_range`): survives a process kill, not a power
    /// loss. Exists to measure what the `fdatasync` costs; MUST NOT be used in production.
    SledFlushOnly,
}

/// Most requests waiting for the syncer thread. Callers wait for room beyond this, which pushes
/// back on writers when the disk cannot keep up.
pub const SYNC_QUEUE_REQUESTS_MAX: usize = 4096;

/// Handle to the group-commit thread of one sled database. Cheap to clone; the thread stops and
/// is joined once the last handle is dropped.
#[derive(Clone)]
pub struct Syncer {
    // Field order matters: the sender is dropped before the thread guard, so when the last
    // handle goes the channel closes first and the guard's join does not wait forever.
    /// Where requests go. Bounded: see [`SYNC_QUEUE_REQUESTS_MAX`].
    requests: mpsc::Sender<OnDurable>,
    /// Counters read by tests and metrics.
    stats: Arc<SyncerStats>,
    /// Benchmarks and logs need to know whether writes are really durable.
    mode: SyncMode,
    /// Joins the thread when the last handle is dropped, so that the database can be reopened
    /// as soon as its handles are gone (sled holds a file lock until its last `Db` clone drops).
    _thread: Arc<ThreadGuard>,
}

impl Syncer {
    /// Starts the syncer thread for `db`, whose directory is `path` (what was given to
    /// `sled::open` or `sled::Config::path`).
    ///
    /// Fails if `path` does not hold a sled 0.34 database (`db` and `conf` files). The one-time
    /// syncs of `conf` and of the directories run on the syncer thread, not here, so this may be
    /// called from an async context; if they fail, every request fails.
    pub fn new(db: &sled::Db, path: impl AsRef<Path>, mode: SyncMode) -> io::Result<Syncer> {
        let files = DataFiles::open(path.as_ref())?;
        let (requests, receiver) = mpsc::channel(SYNC_QUEUE_REQUESTS_MAX);
        let stats = Arc::new(SyncerStats::default());
        let worker = Worker { db: db.clone(), files, mode, stats: stats.clone(), failure: None };
        let handle = std::thread::Builder::new()
            .name("aegis-syncer".to_owned())
            .spawn(move || worker.run(receiver))?;
        Ok(Syncer { requests, stats, mode, _thread: Arc::new(ThreadGuard { handle: Some(handle) }) })
    }

    /// Resolves once every write made to the database before this call is durable (as far as
    /// [`SyncMode`] goes). Concurrent calls share one flush.
    pub fn sync(&self) -> impl Future<Output = io::Result<()>> + Send + 'static {
        let syncer = self.clone();
        async move {
            let (done, durable) = oneshot::channel();
            syncer
                .sync_then(move |result| {
                    // The receiver is gone only if the caller stopped waiting: nothing to tell.
                    let _ = done.send(result);
                })
                .await;
            durable.await.unwrap_or_else(|_| Err(stopped_error()))
        }
    }

    /// Queues a request and returns once it is queued (waiting for room if the queue is full);
    /// `on_durable` is then called exactly once: with `Ok` after every write made to the
    /// database before this call is durable, or with the error that prevented it.
    ///
    /// `on_durable` runs on the syncer thread and MUST NOT block: the whole group waits for it.
    /// If the syncer has stopped, it is called right here with an error.
    pub async fn sync_then<F>(&self, on_durable: F)
    where
        F: FnOnce(io::Result<()>) + Send + 'static,
    {
        if let Err(mpsc::error::SendError(on_durable)) = self.requests.send(Box::new(on_durable)).await {
            on_durable(Err(stopped_error()));
        }
    }

    /// Group flushes run so far: one `sled::Db::flush` (+ `fdatasync`) each, however many
    /// requests it completed. Incremented before the group's requests are completed, so a
    /// completion observes its own flush.
    pub fn group_flushes(&self) -> u64 {
        self.stats.group_flushes.load(Ordering::SeqCst)
    }

    /// Requests completed so far, successfully or not.
    pub fn requests_completed(&self) -> u64 {
        self.stats.requests_completed.load(Ordering::SeqCst)
    }

    /// What a completed request guarantees.
    pub fn mode(&self) -> SyncMode {
        self.mode
    }
}

impl std::fmt::Debug for Syncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Syncer")
            .field("mode", &self.mode)
            .field("group_flushes", &self.group_flushes())
            .field("requests_completed", &self.requests_completed())
            .finish()
    }
}

/// What the syncer thread calls once a request's writes are durable.
type OnDurable = Box<dyn FnOnce(io::Result<()>) + Send>;

#[derive(Default)]
struct SyncerStats {
    group_flushes: AtomicU64,
    requests_completed: AtomicU64,
}

struct ThreadGuard {
    handle: Option<JoinHandle<()>>,
}

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        let Some(handle) = self.handle.take() else { return };
        // A completion callback running on the syncer thread may own the last handle; the thread
        // then exits by itself once this returns, and joining itself would deadlock.
        if handle.thread().id() == std::thread::current().id() {
            return;
        }
        // Every sender is gone, so the thread is finishing its last group: this waits for at most
        // one flush, and only when the node shuts down.
        if handle.join().is_err() {
            tracing::error!("the sled syncer thread panicked");
        }
    }
}

/// The syncer thread's state.
struct Worker {
    db: sled::Db,
    files: DataFiles,
    mode: SyncMode,
    stats: Arc<SyncerStats>,
    /// The first flush or fsync error, kept forever: after a failed fsync the kernel may have
    /// dropped the dirty pages and a later fsync could succeed without having written them, so
    /// nothing may be reported durable again until the node restarts and recovers.
    failure: Option<(io::ErrorKind, String)>,
}

impl Worker {
    fn run(mut self, mut requests: mpsc::Receiver<OnDurable>) {
        if self.mode == SyncMode::Fdatasync
            && let Err(error) = self.files.sync_at_start()
        {
            self.fail(&error);
        }
        let mut group = Vec::new();
        while let Some(first) = requests.blocking_recv() {
            group.push(first);
            // Every request queued so far joins this flush: each was sent after its writes, so
            // one flush started now covers them all.
            while group.len() < SYNC_QUEUE_REQUESTS_MAX {
                match requests.try_recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
            let result = self.group_flush();
            self.stats.group_flushes.fetch_add(1, Ordering::SeqCst);
            let group_len = group.len() as u64;
            for on_durable in group.drain(..) {
                on_durable(copy_result(&result));
            }
            self.stats.requests_completed.fetch_add(group_len, Ordering::SeqCst);
        }
    }

    fn group_flush(&mut self) -> io::Result<()> {
        if let Some((kind, message)) = &self.failure {
            return Err(io::Error::new(*kind, format!("an earlier sync failed: {message}")));
        }
        let result = self.flush_and_sync();
        if let Err(error) = &result {
            self.fail(error);
        }
        result
    }

    fn flush_and_sync(&mut self) -> io::Result<()> {
        self.db.flush().map_err(sled_to_io)?;
        if self.mode == SyncMode::Fdatasync {
            // Blobs first: the records that point to them become durable with `db`.
            self.files.sync_new_blobs()?;
            self.files.db_file.sync_data()?;
        }
        Ok(())
    }

    fn fail(&mut self, error: &io::Error) {
        tracing::error!(%error, "making sled writes durable failed; no write will be acknowledged again");
        self.failure = Some((error.kind(), error.to_string()));
    }
}

/// Our own handles on sled's files. Syncing an inode through any descriptor flushes all of its
/// dirty pages, so sled needs no cooperation.
struct DataFiles {
    dir: PathBuf,
    /// Opened read-only: `fdatasync` does not need write access, and we never write.
    db_file: File,
    /// Blob files already `fdatasync`ed, with the length they had just before. A blob is written
    /// once, but it may still be growing when listed; a different length means sync again.
    synced_blobs: HashMap<OsString, u64>,
}

impl DataFiles {
    fn open(dir: &Path) -> io::Result<DataFiles> {
        let db_file = File::open(dir.join("db"))?;
        if !dir.join("conf").is_file() || !dir.join("blobs").is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} does not hold a sled 0.34 database (conf, blobs/)", dir.display()),
            ));
        }
        Ok(DataFiles { dir: dir.to_owned(), db_file, synced_blobs: HashMap::new() })
    }

    /// Makes a freshly created database's files and directory entries durable. sled writes
    /// `conf` without syncing it and never syncs a directory.
    fn sync_at_start(&mut self) -> io::Result<()> {
        File::open(self.dir.join("conf"))?.sync_all()?;
        self.db_file.sync_all()?;
        // Blobs left by an earlier run may never have been synced either.
        self.sync_new_blobs()?;
        sync_dir(&self.dir.join("blobs"))?;
        sync_dir(&self.dir)?;
        match self.dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
            _ => sync_dir(Path::new(".")),
        }
    }

    fn sync_new_blobs(&mut self) -> io::Result<()> {
        let blobs_dir = self.dir.join("blobs");
        let mut listed = HashMap::with_capacity(self.synced_blobs.len());
        let mut synced_any = false;
        for dir_entry in std::fs::read_dir(&blobs_dir)? {
            let dir_entry = dir_entry?;
            let name = dir_entry.file_name();
            // sled removes blobs whose pages were rewritten: a vanished blob needs no durability.
            let len = match dir_entry.metadata() {
                Ok(metadata) => metadata.len(),
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error),
            };
            if self.synced_blobs.get(&name) != Some(&len) {
                match File::open(dir_entry.path()) {
                    Ok(blob) => blob.sync_data()?,
                    Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                    Err(error) => return Err(error),
                }
                synced_any = true;
            }
            listed.insert(name, len);
        }
        if synced_any {
            sync_dir(&blobs_dir)?;
        }
        self.synced_blobs = listed;
        Ok(())
    }
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

fn sled_to_io(error: sled::Error) -> io::Error {
    match error {
        sled::Error::Io(error) => error,
        other => io::Error::other(other),
    }
}

fn copy_result(result: &io::Result<()>) -> io::Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
    }
}

fn stopped_error() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the sled syncer thread has stopped")
}
