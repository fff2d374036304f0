//! The ledger state machine's domain logic: apply committed commands to the MMR and the record
//! index in one atomic sled batch. Synchronous and runtime-free; `state_machine.rs` adapts it
//! to openraft.

use std::io::{self, Read, Write};

use mmr::{
    Checkpoint, CheckpointVerifier, Hash, Mmr, MmrError, NodePos, NodeReader, NodeStore, NoteLimits,
    TreeSize, VerifierKey, VerifierPolicy,
};
use openraft::EntryPayload;

use super::id_index::IdIndexWriter;
use super::reader::{LedgerReader, ReadError};
use super::snapshot::{Frame, SnapshotHeader, SnapshotReader, SnapshotWriter};
use super::{blocks, keys};
use crate::types::{
    AppendBatch, AppendOutcome, AppendedLeaf, Command, Entry, LogId, PublishCheckpoint, Record, SnapshotMeta,
    StoredMembership,
};

/// The writer side of the ledger: owns the MMR's in-memory peaks and the applied position.
#[derive(Debug)]
pub struct Ledger {
    reader: LedgerReader,
    mmr: Mmr<StagedNodes>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// The checkpoint origin of this cluster: publications for another origin are refused.
    origin: String,
    /// Records appended since the last flush into a sled batch: the last leaves of the MMR.
    pending_leaves: Vec<Vec<u8>>,
    /// The hashes in the last, partial node block (`blocks.rs`), kept so that flushing can
    /// rewrite the block without reading it back.
    node_tail: Vec<u8>,
    /// The records in the last, partial leaf block, likewise.
    leaf_tail: Vec<Vec<u8>>,
}

/// What the ledger has applied: the state readers serve from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedState {
    pub last_applied: Option<LogId>,
    pub size: TreeSize,
    pub root: Hash,
}

/// Why the ledger refused to open: its stored state cannot be trusted.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(
        "the stored root at size {size} ({stored:?}) differs from the root recomputed from the stored peaks \
         ({recomputed:?}): the ledger on disk is corrupt. Do not serve from it: restore this node's data \
         directory from a healthy node (remove the node from the cluster, wipe it, add it back under a new id)"
    )]
    RootMismatch { size: TreeSize, stored: Hash, recomputed: Hash },
    #[error(
        "the ledger on disk is corrupt: {0}. Remove the node, wipe its data directory, add it under a new id"
    )]
    Corrupt(String),
}

/// Nodes the MMR appended while applying, written to sled in the same batch as everything else.
#[derive(Debug)]
struct StagedNodes {
    reader: LedgerReader,
    /// Position of `staged[0]`; staged nodes are dense, like the MMR's writes.
    first: NodePos,
    staged: Vec<Hash>,
}

impl Ledger {
    /// Opens the ledger in `reader`'s tree. A tree left half-written by an interrupted snapshot
    /// install is emptied (the node then catches up from the leader); a tree whose stored root
    /// does not match its peaks is refused.
    pub fn open(reader: LedgerReader, origin: impl Into<String>) -> Result<Self, OpenError> {
        let tree = reader.tree();
        if tree.get(keys::META_INSTALLING).map_err(ReadError::from)?.is_some() {
            tracing::warn!("an interrupted snapshot install left the ledger half-written: discarding it");
            tree.clear().map_err(ReadError::from)?;
            reader.clear_caches();
        }
        let size = match tree.get(keys::META_SIZE).map_err(ReadError::from)? {
            None => TreeSize(0),
            Some(value) => {
                TreeSize(keys::u64_of(&value).ok_or_else(|| OpenError::Corrupt("tree size".into()))?)
            }
        };
        let last_applied = read_meta(tree, keys::META_APPLIED)?.unwrap_or(None);
        let membership = read_meta(tree, keys::META_MEMBERSHIP)?.unwrap_or_default();
        let staged =
            StagedNodes { reader: reader.clone(), first: NodePos(size.node_count()), staged: Vec::new() };
        let mmr = Mmr::open(staged, size).map_err(|error| match error {
            MmrError::Store(read) => OpenError::Read(read),
            other => OpenError::Corrupt(other.to_string()),
        })?;
        let recomputed = mmr.root();
        let stored = match tree.get(keys::META_ROOT).map_err(ReadError::from)? {
            None if size.0 == 0 => mmr::empty_root(),
            None => return Err(OpenError::Corrupt(format!("no root stored for size {size}"))),
            Some(value) => {
                Hash::try_from(value.as_ref()).map_err(|_| OpenError::Corrupt("stored root".into()))?
            }
        };
        if stored != recomputed {
            return Err(OpenError::RootMismatch { size, stored, recomputed });
        }
        let (node_tail, leaf_tail) = read_tails(&reader, size)?;
        Ok(Self {
            reader,
            mmr,
            last_applied,
            membership,
            origin: origin.into(),
            pending_leaves: Vec::new(),
            node_tail,
            leaf_tail,
        })
    }

    pub fn reader(&self) -> &LedgerReader {
        &self.reader
    }

    pub fn state(&self) -> AppliedState {
        AppliedState { last_applied: self.last_applied, size: self.mmr.size(), root: self.mmr.root() }
    }

    pub fn membership(&self) -> &StoredMembership {
        &self.membership
    }

    /// Applies committed entries in order, all in one atomic sled batch, and returns one
    /// outcome per entry. On error nothing was written and the in-memory state is reloaded
    /// from disk, so the ledger stays exactly at its last durable state.
    pub fn apply(
        &mut self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<Vec<AppendOutcome>, ApplyError> {
        let mut batch = sled::Batch::default();
        let mut outcomes = Vec::new();
        // The id index as this call changes it: duplicates within a call are found here too.
        let mut ids = IdIndexWriter::default();
        let result = (|| {
            for entry in entries {
                let log_id = entry.log_id;
                let outcome = match entry.payload {
                    EntryPayload::Blank => {
                        AppendOutcome { leaves: Vec::new(), tree_size: self.mmr.size().0, applied: None }
                    }
                    EntryPayload::Normal(Command::Append(records)) => self.append(records, &mut ids)?,
                    EntryPayload::Normal(Command::Publish(publication)) => {
                        self.publish(&publication, &mut batch);
                        AppendOutcome { leaves: Vec::new(), tree_size: self.mmr.size().0, applied: None }
                    }
                    EntryPayload::Membership(membership) => {
                        self.membership = StoredMembership::new(Some(log_id), membership);
                        AppendOutcome { leaves: Vec::new(), tree_size: self.mmr.size().0, applied: None }
                    }
                };
                self.last_applied = Some(log_id);
                outcomes.push(outcome);
            }
            self.flush_staged(&mut batch);
            ids.stage(&mut batch);
            self.stage_meta(&mut batch)?;
            self.reader.tree().apply_batch(batch)?;
            Ok(())
        })();
        if let Err(error) = result {
            self.pending_leaves.clear();
            tracing::error!(%error, "applying committed entries failed: reloading the ledger from disk");
            self.reload()?;
            return Err(error);
        }
        Ok(outcomes)
    }

    fn append(
        &mut self,
        batch_in: AppendBatch,
        ids: &mut IdIndexWriter,
    ) -> Result<AppendOutcome, ApplyError> {
        let mut leaves = Vec::with_capacity(batch_in.records.len());
        for record in batch_in.records {
            let existing = ids.lookup(self.reader.tree(), &record.id)?;
            if let Some(leaf_index) = existing {
                leaves.push(AppendedLeaf { leaf_index, already_present: true });
                continue;
            }
            let index = self.mmr.append(&record.bytes).map_err(|error| match error {
                MmrError::Store(read) => ApplyError::Read(read),
                other => ApplyError::Corrupt(other.to_string()),
            })?;
            let inserted = ids.insert(self.reader.tree(), record.id, index.0)?;
            debug_assert!(inserted, "the id was looked up just above");
            self.pending_leaves.push(record.bytes);
            leaves.push(AppendedLeaf { leaf_index: index.0, already_present: false });
        }
        Ok(AppendOutcome { leaves, tree_size: self.mmr.size().0, applied: None })
    }

    /// Stores a published checkpoint if it verifies against the voters' keys (majority) and
    /// this node's own tree. Every node decides the same, from the same replicated state; a
    /// refused publication is logged and skipped, never fatal.
    fn publish(&self, publication: &PublishCheckpoint, batch: &mut sled::Batch) {
        match self.verify_publication(&publication.note) {
            Ok(size) => batch.insert(&keys::with_u64(keys::CHECKPOINT, size.0), publication.note.as_bytes()),
            Err(reason) => tracing::warn!(%reason, "refused to store a proposed checkpoint publication"),
        }
    }

    fn verify_publication(&self, note: &str) -> Result<TreeSize, String> {
        let verifier = self.voters_verifier()?;
        let verified = verifier.open(note.as_bytes()).map_err(|error| error.to_string())?;
        let Checkpoint { size, root, .. } = verified.checkpoint;
        // The root must be this node's own root at that size: the view below reads the nodes
        // staged in this very batch too.
        let own_root = self.mmr.root_at(size).map_err(|error| error.to_string())?;
        if own_root != root {
            return Err(format!("checkpoint root at size {size} differs from this node's"));
        }
        Ok(size)
    }

    /// "A majority of the current voters' keys": the policy a published checkpoint must meet.
    pub fn voters_verifier(&self) -> Result<CheckpointVerifier, String> {
        voters_verifier(&self.origin, &self.membership)
    }

    /// Adds the applied position to `batch`. Staged nodes MUST have been flushed into it.
    fn stage_meta(&self, batch: &mut sled::Batch) -> Result<(), ApplyError> {
        debug_assert!(self.mmr.store().staged.is_empty());
        batch.insert(keys::META_SIZE, &self.mmr.size().0.to_be_bytes());
        batch.insert(keys::META_ROOT, &self.mmr.root().0);
        batch.insert(keys::META_APPLIED, encode(&self.last_applied)?);
        batch.insert(keys::META_MEMBERSHIP, encode(&self.membership)?);
        Ok(())
    }

    /// The header of a snapshot of the current state.
    pub fn snapshot_header(&self, snapshot_id: String) -> SnapshotHeader {
        SnapshotHeader {
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.membership.clone(),
                snapshot_id,
            },
            size: self.mmr.size().0,
            root: self.mmr.root().0,
        }
    }

    /// Streams the snapshot described by `header` (taken earlier from [`Self::snapshot_header`])
    /// into `out`. Needs only a reader: leaves and checkpoints below the header's size never
    /// change, so appends may continue meanwhile.
    pub fn export_snapshot<W: Write>(
        reader: &LedgerReader,
        header: &SnapshotHeader,
        out: W,
    ) -> io::Result<W> {
        let mut writer = SnapshotWriter::new(out, header)?;
        let mut expected = 0;
        for leaf in reader.leaves(0, header.size) {
            let (index, bytes) = leaf.map_err(io::Error::other)?;
            if index != expected {
                return Err(io::Error::other(format!("leaf {expected} is missing from the ledger")));
            }
            writer.leaf(&bytes)?;
            expected += 1;
        }
        if expected != header.size {
            return Err(io::Error::other(format!(
                "the ledger holds {expected} leaves, expected {}",
                header.size
            )));
        }
        for checkpoint in reader.published_from(0) {
            let (size, note) = checkpoint.map_err(io::Error::other)?;
            if size > header.size {
                break;
            }
            writer.checkpoint(size, &note)?;
        }
        writer.finish()
    }

    /// Replaces the ledger in `reader`'s tree with the snapshot read from `input`, in bounded
    /// sled batches of `leaves_per_batch` records. The tree is marked as being installed until
    /// the last batch, so a crash midway leaves a state that `open` discards. The rebuilt root
    /// must equal the header's, or the install fails.
    pub fn install_snapshot(
        reader: LedgerReader,
        origin: impl Into<String>,
        input: impl Read,
        leaves_per_batch: usize,
    ) -> Result<Ledger, InstallError> {
        let (mut frames, header) = SnapshotReader::open(input)?;
        let tree = reader.tree();
        tree.clear()?;
        reader.clear_caches();
        tree.insert(keys::META_INSTALLING, &[])?;
        let staged = StagedNodes { reader: reader.clone(), first: NodePos(0), staged: Vec::new() };
        let mut ledger = Ledger {
            reader: reader.clone(),
            mmr: Mmr::new(staged),
            last_applied: header.meta.last_log_id,
            membership: header.meta.last_membership.clone(),
            origin: origin.into(),
            pending_leaves: Vec::new(),
            node_tail: Vec::new(),
            leaf_tail: Vec::new(),
        };
        let mut batch = sled::Batch::default();
        let mut ids = IdIndexWriter::default();
        let mut in_batch = 0;
        loop {
            match frames.next_frame()? {
                Frame::Leaf(bytes) => {
                    let index = ledger.mmr.size().0;
                    let record = Record::parse(0, bytes)
                        .map_err(|error| InstallError::Invalid(format!("leaf {index}: {error}")))?;
                    ledger
                        .mmr
                        .append(&record.bytes)
                        .map_err(|error| InstallError::Invalid(error.to_string()))?;
                    if !ids.insert(tree, record.id, index).map_err(OpenError::from)? {
                        return Err(InstallError::Invalid(format!("leaf {index}: a duplicate record id")));
                    }
                    ledger.pending_leaves.push(record.bytes);
                    in_batch += 1;
                    if in_batch == leaves_per_batch {
                        ledger.flush_staged(&mut batch);
                        std::mem::take(&mut ids).stage(&mut batch);
                        tree.apply_batch(std::mem::take(&mut batch))?;
                        in_batch = 0;
                    }
                }
                Frame::Checkpoint { size, note } => {
                    batch.insert(&keys::with_u64(keys::CHECKPOINT, size), note.as_bytes());
                }
                Frame::End => break,
            }
        }
        if ledger.mmr.size().0 != header.size || ledger.mmr.root().0 != header.root {
            return Err(InstallError::Invalid(format!(
                "the snapshot's records rebuild a tree of size {} with another root than its header's (size {})",
                ledger.mmr.size(),
                header.size
            )));
        }
        ledger.flush_staged(&mut batch);
        ids.stage(&mut batch);
        ledger.stage_meta(&mut batch).map_err(|error| InstallError::Invalid(error.to_string()))?;
        batch.remove(keys::META_INSTALLING);
        tree.apply_batch(batch)?;
        Ok(Ledger::open(reader, std::mem::take(&mut ledger.origin))?)
    }

    /// Moves the MMR nodes and records staged so far into `batch`, as blocks: every block they
    /// complete, and the partial block at the end rewritten with them.
    fn flush_staged(&mut self, batch: &mut sled::Batch) {
        let staged = std::mem::take(&mut self.mmr.store_mut().staged);
        let mut pos = self.mmr.store().first.0;
        for hash in &staged {
            self.node_tail.extend_from_slice(&hash.0);
            pos += 1;
            if pos.is_multiple_of(blocks::NODES_PER_BLOCK) {
                let full = std::mem::take(&mut self.node_tail);
                batch.insert(&keys::with_u64(keys::NODE, (pos - 1) / blocks::NODES_PER_BLOCK), full);
            }
        }
        if !staged.is_empty() && !self.node_tail.is_empty() {
            batch.insert(&keys::with_u64(keys::NODE, pos / blocks::NODES_PER_BLOCK), self.node_tail.clone());
        }
        self.mmr.store_mut().first = NodePos(pos);

        let pending = std::mem::take(&mut self.pending_leaves);
        let mut index = self.mmr.size().0 - pending.len() as u64;
        let any_pending = !pending.is_empty();
        for record in pending {
            self.leaf_tail.push(record);
            index += 1;
            if index.is_multiple_of(blocks::LEAVES_PER_BLOCK) {
                let block = blocks::encode_leaf_block(&self.leaf_tail);
                self.leaf_tail.clear();
                batch.insert(&keys::with_u64(keys::LEAF, (index - 1) / blocks::LEAVES_PER_BLOCK), block);
            }
        }
        if any_pending && !self.leaf_tail.is_empty() {
            let block = blocks::encode_leaf_block(&self.leaf_tail);
            batch.insert(&keys::with_u64(keys::LEAF, index / blocks::LEAVES_PER_BLOCK), block);
        }
    }

    fn reload(&mut self) -> Result<(), ApplyError> {
        *self = Ledger::open(self.reader.clone(), std::mem::take(&mut self.origin))
            .map_err(|error| ApplyError::Corrupt(error.to_string()))?;
        Ok(())
    }
}

/// Reads the partial last node and leaf blocks of a tree of `size` leaves.
fn read_tails(reader: &LedgerReader, size: TreeSize) -> Result<(Vec<u8>, Vec<Vec<u8>>), OpenError> {
    let tree = reader.tree();
    let node_count = size.node_count();
    let node_tail = match usize::try_from(node_count % blocks::NODES_PER_BLOCK).unwrap_or(usize::MAX) {
        0 => Vec::new(),
        in_tail => {
            let key = keys::with_u64(keys::NODE, node_count / blocks::NODES_PER_BLOCK);
            let block = tree.get(key).map_err(ReadError::from)?.unwrap_or_default();
            if blocks::node_block_len(&block) != Some(in_tail) {
                return Err(OpenError::Corrupt(format!("the last node block does not hold {in_tail} nodes")));
            }
            block.to_vec()
        }
    };
    let leaf_tail = match usize::try_from(size.0 % blocks::LEAVES_PER_BLOCK).unwrap_or(usize::MAX) {
        0 => Vec::new(),
        in_tail => {
            let key = keys::with_u64(keys::LEAF, size.0 / blocks::LEAVES_PER_BLOCK);
            let block = tree.get(key).map_err(ReadError::from)?.unwrap_or_default();
            let records: Option<Vec<Vec<u8>>> = (0..in_tail)
                .map(|offset| blocks::leaf_in_block(&block, offset).map(<[u8]>::to_vec))
                .collect();
            match records {
                Some(records) if blocks::leaf_block_len(&block) == Some(in_tail) => records,
                _ => {
                    return Err(OpenError::Corrupt(format!(
                        "the last leaf block does not hold {in_tail} records"
                    )));
                }
            }
        }
    };
    Ok((node_tail, leaf_tail))
}

/// The checkpoint verifier for `origin` whose policy is a majority of `membership`'s voters.
pub fn voters_verifier(origin: &str, membership: &StoredMembership) -> Result<CheckpointVerifier, String> {
    let config = membership.membership();
    let mut keys = Vec::new();
    for id in config.voter_ids() {
        let node = config.get_node(&id).ok_or_else(|| format!("voter {id} has no node info"))?;
        let key: VerifierKey = node
            .verifier_key
            .parse()
            .map_err(|error| format!("voter {id} has an invalid verifier key: {error}"))?;
        keys.push(key);
    }
    let majority = keys.len() / 2 + 1;
    let policy = VerifierPolicy::new(keys, majority).map_err(|error| error.to_string())?;
    Ok(CheckpointVerifier::new(origin, policy, NoteLimits::default()))
}

/// Why a snapshot could not be installed. The tree is left marked as half-installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("reading the snapshot: {0}")]
    Io(#[from] io::Error),
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("invalid snapshot: {0}")]
    Invalid(String),
    #[error(transparent)]
    Open(#[from] OpenError),
}

/// Why committed entries could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("encoding ledger metadata: {0}")]
    Encode(#[from] postcard::Error),
    #[error("corrupt ledger state: {0}")]
    Corrupt(String),
}

impl NodeReader for StagedNodes {
    type Error = ReadError;

    fn get(&self, pos: NodePos) -> Result<Option<Hash>, ReadError> {
        match pos.0.checked_sub(self.first.0) {
            Some(offset) => {
                Ok(usize::try_from(offset).ok().and_then(|offset| self.staged.get(offset)).copied())
            }
            None => self.reader.get(pos),
        }
    }
}

impl NodeStore for StagedNodes {
    fn append(&mut self, pos: NodePos, hash: Hash) -> Result<(), ReadError> {
        let expected = self.first.0 + self.staged.len() as u64;
        if pos.0 != expected {
            return Err(ReadError::Corrupt(format!("MMR wrote node {pos}, expected {expected}")));
        }
        self.staged.push(hash);
        Ok(())
    }
}

fn read_meta<T: serde::de::DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>, OpenError> {
    let Some(value) = tree.get(key).map_err(ReadError::from)? else { return Ok(None) };
    postcard::from_bytes(&value)
        .map(Some)
        .map_err(|error| OpenError::Corrupt(format!("{}: {error}", String::from_utf8_lossy(key))))
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(value)
}
