//! Blocks: fixed groups of consecutive leaves, or of consecutive MMR nodes, stored as one sled
//! value. sled's cost is per insert (each one links a delta into a page and eventually rewrites
//! it), not per byte, so a batch of records costs a few inserts instead of four per record; and
//! a block's key follows from a position by division, so a read is one `get`.
//!
//! Node block `k` holds the hashes of positions `k·NODES_PER_BLOCK ..`, concatenated. Leaf block
//! `k` holds leaves `k·LEAVES_PER_BLOCK ..` as
//! `count (u32 BE) ‖ end offset of each record (u32 BE each) ‖ the records`.
//! The last block of each kind may be partial; it is rewritten as the tree grows.

use mmr::{HASH_LEN, Hash};

/// Nodes per node block (32 KiB).
pub(crate) const NODES_PER_BLOCK: u64 = 1024;
/// Leaves per leaf block: 16 KiB of typical 512-byte records, and at most 2 MiB of the
/// largest (64 KiB) ones, which keeps a block below sled's blob threshold.
pub(crate) const LEAVES_PER_BLOCK: u64 = LEAF_OFFSET_END as u64;
/// [`LEAVES_PER_BLOCK`] as an offset bound.
pub(crate) const LEAF_OFFSET_END: usize = 32;

/// The offset of `position` within its block of `per_block` (a small constant, so it fits).
pub(crate) fn offset_in_block(position: u64, per_block: u64) -> usize {
    usize::try_from(position % per_block).expect("a block holds far fewer than usize::MAX items")
}

/// Encodes `records` as one leaf block.
pub(crate) fn encode_leaf_block(records: &[Vec<u8>]) -> Vec<u8> {
    let header = 4 + 4 * records.len();
    let data: usize = records.iter().map(Vec::len).sum();
    let mut block = Vec::with_capacity(header + data);
    block.extend_from_slice(&u32_of(records.len()).to_be_bytes());
    let mut end = 0;
    for record in records {
        end += record.len();
        block.extend_from_slice(&u32_of(end).to_be_bytes());
    }
    for record in records {
        block.extend_from_slice(record);
    }
    block
}

/// How many records a leaf block holds, if it is well-formed enough to say.
pub(crate) fn leaf_block_len(block: &[u8]) -> Option<usize> {
    let count = read_u32(block, 0)? as usize;
    (block.len() >= 4 + 4 * count).then_some(count)
}

/// The `offset`-th record of a leaf block; `None` if the block is shorter or malformed.
pub(crate) fn leaf_in_block(block: &[u8], offset: usize) -> Option<&[u8]> {
    let count = leaf_block_len(block)?;
    if offset >= count {
        return None;
    }
    let data = 4 + 4 * count;
    let start = if offset == 0 { 0 } else { read_u32(block, 4 + 4 * (offset - 1))? as usize };
    let end = read_u32(block, 4 + 4 * offset)? as usize;
    block.get(data + start..data + end)
}

/// How many nodes a node block holds, if well-formed.
pub(crate) fn node_block_len(block: &[u8]) -> Option<usize> {
    block.len().is_multiple_of(HASH_LEN).then_some(block.len() / HASH_LEN)
}

/// The `offset`-th hash of a node block.
pub(crate) fn node_in_block(block: &[u8], offset: usize) -> Option<Hash> {
    node_block_len(block)?;
    let bytes = block.get(offset * HASH_LEN..(offset + 1) * HASH_LEN)?;
    Hash::try_from(bytes).ok()
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Block lengths and offsets are bounded by sled values, far below 4 GiB.
fn u32_of(value: usize) -> u32 {
    u32::try_from(value).expect("a block is far smaller than 4 GiB")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_blocks_round_trip_and_refuse_bad_offsets() {
        let records = vec![b"first".to_vec(), Vec::new(), b"third record".to_vec()];
        let block = encode_leaf_block(&records);
        assert_eq!(leaf_block_len(&block), Some(3));
        for (offset, record) in records.iter().enumerate() {
            assert_eq!(leaf_in_block(&block, offset), Some(record.as_slice()));
        }
        assert_eq!(leaf_in_block(&block, 3), None);
        assert_eq!(
            leaf_in_block(&block[..block.len() - 1], 2),
            None,
            "a tblockcated block is not read past its end"
        );
        assert_eq!(leaf_block_len(&[0, 0, 0, 9]), None);
    }

    #[test]
    fn node_blocks_slice_hashes() {
        let block: Vec<u8> = (0u8..3).flat_map(|i| [i; HASH_LEN]).collect();
        assert_eq!(node_in_block(&block, 2), Some(Hash([2; HASH_LEN])));
        assert_eq!(node_in_block(&block, 3), None);
        assert_eq!(node_in_block(&block[..40], 0), None, "a block that is not whole hashes is corrupt");
    }
}
