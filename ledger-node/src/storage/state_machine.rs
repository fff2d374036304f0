//! openraft's state machine, backed by the [`Ledger`]: applies committed entries on a blocking
//! thread, builds and installs snapshot files, and tells readers what has been applied.

use std::fs;
use std::io::{self, BufReader, BufWriter, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend};
use tokio::sync::watch;

use super::durable::Syncer;
use super::ledger::{AppliedState, Ledger, OpenError};
use super::reader::LedgerReader;
use super::snapshot::{SnapshotHeader, SnapshotReader};
use crate::types::{
    AppendOutcome, ApplyTimes, Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig,
};

/// How many records an installing snapshot writes to sled per batch: bounds memory while a
/// node joins a ledger larger than memory.
const INSTALL_LEAVES_PER_BATCH: usize = 4096;
const SNAPSHOT_SUFFIX: &str = ".snap";

/// The state machine openraft drives. Cheap to clone into the snapshot builder.
pub struct StateMachineStore {
    ledger: Arc<Mutex<Ledger>>,
    snapshot_dir: PathBuf,
    /// Where the snapshot being received from the leader is written, between
    /// `begin_receiving_snapshot` and `install_snapshot`.
    receiving: Option<PathBuf>,
    applied: watch::Sender<AppliedState>,
    syncer: Syncer,
    origin: String,
}

/// Builds a snapshot file of the state at the moment it was created.
pub struct SnapshotBuilder {
    reader: LedgerReader,
    header: SnapshotHeader,
    snapshot_dir: PathBuf,
    syncer: Syncer,
}

impl StateMachineStore {
    /// Opens the ledger in `db` (tree [`super::keys::LEDGER_TREE`]) and the snapshot directory.
    /// Fails if the stored state cannot be trusted (see [`OpenError`]).
    pub fn open(db: &sled::Db, snapshot_dir: &Path, origin: &str, syncer: Syncer) -> Result<Self, OpenError> {
        let ledger = Ledger::open(LedgerReader::open(db)?, origin)?;
        fs::create_dir_all(snapshot_dir)
            .map_err(|error| OpenError::Corrupt(format!("snapshot directory: {error}")))?;
        remove_partial_snapshots(snapshot_dir);
        let (applied, _) = watch::channel(ledger.state());
        Ok(Self {
            ledger: Arc::new(Mutex::new(ledger)),
            snapshot_dir: snapshot_dir.to_owned(),
            receiving: None,
            applied,
            syncer,
            origin: origin.to_owned(),
        })
    }

    /// A read handle for the services.
    pub fn reader(&self) -> LedgerReader {
        self.lock().reader().clone()
    }

    /// Follows what has been applied: size, root, last log id.
    pub fn subscribe(&self) -> watch::Receiver<AppliedState> {
        self.applied.subscribe()
    }

    /// The membership as applied (for the publication policy and Status).
    pub fn membership(&self) -> StoredMembership {
        self.lock().membership().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        // A panic while holding the lock happened mid-apply: the in-memory state is suspect,
        // and crashing is the only safe answer.
        self.ledger.lock().expect("the ledger lock is never poisoned: apply panics abort the node")
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let ledger = self.lock();
        Ok((ledger.state().last_applied, ledger.membership().clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<AppendOutcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // The leader's spans show when its entries were applied (only while they are exported).
        let started = telemetry::exporting().then(SystemTime::now);
        let entries: Vec<Entry> = entries.into_iter().collect();
        let ledger = Arc::clone(&self.ledger);
        // sled may block on I/O: keep it off the async workers.
        let (mut outcomes, state) = tokio::task::spawn_blocking(move || {
            let mut ledger = ledger.lock().expect("the ledger lock is never poisoned");
            let outcomes = ledger.apply(entries)?;
            Ok::<_, super::ledger::ApplyError>((outcomes, ledger.state()))
        })
        .await
        .map_err(|error| sm_error(ErrorVerb::Write, io::Error::other(error)))?
        .map_err(|error| sm_error(ErrorVerb::Write, io::Error::other(error)))?;
        self.applied.send_replace(state);
        if let Some(started) = started {
            let applied = ApplyTimes { started, finished: SystemTime::now() };
            for outcome in &mut outcomes {
                outcome.applied = Some(applied);
            }
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        let ledger = self.lock();
        let state = ledger.state();
        let snapshot_id = match state.last_applied {
            Some(log_id) => format!("{:020}-{}-{}", log_id.index, log_id.leader_id.term, state.size.0),
            None => format!("{:020}-0-0", 0),
        };
        SnapshotBuilder {
            reader: ledger.reader().clone(),
            header: ledger.snapshot_header(snapshot_id),
            snapshot_dir: self.snapshot_dir.clone(),
            syncer: self.syncer.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self.snapshot_dir.join(format!("receiving-{}.partial", std::process::id()));
        // Read and write: install_snapshot reads back what the leader's chunks wrote.
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|error| snapshot_error(ErrorVerb::Write, error))?;
        self.receiving = Some(path);
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let received = self.receiving.take().ok_or_else(|| {
            snapshot_error(
                ErrorVerb::Write,
                io::Error::other("install_snapshot without begin_receiving_snapshot"),
            )
        })?;
        let mut file = snapshot.into_std().await;
        let ledger = Arc::clone(&self.ledger);
        let origin = self.origin.clone();
        let snapshot_dir = self.snapshot_dir.clone();
        let expected = meta.clone();
        let state = tokio::task::spawn_blocking(move || {
            file.sync_all()?;
            file.rewind()?;
            let mut ledger = ledger.lock().expect("the ledger lock is never poisoned");
            let reader = ledger.reader().clone();
            let installed =
                Ledger::install_snapshot(reader, origin, BufReader::new(&file), INSTALL_LEAVES_PER_BATCH)
                    .map_err(io::Error::other)?;
            if installed.state().last_applied != expected.last_log_id {
                return Err(io::Error::other(
                    "the snapshot's header does not match the metadata the leader sent",
                ));
            }
            *ledger = installed;
            // Keep what was installed as this node's current snapshot. Copied from the file
            // openraft handed back (not renamed from `received`): that is the data installed.
            let path = snapshot_dir.join(snapshot_file_name(&expected.snapshot_id));
            let partial = path.with_extension("partial");
            file.rewind()?;
            let mut copy = fs::File::create(&partial)?;
            io::copy(&mut file, &mut copy)?;
            copy.sync_all()?;
            fs::rename(&partial, &path)?;
            if received != partial {
                let _ = fs::remove_file(&received);
            }
            keep_only_snapshot(&snapshot_dir, &path)?;
            Ok::<_, io::Error>(ledger.state())
        })
        .await
        .map_err(|error| snapshot_error(ErrorVerb::Write, io::Error::other(error)))?
        .map_err(|error| snapshot_error(ErrorVerb::Write, error))?;
        self.syncer.sync().await.map_err(|error| snapshot_error(ErrorVerb::Write, error))?;
        self.applied.send_replace(state);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let dir = self.snapshot_dir.clone();
        let current = tokio::task::spawn_blocking(move || open_newest_snapshot(&dir))
            .await
            .map_err(|error| snapshot_error(ErrorVerb::Read, io::Error::other(error)))?
            .map_err(|error| snapshot_error(ErrorVerb::Read, error))?;
        Ok(current.map(|(header, file)| Snapshot {
            meta: header.meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let reader = self.reader.clone();
        let header = self.header.clone();
        let dir = self.snapshot_dir.clone();
        let file = tokio::task::spawn_blocking(move || {
            let path = dir.join(snapshot_file_name(&header.meta.snapshot_id));
            let partial = path.with_extension("partial");
            let mut out =
                Ledger::export_snapshot(&reader, &header, BufWriter::new(fs::File::create(&partial)?))?;
            out.flush()?;
            out.get_ref().sync_all()?;
            fs::rename(&partial, &path)?;
            // Opened before the clean-up: if a newer snapshot was installed meanwhile, this one
            // is unlinked but stays readable through the open file.
            let file = fs::File::open(&path)?;
            keep_only_snapshot(&dir, &path)?;
            Ok::<_, io::Error>(file)
        })
        .await
        .map_err(|error| snapshot_error(ErrorVerb::Write, io::Error::other(error)))?
        .map_err(|error| snapshot_error(ErrorVerb::Write, error))?;
        self.syncer.sync().await.map_err(|error| snapshot_error(ErrorVerb::Write, error))?;
        Ok(Snapshot { meta: self.header.meta.clone(), snapshot: Box::new(tokio::fs::File::from_std(file)) })
    }
}

/// The newest snapshot's header and file, positioned at its start. Retries when a newer
/// snapshot replaced the one found between listing and opening.
fn open_newest_snapshot(dir: &Path) -> io::Result<Option<(SnapshotHeader, fs::File)>> {
    for _ in 0..3 {
        let Some(path) = newest_snapshot(dir)? else { return Ok(None) };
        let mut file = match fs::File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        let (_, header) = SnapshotReader::open(BufReader::new(&file))?;
        file.rewind()?;
        return Ok(Some((header, file)));
    }
    Err(io::Error::other("snapshots kept being replaced while opening the newest"))
}

fn snapshot_file_name(snapshot_id: &str) -> String {
    format!("snapshot-{snapshot_id}{SNAPSHOT_SUFFIX}")
}

/// The snapshot with the highest last log index (ids start with the zero-padded index).
fn newest_snapshot(dir: &Path) -> io::Result<Option<PathBuf>> {
    let mut newest: Option<PathBuf> = None;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let is_snapshot = path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("snapshot-") && name.ends_with(SNAPSHOT_SUFFIX));
        if is_snapshot && newest.as_ref().is_none_or(|current| path > *current) {
            newest = Some(path);
        }
    }
    Ok(newest)
}

/// Removes every snapshot but `keep` if `keep` is the newest; otherwise removes `keep` (an
/// older build that finished after a newer install). Syncs the directory so the rename sticks.
fn keep_only_snapshot(dir: &Path, keep: &Path) -> io::Result<()> {
    let newest = newest_snapshot(dir)?.unwrap_or_else(|| keep.to_owned());
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path != newest && path.extension().is_some_and(|extension| extension == "snap") {
            fs::remove_file(&path)?;
        }
    }
    fs::File::open(dir)?.sync_all()
}

/// Partial files are what a crash left while building or receiving: never valid.
fn remove_partial_snapshots(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for path in entries.flatten().map(|entry| entry.path()) {
        if path.extension().is_some_and(|extension| extension == "partial")
            && let Err(error) = fs::remove_file(&path)
        {
            tracing::warn!(path = %path.display(), %error, "could not remove a partial snapshot");
        }
    }
}

fn sm_error(verb: ErrorVerb, error: io::Error) -> StorageError {
    StorageError::from_io_error(ErrorSubject::StateMachine, verb, error)
}

fn snapshot_error(verb: ErrorVerb, error: io::Error) -> StorageError {
    StorageError::from_io_error(ErrorSubject::Snapshot(None), verb, error)
}
