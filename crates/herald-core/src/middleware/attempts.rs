//! How many in-process attempts the layers inside the dead-letter layer made.
//!
//! The dead-letter layer sits outside the retry layer, so the [`Inbound`](crate::Inbound)
//! it holds still says `local_attempt == 1`. To write an honest `herald-attempts` it
//! opens a task-local slot around the inner future; the retry layer writes the number of
//! each in-process attempt into it (when a slot is open — without a dead-letter layer
//! around it, recording does nothing). Nothing here is public: it is plumbing between
//! two layers of this module, and both work without the other.

use std::{cell::Cell, future::Future};

tokio::task_local! {
    static LOCAL_ATTEMPT: Cell<u32>;
}

/// Records that in-process attempt `n` is about to run (a no-op outside [`observe`]).
pub(crate) fn record(n: u32) {
    let _ = LOCAL_ATTEMPT.try_with(|c| c.set(n));
}

/// Runs `fut` with a fresh slot starting at `start`; returns its output and the last
/// in-process attempt recorded inside it.
pub(crate) async fn observe<F: Future>(start: u32, fut: F) -> (F::Output, u32) {
    LOCAL_ATTEMPT
        .scope(Cell::new(start), async move {
            let out = fut.await;
            let n = LOCAL_ATTEMPT.try_with(Cell::get).unwrap_or(start);
            (out, n)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_inside_scope_only() {
        record(9); // no slot: ignored, no panic
        let ((), n) = observe(1, async {
            record(2);
            record(3);
        })
        .await;
        assert_eq!(n, 3);
        let ((), n) = observe(1, async {}).await;
        assert_eq!(n, 1);
        // Nested scopes: the innermost wins, the outer keeps its own count.
        let ((), outer) = observe(1, async {
            record(2);
            let ((), inner) = observe(1, async { record(5) }).await;
            assert_eq!(inner, 5);
        })
        .await;
        assert_eq!(outer, 2);
    }
}
