//! Benchmarks of the MMR: append throughput side by side with the `ckb-merkle-mountain-range`
//! crate (the "peer"), inclusion and consistency proofs on a 10^6-leaf tree, and the raw hashes.
//!
//! Run everything with `cargo bench -p mmr`, or one group with e.g. `cargo bench -p mmr -- append/`.
//! Criterion's `elem/s` is leaves per second for `append`, proofs per second for the proof groups
//! and hashes per second for `hash`.
//!
//! What makes the append comparison fair:
//! - Both sides append the same leaf hashes, computed once per size before any timing.
//! - Both merge with [`mmr::node_hash`] (`SHA-256(0x01 ‖ l ‖ r)`), so the comparison is of the
//!   MMR bookkeeping and node storage, not of two hash implementations.
//! - Every timed iteration starts from an empty store built in the untimed setup of
//!   `iter_batched` (one input per batch), and hands the filled store back to criterion, which
//!   drops it after the timer stops: neither building the input nor freeing up to 2·10^6 nodes
//!   is timed. The first touch of fresh memory (page faults) is timed, on both sides, because a
//!   ledger growing from empty pays it too; our 10^6-leaf store is a single 64 MB allocation, which
//!   glibc serves from fresh `mmap` pages on every iteration.
//! - Ours reserves its capacity up front (`MemStore::with_leaf_capacity`). The peer's in-memory
//!   store is a `BTreeMap`, which has no capacity to reserve.
//! - The peer holds pushed nodes in a memory batch until `commit` writes them to its store. The
//!   timing includes that commit: only then does the peer's store hold what ours holds after the
//!   last append.
//!
//! Before timing each size, both trees are checked to hold the same `2n − popcount(n)` nodes,
//! position by position, and the same root.

use std::hint::black_box;
use std::time::Duration;

use ckb_merkle_mountain_range::util::{MemMMR, MemStore as PeerStore};
use ckb_merkle_mountain_range::{MMRStoreReadOps, Merge};
use criterion::measurement::WallTime;
use criterion::{
    BatchSize, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group,
    criterion_main,
};
use mmr::{
    ConsistencyProof, Hash, InclusionProof, LeafIndex, MemStore, Mmr, NodePos, NodeReader, TreeSize,
    leaf_hash, node_hash,
};

/// Leaf counts of the append benchmark.
const APPEND_LEAVES: [u64; 4] = [1_000, 10_000, 100_000, 1_000_000];
/// From this many leaves on, an append iteration takes milliseconds: criterion samples it flat
/// (the same iteration count in every one of ten samples) instead of ramping the count up per
/// sample, which keeps each of these benchmarks to a few seconds.
const APPEND_LEAVES_FLAT_MIN: u64 = 100_000;
/// Leaves in the tree the proof benchmarks query.
const PROOF_TREE_LEAVES: u64 = 1_000_000;
/// Proofs generated or verified per timed iteration; throughput is reported per proof.
const PROOFS_PER_ITERATION: u64 = 1_000;
/// Seed of the generator picking leaf indexes and old tree sizes. Fixed, so every run measures
/// the same proofs and runs compare.
const PROOF_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// The peer's merge, made byte-for-byte ours.
struct PeerMerge;

impl Merge for PeerMerge {
    type Item = Hash;

    fn merge(left: &Hash, right: &Hash) -> ckb_merkle_mountain_range::Result<Hash> {
        Ok(node_hash(left, right))
    }

    /// The peer bags peaks right to left as `merge_peaks(right, left)`, and by default hashes
    /// them in that order. Putting the left peak first makes its root the RFC 9162 root, so the
    /// pre-timing check can compare roots. Appends never bag peaks: the timing is unaffected.
    fn merge_peaks(right: &Hash, left: &Hash) -> ckb_merkle_mountain_range::Result<Hash> {
        Ok(node_hash(left, right))
    }
}

/// xorshift64*: enough to scatter proof queries over the tree, and no `rand` dependency.
struct XorShift(u64);

impl XorShift {
    /// A number in `0..bound` (`bound > 0`); the modulo bias is negligible for our bounds.
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound
    }
}

fn bench_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group.warm_up_time(Duration::from_secs(1));
    for leaf_count in APPEND_LEAVES {
        let leaves = leaf_hashes(leaf_count);
        check_same_tree(&leaves);

        group.throughput(Throughput::Elements(leaf_count));
        if leaf_count >= APPEND_LEAVES_FLAT_MIN {
            group.sampling_mode(SamplingMode::Flat).sample_size(10).measurement_time(Duration::from_secs(4));
        } else {
            group.sampling_mode(SamplingMode::Auto).sample_size(30).measurement_time(Duration::from_secs(3));
        }
        // `PerIteration`: one fresh store per timed run, so at most one filled store is alive at
        // a time. Its timer overhead is nanoseconds against runs of at least tens of microseconds.
        group.bench_with_input(BenchmarkId::new("ours", leaf_count), &leaves, |b, leaves| {
            b.iter_batched(|| empty_ours(leaves), |mmr| append_ours(leaves, mmr), BatchSize::PerIteration);
        });
        group.bench_with_input(BenchmarkId::new("ckb", leaf_count), &leaves, |b, leaves| {
            b.iter_batched(PeerStore::default, |store| append_peer(leaves, store), BatchSize::PerIteration);
        });
    }
    group.finish();
}

fn bench_proofs(c: &mut Criterion) {
    let leaves = leaf_hashes(PROOF_TREE_LEAVES);
    let mmr = append_ours(&leaves, empty_ours(&leaves));
    let size = mmr.size();
    let root = mmr.root();
    let mut random = XorShift(PROOF_SEED);

    let indexes: Vec<LeafIndex> =
        (0..PROOFS_PER_ITERATION).map(|_| LeafIndex(random.below(size.0))).collect();
    let inclusion_proofs: Vec<(InclusionProof, Hash)> = indexes
        .iter()
        .map(|&index| {
            let proof = mmr.inclusion_proof(index, size).expect("the index is in the tree");
            (proof, leaves[to_usize(index.0)])
        })
        .collect();
    for (proof, leaf) in &inclusion_proofs {
        proof.verify(leaf, &root).expect("a proof the MMR built verifies");
    }

    // Old sizes in `1..size`: the empty and the equal size have trivial, empty proofs.
    let old_sizes: Vec<TreeSize> =
        (0..PROOFS_PER_ITERATION).map(|_| TreeSize(1 + random.below(size.0 - 1))).collect();
    let consistency_proofs: Vec<(ConsistencyProof, Hash)> = old_sizes
        .iter()
        .map(|&old_size| {
            let proof = mmr.consistency_proof(old_size, size).expect("the old size is in the tree");
            (proof, mmr.root_at(old_size).expect("the old size is in the tree"))
        })
        .collect();
    for (proof, old_root) in &consistency_proofs {
        proof.verify(old_root, &root).expect("a proof the MMR built verifies");
    }

    let mut group = c.benchmark_group("inclusion_proof");
    configure_proof_group(&mut group);
    group.bench_function(BenchmarkId::new("generate", size.0), |b| {
        b.iter(|| {
            for &index in &indexes {
                black_box(mmr.inclusion_proof(index, size).expect("the index is in the tree"));
            }
        });
    });
    group.bench_function(BenchmarkId::new("verify", size.0), |b| {
        b.iter(|| {
            for (proof, leaf) in &inclusion_proofs {
                proof.verify(leaf, &root).expect("a proof the MMR built verifies");
            }
        });
    });
    group.finish();

    let mut group = c.benchmark_group("consistency_proof");
    configure_proof_group(&mut group);
    group.bench_function(BenchmarkId::new("generate", size.0), |b| {
        b.iter(|| {
            for &old_size in &old_sizes {
                black_box(mmr.consistency_proof(old_size, size).expect("the old size is in the tree"));
            }
        });
    });
    group.bench_function(BenchmarkId::new("verify", size.0), |b| {
        b.iter(|| {
            for (proof, old_root) in &consistency_proofs {
                proof.verify(old_root, &root).expect("a proof the MMR built verifies");
            }
        });
    });
    group.finish();
}

/// A batch of proofs takes up to a few milliseconds: 50 samples over 4 s keep the whole run
/// within a few minutes.
fn configure_proof_group(group: &mut BenchmarkGroup<'_, WallTime>) {
    group.throughput(Throughput::Elements(PROOFS_PER_ITERATION));
    group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4)).sample_size(50);
}

/// Raw hash throughput, to see which SHA-256 backend runs. sha2 0.11 picks the x86 SHA
/// extensions (SHA-NI) at run time when the CPU has them; on this project's AMD EPYC that measured
/// about 45 ns per 64-byte block, against about 130 ns for its software backend (forced with
/// `RUSTFLAGS='--cfg sha2_backend="soft"'`). `node_hash` compresses two blocks (65 bytes),
/// `leaf_hash` of 32 bytes one.
fn bench_hash(c: &mut Criterion) {
    let left = leaf_hash(b"left");
    let right = leaf_hash(b"right");
    let data = [0x5a_u8; 32];

    let mut group = c.benchmark_group("hash");
    group.throughput(Throughput::Elements(1));
    group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    group.bench_function("node_hash", |b| b.iter(|| node_hash(black_box(&left), black_box(&right))));
    group.bench_function("node_hash_streaming_baseline", |b| {
        b.iter(|| streaming_node_hash(black_box(&left), black_box(&right)))
    });
    group.bench_function("leaf_hash_32B", |b| b.iter(|| leaf_hash(black_box(&data[..]))));
    group.finish();
}

/// The leaf hashes of leaves whose data are their indexes, big-endian.
/// `node_hash` the obvious way, through sha2's streaming hasher: the baseline that
/// `mmr::node_hash`'s two-block fast path is measured against.
fn streaming_node_hash(left: &Hash, right: &Hash) -> Hash {
    use sha2::Digest as _;
    Hash(
        sha2::Sha256::new().chain_update([0x01]).chain_update(left.0).chain_update(right.0).finalize().into(),
    )
}

fn leaf_hashes(count: u64) -> Vec<Hash> {
    (0..count).map(|index| leaf_hash(&index.to_be_bytes())).collect()
}

fn empty_ours(leaves: &[Hash]) -> Mmr<MemStore> {
    Mmr::new(MemStore::with_leaf_capacity(leaves.len()))
}

fn append_ours(leaves: &[Hash], mut mmr: Mmr<MemStore>) -> Mmr<MemStore> {
    for leaf in leaves {
        mmr.append_leaf_hash(*leaf).expect("a memory store never fails and is far from full");
    }
    mmr
}

fn append_peer(leaves: &[Hash], store: PeerStore<Hash>) -> PeerStore<Hash> {
    {
        let mut mmr = MemMMR::<Hash, PeerMerge>::new(0, &store);
        for leaf in leaves {
            mmr.push(*leaf).expect("the peer's memory store never fails");
        }
        mmr.commit().expect("the peer's memory store never fails");
    }
    store
}

/// Asserts that ours and the peer, fed `leaves`, store the same nodes and have the same root.
fn check_same_tree(leaves: &[Hash]) {
    let ours = append_ours(leaves, empty_ours(leaves));
    let peer_store = append_peer(leaves, PeerStore::default());
    let size = TreeSize(u64::try_from(leaves.len()).expect("a slice length fits in u64"));
    let node_count = size.node_count();

    assert_eq!(ours.size(), size);
    assert_eq!(ours.store().len(), node_count);
    for pos in 0..node_count {
        let our_node = ours.store().get(NodePos(pos)).expect("a memory store never fails");
        let peer_node = (&peer_store).get_elem(pos).expect("the peer's memory store never fails");
        assert_eq!(peer_node, our_node, "node {pos} of a tree of {size} leaves");
    }
    let beyond = (&peer_store).get_elem(node_count).expect("the peer's memory store never fails");
    assert_eq!(beyond, None, "the peer stores more than {node_count} nodes for {size} leaves");

    let peer = MemMMR::<Hash, PeerMerge>::new(node_count, &peer_store);
    assert_eq!(peer.get_root().expect("the peer's tree is not empty"), ours.root(), "root of {size} leaves");
}

fn to_usize(value: u64) -> usize {
    usize::try_from(value).expect("benchmark sizes fit in usize")
}

criterion_group!(benches, bench_append, bench_proofs, bench_hash);
criterion_main!(benches);
