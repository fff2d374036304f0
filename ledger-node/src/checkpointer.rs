//! Checkpoints: this node's signing key, its answer to a cosign request, and the leader's loop
//! that gathers a majority of cosignatures and publishes the checkpoint through Raft.

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mmr::{Checkpoint, NoteSignature, NoteSigner, SignedNote, VerifierKey};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cosign::{Cosign, CosignRefusal};
use crate::metrics::{Health, Metrics};
use crate::network::PeerNetwork;
use crate::storage::ledger::AppliedState;
use crate::storage::reader::LedgerReader;
use crate::types::{Command, NodeId, PublishCheckpoint, Raft};

/// Signs checkpoints of this node's own applied tree, for itself as leader and for the leader
/// as follower.
pub struct CheckpointSigner {
    signer: NoteSigner,
    origin: String,
    reader: LedgerReader,
    applied: watch::Receiver<AppliedState>,
    health: Health,
}

impl CheckpointSigner {
    pub fn new(
        signer: NoteSigner,
        origin: String,
        reader: LedgerReader,
        applied: watch::Receiver<AppliedState>,
        health: Health,
    ) -> Self {
        Self { signer, origin, reader, applied, health }
    }

    pub fn verifier_key(&self) -> VerifierKey {
        self.signer.verifier_key()
    }
}

/// How long a follower waits for its own apply to reach the size the leader asks it to cosign.
/// Under load a follower trails the leader by a few milliseconds; refusing at once would leave
/// checkpoints unpublished for as long as appends keep coming.
const COSIGN_APPLY_WAIT: Duration = Duration::from_millis(500);
/// How often the waiting follower looks again.
const COSIGN_APPLY_POLL: Duration = Duration::from_millis(2);

impl CheckpointSigner {
    /// This node's applied size, after waiting up to [`COSIGN_APPLY_WAIT`] for it to reach
    /// `size`. Runs on a blocking thread (the peer service calls `cosign` there).
    fn applied_at_least(&self, size: mmr::TreeSize) -> mmr::TreeSize {
        let deadline = std::time::Instant::now() + COSIGN_APPLY_WAIT;
        loop {
            let applied = self.applied.borrow().size;
            if applied >= size || std::time::Instant::now() >= deadline {
                return applied;
            }
            std::thread::sleep(COSIGN_APPLY_POLL);
        }
    }
}

impl Cosign for CheckpointSigner {
    fn cosign(&self, body: &str) -> Result<NoteSignature, CosignRefusal> {
        if let Some(reason) = self.health.reason() {
            return Err(CosignRefusal::Unhealthy(reason));
        }
        let checkpoint =
            Checkpoint::from_body(body).map_err(|error| CosignRefusal::Malformed(error.to_string()))?;
        if checkpoint.origin != self.origin {
            return Err(CosignRefusal::Malformed(format!(
                "origin {:?} is not this log's",
                checkpoint.origin
            )));
        }
        let applied = self.applied_at_least(checkpoint.size);
        if checkpoint.size > applied {
            return Err(CosignRefusal::NotApplied { applied: applied.0, requested: checkpoint.size.0 });
        }
        // This node's own root at that size: equal roots mean the leader's tree and ours agree
        // on every leaf below it, so the checkpoint is consistent with all this node signed before.
        let own_root = self
            .reader
            .view(applied)
            .root_at(checkpoint.size)
            .map_err(|error| CosignRefusal::Unhealthy(format!("cannot compute own root: {error}")))?;
        if own_root != checkpoint.root {
            tracing::error!(
                size = checkpoint.size.0,
                "refusing to cosign: the leader's root differs from ours"
            );
            return Err(CosignRefusal::RootMismatch { size: checkpoint.size.0 });
        }
        Ok(self.signer.sign(body))
    }
}

/// Loads this node's checkpoint key from `path`, or creates one there (mode 0600) on first start.
pub fn load_or_create_signer(path: &Path, key_name: &str) -> anyhow::Result<NoteSigner> {
    use anyhow::Context as _;
    match fs::read_to_string(path) {
        Ok(text) => {
            let signer: NoteSigner = text.trim().parse().with_context(|| {
                format!("{} does not hold a valid PRIVATE+KEY+ checkpoint key", path.display())
            })?;
            if signer.key_name() != key_name {
                tracing::warn!(
                    stored = signer.key_name(),
                    configured = key_name,
                    "the checkpoint key file names another key: keeping the stored name"
                );
            }
            Ok(signer)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed)
                .map_err(|error| anyhow::anyhow!("no randomness for a new key: {error}"))?;
            let signer =
                NoteSigner::from_seed(key_name, &seed).context("the configured key name is invalid")?;
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            let mut file = create_private(path).with_context(|| format!("creating {}", path.display()))?;
            writeln!(file, "{}", signer.to_private_key_string())?;
            file.sync_all()?;
            tracing::info!(path = %path.display(), verifier_key = %signer.verifier_key(), "created a checkpoint key");
            Ok(signer)
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(unix)]
fn create_private(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)
}

#[cfg(not(unix))]
fn create_private(path: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new().write(true).create_new(true).open(path)
}

/// The leader's publication loop settings; see `[checkpoints]` in the configuration.
#[derive(Clone, Copy, Debug)]
pub struct PublisherSettings {
    pub interval: Duration,
    pub cosign_timeout: Duration,
}

/// Every `interval`, while this node leads and its applied tree has grown past the latest
/// published checkpoint: sign, ask the other voters to cosign, and once a majority of the
/// voters signed, propose the note through Raft. Ends when `shutdown` fires.
pub async fn run_publisher(
    node_id: NodeId,
    raft: Raft,
    signer: Arc<CheckpointSigner>,
    network: PeerNetwork,
    settings: PublisherSettings,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        let published = signer.reader.latest_published().ok().flatten().map_or(0, |(size, _)| size);
        metrics.published_size.set(published);
        if raft.metrics().borrow().current_leader != Some(node_id) {
            continue;
        }
        let applied = signer.applied.borrow().clone();
        if applied.size.0 <= published {
            continue;
        }
        match publish_once(node_id, &raft, &signer, &network, settings.cosign_timeout, &applied).await {
            Ok(size) => tracing::debug!(size, "checkpoint published"),
            Err(reason) => {
                tracing::warn!(%reason, size = applied.size.0, "checkpoint not published this round")
            }
        }
    }
}

async fn publish_once(
    node_id: NodeId,
    raft: &Raft,
    signer: &CheckpointSigner,
    network: &PeerNetwork,
    cosign_timeout: Duration,
    applied: &AppliedState,
) -> Result<u64, String> {
    let checkpoint = Checkpoint::new(signer.origin.clone(), applied.size, applied.root);
    let mut note = SignedNote::new(checkpoint.to_body()).map_err(|error| error.to_string())?;
    note.sign(&signer.signer).map_err(|error| error.to_string())?;

    let membership = raft.metrics().borrow().membership_config.clone();
    let voters: Vec<NodeId> = membership.membership().voter_ids().collect();
    let majority = voters.len() / 2 + 1;
    let mut requests = JoinSet::new();
    for voter in voters.iter().copied().filter(|&voter| voter != node_id) {
        let Some(info) = membership.membership().get_node(&voter).cloned() else { continue };
        let client = network.client(voter, &info);
        let body = note.text().to_owned();
        requests.spawn(async move { (voter, info, client.cosign(&body, cosign_timeout).await) });
    }
    let mut signers = 1;
    while signers < majority {
        let Some(joined) = requests.join_next().await else { break };
        let Ok((voter, info, answer)) = joined else { continue };
        let signature = match answer {
            Ok(signature) => signature,
            Err(error) => {
                tracing::debug!(voter, %error, "no cosignature");
                continue;
            }
        };
        // Check the cosignature against the key the membership holds for that voter before
        // counting it: a bad one would make every node refuse the publication.
        let verified = info.verifier_key.parse::<VerifierKey>().ok().is_some_and(|key| {
            let mut candidate = note.clone();
            candidate.add_signature(signature.clone()).is_ok()
                && mmr::VerifierPolicy::new(vec![key], 1)
                    .is_ok_and(|policy| policy.verify(&candidate).is_ok())
        });
        if verified && note.add_signature(signature).is_ok() {
            signers += 1;
        } else {
            tracing::warn!(voter, "a cosignature does not verify with the voter's key: ignored");
        }
    }
    requests.abort_all();
    if signers < majority {
        return Err(format!("{signers} of the {majority} signatures needed"));
    }
    raft.client_write(Command::Publish(PublishCheckpoint { note: note.to_string() }))
        .await
        .map_err(|error| error.to_string())?;
    Ok(applied.size.0)
}
