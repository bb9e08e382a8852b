//! Routing by CloudEvents type, shared by the bus, the saga engine and projections.

use std::{collections::HashMap, sync::Arc};

use herald_core::{BoxError, HandlerError, RouteInfo, handler::BoxHandler};

use crate::upcast::parse_ce_type;

/// Wraps each route's handler in middleware: called once per route with the route's
/// identity and the bare handler, returns the handler to run.
///
/// This is how a component's routes get the same policy as any other route — typically
/// the core `dead_letter` / `retry` stack, so a failing subscriber's message goes to
/// `<topic>.dlq` instead of blocking its group:
///
/// ```
/// use herald_core::handler::BoxHandler;
/// use herald_patterns::Middleware;
/// let mw = Middleware::new(|route, handler: BoxHandler| {
///     tracing::debug!(route = %route.handler, "wiring");
///     handler
/// });
/// # let _ = mw;
/// ```
#[derive(Clone)]
pub struct Middleware(Arc<WrapFn>);

type WrapFn = dyn Fn(&RouteInfo, BoxHandler) -> BoxHandler + Send + Sync;

impl std::fmt::Debug for Middleware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Middleware(..)")
    }
}

impl Middleware {
    /// Middleware from a function of the route and its handler.
    pub fn new(f: impl Fn(&RouteInfo, BoxHandler) -> BoxHandler + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// Middleware from a tower [`Layer`](tower_layer::Layer) applied to every route.
    ///
    /// The layer's service must keep the handler contract (`Inbound` in, `()` out,
    /// `HandlerError` on failure) and be `Clone + Send + Sync`.
    pub fn layer<L>(layer: L) -> Self
    where
        L: tower_layer::Layer<BoxHandler> + Send + Sync + 'static,
        L::Service: tower::Service<herald_core::Inbound, Response = (), Error = HandlerError>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as tower::Service<herald_core::Inbound>>::Future: Send + 'static,
    {
        Self::new(move |_, h| BoxHandler::new(layer.layer(h)))
    }

    /// Applies the middleware.
    pub fn apply(&self, route: &RouteInfo, handler: BoxHandler) -> BoxHandler {
        (self.0)(route, handler)
    }
}

/// Items keyed by the CloudEvents types they accept, with a fallback on the type name
/// for versions not listed.
pub(crate) struct TypeTable<T> {
    exact: HashMap<String, Vec<T>>,
    by_name: HashMap<String, Vec<T>>,
}

impl<T> Default for TypeTable<T> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            by_name: HashMap::new(),
        }
    }
}

impl<T: Clone> TypeTable<T> {
    /// Registers `item` for every type in `accepts` and for the type name `name`.
    pub(crate) fn insert(&mut self, accepts: &[String], name: &str, item: T) {
        for t in accepts {
            self.exact.entry(t.clone()).or_default().push(item.clone());
        }
        self.by_name.entry(name.to_owned()).or_default().push(item);
    }

    /// Items for a message of CloudEvents type `ce_type` (none for a message without one).
    pub(crate) fn lookup(&self, ce_type: Option<&str>) -> &[T] {
        let Some(t) = ce_type else { return &[] };
        if let Some(v) = self.exact.get(t) {
            return v;
        }
        parse_ce_type(t)
            .and_then(|(name, _)| self.by_name.get(name))
            .map_or(&[], Vec::as_slice)
    }
}

/// Keeps names usable as consumer groups on every transport: ASCII letters, digits, `-`
/// and `_`; anything else becomes `-`.
pub(crate) fn group_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

pub(crate) fn transient(e: impl Into<BoxError>) -> HandlerError {
    HandlerError::from_error(herald_core::ErrorClass::Transient, e)
}

/// Milliseconds since the Unix epoch: the clock persisted deadlines use, shared by every
/// process that reads the store.
pub(crate) fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_falls_back_on_the_name() {
        let mut t = TypeTable::default();
        t.insert(&["a.A.v2".into(), "old.A.v1".into()], "a.A", 1);
        t.insert(&["b.B.v1".into()], "b.B", 2);
        assert_eq!(t.lookup(Some("a.A.v2")), &[1]);
        assert_eq!(t.lookup(Some("old.A.v1")), &[1]);
        assert_eq!(t.lookup(Some("a.A.v9")), &[1]);
        assert_eq!(t.lookup(Some("c.C.v1")), &[] as &[i32]);
        assert_eq!(t.lookup(None), &[] as &[i32]);
    }

    #[test]
    fn group_names_are_portable() {
        assert_eq!(group_name("orders.view v2"), "orders-view-v2");
    }
}
