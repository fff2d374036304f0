//! What the smuggling guard measured of each request head on a connection, handed to the
//! request's span. The guard validates a head before hyper parses it, on the connection's task;
//! the request's SERVER span exists only later, in the pipeline. A per-connection
//! [`HeadChecks`] queue carries each head's check from one to the other. It exists only while
//! spans are exported: with export off the guard reads no clock and queues nothing.
//!
//! Heads are numbered in the order the guard validates them, requests in the order hyper hands
//! them to the service; on one HTTP/1 connection both orders are the same, so request *n*
//! takes check *n*. The queue is bounded: a check beyond [`HEAD_CHECKS_MAX`] waiting ones is
//! dropped, and its request (found by its number) gets none rather than another's.

use std::collections::VecDeque;
use std::time::SystemTime;

use parking_lot::Mutex;

use super::smuggling::Framing;

/// Checks kept per connection while their requests are not yet served (pipelined requests).
pub const HEAD_CHECKS_MAX: usize = 64;

/// The guard's check of one request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadCheck {
    /// The head's number on its connection, from 0.
    pub sequence: u64,
    /// When the head's first bytes arrived.
    pub started: SystemTime,
    /// When the guard had validated the whole head.
    pub finished: SystemTime,
    /// The head's length, request line to the empty line.
    pub head_bytes: usize,
    /// How the request's body is delimited.
    pub framing: Framing,
}

/// One connection's checks not yet taken by their requests.
#[derive(Debug, Default)]
pub struct HeadChecks {
    inner: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    /// Checks in sequence order, at most [`HEAD_CHECKS_MAX`].
    checks: VecDeque<HeadCheck>,
    /// The number of the next request to take its check.
    next_request: u64,
}

impl HeadChecks {
    /// Queues the check of a validated head (the guard calls it in sequence order). Returns
    /// false when the queue is full and the check was dropped.
    pub fn push(&self, check: HeadCheck) -> bool {
        let mut queue = self.inner.lock();
        if queue.checks.len() >= HEAD_CHECKS_MAX {
            return false;
        }
        queue.checks.push_back(check);
        true
    }

    /// The check of the next request on the connection, if it was kept. Checks of earlier
    /// requests still queued (their requests never asked) are discarded.
    pub fn take_next(&self) -> Option<HeadCheck> {
        let mut queue = self.inner.lock();
        let sequence = queue.next_request;
        queue.next_request += 1;
        while queue.checks.front().is_some_and(|check| check.sequence < sequence) {
            queue.checks.pop_front();
        }
        if queue.checks.front().is_some_and(|check| check.sequence == sequence) {
            queue.checks.pop_front()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn head_check(sequence: u64) -> HeadCheck {
        let started = SystemTime::UNIX_EPOCH + Duration::from_secs(sequence);
        HeadCheck {
            sequence,
            started,
            finished: started + Duration::from_millis(1),
            head_bytes: 100 + usize::try_from(sequence).expect("small"),
            framing: Framing::Length(sequence),
        }
    }

    /// Pushes checks `pushed`, then takes one per request; `expected` is each request's check.
    fn run(pushed: impl IntoIterator<Item = u64>, expected: &[Option<u64>]) {
        let checks = HeadChecks::default();
        for sequence in pushed {
            checks.push(head_check(sequence));
        }
        let taken: Vec<Option<u64>> =
            expected.iter().map(|_| checks.take_next().map(|taken| taken.sequence)).collect();
        assert_eq!(taken, expected);
    }

    #[test]
    fn each_request_takes_the_check_of_its_own_head() {
        run(0..3, &[Some(0), Some(1), Some(2), None]);
        let checks = HeadChecks::default();
        checks.push(head_check(0));
        assert_eq!(checks.take_next(), Some(head_check(0)), "the whole check, times and framing");
        assert_eq!(checks.take_next(), None);
        checks.push(head_check(1));
        assert_eq!(checks.take_next(), None, "request 2's check is not there yet; 1's is stale");
        checks.push(head_check(2));
        assert_eq!(checks.take_next(), None, "request 3 has no check; 2's is dropped");
        checks.push(head_check(4));
        assert_eq!(checks.take_next(), Some(head_check(4)));
    }

    #[test]
    fn a_missing_check_leaves_its_request_without_one_and_the_others_matched() {
        run([0, 2, 3], &[Some(0), None, Some(2), Some(3)]);
    }

    #[test]
    fn beyond_the_bound_checks_are_dropped_and_never_given_to_another_request() {
        let checks = HeadChecks::default();
        let kept =
            (0..HEAD_CHECKS_MAX as u64 + 10).filter(|&sequence| checks.push(head_check(sequence))).count();
        assert_eq!(kept, HEAD_CHECKS_MAX);
        for sequence in 0..HEAD_CHECKS_MAX as u64 {
            assert_eq!(checks.take_next().map(|taken| taken.sequence), Some(sequence));
        }
        // Requests 64..74 had their checks dropped; later heads are matched again.
        assert!(checks.push(head_check(HEAD_CHECKS_MAX as u64 + 10)));
        for _ in 0..10 {
            assert_eq!(checks.take_next(), None);
        }
        assert_eq!(checks.take_next().map(|taken| taken.sequence), Some(HEAD_CHECKS_MAX as u64 + 10));
    }
}
