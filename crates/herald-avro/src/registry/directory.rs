//! A read-only registry over a schema directory, and the directory layout itself.
//!
//! ```text
//! schemas/
//!   orders.order-created-value/      one directory per subject
//!     v1.avsc                        versions, compared numerically (v10 after v9)
//!     v2.avsc
//!     config.json                    optional: {"compatibility": "BACKWARD"}
//! ```
//!
//! Hidden entries and files directly under the root are ignored; inside a subject
//! directory, any `.avsc` file not named `v<N>.avsc` is an error, other files are ignored.
//! A subject without `config.json` uses `BACKWARD`.
//!
//! **Ids.** [`DirectoryRegistry`] numbers schemas 1, 2, 3 … walking subjects in byte-wise
//! sorted order and each subject's versions in ascending order; a schema whose normalized
//! form was already numbered reuses that id (as Confluent does for identical schemas). Ids
//! are therefore deterministic for a given directory content — but adding a subject that
//! sorts earlier renumbers the ones after it. Use the directory registry for tests, local
//! development and CI checks, not to decode data persisted under other ids.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::{Path, PathBuf},
};

use futures::future;
use serde::Deserialize;

use super::{BoxFuture, RegisteredSchema, SchemaRegistry};
use crate::{
    compat::CompatibilityMode,
    error::{Error, ErrorKind, Result},
    schema::ParsedSchema,
};

/// One subject directory found by [`scan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectDir {
    /// The subject: the directory's name.
    pub subject: String,
    /// The directory.
    pub dir: PathBuf,
    /// `(N, path of vN.avsc)`, ascending by N.
    pub versions: Vec<(u32, PathBuf)>,
    /// The mode from `config.json`, if present.
    pub compatibility: Option<CompatibilityMode>,
}

impl SubjectDir {
    /// The configured mode, else `BACKWARD`.
    pub fn mode(&self) -> CompatibilityMode {
        self.compatibility.unwrap_or_default()
    }
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(alias = "compatibilityLevel")]
    compatibility: String,
}

fn layout(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Layout, format!("{}: {what}", path.display()))
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path)
        .map_err(|e| layout(path, format_args!("cannot read: {e}")).with_source(e))
}

/// Reads and parses one `.avsc` file; errors name the file.
pub fn read_schema_file(path: &Path) -> Result<ParsedSchema> {
    let text = read(path)?;
    ParsedSchema::parse(&text).map_err(|e| {
        Error::new(
            ErrorKind::InvalidSchema,
            format!("{}: invalid Avro schema: {}", path.display(), e.message()),
        )
        .with_source(e)
    })
}

/// Lists the subject directories under `root`, sorted by subject (byte-wise).
///
/// # Errors
/// [`ErrorKind::Layout`] for an unreadable directory, a stray `.avsc` name, a duplicate
/// version, a subject without versions or a bad `config.json`.
pub fn scan(root: &Path) -> Result<Vec<SubjectDir>> {
    let mut subjects = Vec::new();
    for dir in entries(root)? {
        let name = file_name(&dir);
        if name.starts_with('.') || !dir.is_dir() {
            continue;
        }
        let mut versions = Vec::new();
        let mut compatibility = None;
        for file in entries(&dir)? {
            let fname = file_name(&file);
            if fname == "config.json" {
                let cfg: ConfigFile = serde_json::from_str(&read(&file)?)
                    .map_err(|e| layout(&file, format_args!("invalid config: {e}")))?;
                compatibility = Some(
                    cfg.compatibility
                        .parse()
                        .map_err(|e: Error| layout(&file, e.message()))?,
                );
            } else if let Some(stem) = fname.strip_suffix(".avsc") {
                let n = stem
                    .strip_prefix('v')
                    .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|d| d.parse::<u32>().ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| layout(&file, "schema files must be named v<N>.avsc, N >= 1"))?;
                versions.push((n, file));
            }
        }
        versions.sort();
        if let Some(w) = versions.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(layout(
                &w[1].1,
                format_args!("duplicates version {}", w[0].0),
            ));
        }
        if versions.is_empty() {
            return Err(layout(&dir, "subject directory holds no v<N>.avsc"));
        }
        subjects.push(SubjectDir {
            subject: name,
            dir,
            versions,
            compatibility,
        });
    }
    subjects.sort_by(|a, b| a.subject.cmp(&b.subject));
    Ok(subjects)
}

fn entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = fs::read_dir(dir)
        .map_err(|e| layout(dir, format_args!("cannot read: {e}")).with_source(e))?;
    rd.map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .map_err(|e| layout(dir, format_args!("cannot list: {e}")).with_source(e))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

struct Subject {
    versions: Vec<(RegisteredSchema, String)>,
    compatibility: CompatibilityMode,
}

/// The read-only registry over a schema directory (see the [module docs](self) for the
/// layout and how ids are assigned). Everything is loaded and validated by [`open`](Self::open).
///
/// # Examples
/// ```no_run
/// use herald_avro::{DirectoryRegistry, SchemaRegistry};
/// # async fn f() -> herald_avro::Result<()> {
/// let registry = DirectoryRegistry::open("schemas")?;
/// let latest = registry.latest("orders.order-created-value").await?;
/// println!("v{} has id {}", latest.version, latest.id);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct DirectoryRegistry {
    root: PathBuf,
    subjects: BTreeMap<String, Subject>,
    by_id: Vec<String>,
}

impl std::fmt::Debug for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subject")
            .field("versions", &self.versions.len())
            .field("compatibility", &self.compatibility)
            .finish()
    }
}

impl DirectoryRegistry {
    /// Loads every schema under `root`.
    ///
    /// # Errors
    /// [`ErrorKind::Layout`] (see [`scan`]) or [`ErrorKind::InvalidSchema`] naming the file.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let mut subjects = BTreeMap::new();
        let mut by_id: Vec<String> = Vec::new();
        let mut ids: HashMap<String, u32> = HashMap::new();
        for dir in scan(&root)? {
            let mut versions = Vec::new();
            for (version, path) in &dir.versions {
                let parsed = read_schema_file(path)?;
                let normalized = parsed.normalized().to_owned();
                let id = *ids.entry(normalized.clone()).or_insert_with(|| {
                    by_id.push(parsed.text().to_owned());
                    u32::try_from(by_id.len()).unwrap_or(u32::MAX)
                });
                let registered = RegisteredSchema {
                    subject: dir.subject.clone(),
                    id,
                    version: *version,
                    schema: parsed.text().to_owned(),
                };
                versions.push((registered, normalized));
            }
            let compatibility = dir.mode();
            subjects.insert(
                dir.subject,
                Subject {
                    versions,
                    compatibility,
                },
            );
        }
        Ok(Self {
            root,
            subjects,
            by_id,
        })
    }

    /// The directory it was loaded from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The subjects, sorted.
    pub fn subjects(&self) -> impl Iterator<Item = &str> {
        self.subjects.keys().map(String::as_str)
    }

    fn subject(&self, subject: &str) -> Result<&Subject> {
        self.subjects.get(subject).ok_or_else(|| {
            Error::new(
                ErrorKind::UnknownSubject,
                format!("no subject `{subject}` under {}", self.root.display()),
            )
        })
    }

    fn find(
        &self,
        subject: &str,
        pick: impl Fn(&(RegisteredSchema, String)) -> bool,
        what: &str,
    ) -> Result<RegisteredSchema> {
        self.subject(subject)?
            .versions
            .iter()
            .rev()
            .find(|v| pick(v))
            .map(|v| v.0.clone())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::UnknownSubject,
                    format!("subject `{subject}` has no {what}"),
                )
            })
    }
}

impl SchemaRegistry for DirectoryRegistry {
    fn register<'a>(&'a self, subject: &'a str, _schema: &'a str) -> BoxFuture<'a, Result<u32>> {
        Box::pin(future::ready(Err(Error::new(
            ErrorKind::ReadOnly,
            format!(
                "cannot register under `{subject}`: add a v<N>.avsc file to {} instead",
                self.root.display()
            ),
        ))))
    }

    fn lookup<'a>(
        &'a self,
        subject: &'a str,
        schema: &'a str,
    ) -> BoxFuture<'a, Result<RegisteredSchema>> {
        let r = ParsedSchema::parse(schema)
            .and_then(|p| self.find(subject, |v| v.1 == p.normalized(), "such schema"));
        Box::pin(future::ready(r))
    }

    fn schema_by_id(&self, id: u32) -> BoxFuture<'_, Result<String>> {
        let r = id
            .checked_sub(1)
            .and_then(|i| self.by_id.get(i as usize))
            .cloned()
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::UnknownSchemaId,
                    format!("no schema with id {id} under {}", self.root.display()),
                )
            });
        Box::pin(future::ready(r))
    }

    fn latest<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<RegisteredSchema>> {
        Box::pin(future::ready(self.find(subject, |_| true, "versions")))
    }

    fn version<'a>(
        &'a self,
        subject: &'a str,
        version: u32,
    ) -> BoxFuture<'a, Result<RegisteredSchema>> {
        let r = self.find(
            subject,
            |v| v.0.version == version,
            &format!("version {version}"),
        );
        Box::pin(future::ready(r))
    }

    fn versions<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<Vec<u32>>> {
        let r = self
            .subject(subject)
            .map(|s| s.versions.iter().map(|v| v.0.version).collect());
        Box::pin(future::ready(r))
    }

    fn compatibility<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<CompatibilityMode>> {
        Box::pin(future::ready(
            self.subject(subject).map(|s| s.compatibility),
        ))
    }
}
