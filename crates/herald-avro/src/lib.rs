//! Avro for herald: a codec writing the Confluent wire format, schema registries, and a
//! compatibility checker that reports every violation with a rule id and a path.
//!
//! **Highlights**
//! - [`AvroCodec`]: serde types ⇄ `0x00 | schema id (4 B, big-endian) | Avro datum`, with the
//!   writer's schema fetched by id (cached) and resolved against the reader's, so a consumer
//!   on v2 reads v1 data and the reverse. Implements [`herald_core::Codec`].
//! - Typed errors ([`Error`] / [`ErrorKind`]) for a wrong magic byte, a truncated header, an
//!   unknown id, a datum that does not match its schema, an unreachable registry — never a
//!   panic, and garbage lengths never drive allocations ([`wire::check_datum`]).
//! - One [`SchemaRegistry`] trait, three registries: [`ConfluentRegistry`] (REST),
//!   [`DirectoryRegistry`] (`schemas/<subject>/v<N>.avsc`), [`NatsKvRegistry`] (JetStream KV).
//! - [`compat`]: all seven Confluent modes by Avro's resolution rules — aliases, defaults,
//!   promotions, enum defaults, unions, recursive types — all violations, not the first.
//!
//! **Non-goals**: Avro object container files, schema references across subjects
//! (`references` in Confluent's API), Protobuf and JSON Schema, a registry server.
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use herald_avro::{AvroCodec, DirectoryRegistry, ParsedSchema, BoundSchema};
//! # let dir = std::env::temp_dir().join(format!("herald-avro-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(dir.join("orders-value")).unwrap();
//! # std::fs::write(dir.join("orders-value/v1.avsc"),
//! #   r#"{"type":"record","name":"OrderCreated","fields":[{"name":"id","type":"string"}]}"#).unwrap();
//! #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
//! struct OrderCreated { id: String }
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let registry = Arc::new(DirectoryRegistry::open(&dir)?);
//! let codec = AvroCodec::new(registry).auto_register(false);
//! let schema = Arc::new(ParsedSchema::parse(
//!     r#"{"type":"record","name":"OrderCreated","fields":[{"name":"id","type":"string"}]}"#)?);
//! let bound: BoundSchema = codec.bind("orders", schema.clone()).await?; // looks up the id
//! let frame = bound.encode(&OrderCreated { id: "o-1".into() })?;
//! assert_eq!(frame[0], 0x00);
//! let back: OrderCreated = codec.decode_with(&schema, &frame).await?;
//! assert_eq!(back, OrderCreated { id: "o-1".into() });
//! # Ok::<_, herald_avro::Error>(()) }).unwrap();
//! ```
//!
//! # The wire format
//! A frame is the magic byte `0x00`, the schema id as a big-endian `u32`, then the Avro
//! binary datum. Before decoding, the datum is walked against the writer's schema with
//! every length bounded by the bytes left. See [`wire`].
//!
//! # Registries
//! [`SchemaRegistry`] is async and object-safe (boxed futures): register, look up, get by
//! id, latest, one version, all versions, the subject's mode. Subjects come from a
//! [`SubjectNameStrategy`]: `<topic>-value`, the record name, or both. See [`registry`].
//!
//! # Compatibility
//! [`compat::check`] judges a new schema against earlier versions under a
//! [`CompatibilityMode`]; [`compat::can_read`] answers for one reader/writer pair. Each
//! [`Violation`] has a [`Rule`] id (`READER_FIELD_MISSING_DEFAULT`, `TYPE_MISMATCH`, …), the
//! JSON path in the reader's schema, the versions compared and a one-line message. See
//! [`compat`].
//!
//! # Diffs
//! [`diff::diff`] lists fields added, removed and changed between two schemas. See [`diff`].
//!
//! # Feature flags
//! | Feature | Effect | Default |
//! |---------|--------|---------|
//! | `native-tls` | HTTPS to the Confluent registry via the platform's TLS | no |

pub mod codec;
pub mod compat;
pub mod diff;
mod error;
pub mod registry;
mod schema;
pub mod wire;

pub use apache_avro::types::Value;
#[doc(inline)]
pub use codec::{AvroCodec, BoundSchema};
pub use compat::{CompatibilityMode, Rule, Violation};
pub use error::{BoxError, Error, ErrorKind, Result};
#[doc(inline)]
pub use registry::{
    ConfluentConfig, ConfluentRegistry, DirectoryRegistry, NatsKvRegistry, RegisteredSchema,
    SchemaRegistry, SubjectNameStrategy,
};
pub use schema::{ParsedSchema, Schema};
