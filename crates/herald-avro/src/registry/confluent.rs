//! The Confluent Schema Registry REST API, through `schema_registry_converter`.

use std::{fmt, time::Duration};

use schema_registry_converter::{
    async_impl::schema_registry::{
        SrSettings, get_all_versions, get_schema_by_id, get_schema_by_subject_and_version,
        perform_sr_call, post_schema,
    },
    error::SRCError,
    schema_registry_common::{
        RawError, RegisteredSchema as SrSchema, SchemaType, SrCall, SuppliedSchema,
    },
};
use serde::Deserialize;

use super::{BoxFuture, RegisteredSchema, SchemaRegistry};
use crate::{
    compat::CompatibilityMode,
    error::{Error, ErrorKind, Result},
};

/// How to reach a Confluent-compatible registry. Secrets are redacted from `Debug`.
#[derive(Clone)]
pub struct ConfluentConfig {
    /// Base URL, e.g. `http://localhost:8081`. HTTPS needs the `native-tls` feature.
    pub url: String,
    /// Basic auth: user (Confluent Cloud: API key) and password (API secret).
    pub basic_auth: Option<(String, Option<String>)>,
    /// A bearer token, used when `basic_auth` is `None`.
    pub bearer_token: Option<String>,
    /// Connect and read timeout per request.
    pub timeout: Duration,
}

impl Default for ConfluentConfig {
    fn default() -> Self {
        Self {
            url: "http://localhost:8081".into(),
            basic_auth: None,
            bearer_token: None,
            timeout: Duration::from_secs(30),
        }
    }
}

impl fmt::Debug for ConfluentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |set: bool| if set { "<redacted>" } else { "<none>" };
        f.debug_struct("ConfluentConfig")
            .field("url", &self.url)
            .field("basic_auth", &redact(self.basic_auth.is_some()))
            .field("bearer_token", &redact(self.bearer_token.is_some()))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A registry speaking Confluent's REST API: Confluent Schema Registry, Redpanda, Apicurio
/// (`/apis/ccompat/v7`), Karapace. The server enforces compatibility on
/// [`register`](SchemaRegistry::register).
///
/// # Examples
/// ```no_run
/// use herald_avro::{ConfluentRegistry, SchemaRegistry};
/// # async fn f() -> herald_avro::Result<()> {
/// let registry = ConfluentRegistry::new("http://localhost:8081")?;
/// let id = registry.register("orders.order-created-value", r#""string""#).await?;
/// assert_eq!(registry.schema_by_id(id).await?, r#""string""#);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ConfluentRegistry {
    config: ConfluentConfig,
    settings: SrSettings,
    http: reqwest::Client,
}

impl ConfluentRegistry {
    /// A client for `url` with default settings.
    pub fn new(url: impl Into<String>) -> Result<Self> {
        Self::with_config(ConfluentConfig {
            url: url.into(),
            ..Default::default()
        })
    }

    /// A client with explicit settings.
    pub fn with_config(mut config: ConfluentConfig) -> Result<Self> {
        config.url = config.url.trim_end_matches('/').to_owned();
        let mut b = SrSettings::new_builder(config.url.clone());
        b.set_timeout(config.timeout);
        match (&config.basic_auth, &config.bearer_token) {
            (Some((user, pass)), _) => b.set_basic_authorization(user, pass.as_deref()),
            (None, Some(token)) => b.set_token_authorization(token),
            (None, None) => &mut b,
        };
        let settings = b
            .build()
            .map_err(|e| src_error(e, "configuring the client"))?;
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| {
                Error::new(ErrorKind::Registry, "building the HTTP client").with_source(e)
            })?;
        Ok(Self {
            config,
            settings,
            http,
        })
    }

    /// `GET <url><path>` with the configured auth, for the endpoints the library lacks.
    async fn get_json<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<Option<T>> {
        let mut req = self.http.get(format!("{}{path}", self.config.url));
        req = match (&self.config.basic_auth, &self.config.bearer_token) {
            (Some((user, pass)), _) => req.basic_auth(user, pass.as_deref()),
            (None, Some(token)) => req.bearer_auth(token),
            (None, None) => req,
        };
        let unreachable = |e: reqwest::Error| {
            Error::new(ErrorKind::RegistryUnavailable, format!("GET {path}: {e}")).with_source(e)
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status();
        let body = resp.text().await.map_err(unreachable)?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            let kind = if status.is_server_error() {
                ErrorKind::RegistryUnavailable
            } else {
                ErrorKind::Registry
            };
            return Err(Error::new(kind, format!("GET {path}: {status}: {body}")));
        }
        serde_json::from_str(&body).map(Some).map_err(|e| {
            Error::new(
                ErrorKind::Registry,
                format!("GET {path}: unexpected response: {e}"),
            )
            .with_source(e)
        })
    }
}

/// Maps the library's error, reading Confluent's `error_code` when the server sent one.
fn src_error(e: SRCError, context: &str) -> Error {
    let code = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<RawError>())
        .map(|r| r.error_code);
    let kind = match code {
        Some(40403) => ErrorKind::UnknownSchemaId,
        Some(40401 | 40402 | 40408) => ErrorKind::UnknownSubject,
        Some(409 | 40901) => ErrorKind::Incompatible,
        Some(42201 | 42202) => ErrorKind::InvalidSchema,
        _ if e.retriable => ErrorKind::RegistryUnavailable,
        _ => ErrorKind::Registry,
    };
    let detail = e.cause.clone().unwrap_or_default();
    Error::new(
        kind,
        format!("{context}: {} {detail}", e.error)
            .trim_end()
            .to_owned(),
    )
    .with_source(e)
}

fn registered(subject: &str, s: SrSchema) -> Result<RegisteredSchema> {
    let version = s.version.ok_or_else(|| {
        Error::new(
            ErrorKind::Registry,
            format!("response for `{subject}` lacks a version"),
        )
    })?;
    Ok(RegisteredSchema {
        subject: s.subject.unwrap_or_else(|| subject.to_owned()),
        id: s.id,
        version,
        schema: s.schema,
    })
}

/// Percent-encodes a subject for a URL path segment.
fn escape(subject: &str) -> String {
    subject
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Deserialize)]
struct ConfigResponse {
    #[serde(alias = "compatibility")]
    #[serde(rename = "compatibilityLevel")]
    level: String,
}

impl SchemaRegistry for ConfluentRegistry {
    fn register<'a>(&'a self, subject: &'a str, schema: &'a str) -> BoxFuture<'a, Result<u32>> {
        Box::pin(async move {
            let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema.to_owned());
            post_schema(&self.settings, subject.to_owned(), supplied)
                .await
                .map(|r| r.id)
                .map_err(|e| src_error(e, &format!("registering under `{subject}`")))
        })
    }

    fn lookup<'a>(
        &'a self,
        subject: &'a str,
        schema: &'a str,
    ) -> BoxFuture<'a, Result<RegisteredSchema>> {
        Box::pin(async move {
            let body = serde_json::json!({ "schema": schema }).to_string();
            let context = format!("looking up a schema under `{subject}`");
            let raw = perform_sr_call(&self.settings, SrCall::PostForVersion(subject, &body))
                .await
                .map_err(|e| match src_error(e, &context) {
                    e if e.kind() == ErrorKind::UnknownSchemaId => {
                        Error::new(ErrorKind::UnknownSubject, e.message().to_owned()).with_source(e)
                    }
                    e => e,
                })?;
            let (Some(id), Some(version)) = (raw.id, raw.version) else {
                return Err(Error::new(
                    ErrorKind::Registry,
                    format!("{context}: response lacks id or version"),
                ));
            };
            Ok(RegisteredSchema {
                subject: raw.subject.unwrap_or_else(|| subject.to_owned()),
                id,
                version,
                schema: raw.schema.unwrap_or_else(|| schema.to_owned()),
            })
        })
    }

    fn schema_by_id(&self, id: u32) -> BoxFuture<'_, Result<String>> {
        Box::pin(async move {
            get_schema_by_id(id, &self.settings)
                .await
                .map(|s| s.schema)
                .map_err(|e| src_error(e, &format!("fetching schema id {id}")))
        })
    }

    fn latest<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<RegisteredSchema>> {
        Box::pin(async move {
            let s = get_schema_by_subject_and_version(&self.settings, subject, None)
                .await
                .map_err(|e| src_error(e, &format!("fetching the latest `{subject}`")))?;
            registered(subject, s)
        })
    }

    fn version<'a>(
        &'a self,
        subject: &'a str,
        version: u32,
    ) -> BoxFuture<'a, Result<RegisteredSchema>> {
        Box::pin(async move {
            let s = get_schema_by_subject_and_version(&self.settings, subject, Some(version))
                .await
                .map_err(|e| src_error(e, &format!("fetching `{subject}` v{version}")))?;
            registered(subject, s)
        })
    }

    fn versions<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<Vec<u32>>> {
        Box::pin(async move {
            let mut v = get_all_versions(&self.settings, subject.to_owned())
                .await
                .map_err(|e| src_error(e, &format!("listing versions of `{subject}`")))?;
            v.sort_unstable();
            Ok(v)
        })
    }

    fn compatibility<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<CompatibilityMode>> {
        Box::pin(async move {
            let path = format!("/config/{}?defaultToGlobal=true", escape(subject));
            let cfg = match self.get_json::<ConfigResponse>(&path).await? {
                Some(c) => c,
                None => self
                    .get_json::<ConfigResponse>("/config")
                    .await?
                    .ok_or_else(|| Error::new(ErrorKind::Registry, "GET /config: 404"))?,
            };
            cfg.level
                .parse()
                .map_err(|e: Error| Error::new(ErrorKind::Registry, e.message().to_owned()))
        })
    }
}
