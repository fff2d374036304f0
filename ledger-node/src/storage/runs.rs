//! Runs: consecutive leaves, or consecutive MMR nodes, stored as one sled value under the
//! position of the first. sled's cost is per insert (each one links a delta into a page and
//! eventually rewrites it), not per byte, so a batch of records costs a few inserts instead of
//! four per record.
//!
//! A node run is the concatenated 32-byte hashes. A leaf run is
//! `count (u32 BE) ‖ end offset of each record (u32 BE each) ‖ the records`.

use mmr::{HASH_LEN, Hash};

/// Most nodes in one run (32 KiB).
pub(crate) const NODES_PER_RUN_MAX: usize = 1024;
/// Most record bytes in one leaf run; a single larger record gets a run of its own.
pub(crate) const LEAF_RUN_BYTES_MAX: usize = 64 * 1024;

/// Encodes `records` as one leaf run.
pub(crate) fn encode_leaf_run(records: &[Vec<u8>]) -> Vec<u8> {
    let header = 4 + 4 * records.len();
    let data: usize = records.iter().map(Vec::len).sum();
    let mut run = Vec::with_capacity(header + data);
    run.extend_from_slice(&u32_of(records.len()).to_be_bytes());
    let mut end = 0;
    for record in records {
        end += record.len();
        run.extend_from_slice(&u32_of(end).to_be_bytes());
    }
    for record in records {
        run.extend_from_slice(record);
    }
    run
}

/// How many records a leaf run holds, if it is well-formed enough to say.
pub(crate) fn leaf_run_len(run: &[u8]) -> Option<usize> {
    let count = read_u32(run, 0)? as usize;
    (run.len() >= 4 + 4 * count).then_some(count)
}

/// The `offset`-th record of a leaf run; `None` if the run is shorter or malformed.
pub(crate) fn leaf_in_run(run: &[u8], offset: usize) -> Option<&[u8]> {
    let count = leaf_run_len(run)?;
    if offset >= count {
        return None;
    }
    let data = 4 + 4 * count;
    let start = if offset == 0 { 0 } else { read_u32(run, 4 + 4 * (offset - 1))? as usize };
    let end = read_u32(run, 4 + 4 * offset)? as usize;
    run.get(data + start..data + end)
}

/// How many nodes a node run holds, if well-formed.
pub(crate) fn node_run_len(run: &[u8]) -> Option<usize> {
    run.len().is_multiple_of(HASH_LEN).then_some(run.len() / HASH_LEN)
}

/// The `offset`-th hash of a node run.
pub(crate) fn node_in_run(run: &[u8], offset: usize) -> Option<Hash> {
    node_run_len(run)?;
    let bytes = run.get(offset * HASH_LEN..(offset + 1) * HASH_LEN)?;
    Hash::try_from(bytes).ok()
}

/// Splits `records` into runs of at most [`LEAF_RUN_BYTES_MAX`] bytes (at least one record
/// each), returning each run's offset into `records` and its length.
pub(crate) fn leaf_run_bounds(records: &[Vec<u8>]) -> Vec<(usize, usize)> {
    let mut bounds = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (index, record) in records.iter().enumerate() {
        if index > start && bytes + record.len() > LEAF_RUN_BYTES_MAX {
            bounds.push((start, index - start));
            (start, bytes) = (index, 0);
        }
        bytes += record.len();
    }
    if start < records.len() {
        bounds.push((start, records.len() - start));
    }
    bounds
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Run lengths and offsets are bounded by sled values, far below 4 GiB.
fn u32_of(value: usize) -> u32 {
    u32::try_from(value).expect("a run is far smaller than 4 GiB")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_runs_round_trip_and_refuse_bad_offsets() {
        let records = vec![b"first".to_vec(), Vec::new(), b"third record".to_vec()];
        let run = encode_leaf_run(&records);
        assert_eq!(leaf_run_len(&run), Some(3));
        for (offset, record) in records.iter().enumerate() {
            assert_eq!(leaf_in_run(&run, offset), Some(record.as_slice()));
        }
        assert_eq!(leaf_in_run(&run, 3), None);
        assert_eq!(leaf_in_run(&run[..run.len() - 1], 2), None, "a truncated run is not read past its end");
        assert_eq!(leaf_run_len(&[0, 0, 0, 9]), None);
    }

    #[test]
    fn leaf_run_bounds_respect_the_byte_limit() {
        let records: Vec<Vec<u8>> = (0..10).map(|_| vec![0u8; LEAF_RUN_BYTES_MAX / 4]).collect();
        assert_eq!(leaf_run_bounds(&records), vec![(0, 4), (4, 4), (8, 2)]);
        let huge = vec![vec![0u8; LEAF_RUN_BYTES_MAX * 2], vec![1u8; 10]];
        assert_eq!(leaf_run_bounds(&huge), vec![(0, 1), (1, 1)]);
        assert!(leaf_run_bounds(&[]).is_empty());
    }

    #[test]
    fn node_runs_slice_hashes() {
        let run: Vec<u8> = (0u8..3).flat_map(|i| [i; HASH_LEN]).collect();
        assert_eq!(node_in_run(&run, 2), Some(Hash([2; HASH_LEN])));
        assert_eq!(node_in_run(&run, 3), None);
        assert_eq!(node_in_run(&run[..40], 0), None, "a run that is not whole hashes is corrupt");
    }
}
