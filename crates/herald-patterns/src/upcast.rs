//! Upcasting: turn an old version of an event into the current one before a handler sees it.
//!
//! Avro schema resolution already bridges many changes (a field added with a default, a
//! field removed, a widened number). An upcaster covers what resolution cannot express:
//! a field split in two, a unit change (`total` in euros → `total_cents`), a renamed
//! type, a value computed from several old fields, a default that depends on the data.
//!
//! An [`Upcaster<E>`] decodes any version it knows — chosen by the message's CloudEvents
//! `type`, `<TYPE>.v<N>` — into the old Rust type with the codec, then runs the chain of
//! conversion steps up to `E`:
//!
//! ```text
//!  ce-type OrderPlaced.v1 ──decode──▶ OrderPlacedV1 ──step──▶ OrderPlacedV2 ──step──▶ OrderPlacedV3 ──▶ handler
//!  ce-type OrderPlaced.v2 ──decode──────────────────────────▶ OrderPlacedV2 ──step──▶ OrderPlacedV3 ──▶ handler
//!  ce-type OrderPlaced.v3 ──decode────────────────────────────────────────────────▶ OrderPlacedV3 ──▶ handler
//! ```
//!
//! A version with the current type name that the chain does not list (a newer producer)
//! is decoded as the current type, best effort (JSON ignores unknown fields; Avro resolves
//! the writer's schema). A type the chain does not know at all is a
//! [`CodecErrorKind::UnknownSchema`] error — permanent, so the message goes to the
//! dead-letter queue rather than being retried.
//!
//! Use it directly with [`upcasted`] (a router handler, like `herald_core::typed`), or
//! register chains in an [`Upcasters`] set that the [event bus](crate::bus), the
//! [saga engine](crate::saga) and [projections](crate::cqrs) consult for every type they
//! decode.
//!
//! # Examples
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use herald_core::{Codec, Event, JsonCodec};
//! use herald_patterns::upcast::Upcaster;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct PlacedV1 { id: String, total_euros: f64 }
//! impl Event for PlacedV1 { const TYPE: &'static str = "shop.OrderPlaced"; const VERSION: u32 = 1; }
//!
//! #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
//! struct PlacedV2 { id: String, total_cents: i64 }
//! impl Event for PlacedV2 { const TYPE: &'static str = "shop.OrderPlaced"; const VERSION: u32 = 2; }
//!
//! let chain = Upcaster::<PlacedV2>::new(JsonCodec)
//!     .step(|v1: PlacedV1| PlacedV2 { id: v1.id, total_cents: (v1.total_euros * 100.0).round() as i64 })
//!     .build();
//!
//! let old = JsonCodec.to_message(&PlacedV1 { id: "o-1".into(), total_euros: 12.5 }).await?;
//! let ev = chain.decode(&old).await?;
//! assert_eq!(ev, PlacedV2 { id: "o-1".into(), total_cents: 1250 });
//! # Ok(()) }
//! ```

use std::{
    any::{Any, TypeId},
    collections::HashMap,
    fmt,
    future::Future,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use futures::future::BoxFuture;
use herald_core::{
    Codec, CodecError, CodecErrorKind, Event, HandlerError, Inbound, JsonCodec, Message,
};
use tower::Service;

/// Splits a CloudEvents type `<TYPE>.v<N>` into the type name and the version.
///
/// # Examples
/// ```
/// use herald_patterns::upcast::parse_ce_type;
/// assert_eq!(parse_ce_type("shop.OrderPlaced.v2"), Some(("shop.OrderPlaced", 2)));
/// assert_eq!(parse_ce_type("shop.OrderPlaced"), None);
/// assert_eq!(parse_ce_type("shop.OrderPlaced.v+2"), None);
/// ```
pub fn parse_ce_type(ce_type: &str) -> Option<(&str, u32)> {
    let (name, v) = ce_type.rsplit_once(".v")?;
    if name.is_empty() || v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((name, v.parse().ok()?))
}

type DecodeOld<E> = Arc<dyn Fn(Bytes) -> BoxFuture<'static, Result<E, CodecError>> + Send + Sync>;

/// Decodes every known version of `E` and upcasts it to `E`; see the [module docs](self).
///
/// Cheap to clone.
pub struct Upcaster<E, C = JsonCodec> {
    codec: Arc<C>,
    /// Old CloudEvents types → decoder into `E`.
    old: Arc<HashMap<String, DecodeOld<E>>>,
}

impl<E, C> Clone for Upcaster<E, C> {
    fn clone(&self) -> Self {
        Self {
            codec: self.codec.clone(),
            old: self.old.clone(),
        }
    }
}

impl<E, C> fmt::Debug for Upcaster<E, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut from: Vec<_> = self.old.keys().collect();
        from.sort();
        f.debug_struct("Upcaster")
            .field("target", &std::any::type_name::<E>())
            .field("from", &from)
            .finish()
    }
}

impl<E: Event, C: Codec> Upcaster<E, C> {
    /// Starts a chain whose current (target) version is `E`; add older versions with
    /// [`UpcastBuilder::step`], newest first.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(codec: C) -> UpcastBuilder<E, E, C> {
        UpcastBuilder {
            codec: Arc::new(codec),
            old: HashMap::new(),
            to_current: Arc::new(|e| e),
        }
    }

    /// A chain with no older versions: decodes `E` only.
    pub fn identity(codec: Arc<C>) -> Self {
        Self {
            codec,
            old: Arc::new(HashMap::new()),
        }
    }

    /// The CloudEvents types this chain decodes: the current one first, then the old ones.
    pub fn accepts(&self) -> Vec<String> {
        let mut v = vec![E::ce_type()];
        let mut old: Vec<_> = self.old.keys().cloned().collect();
        old.sort();
        v.extend(old);
        v
    }

    /// Whether a message with CloudEvents type `ce_type` is (some version of) `E`.
    pub fn matches(&self, ce_type: &str) -> bool {
        ce_type == E::ce_type()
            || self.old.contains_key(ce_type)
            || parse_ce_type(ce_type).is_some_and(|(name, _)| name == E::TYPE)
    }

    /// Decodes `message` into the current version, upcasting an old one.
    ///
    /// A message without a `ce-type` is decoded as the current version.
    pub fn decode(
        &self,
        message: &Message,
    ) -> impl Future<Output = Result<E, CodecError>> + Send + 'static {
        let codec = self.codec.clone();
        let payload = message.payload.clone();
        let ce_type = message.ce_type().map(str::to_owned);
        let old = ce_type.as_deref().and_then(|t| self.old.get(t)).cloned();
        async move {
            match (ce_type, old) {
                (_, Some(step)) => step(payload).await,
                (None, None) => codec.decode::<E>(&payload).await,
                (Some(t), None) if t == E::ce_type() => codec.decode::<E>(&payload).await,
                (Some(t), None) => match parse_ce_type(&t) {
                    // Same type, a version this chain does not list: a newer producer. Decode
                    // as the current version; the codec's resolution decides.
                    Some((name, _)) if name == E::TYPE => codec.decode::<E>(&payload).await,
                    _ => Err(CodecError::new(
                        CodecErrorKind::UnknownSchema,
                        format!("no upcaster from {t} to {}", E::ce_type()),
                    )),
                },
            }
        }
    }

    /// The codec.
    pub fn codec(&self) -> &Arc<C> {
        &self.codec
    }
}

/// Builds an [`Upcaster`]; `F` is the oldest version added so far.
pub struct UpcastBuilder<E, F, C> {
    codec: Arc<C>,
    old: HashMap<String, DecodeOld<E>>,
    to_current: Arc<dyn Fn(F) -> E + Send + Sync>,
}

impl<E, F, C> fmt::Debug for UpcastBuilder<E, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpcastBuilder")
            .field("from", &self.old.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl<E: Event, F: Event, C: Codec> UpcastBuilder<E, F, C> {
    /// Adds the version before `F`: messages of type `O::ce_type()` are decoded as `O`,
    /// turned into `F` by `f`, then up the rest of the chain.
    pub fn step<O, G>(self, f: G) -> UpcastBuilder<E, O, C>
    where
        O: Event,
        G: Fn(O) -> F + Send + Sync + 'static,
    {
        let rest = self.to_current.clone();
        let to_current: Arc<dyn Fn(O) -> E + Send + Sync> = Arc::new(move |o| rest(f(o)));
        let mut old = self.old;
        let codec = self.codec.clone();
        let conv = to_current.clone();
        old.insert(
            O::ce_type(),
            Arc::new(move |payload: Bytes| {
                let codec = codec.clone();
                let conv = conv.clone();
                Box::pin(async move {
                    let o = codec.decode::<O>(&payload).await?;
                    Ok(conv(o))
                })
            }),
        );
        UpcastBuilder {
            codec: self.codec,
            old,
            to_current,
        }
    }

    /// Finishes the chain.
    pub fn build(self) -> Upcaster<E, C> {
        Upcaster {
            codec: self.codec,
            old: Arc::new(self.old),
        }
    }
}

/// A set of upcast chains, one per current event type, consulted by the bus, the saga
/// engine and projections whenever they decode an event.
///
/// # Examples
/// ```
/// use herald_core::{Event, JsonCodec};
/// use herald_patterns::upcast::{Upcaster, Upcasters};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct V1 { a: i32 }
/// # impl Event for V1 { const TYPE: &'static str = "t.T"; const VERSION: u32 = 1; }
/// # #[derive(serde::Serialize, serde::Deserialize)] struct V2 { a: i64 }
/// # impl Event for V2 { const TYPE: &'static str = "t.T"; const VERSION: u32 = 2; }
/// let set = Upcasters::new().with(Upcaster::<V2>::new(JsonCodec).step(|v: V1| V2 { a: v.a.into() }).build());
/// assert!(set.get::<V2, JsonCodec>().is_some());
/// ```
#[derive(Clone, Default)]
pub struct Upcasters {
    chains: HashMap<(TypeId, TypeId), Arc<dyn Any + Send + Sync>>,
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upcasters")
            .field("chains", &self.chains.len())
            .finish()
    }
}

impl Upcasters {
    /// No chains.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (replaces) the chain for `E` with codec `C`.
    pub fn with<E: Event, C: Codec>(mut self, chain: Upcaster<E, C>) -> Self {
        self.insert(chain);
        self
    }

    /// Adds (replaces) the chain for `E` with codec `C`.
    pub fn insert<E: Event, C: Codec>(&mut self, chain: Upcaster<E, C>) {
        self.chains
            .insert((TypeId::of::<E>(), TypeId::of::<C>()), Arc::new(chain));
    }

    /// The chain for `E` with codec `C`, if one was added.
    pub fn get<E: Event, C: Codec>(&self) -> Option<Upcaster<E, C>> {
        self.chains
            .get(&(TypeId::of::<E>(), TypeId::of::<C>()))
            .and_then(|c| c.downcast_ref::<Upcaster<E, C>>())
            .cloned()
    }

    /// The chain for `E`, or one that decodes `E` only.
    pub fn for_type<E: Event, C: Codec>(&self, codec: &Arc<C>) -> Upcaster<E, C> {
        self.get::<E, C>()
            .unwrap_or_else(|| Upcaster::identity(codec.clone()))
    }
}

/// A router handler that decodes (and upcasts) the payload with `chain` before calling `f`
/// — [`herald_core::typed`] with versions.
///
/// A payload that does not decode, or a type the chain does not know, is a permanent
/// failure (dead-letter queue).
///
/// # Examples
/// ```
/// use herald_core::{Event, Inbound, JsonCodec};
/// use herald_patterns::upcast::{upcasted, Upcaster};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct V1 { a: i32 }
/// # impl Event for V1 { const TYPE: &'static str = "t.T"; const VERSION: u32 = 1; }
/// # #[derive(serde::Serialize, serde::Deserialize)] struct V2 { a: i64 }
/// # impl Event for V2 { const TYPE: &'static str = "t.T"; const VERSION: u32 = 2; }
/// let chain = Upcaster::<V2>::new(JsonCodec).step(|v: V1| V2 { a: v.a.into() }).build();
/// let handler = upcasted(chain, |ev: V2, _in: Inbound| async move { let _ = ev.a; Ok(()) });
/// # let _ = handler;
/// ```
pub fn upcasted<E, C, F, Fut>(chain: Upcaster<E, C>, f: F) -> Upcasted<E, C, F>
where
    E: Event,
    C: Codec,
    F: Fn(E, Inbound) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    Upcasted { chain, f }
}

/// See [`upcasted`].
pub struct Upcasted<E, C, F> {
    chain: Upcaster<E, C>,
    f: F,
}

impl<E, C, F: Clone> Clone for Upcasted<E, C, F> {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            f: self.f.clone(),
        }
    }
}

impl<E, C, F> fmt::Debug for Upcasted<E, C, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upcasted")
            .field("chain", &self.chain)
            .finish()
    }
}

impl<E, C, F, Fut> Service<Inbound> for Upcasted<E, C, F>
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
        let decode = self.chain.decode(&inbound.message);
        let f = self.f.clone();
        Box::pin(async move {
            let event = decode.await?;
            f(event, inbound).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct V1 {
        name: String,
    }
    impl Event for V1 {
        const TYPE: &'static str = "t.Customer";
        const VERSION: u32 = 1;
    }
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct V2 {
        first: String,
        last: String,
    }
    impl Event for V2 {
        const TYPE: &'static str = "t.Customer";
        const VERSION: u32 = 2;
    }
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct V3 {
        first: String,
        last: String,
        vip: bool,
    }
    impl Event for V3 {
        const TYPE: &'static str = "t.Customer";
        const VERSION: u32 = 3;
    }
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Other {
        x: i32,
    }
    impl Event for Other {
        const TYPE: &'static str = "t.Other";
        const VERSION: u32 = 1;
    }

    fn chain() -> Upcaster<V3> {
        Upcaster::<V3>::new(JsonCodec)
            .step(|v2: V2| V3 {
                vip: v2.last == "Lovelace",
                first: v2.first,
                last: v2.last,
            })
            .step(|v1: V1| {
                let (first, last) = v1.name.split_once(' ').unwrap_or((&v1.name, ""));
                V2 {
                    first: first.into(),
                    last: last.into(),
                }
            })
            .build()
    }

    #[tokio::test]
    async fn every_version_reaches_the_current_one() {
        let c = chain();
        let m1 = JsonCodec
            .to_message(&V1 {
                name: "Ada Lovelace".into(),
            })
            .await
            .unwrap();
        let want = V3 {
            first: "Ada".into(),
            last: "Lovelace".into(),
            vip: true,
        };
        assert_eq!(c.decode(&m1).await.unwrap(), want);
        let m2 = JsonCodec
            .to_message(&V2 {
                first: "Ada".into(),
                last: "Lovelace".into(),
            })
            .await
            .unwrap();
        assert_eq!(c.decode(&m2).await.unwrap(), want);
        let m3 = JsonCodec.to_message(&want).await.unwrap();
        assert_eq!(c.decode(&m3).await.unwrap(), want);
        assert_eq!(
            c.accepts(),
            vec!["t.Customer.v3", "t.Customer.v1", "t.Customer.v2"]
        );
    }

    #[tokio::test]
    async fn unknown_types_are_permanent_and_newer_versions_best_effort() {
        let c = chain();
        let other = JsonCodec.to_message(&Other { x: 1 }).await.unwrap();
        assert!(!c.matches("t.Other.v1"));
        let err = c.decode(&other).await.unwrap_err();
        assert_eq!(err.kind(), CodecErrorKind::UnknownSchema);
        assert_eq!(
            HandlerError::from(err).class(),
            herald_core::ErrorClass::Permanent
        );
        // A v4 producer that only added a field: decoded as v3.
        let v4 = Message::new(r#"{"first":"A","last":"B","vip":false,"tier":"gold"}"#)
            .with_type("t.Customer.v4");
        assert!(c.matches("t.Customer.v4"));
        assert_eq!(c.decode(&v4).await.unwrap().first, "A");
        // Garbage in an old version is a decode error, not a panic.
        let bad = Message::new("{").with_type("t.Customer.v1");
        assert_eq!(
            c.decode(&bad).await.unwrap_err().kind(),
            CodecErrorKind::Malformed
        );
    }

    #[test]
    fn registry_keeps_chains_by_type() {
        let set = Upcasters::new().with(chain());
        assert_eq!(set.get::<V3, JsonCodec>().unwrap().accepts().len(), 3);
        assert!(set.get::<V2, JsonCodec>().is_none());
        let id = set.for_type::<V2, JsonCodec>(&Arc::new(JsonCodec));
        assert_eq!(id.accepts(), vec!["t.Customer.v2"]);
    }
}
