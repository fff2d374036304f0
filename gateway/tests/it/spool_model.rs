//! Model test: the spool behaves like a `VecDeque` under random appends, peeks, consumes and reopens.

use std::collections::VecDeque;
use std::path::Path;

use gateway::audit::spool::{FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES, Spool, SpoolConfig, SpoolError};
use proptest::collection::vec;
use proptest::prelude::*;

const RECORD_BYTES_MAX: u32 = 40;
const SEGMENT_BYTES_MAX: u64 = SEGMENT_HEADER_BYTES + 3 * (FRAME_HEADER_BYTES + RECORD_BYTES_MAX as u64);
const SPOOL_BYTES_MAX: u64 = 4 * SEGMENT_BYTES_MAX;

#[derive(Debug, Clone)]
enum Operation {
    Append(Vec<Vec<u8>>),
    Peek { records_max: usize, bytes_max: usize },
    Consume { count: usize },
    Reopen,
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        4 => vec(vec(any::<u8>(), 0..=(RECORD_BYTES_MAX as usize + 4)), 1..6).prop_map(Operation::Append),
        3 => (0_usize..8, 0_usize..160)
            .prop_map(|(records_max, bytes_max)| Operation::Peek { records_max, bytes_max }),
        3 => (0_usize..9).prop_map(|count| Operation::Consume { count }),
        1 => Just(Operation::Reopen),
    ]
}

fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_owned(),
        segment_bytes_max: SEGMENT_BYTES_MAX,
        spool_bytes_max: SPOOL_BYTES_MAX,
        record_bytes_max: RECORD_BYTES_MAX,
    }
}

/// What `peek` must return for the model's contents.
fn expected_peek(model: &VecDeque<Vec<u8>>, records_max: usize, bytes_max: usize) -> Vec<Vec<u8>> {
    let mut expected = Vec::new();
    let mut bytes_total = 0;
    for record in model.iter().take(records_max) {
        if !expected.is_empty() && bytes_total + record.len() > bytes_max {
            break;
        }
        bytes_total += record.len();
        expected.push(record.clone());
    }
    expected
}

fn check_operation(
    spool: &mut Spool,
    model: &mut VecDeque<Vec<u8>>,
    operation: Operation,
) -> Result<(), TestCaseError> {
    match operation {
        Operation::Append(records) => {
            let pending_bytes_before = spool.pending_bytes();
            let result = spool.append(&records);
            if records.iter().any(|record| record.len() > RECORD_BYTES_MAX as usize) {
                prop_assert!(matches!(result, Err(SpoolError::RecordTooLarge { .. })), "got {result:?}");
                prop_assert_eq!(spool.pending_bytes(), pending_bytes_before);
                return Ok(());
            }
            let frames_bytes: u64 =
                records.iter().map(|record| FRAME_HEADER_BYTES + record.len() as u64).sum();
            match result {
                Ok(()) => {
                    prop_assert!(spool.pending_bytes() <= SPOOL_BYTES_MAX);
                    prop_assert!(spool.pending_bytes() >= pending_bytes_before + frames_bytes);
                    model.extend(records);
                }
                Err(SpoolError::Full { bytes, bytes_max }) => {
                    prop_assert_eq!(bytes_max, SPOOL_BYTES_MAX);
                    prop_assert!(bytes > SPOOL_BYTES_MAX);
                    prop_assert!(bytes >= pending_bytes_before + frames_bytes);
                    prop_assert_eq!(spool.pending_bytes(), pending_bytes_before);
                }
                Err(error) => return Err(TestCaseError::fail(format!("append failed: {error}"))),
            }
        }
        Operation::Peek { records_max, bytes_max } => {
            let peeked =
                spool.peek(records_max, bytes_max).map_err(|error| TestCaseError::fail(error.to_string()))?;
            prop_assert_eq!(peeked, expected_peek(model, records_max, bytes_max));
        }
        Operation::Consume { count } => {
            let result = spool.consume(count);
            if count > model.len() {
                let is_beyond_pending = matches!(result, Err(SpoolError::ConsumeBeyondPending { .. }));
                prop_assert!(is_beyond_pending, "got {:?}", result);
            } else {
                result.map_err(|error| TestCaseError::fail(error.to_string()))?;
                model.drain(..count);
            }
        }
        // Reopening needs to own the spool; the caller does it.
        Operation::Reopen => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn spool_matches_a_vecdeque_model(operations in vec(operation(), 1..80)) {
        let dir = tempfile::tempdir().map_err(|error| TestCaseError::fail(error.to_string()))?;
        let open = || Spool::open(config(dir.path())).map_err(|error| TestCaseError::fail(error.to_string()));
        let (mut spool, _) = open()?;
        let mut model = VecDeque::new();
        for operation in operations {
            if let Operation::Reopen = operation {
                drop(spool);
                let (reopened, report) = open()?;
                spool = reopened;
                prop_assert_eq!(report.pending_records, model.len() as u64);
                prop_assert_eq!(report.dropped_torn_tail_bytes, 0);
            } else {
                check_operation(&mut spool, &mut model, operation)?;
            }
            prop_assert_eq!(spool.pending_records(), model.len() as u64);
            prop_assert_eq!(spool.is_empty(), model.is_empty());
            if model.is_empty() {
                prop_assert_eq!(spool.pending_bytes(), 0);
            }
        }
        let drained = spool.peek(usize::MAX, usize::MAX).map_err(|error| TestCaseError::fail(error.to_string()))?;
        prop_assert_eq!(drained, Vec::from(model));
    }
}
