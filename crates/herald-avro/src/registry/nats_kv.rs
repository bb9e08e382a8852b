//! A registry in a NATS JetStream key-value bucket — NATS has no schema registry of its own.
//!
//! Keys (subjects are escaped: bytes outside `[A-Za-z0-9_-]` become `=XX`):
//!
//! | Key | Value |
//! |-----|-------|
//! | `config` | `{"compatibility":"BACKWARD"}`: the default mode (absent: `BACKWARD`) |
//! | `ids.next` | the last id handed out, decimal |
//! | `ids.<id>` | the schema text |
//! | `fingerprints.<16 hex>` | the id of the schema with that normalized-form hash |
//! | `subjects.<escaped subject>` | `{"subject", "versions":[{"version","id"}], "compatibility"}` |
//!
//! Every read-modify-write is a compare-and-set on the key's revision, retried on conflict,
//! so several processes may register at once.

use std::fmt;

use async_nats::jetstream::{
    self,
    kv::{self, Operation},
    stream,
};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{BoxFuture, RegisteredSchema, SchemaRegistry};
use crate::{
    compat::{self, CompatibilityMode, SchemaVersion},
    error::{Error, ErrorKind, Result},
    schema::ParsedSchema,
};

const MAX_ATTEMPTS: usize = 32;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct SubjectDoc {
    subject: String,
    versions: Vec<VersionRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    compatibility: Option<CompatibilityMode>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct VersionRef {
    version: u32,
    id: u32,
}

#[derive(Serialize, Deserialize)]
struct ConfigDoc {
    compatibility: CompatibilityMode,
}

/// A [`SchemaRegistry`] in a JetStream KV bucket (layout in the [module docs](self)).
/// [`register`](SchemaRegistry::register) enforces the subject's mode with this crate's
/// [`compat`] checker.
///
/// # Examples
/// ```no_run
/// use herald_avro::{CompatibilityMode, NatsKvRegistry, SchemaRegistry};
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let registry = NatsKvRegistry::connect(client, "herald-schemas").await?;
/// registry.set_compatibility(Some("orders-value"), CompatibilityMode::Full).await?;
/// let id = registry.register("orders-value", r#""string""#).await?;
/// # Ok(()) }
/// ```
pub struct NatsKvRegistry {
    kv: kv::Store,
    bucket: String,
}

impl fmt::Debug for NatsKvRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsKvRegistry")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

fn nats(context: impl fmt::Display, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::new(ErrorKind::RegistryUnavailable, format!("{context}: {e}")).with_source(e)
}

fn escape(subject: &str) -> String {
    subject
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("={b:02X}"),
        })
        .collect()
}

fn subject_key(subject: &str) -> String {
    format!("subjects.{}", escape(subject))
}

fn fingerprint_key(schema: &ParsedSchema) -> String {
    format!("fingerprints.{:016x}", schema.fingerprint())
}

fn corrupt(key: &str, e: impl fmt::Display) -> Error {
    Error::new(
        ErrorKind::Registry,
        format!("KV key `{key}` holds an unexpected value: {e}"),
    )
}

impl NatsKvRegistry {
    /// Opens the bucket, creating it (file storage, history 1) if it does not exist.
    ///
    /// On servers older than 2.10, whose account info `async-nats` cannot parse,
    /// the bucket's stream is created directly with the settings of a KV bucket.
    pub async fn connect(client: async_nats::Client, bucket: &str) -> Result<Self> {
        let js = jetstream::new(client);
        if let Ok(kv) = js.get_key_value(bucket).await {
            return Ok(Self::new(kv, bucket));
        }
        let context = format_args!("creating KV bucket `{bucket}`");
        let config = kv::Config {
            bucket: bucket.to_owned(),
            description: "herald schema registry".into(),
            history: 1,
            ..Default::default()
        };
        let kv = match js.create_key_value(config).await {
            Ok(kv) => kv,
            Err(e) if e.kind() == jetstream::context::CreateKeyValueErrorKind::JetStream => {
                js.get_or_create_stream(stream::Config {
                    name: format!("KV_{bucket}"),
                    description: Some("herald schema registry".into()),
                    subjects: vec![format!("$KV.{bucket}.>")],
                    max_messages_per_subject: 1,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    discard: stream::DiscardPolicy::New,
                    ..Default::default()
                })
                .await
                .map_err(|e| nats(context, e))?;
                js.get_key_value(bucket)
                    .await
                    .map_err(|e| nats(context, e))?
            }
            Err(e) => return Err(nats(context, e)),
        };
        Ok(Self::new(kv, bucket))
    }

    /// Connects to the NATS server at `url` and opens (or creates) the bucket.
    pub async fn connect_url(url: &str, bucket: &str) -> Result<Self> {
        let client = async_nats::connect(url)
            .await
            .map_err(|e| nats(format_args!("connecting to {url}"), e))?;
        Self::connect(client, bucket).await
    }

    /// Wraps an open bucket.
    pub fn new(kv: kv::Store, bucket: impl Into<String>) -> Self {
        Self {
            kv,
            bucket: bucket.into(),
        }
    }

    /// The underlying store.
    pub fn store(&self) -> &kv::Store {
        &self.kv
    }

    /// Sets the mode of `subject`, or the registry's default when `None`.
    pub async fn set_compatibility(
        &self,
        subject: Option<&str>,
        mode: CompatibilityMode,
    ) -> Result<()> {
        let Some(subject) = subject else {
            let doc = serde_json::to_vec(&ConfigDoc {
                compatibility: mode,
            })
            .unwrap_or_default();
            self.kv
                .put("config", doc.into())
                .await
                .map_err(|e| nats("writing `config`", e))?;
            return Ok(());
        };
        self.update_subject(subject, |doc| {
            doc.compatibility = Some(mode);
            Ok(true)
        })
        .await
    }

    async fn entry(&self, key: &str) -> Result<Option<(Bytes, u64)>> {
        let e = self
            .kv
            .entry(key)
            .await
            .map_err(|e| nats(format_args!("reading `{key}`"), e))?;
        Ok(e.filter(|e| e.operation == Operation::Put)
            .map(|e| (e.value, e.revision)))
    }

    async fn json<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<(T, u64)>> {
        match self.entry(key).await? {
            None => Ok(None),
            Some((v, rev)) => serde_json::from_slice(&v)
                .map(|t| Some((t, rev)))
                .map_err(|e| corrupt(key, e)),
        }
    }

    async fn subject_doc(&self, subject: &str) -> Result<SubjectDoc> {
        self.json::<SubjectDoc>(&subject_key(subject))
            .await?
            .map(|d| d.0)
            .filter(|d| !d.versions.is_empty())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::UnknownSubject,
                    format!("no subject `{subject}` in bucket `{}`", self.bucket),
                )
            })
    }

    async fn default_mode(&self) -> Result<CompatibilityMode> {
        Ok(self
            .json::<ConfigDoc>("config")
            .await?
            .map(|c| c.0.compatibility)
            .unwrap_or_default())
    }

    /// Writes `value` at `key` only if the key is still at `revision` (`None`: absent).
    /// `Ok(false)` means someone else wrote first.
    async fn cas(&self, key: &str, value: Vec<u8>, revision: Option<u64>) -> Result<bool> {
        let done = match revision {
            Some(rev) => match self.kv.update(key, value.into(), rev).await {
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => return Ok(false),
                r => r
                    .map_err(|e| nats(format_args!("updating `{key}`"), e))
                    .map(drop),
            },
            None => match self.kv.create(key, value.into()).await {
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => return Ok(false),
                r => r
                    .map_err(|e| nats(format_args!("creating `{key}`"), e))
                    .map(drop),
            },
        };
        done.map(|()| true)
    }

    /// Read-modify-write of a subject's document; `change` returns whether to write.
    async fn update_subject(
        &self,
        subject: &str,
        mut change: impl FnMut(&mut SubjectDoc) -> Result<bool>,
    ) -> Result<()> {
        let key = subject_key(subject);
        for _ in 0..MAX_ATTEMPTS {
            let (mut doc, rev) = match self.json::<SubjectDoc>(&key).await? {
                Some((d, rev)) => (d, Some(rev)),
                None => (
                    SubjectDoc {
                        subject: subject.to_owned(),
                        ..Default::default()
                    },
                    None,
                ),
            };
            if !change(&mut doc)? {
                return Ok(());
            }
            let bytes = serde_json::to_vec(&doc).map_err(|e| corrupt(&key, e))?;
            if self.cas(&key, bytes, rev).await? {
                return Ok(());
            }
        }
        Err(Error::new(
            ErrorKind::Registry,
            format!("`{key}` kept changing under contention"),
        ))
    }

    /// The id of `schema`, handing out a new one (CAS on `ids.next`) if it was never stored.
    async fn id_for(&self, schema: &ParsedSchema) -> Result<u32> {
        let fp_key = fingerprint_key(schema);
        if let Some(id) = self.json::<u32>(&fp_key).await? {
            return Ok(id.0);
        }
        let id = loop {
            let current = self.json::<u32>("ids.next").await?;
            let next = current.map_or(1, |c| c.0 + 1);
            if self
                .cas(
                    "ids.next",
                    next.to_string().into_bytes(),
                    current.map(|c| c.1),
                )
                .await?
            {
                break next;
            }
        };
        self.kv
            .put(format!("ids.{id}"), Bytes::from(schema.text().to_owned()))
            .await
            .map_err(|e| nats(format_args!("writing `ids.{id}`"), e))?;
        if self.cas(&fp_key, id.to_string().into_bytes(), None).await? {
            Ok(id)
        } else {
            // Registered concurrently under another id: use that one.
            self.json::<u32>(&fp_key)
                .await?
                .map(|v| v.0)
                .ok_or_else(|| Error::new(ErrorKind::Registry, format!("`{fp_key}` vanished")))
        }
    }

    async fn registered(&self, subject: &str, v: VersionRef) -> Result<RegisteredSchema> {
        Ok(RegisteredSchema {
            subject: subject.to_owned(),
            id: v.id,
            version: v.version,
            schema: self.schema_text(v.id).await?,
        })
    }

    async fn schema_text(&self, id: u32) -> Result<String> {
        let key = format!("ids.{id}");
        let (bytes, _) = self.entry(&key).await?.ok_or_else(|| {
            Error::new(
                ErrorKind::UnknownSchemaId,
                format!("no schema with id {id} in bucket `{}`", self.bucket),
            )
        })?;
        String::from_utf8(bytes.to_vec()).map_err(|e| corrupt(&key, e))
    }

    async fn register_inner(&self, subject: &str, text: &str) -> Result<u32> {
        let schema = ParsedSchema::parse(text)?;
        for _ in 0..MAX_ATTEMPTS {
            let key = subject_key(subject);
            let (doc, rev) = match self.json::<SubjectDoc>(&key).await? {
                Some((d, r)) => (d, Some(r)),
                None => (SubjectDoc::default(), None),
            };
            let known = self
                .json::<u32>(&fingerprint_key(&schema))
                .await?
                .map(|v| v.0);
            if let Some(v) = doc.versions.iter().find(|v| Some(v.id) == known) {
                return Ok(v.id);
            }
            let mode = match doc.compatibility {
                Some(m) => m,
                None => self.default_mode().await?,
            };
            let mut previous = Vec::with_capacity(doc.versions.len());
            for v in &doc.versions {
                previous.push((
                    format!("v{}", v.version),
                    ParsedSchema::parse(&self.schema_text(v.id).await?)?,
                ));
            }
            let previous: Vec<_> = previous
                .iter()
                .map(|(label, schema)| SchemaVersion { label, schema })
                .collect();
            let new = SchemaVersion {
                label: "new",
                schema: &schema,
            };
            let violations = compat::check(mode, new, &previous);
            if !violations.is_empty() {
                return Err(Error::new(
                    ErrorKind::Incompatible,
                    format!(
                        "schema breaks {mode} for `{subject}`: {} ({} violations)",
                        violations[0].message,
                        violations.len()
                    ),
                )
                .with_violations(violations));
            }
            let id = self.id_for(&schema).await?;
            let mut doc = doc;
            doc.subject = subject.to_owned();
            let version = doc.versions.last().map_or(1, |v| v.version + 1);
            doc.versions.push(VersionRef { version, id });
            let bytes = serde_json::to_vec(&doc).map_err(|e| corrupt(&key, e))?;
            if self.cas(&key, bytes, rev).await? {
                return Ok(id);
            }
        }
        Err(Error::new(
            ErrorKind::Registry,
            format!("subject `{subject}` kept changing under contention"),
        ))
    }
}

impl SchemaRegistry for NatsKvRegistry {
    fn register<'a>(&'a self, subject: &'a str, schema: &'a str) -> BoxFuture<'a, Result<u32>> {
        Box::pin(self.register_inner(subject, schema))
    }

    fn lookup<'a>(
        &'a self,
        subject: &'a str,
        schema: &'a str,
    ) -> BoxFuture<'a, Result<RegisteredSchema>> {
        Box::pin(async move {
            let parsed = ParsedSchema::parse(schema)?;
            let doc = self.subject_doc(subject).await?;
            let id = self
                .json::<u32>(&fingerprint_key(&parsed))
                .await?
                .map(|v| v.0);
            let v = doc
                .versions
                .iter()
                .rev()
                .find(|v| Some(v.id) == id)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::UnknownSubject,
                        format!("subject `{subject}` does not hold this schema"),
                    )
                })?;
            self.registered(subject, *v).await
        })
    }

    fn schema_by_id(&self, id: u32) -> BoxFuture<'_, Result<String>> {
        Box::pin(self.schema_text(id))
    }

    fn latest<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<RegisteredSchema>> {
        Box::pin(async move {
            let doc = self.subject_doc(subject).await?;
            let v = *doc
                .versions
                .last()
                .ok_or_else(|| Error::new(ErrorKind::UnknownSubject, subject.to_owned()))?;
            self.registered(subject, v).await
        })
    }

    fn version<'a>(
        &'a self,
        subject: &'a str,
        version: u32,
    ) -> BoxFuture<'a, Result<RegisteredSchema>> {
        Box::pin(async move {
            let doc = self.subject_doc(subject).await?;
            let v = *doc
                .versions
                .iter()
                .find(|v| v.version == version)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::UnknownSubject,
                        format!("subject `{subject}` has no version {version}"),
                    )
                })?;
            self.registered(subject, v).await
        })
    }

    fn versions<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<Vec<u32>>> {
        Box::pin(async move {
            Ok(self
                .subject_doc(subject)
                .await?
                .versions
                .iter()
                .map(|v| v.version)
                .collect())
        })
    }

    fn compatibility<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<CompatibilityMode>> {
        Box::pin(async move {
            let own = self
                .json::<SubjectDoc>(&subject_key(subject))
                .await?
                .and_then(|d| d.0.compatibility);
            match own {
                Some(m) => Ok(m),
                None => self.default_mode().await,
            }
        })
    }
}
