//! Per-partition offset tracking: which offsets are in flight, and the highest offset
//! that can be committed without skipping an unfinished one.

use std::{
    collections::VecDeque,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
};

/// The offsets of one assigned partition that were delivered and not yet committable.
///
/// Offsets arrive in increasing order (librdkafka delivers a partition in order). An
/// offset is *done* once acknowledged; the commit position is one past the highest
/// offset below which everything delivered is done. A later offset is never committed
/// while an earlier one is unfinished, so a crash redelivers from the oldest unfinished
/// message.
///
/// A tracker lives for one assignment of the partition: a revocation marks it revoked,
/// and acknowledgements that arrive later change nothing that gets committed.
#[derive(Debug)]
pub(crate) struct PartitionTracker {
    partition: i32,
    revoked: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Delivered offsets not yet below the commit position, ascending, with done flags.
    window: VecDeque<(i64, bool)>,
    /// Everything below this is done (-1: nothing done yet).
    position: i64,
    /// The position last handed to a commit (-1: none).
    committed: i64,
}

impl PartitionTracker {
    pub(crate) fn new(partition: i32) -> Self {
        Self {
            partition,
            revoked: AtomicBool::new(false),
            state: Mutex::new(State {
                window: VecDeque::new(),
                position: -1,
                committed: -1,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation is a single step; a poisoned lock still holds consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn partition(&self) -> i32 {
        self.partition
    }

    /// Records a delivered offset as in flight.
    pub(crate) fn delivered(&self, offset: i64) {
        let mut s = self.lock();
        if offset < s.position {
            // Below the commit position: already done (a refetch); track it anyway so
            // its ack is accounted for, without moving the position back.
            return;
        }
        match s.window.back() {
            Some(&(last, _)) if offset <= last => {
                if let Err(i) = s.window.binary_search_by_key(&offset, |&(o, _)| o) {
                    s.window.insert(i, (offset, false));
                }
            }
            _ => s.window.push_back((offset, false)),
        }
    }

    /// Marks `offset` done and advances the commit position over the finished prefix.
    /// Returns false if the partition was revoked (the ack will not be committed).
    pub(crate) fn done(&self, offset: i64) -> bool {
        if self.is_revoked() {
            return false;
        }
        let mut s = self.lock();
        // Acks mostly come in order: the oldest in flight needs no search.
        let at = if s.window.front().is_some_and(|&(o, _)| o == offset) {
            Some(0)
        } else {
            s.window.binary_search_by_key(&offset, |&(o, _)| o).ok()
        };
        if let Some(i) = at {
            s.window[i].1 = true;
            while let Some(&(o, true)) = s.window.front() {
                s.window.pop_front();
                s.position = o + 1;
            }
        }
        !self.is_revoked()
    }

    /// The position to commit if it moved since the last commit; records it as committed.
    pub(crate) fn take_commit(&self) -> Option<i64> {
        let mut s = self.lock();
        (s.position > s.committed).then(|| {
            s.committed = s.position;
            s.position
        })
    }

    /// A commit of this partition failed: the next commit sends the position again.
    pub(crate) fn commit_failed(&self) {
        self.lock().committed = -1;
    }

    /// Marks the tracker revoked and returns its final commit position if it moved.
    pub(crate) fn revoke(&self) -> Option<i64> {
        self.revoked.store(true, Ordering::SeqCst);
        self.take_commit()
    }

    pub(crate) fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Offsets delivered and not yet below the commit position.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().window.iter().filter(|(_, d)| !d).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_the_lowest_contiguous_done_offset_plus_one() {
        let t = PartitionTracker::new(0);
        for o in 10..15 {
            t.delivered(o);
        }
        assert_eq!(t.take_commit(), None, "nothing done");
        assert!(t.done(12));
        assert!(t.done(11));
        assert_eq!(t.take_commit(), None, "10 unfinished: nothing committable");
        assert!(t.done(10));
        assert_eq!(t.take_commit(), Some(13));
        assert_eq!(t.take_commit(), None, "unchanged");
        assert!(t.done(14));
        assert_eq!(t.take_commit(), None, "13 unfinished");
        assert!(t.done(13));
        assert_eq!(t.take_commit(), Some(15));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn gaps_in_offsets_do_not_block() {
        // Compacted topics and transaction markers leave gaps.
        let t = PartitionTracker::new(0);
        for o in [3, 7, 8] {
            t.delivered(o);
        }
        t.done(3);
        assert_eq!(t.take_commit(), Some(4));
        t.done(8);
        t.done(7);
        assert_eq!(t.take_commit(), Some(9));
    }

    #[test]
    fn out_of_order_delivery_is_sorted_in() {
        let t = PartitionTracker::new(0);
        t.delivered(5);
        t.delivered(3);
        t.delivered(5);
        assert_eq!(t.in_flight(), 2);
        t.done(5);
        assert_eq!(t.take_commit(), None);
        t.done(3);
        assert_eq!(t.take_commit(), Some(6));
    }

    #[test]
    fn revoked_tracker_ignores_late_acks() {
        let t = PartitionTracker::new(1);
        t.delivered(0);
        t.delivered(1);
        t.done(0);
        assert_eq!(t.revoke(), Some(1));
        assert!(!t.done(1), "late ack reports the revocation");
        assert_eq!(t.take_commit(), None, "a late ack never reaches a commit");
    }

    #[test]
    fn failed_commit_is_sent_again() {
        let t = PartitionTracker::new(0);
        t.delivered(0);
        t.done(0);
        assert_eq!(t.take_commit(), Some(1));
        t.commit_failed();
        assert_eq!(t.take_commit(), Some(1));
    }

    #[test]
    fn unknown_ack_is_harmless() {
        let t = PartitionTracker::new(0);
        t.delivered(4);
        assert!(t.done(99));
        assert_eq!(t.take_commit(), None);
    }
}
