//! [`AvroCodec`]: typed events to Confluent-framed Avro and back, through a registry.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, PoisonError, RwLock},
};

use apache_avro::{reader::datum::GenericDatumReader, types::Value, write_avro_datum_ref};
use bytes::Bytes;
use herald_core::{Codec, CodecError, Event};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::OnceCell;

use crate::{
    error::{Error, ErrorKind, Result},
    registry::{SchemaRegistry, SubjectNameStrategy},
    schema::ParsedSchema,
    wire,
};

/// A schema with the registry id it is written under: what a producer encodes with.
#[derive(Clone, Debug)]
pub struct BoundSchema {
    subject: String,
    id: u32,
    schema: Arc<ParsedSchema>,
}

impl BoundSchema {
    /// Binds `schema` to an id the caller already knows (no registry involved).
    pub fn new(subject: impl Into<String>, id: u32, schema: Arc<ParsedSchema>) -> Self {
        Self {
            subject: subject.into(),
            id,
            schema,
        }
    }

    /// The subject it was registered or found under.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The schema id written into each frame.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The schema.
    pub fn schema(&self) -> &Arc<ParsedSchema> {
        &self.schema
    }

    /// Encodes `value` (any serde type shaped like the schema) as one Confluent frame.
    /// Synchronous: the id is already known.
    ///
    /// # Errors
    /// [`ErrorKind::Encode`] when the value does not fit the schema.
    pub fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>> {
        let mut out = wire::frame(self.id, &[]);
        write_avro_datum_ref(
            self.schema.schema(),
            &self.schema.names_ref(),
            value,
            &mut out,
        )
        .map_err(|e| {
            Error::avro(
                ErrorKind::Encode,
                format_args!("encoding for `{}`", self.subject),
                e,
            )
        })?;
        Ok(out)
    }
}

struct EventBinding {
    topic: String,
    schema: Arc<ParsedSchema>,
    bound: OnceCell<BoundSchema>,
}

/// A small read-mostly cache.
struct Cache<K, V>(RwLock<HashMap<K, V>>);

impl<K: Eq + Hash, V: Clone> Cache<K, V> {
    fn get(&self, k: &K) -> Option<V> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(k)
            .cloned()
    }
    fn put(&self, k: K, v: V) -> V {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(k)
            .or_insert(v)
            .clone()
    }
}

impl<K, V> Default for Cache<K, V> {
    fn default() -> Self {
        Self(RwLock::new(HashMap::new()))
    }
}

/// Encodes and decodes Avro in the Confluent wire format, fetching writers' schemas from a
/// [`SchemaRegistry`] by id (cached for the codec's lifetime) and resolving them against the
/// reader's schema, so a consumer on v2 reads v1 data and the reverse.
///
/// Two ways to use it:
/// - **Explicit schemas**: [`bind`](Self::bind) a schema once (registering it or looking it
///   up), [`BoundSchema::encode`] values with it, [`decode_with`](Self::decode_with) a
///   reader schema.
/// - **[`herald_core::Codec`]**: declare each event type's schema with
///   [`with_event`](Self::with_event); `encode::<E>` binds on first use, `decode::<E>` reads
///   with `E`'s schema.
///
/// # Examples
/// ```no_run
/// use std::sync::Arc;
/// use herald_avro::{AvroCodec, ParsedSchema, ConfluentRegistry};
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct OrderCreated { order_id: String }
/// # async fn f() -> herald_avro::Result<()> {
/// let codec = AvroCodec::new(Arc::new(ConfluentRegistry::new("http://localhost:8081")?));
/// let schema = Arc::new(ParsedSchema::parse(r#"{"type":"record","name":"OrderCreated",
///     "fields":[{"name":"order_id","type":"string"}]}"#)?);
/// let bound = codec.bind("orders.order-created", schema.clone()).await?; // registers
/// let frame = bound.encode(&OrderCreated { order_id: "o-1".into() })?;
/// let back: OrderCreated = codec.decode_with(&schema, &frame).await?;
/// # Ok(()) }
/// ```
pub struct AvroCodec {
    registry: Arc<dyn SchemaRegistry>,
    strategy: SubjectNameStrategy,
    auto_register: bool,
    events: HashMap<&'static str, EventBinding>,
    writers: Cache<u32, Arc<ParsedSchema>>,
    /// Writer schemas with a reader's field aliases applied, by (id, reader fingerprint).
    prepared: Cache<(u32, u64), Arc<ParsedSchema>>,
}

impl std::fmt::Debug for AvroCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroCodec")
            .field("registry", &self.registry)
            .field("strategy", &self.strategy)
            .field("auto_register", &self.auto_register)
            .field("events", &self.events.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl AvroCodec {
    /// A codec over `registry`, naming subjects by topic and registering schemas on bind.
    pub fn new(registry: Arc<dyn SchemaRegistry>) -> Self {
        Self {
            registry,
            strategy: SubjectNameStrategy::default(),
            auto_register: true,
            events: HashMap::new(),
            writers: Cache::default(),
            prepared: Cache::default(),
        }
    }

    /// How subjects are named (default: [`SubjectNameStrategy::TopicName`]).
    pub fn subject_name_strategy(mut self, strategy: SubjectNameStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Whether [`bind`](Self::bind) registers a schema (default) or only looks it up, as
    /// a producer without write access to the registry must.
    pub fn auto_register(mut self, yes: bool) -> Self {
        self.auto_register = yes;
        self
    }

    /// Declares the schema of event type `E`, published to `topic`, for the
    /// [`Codec`] implementation.
    pub fn with_event<E: Event>(
        mut self,
        topic: impl Into<String>,
        schema: Arc<ParsedSchema>,
    ) -> Self {
        let binding = EventBinding {
            topic: topic.into(),
            schema,
            bound: OnceCell::new(),
        };
        self.events.insert(E::TYPE, binding);
        self
    }

    /// The registry.
    pub fn registry(&self) -> &Arc<dyn SchemaRegistry> {
        &self.registry
    }

    /// Finds the id of `schema` for `topic` (subject per the naming strategy), registering
    /// it when auto-registration is on.
    ///
    /// # Errors
    /// Registry errors; [`ErrorKind::InvalidSchema`] for a strategy that needs a record name
    /// when the schema has none.
    pub async fn bind(&self, topic: &str, schema: Arc<ParsedSchema>) -> Result<BoundSchema> {
        let name = schema.full_name();
        let subject = match (self.strategy, name) {
            (SubjectNameStrategy::TopicName, _) => self.strategy.subject(topic, ""),
            (_, Some(name)) => self.strategy.subject(topic, &name),
            (_, None) => {
                return Err(Error::new(
                    ErrorKind::InvalidSchema,
                    format!("{:?} needs a named schema", self.strategy),
                ));
            }
        };
        let id = if self.auto_register {
            self.registry.register(&subject, schema.text()).await?
        } else {
            self.registry.lookup(&subject, schema.text()).await?.id
        };
        self.writers.put(id, schema.clone());
        Ok(BoundSchema::new(subject, id, schema))
    }

    /// The writer's schema with this id, from the cache or the registry.
    pub async fn writer_schema(&self, id: u32) -> Result<Arc<ParsedSchema>> {
        if let Some(s) = self.writers.get(&id) {
            return Ok(s);
        }
        let text = self.registry.schema_by_id(id).await?;
        let parsed = ParsedSchema::parse(&text).map_err(|e| {
            Error::new(
                ErrorKind::InvalidSchema,
                format!("registry schema id {id}: {}", e.message()),
            )
        })?;
        Ok(self.writers.put(id, Arc::new(parsed)))
    }

    /// Decodes a frame into a generic Avro value — in the reader's shape if `reader` is given,
    /// else in the writer's.
    ///
    /// # Errors
    /// [`ErrorKind::WrongMagicByte`], [`ErrorKind::TruncatedHeader`],
    /// [`ErrorKind::UnknownSchemaId`], [`ErrorKind::InvalidDatum`] (also when the writer's
    /// schema cannot be resolved to the reader's), registry errors. Never panics and never
    /// allocates more than the frame's size justifies (see [`wire::check_datum`]).
    pub async fn decode_value(
        &self,
        reader: Option<&ParsedSchema>,
        payload: &[u8],
    ) -> Result<Value> {
        let (id, datum) = wire::split(payload)?;
        let writer = self.writer_schema(id).await?;
        wire::check_datum(&writer, datum)?;
        match reader {
            Some(r) if r.fingerprint() != writer.fingerprint() => {
                let prepared = self.prepared(id, &writer, r)?;
                read(&prepared, Some(r), datum)
            }
            _ => read(&writer, None, datum),
        }
    }

    /// Decodes a frame into `T`, reading with `reader` (`T`'s schema).
    ///
    /// # Errors
    /// As [`decode_value`](Self::decode_value), plus [`ErrorKind::InvalidDatum`] when the
    /// value does not deserialize into `T`.
    pub async fn decode_with<T: DeserializeOwned>(
        &self,
        reader: &ParsedSchema,
        payload: &[u8],
    ) -> Result<T> {
        let value = self.decode_value(Some(reader), payload).await?;
        apache_avro::from_value(&value).map_err(|e| {
            Error::avro(
                ErrorKind::InvalidDatum,
                "deserializing the resolved value",
                e,
            )
        })
    }

    fn prepared(
        &self,
        id: u32,
        writer: &Arc<ParsedSchema>,
        reader: &ParsedSchema,
    ) -> Result<Arc<ParsedSchema>> {
        let key = (id, reader.fingerprint());
        if let Some(p) = self.prepared.get(&key) {
            return Ok(p);
        }
        let p = match writer.with_reader_aliases(reader)? {
            Some(renamed) => Arc::new(renamed),
            None => writer.clone(),
        };
        Ok(self.prepared.put(key, p))
    }

    fn event<E: Event>(&self) -> Result<&EventBinding> {
        self.events.get(E::TYPE).ok_or_else(|| {
            Error::new(
                ErrorKind::UnknownEventType,
                format!(
                    "no Avro schema declared for `{}`: call AvroCodec::with_event",
                    E::TYPE
                ),
            )
        })
    }
}

/// Decodes a checked datum with `writer`, resolving to `reader` when given.
fn read(writer: &ParsedSchema, reader: Option<&ParsedSchema>, mut datum: &[u8]) -> Result<Value> {
    GenericDatumReader::builder(writer.schema())
        .maybe_reader_schema(reader.map(ParsedSchema::schema))
        .build()
        .and_then(|r| r.read_value(&mut datum))
        .map_err(|e| {
            let context = match reader {
                Some(r) => format!(
                    "reading {:?} data as {:?}",
                    writer.full_name(),
                    r.full_name()
                ),
                None => format!("reading {:?} data", writer.full_name()),
            };
            Error::avro(ErrorKind::InvalidDatum, context, e)
        })
}

/// The content type [`AvroCodec`] writes: Avro, in the Confluent frame.
pub const CONTENT_TYPE: &str = "application/avro";

impl Codec for AvroCodec {
    fn content_type(&self) -> &str {
        CONTENT_TYPE
    }

    /// Binds `E`'s declared schema on first use (register or look up), then encodes.
    async fn encode<E: Event>(&self, event: &E) -> Result<Bytes, CodecError> {
        let b = self.event::<E>()?;
        let bound = b
            .bound
            .get_or_try_init(|| self.bind(&b.topic, b.schema.clone()))
            .await?;
        Ok(Bytes::from(bound.encode(event)?))
    }

    /// Reads the frame with `E`'s declared schema as the reader's.
    async fn decode<E: Event>(&self, payload: &Bytes) -> Result<E, CodecError> {
        let b = self.event::<E>()?;
        Ok(self.decode_with::<E>(&b.schema, payload).await?)
    }
}
