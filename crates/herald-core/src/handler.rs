//! Handlers: what the [`Router`](crate::Router) calls for each delivery.
//!
//! A handler is any `tower::Service<Inbound, Response = (), Error = HandlerError>` that
//! is `Clone + Send`. Write one from a closure with [`handler_fn`], or a typed one that
//! decodes the payload first with [`typed`].

use std::{
    future::Future,
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use tower_service::Service;

use crate::{Codec, Event, HandlerError, Message, Origin};

/// What a handler receives: the message, where it came from, and which attempt this is.
///
/// Cheap to clone (the message is shared), so retry middleware can call the handler again
/// with the same input.
#[derive(Clone, Debug)]
pub struct Inbound {
    /// The message.
    pub message: Arc<Message>,
    /// Where it came from.
    pub origin: Arc<Origin>,
    /// The broker's delivery attempt (1 on first delivery). In-process retries do not
    /// change it; see [`Inbound::local_attempt`].
    pub attempt: u32,
    /// The in-process attempt within this delivery (1 first, +1 per immediate retry).
    pub local_attempt: u32,
    /// The route this delivery arrived on.
    pub route: Arc<RouteInfo>,
}

/// Identifies a route: handler name, topic and consumer group.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteInfo {
    /// The handler's name (metrics, DLQ `herald-handler`).
    pub handler: String,
    /// The topic.
    pub topic: String,
    /// The consumer group.
    pub group: String,
}

impl Inbound {
    /// An inbound for tests and custom dispatchers.
    pub fn new(message: Message, origin: Origin, attempt: u32, route: Arc<RouteInfo>) -> Self {
        Self {
            message: Arc::new(message),
            origin: Arc::new(origin),
            attempt,
            local_attempt: 1,
            route,
        }
    }

    /// Total attempts so far, counting broker redeliveries and in-process retries.
    pub fn total_attempts(&self) -> u32 {
        self.attempt.saturating_sub(1) + self.local_attempt
    }
}

/// The boxed handler type routes store.
pub type BoxHandler = tower::util::BoxCloneSyncService<Inbound, (), HandlerError>;

/// A handler from an async closure.
///
/// # Examples
/// ```
/// use herald_core::{handler_fn, HandlerError, Inbound};
/// let h = handler_fn(|inbound: Inbound| async move {
///     if inbound.message.payload.is_empty() {
///         return Err(HandlerError::permanent("empty payload"));
///     }
///     Ok(())
/// });
/// # let _ = h;
/// ```
pub fn handler_fn<F, Fut>(f: F) -> tower::util::ServiceFn<F>
where
    F: FnMut(Inbound) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    tower::service_fn(f)
}

/// A handler that decodes the payload as `E` with `codec` before calling `f`.
///
/// A payload that does not decode is a [`Permanent`](crate::ErrorClass::Permanent)
/// failure (straight to the dead-letter queue), except when a schema registry is
/// unreachable (transient).
///
/// # Examples
/// ```
/// use herald_core::{typed, Event, JsonCodec, Inbound};
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct OrderCreated { order_id: String }
/// impl Event for OrderCreated { const TYPE: &'static str = "OrderCreated"; const VERSION: u32 = 1; }
/// let h = typed(JsonCodec, |ev: OrderCreated, _inbound: Inbound| async move {
///     println!("order {}", ev.order_id);
///     Ok(())
/// });
/// # let _ = h;
/// ```
pub fn typed<E, C, F, Fut>(codec: C, f: F) -> Typed<E, C, F>
where
    E: Event,
    C: Codec,
    F: Fn(E, Inbound) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    Typed {
        codec: Arc::new(codec),
        f,
        _e: std::marker::PhantomData,
    }
}

/// See [`typed`].
pub struct Typed<E, C, F> {
    codec: Arc<C>,
    f: F,
    _e: std::marker::PhantomData<fn() -> E>,
}

impl<E, C, F: Clone> Clone for Typed<E, C, F> {
    fn clone(&self) -> Self {
        Self {
            codec: self.codec.clone(),
            f: self.f.clone(),
            _e: std::marker::PhantomData,
        }
    }
}

impl<E, C, F, Fut> Service<Inbound> for Typed<E, C, F>
where
    E: Event,
    C: Codec,
    F: Fn(E, Inbound) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    type Response = ();
    type Error = HandlerError;
    type Future = BoxFuture<'static, Result<(), HandlerError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, inbound: Inbound) -> Self::Future {
        let codec = self.codec.clone();
        let f = self.f.clone();
        Box::pin(async move {
            let event = codec.decode::<E>(&inbound.message.payload).await?;
            f(event, inbound).await
        })
    }
}
