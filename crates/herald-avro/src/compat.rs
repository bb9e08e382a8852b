//! The compatibility checker: Confluent's seven modes judged by Avro's resolution rules.
//!
//! [`can_read`] answers one question — can a reader with schema R decode data written
//! with schema W? — and lists **every** reason it cannot, each with a [`Rule`] id and the
//! JSON path in the reader's schema where it occurs. [`check`] applies a
//! [`CompatibilityMode`] to a new schema and the versions before it.
//!
//! | Mode | The new schema is compared with | Direction |
//! |------|---------------------------------|-----------|
//! | `BACKWARD` | the latest version | new reads old data |
//! | `BACKWARD_TRANSITIVE` | every earlier version | new reads old data |
//! | `FORWARD` | the latest version | old reads new data |
//! | `FORWARD_TRANSITIVE` | every earlier version | old reads new data |
//! | `FULL` | the latest version | both |
//! | `FULL_TRANSITIVE` | every earlier version | both |
//! | `NONE` | nothing | — |
//!
//! The rules (reader ← writer):
//! - primitives match themselves; int → long, float, double; long → float, double;
//!   float → double; string ↔ bytes. Logical types are read as the type they annotate.
//! - records, enums and fixed types match when their unqualified names are equal or the
//!   reader lists the writer's name among its aliases ([`Rule::NameMismatch`]); a fixed's
//!   size must be equal ([`Rule::FixedSizeMismatch`]).
//! - each reader field is found in the writer by name or by one of the reader field's
//!   aliases, else it needs a default ([`Rule::ReaderFieldMissingDefault`]); writer fields
//!   the reader lacks are skipped.
//! - every writer enum symbol must exist in the reader, unless the reader's enum has a
//!   default ([`Rule::MissingEnumSymbols`]). Partial overlap is incompatible.
//! - a writer union needs each branch readable; a reader union needs some branch that
//!   reads the writer's type ([`Rule::MissingUnionBranch`]).
//! - arrays and maps compare their items and values; anything else is a
//!   [`Rule::TypeMismatch`].
//!
//! Recursive types are memoised per (reader, writer) named-type pair: a pair under
//! examination is assumed compatible when met again, and a finished pair's result is
//! reused, so each violation is reported once.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    str::FromStr,
};

use apache_avro::schema::{Alias, Name, Names, RecordSchema};
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, ErrorKind},
    schema::{ParsedSchema, Schema, Shape},
};

/// A compatibility mode, as Confluent Schema Registry names them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompatibilityMode {
    /// The new schema reads data written with the latest one.
    #[default]
    Backward,
    /// The new schema reads data written with every earlier one.
    BackwardTransitive,
    /// The latest schema reads data written with the new one.
    Forward,
    /// Every earlier schema reads data written with the new one.
    ForwardTransitive,
    /// Backward and forward against the latest.
    Full,
    /// Backward and forward against every earlier schema.
    FullTransitive,
    /// No check.
    None,
}

impl CompatibilityMode {
    /// All seven modes.
    pub const ALL: [Self; 7] = [
        Self::Backward,
        Self::BackwardTransitive,
        Self::Forward,
        Self::ForwardTransitive,
        Self::Full,
        Self::FullTransitive,
        Self::None,
    ];

    /// The Confluent name, e.g. `BACKWARD_TRANSITIVE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::Forward => "FORWARD",
            Self::ForwardTransitive => "FORWARD_TRANSITIVE",
            Self::Full => "FULL",
            Self::FullTransitive => "FULL_TRANSITIVE",
            Self::None => "NONE",
        }
    }

    /// Whether the new schema is compared with every earlier version, not just the latest.
    pub fn is_transitive(self) -> bool {
        matches!(
            self,
            Self::BackwardTransitive | Self::ForwardTransitive | Self::FullTransitive
        )
    }

    /// Whether the new schema must read old data.
    pub fn checks_backward(self) -> bool {
        matches!(
            self,
            Self::Backward | Self::BackwardTransitive | Self::Full | Self::FullTransitive
        )
    }

    /// Whether old schemas must read new data.
    pub fn checks_forward(self) -> bool {
        matches!(
            self,
            Self::Forward | Self::ForwardTransitive | Self::Full | Self::FullTransitive
        )
    }
}

impl fmt::Display for CompatibilityMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CompatibilityMode {
    type Err = Error;

    /// Case-insensitive; `-` is accepted for `_`.
    fn from_str(s: &str) -> Result<Self, Error> {
        let wanted = s.trim().replace('-', "_");
        Self::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(&wanted))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidSchema,
                    format!(
                        "unknown compatibility mode `{s}` (expected one of {})",
                        Self::ALL.map(Self::as_str).join(", ")
                    ),
                )
            })
    }
}

/// Why a reader cannot read a writer's data. The ids are Confluent's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum Rule {
    /// A reader field is absent from the writer and has no default.
    ReaderFieldMissingDefault,
    /// The types cannot be resolved (and no promotion applies).
    TypeMismatch,
    /// The writer's enum has symbols the reader lacks, and the reader has no enum default.
    MissingEnumSymbols,
    /// No reader union branch reads a writer type.
    MissingUnionBranch,
    /// Named types differ in name, and no reader alias bridges them.
    NameMismatch,
    /// Fixed types differ in size.
    FixedSizeMismatch,
}

impl Rule {
    /// The id, e.g. `READER_FIELD_MISSING_DEFAULT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReaderFieldMissingDefault => "READER_FIELD_MISSING_DEFAULT",
            Self::TypeMismatch => "TYPE_MISMATCH",
            Self::MissingEnumSymbols => "MISSING_ENUM_SYMBOLS",
            Self::MissingUnionBranch => "MISSING_UNION_BRANCH",
            Self::NameMismatch => "NAME_MISMATCH",
            Self::FixedSizeMismatch => "FIXED_SIZE_MISMATCH",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One reason a reader cannot read a writer's data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incompatibility {
    /// The rule broken.
    pub rule: Rule,
    /// JSON pointer into the reader's schema, e.g. `/fields/2/type` (`/` for the root).
    pub path: String,
    /// One line for humans.
    pub message: String,
}

/// Which way a [`Violation`] was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The new schema reading data written with the old one; `path` points into the new schema.
    Backward,
    /// The old schema reading data written with the new one; `path` points into the old schema.
    Forward,
}

/// An [`Incompatibility`] found by [`check`], with the two versions compared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// The rule broken.
    pub rule: Rule,
    /// JSON pointer into the reader's schema (see [`Direction`]).
    pub path: String,
    /// One line for humans.
    pub message: String,
    /// Which schema was the reader.
    pub direction: Direction,
    /// The new schema's label.
    pub new: String,
    /// The earlier schema's label.
    pub against: String,
}

/// A schema with a label (a file name, `v3`, a registry id) for reports.
#[derive(Clone, Copy, Debug)]
pub struct SchemaVersion<'a> {
    /// How reports name it.
    pub label: &'a str,
    /// The schema.
    pub schema: &'a ParsedSchema,
}

/// Judges `new` against `previous` (oldest first) under `mode`, returning every violation
/// (empty: compatible). Non-transitive modes look at the last of `previous` only.
///
/// # Examples
/// ```
/// use herald_avro::{ParsedSchema, compat::{check, CompatibilityMode, Rule, SchemaVersion}};
/// let v1 = ParsedSchema::parse(r#"{"type":"record","name":"A","fields":[{"name":"x","type":"int"}]}"#)?;
/// let v2 = ParsedSchema::parse(r#"{"type":"record","name":"A","fields":[
///     {"name":"x","type":"int"},{"name":"y","type":"string"}]}"#)?;
/// let found = check(CompatibilityMode::Backward,
///     SchemaVersion { label: "v2", schema: &v2 }, &[SchemaVersion { label: "v1", schema: &v1 }]);
/// assert_eq!(found[0].rule, Rule::ReaderFieldMissingDefault);
/// assert_eq!(found[0].path, "/fields/1");
/// assert!(check(CompatibilityMode::Forward,
///     SchemaVersion { label: "v2", schema: &v2 }, &[SchemaVersion { label: "v1", schema: &v1 }]).is_empty());
/// # Ok::<_, herald_avro::Error>(())
/// ```
pub fn check(
    mode: CompatibilityMode,
    new: SchemaVersion<'_>,
    previous: &[SchemaVersion<'_>],
) -> Vec<Violation> {
    let against = match (mode.is_transitive(), previous.split_last()) {
        (true, _) => previous,
        (false, Some((last, _))) => std::slice::from_ref(last),
        (false, None) => &[],
    };
    let mut out = Vec::new();
    for old in against {
        let directions = [
            (
                mode.checks_backward(),
                Direction::Backward,
                new.schema,
                old.schema,
            ),
            (
                mode.checks_forward(),
                Direction::Forward,
                old.schema,
                new.schema,
            ),
        ];
        for (_, direction, reader, writer) in directions.into_iter().filter(|d| d.0) {
            out.extend(can_read(reader, writer).into_iter().map(|i| Violation {
                rule: i.rule,
                path: i.path,
                message: i.message,
                direction,
                new: new.label.to_owned(),
                against: old.label.to_owned(),
            }));
        }
    }
    out
}

/// Every reason `reader` cannot read data written with `writer` (empty: it can).
pub fn can_read(reader: &ParsedSchema, writer: &ParsedSchema) -> Vec<Incompatibility> {
    let mut c = Checker {
        reader: reader.names(),
        writer: writer.names(),
        done: HashMap::new(),
        trial_done: HashMap::new(),
        active: HashSet::new(),
        trials: 0,
        out: Vec::new(),
    };
    c.check(reader.schema(), writer.schema(), "");
    c.out
}

type Pair<'a> = (&'a Name, &'a Name);

struct Checker<'a> {
    reader: &'a Names,
    writer: &'a Names,
    /// Record pairs finished while reporting.
    done: HashMap<Pair<'a>, bool>,
    /// Record pairs finished inside a trial (a union branch probe), which reports nothing.
    trial_done: HashMap<Pair<'a>, bool>,
    /// Record pairs under examination: met again through recursion, they are assumed fine.
    active: HashSet<Pair<'a>>,
    trials: u32,
    out: Vec<Incompatibility>,
}

impl<'a> Checker<'a> {
    fn report(&mut self, rule: Rule, path: String, message: String) {
        if self.trials == 0 {
            let path = if path.is_empty() { "/".into() } else { path };
            self.out.push(Incompatibility {
                rule,
                path,
                message,
            });
        }
    }

    fn check(&mut self, r: &'a Schema, w: &'a Schema, path: &str) -> bool {
        let (rs, ws) = (Shape::of(self.reader, r), Shape::of(self.writer, w));
        match (rs, ws) {
            (Shape::Union(rb), Shape::Union(wb)) => {
                let mut ok = true;
                for (i, b) in wb.iter().enumerate() {
                    if !self.union_reads(rb, b) {
                        ok = false;
                        let t = Shape::of(self.writer, b).describe();
                        self.report(
                            Rule::MissingUnionBranch,
                            path.into(),
                            format!("reader union has no branch for writer union branch {i} ({t})"),
                        );
                    }
                }
                ok
            }
            (_, Shape::Union(wb)) => {
                let mut ok = true;
                for b in wb {
                    ok &= self.check(r, b, path);
                }
                ok
            }
            (Shape::Union(rb), _) => {
                let ok = self.union_reads(rb, w);
                if !ok {
                    let t = ws.describe();
                    self.report(
                        Rule::MissingUnionBranch,
                        path.into(),
                        format!("reader union has no branch for writer type {t}"),
                    );
                }
                ok
            }
            (Shape::Record(rr), Shape::Record(wr)) => self.record(rr, wr, path),
            (Shape::Enum(re), Shape::Enum(we)) => {
                let mut ok = self.names_match(&re.name, &re.aliases, &we.name, path);
                let missing: Vec<&str> = we
                    .symbols
                    .iter()
                    .filter(|s| !re.symbols.contains(s))
                    .map(String::as_str)
                    .collect();
                let has_default = re.default.as_ref().is_some_and(|d| re.symbols.contains(d));
                if !missing.is_empty() && !has_default {
                    ok = false;
                    self.report(
                        Rule::MissingEnumSymbols,
                        format!("{path}/symbols"),
                        format!(
                            "reader enum {} lacks writer symbols [{}] and has no default",
                            re.name,
                            missing.join(", ")
                        ),
                    );
                }
                ok
            }
            (Shape::Fixed(rf), Shape::Fixed(wf)) => {
                let mut ok = self.names_match(&rf.name, &rf.aliases, &wf.name, path);
                if rf.size != wf.size {
                    ok = false;
                    self.report(
                        Rule::FixedSizeMismatch,
                        format!("{path}/size"),
                        format!(
                            "reader fixed {} has size {}, writer's has size {}",
                            rf.name, rf.size, wf.size
                        ),
                    );
                }
                ok
            }
            (Shape::Array(ri), Shape::Array(wi)) => self.check(ri, wi, &format!("{path}/items")),
            (Shape::Map(rv), Shape::Map(wv)) => self.check(rv, wv, &format!("{path}/values")),
            (rs, ws) if promotes(rs, ws) => true,
            (rs, ws) => {
                let (r, w) = (rs.describe(), ws.describe());
                self.report(
                    Rule::TypeMismatch,
                    path.into(),
                    format!("reader type {r} cannot read writer type {w}"),
                );
                false
            }
        }
    }

    /// Whether some branch of the reader's union reads `w`; probes report nothing.
    fn union_reads(&mut self, branches: &'a [Schema], w: &'a Schema) -> bool {
        self.trials += 1;
        let found = branches.iter().any(|b| self.check(b, w, ""));
        self.trials -= 1;
        found
    }

    fn record(&mut self, rr: &'a RecordSchema, wr: &'a RecordSchema, path: &str) -> bool {
        let key = (&rr.name, &wr.name);
        let memo = self.done.get(&key).copied();
        let memo = if self.trials > 0 {
            memo.or_else(|| self.trial_done.get(&key).copied())
        } else {
            memo
        };
        if let Some(ok) = memo {
            return ok;
        }
        if !self.active.insert(key) {
            return true;
        }
        let mut ok = self.names_match(&rr.name, &rr.aliases, &wr.name, path);
        for (j, rf) in rr.fields.iter().enumerate() {
            let found = std::iter::once(&rf.name)
                .chain(&rf.aliases)
                .find_map(|n| wr.fields.iter().find(|wf| &wf.name == n));
            match found {
                Some(wf) => {
                    ok = self.check(&rf.schema, &wf.schema, &format!("{path}/fields/{j}/type"))
                        && ok;
                }
                None if rf.default.is_some() => {}
                None => {
                    ok = false;
                    self.report(
                        Rule::ReaderFieldMissingDefault,
                        format!("{path}/fields/{j}"),
                        format!(
                            "reader field `{}` of {} is not in the writer's schema and has no default",
                            rf.name, rr.name
                        ),
                    );
                }
            }
        }
        self.active.remove(&key);
        if self.trials == 0 {
            self.done.insert(key, ok);
        } else {
            self.trial_done.insert(key, ok);
        }
        ok
    }

    fn names_match(
        &mut self,
        r: &Name,
        aliases: &Option<Vec<Alias>>,
        w: &Name,
        path: &str,
    ) -> bool {
        let ok = r.name() == w.name()
            || aliases.iter().flatten().any(|a| {
                a.name() == w.name() || a.fully_qualified_name(r.namespace()).as_ref() == w
            });
        if !ok {
            self.report(
                Rule::NameMismatch,
                format!("{path}/name"),
                format!("reader name {r} does not match writer name {w} nor any reader alias"),
            );
        }
        ok
    }
}

/// Avro's promotions, reader ← writer.
fn promotes(r: Shape<'_>, w: Shape<'_>) -> bool {
    use Shape::*;
    matches!(
        (r, w),
        (Null, Null)
            | (Boolean, Boolean)
            | (Int, Int)
            | (Long, Int | Long)
            | (Float, Int | Long | Float)
            | (Double, Int | Long | Float | Double)
            | (String | Bytes, String | Bytes)
    )
}
