//! [`DueSubscriber`]: holds retry-topic deliveries until they are due — the timer in
//! the dispatcher.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    future::Future as _,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use futures::{Stream, future::BoxFuture};
use tokio::time::{Instant, Sleep};

use super::{due_at_millis, now_millis, parse_retry_topic};
use crate::{Delivery, SubscribeError, SubscribeSpec, Subscriber, Subscription};

/// Wraps a [`Subscriber`] so that subscriptions to retry topics (`<topic>.retry.<n>`)
/// yield each delivery only once its `herald-due-at` has come. Other topics pass through
/// untouched.
///
/// The wait happens in the subscription's stream — before the router dispatches the
/// delivery to a lane — on one timer per subscription, so no handler sleeps and no lane
/// is held while a message waits. Deliveries are queued per partition (the origin's
/// `partition` value; one queue where there is none) and the stream yields the earliest
/// due queue head first: each retry level has one fixed delay, so within a partition due
/// times rise with the offsets and waiting on a queue's head never holds back a message
/// that is already due.
///
/// Waiting deliveries are unsettled, so they count against the subscription's
/// `max_in_flight`; the adapter stops fetching at that bound, which is harmless here —
/// what it has not fetched is due later still.
///
/// # Examples
/// ```
/// use herald_core::{memory::MemoryBroker, retry_topics::DueSubscriber};
/// let subscriber = DueSubscriber::new(MemoryBroker::new());
/// # let _ = subscriber;
/// ```
#[derive(Clone, Debug)]
pub struct DueSubscriber<S> {
    inner: S,
}

impl<S> DueSubscriber<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    /// The inner subscriber.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner subscriber.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Subscriber> Subscriber for DueSubscriber<S> {
    fn subscribe(
        &self,
        spec: SubscribeSpec,
    ) -> BoxFuture<'_, Result<Subscription, SubscribeError>> {
        Box::pin(async move {
            let hold = parse_retry_topic(&spec.topic).is_some();
            let sub = self.inner.subscribe(spec).await?;
            if !hold {
                return Ok(sub);
            }
            let shared = Arc::new(Mutex::new(Some(sub)));
            let stream = DueStream {
                inner: shared.clone(),
                queues: HashMap::new(),
                held: 0,
                inner_done: false,
                timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            };
            let close = async move {
                let sub = shared.lock().unwrap_or_else(|p| p.into_inner()).take();
                match sub {
                    Some(s) => s.close().await,
                    None => Ok(()),
                }
            };
            Ok(Subscription::new(Box::pin(stream), Box::pin(close)))
        })
    }
}

/// Deliveries of one partition waiting for their due time, oldest first.
type Queue = VecDeque<(Instant, Delivery)>;

struct DueStream {
    inner: Arc<Mutex<Option<Subscription>>>,
    queues: HashMap<i64, Queue>,
    held: usize,
    inner_done: bool,
    timer: Pin<Box<Sleep>>,
}

impl fmt::Debug for DueStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DueStream")
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

/// When `d` is due, as a tokio instant (now when it carries no due time).
fn due_instant(d: &Delivery) -> Instant {
    let now = Instant::now();
    match due_at_millis(&d.message) {
        Some(due) => {
            let wait = due.saturating_sub(now_millis());
            now + Duration::from_millis(u64::try_from(wait).unwrap_or(0))
        }
        None => now,
    }
}

impl DueStream {
    /// Moves whatever the inner stream has ready into the queues; returns an error it
    /// yielded.
    fn pull(&mut self, cx: &mut Context<'_>) -> Option<SubscribeError> {
        if self.inner_done {
            return None;
        }
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(sub) = guard.as_mut() else {
            self.inner_done = true;
            return None;
        };
        loop {
            match Pin::new(&mut *sub).poll_next(cx) {
                Poll::Ready(Some(Ok(d))) => {
                    let due = due_instant(&d);
                    let lane = d.origin.get("partition").unwrap_or(0);
                    self.queues.entry(lane).or_default().push_back((due, d));
                    self.held += 1;
                }
                Poll::Ready(Some(Err(e))) => return Some(e),
                Poll::Ready(None) => {
                    self.inner_done = true;
                    return None;
                }
                Poll::Pending => return None,
            }
        }
    }

    /// The partition whose head is due first, and when.
    fn earliest(&self) -> Option<(i64, Instant)> {
        self.queues
            .iter()
            .filter_map(|(lane, q)| q.front().map(|(due, _)| (*lane, *due)))
            .min_by_key(|(_, due)| *due)
    }
}

impl Stream for DueStream {
    type Item = Result<Delivery, SubscribeError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(e) = this.pull(cx) {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            let Some((lane, due)) = this.earliest() else {
                return if this.inner_done {
                    Poll::Ready(None)
                } else {
                    Poll::Pending
                };
            };
            if due <= Instant::now() {
                let q = this.queues.get_mut(&lane);
                if let Some((_, d)) = q.and_then(VecDeque::pop_front) {
                    this.held -= 1;
                    if this.queues.get(&lane).is_some_and(VecDeque::is_empty) {
                        this.queues.remove(&lane);
                    }
                    return Poll::Ready(Some(Ok(d)));
                }
                continue;
            }
            if this.timer.deadline() != due {
                this.timer.as_mut().reset(due);
            }
            match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
