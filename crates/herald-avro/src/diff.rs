//! Field-level differences between two schemas: what `herald schema diff` prints.
//!
//! Records are compared field by field (a new field matches an old one by name, or by one
//! of its aliases); fields whose types are records on both sides are compared recursively,
//! with dotted paths (`customer.email`). Any other schema is compared as a whole.

use std::collections::HashSet;

use apache_avro::schema::{Names, RecordField};
use serde::Serialize;

use crate::schema::{ParsedSchema, Schema, Shape};

/// What happened to a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// Only in the new schema.
    Added,
    /// Only in the old schema.
    Removed,
    /// In both, with a different type, default or name.
    Changed,
}

/// One difference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    /// Added, removed or changed.
    pub kind: ChangeKind,
    /// Dotted field path, e.g. `customer.email`; empty for the root.
    pub path: String,
    /// The old field's type and default, as `type = default` (absent when added); prefixed
    /// with `` `old_name` `` when the new field took it over through an alias.
    pub old: Option<String>,
    /// The new field's type and default (absent when removed).
    pub new: Option<String>,
}

/// The differences from `old` to `new`, in field order (new schema's first, then removals).
///
/// # Examples
/// ```
/// use herald_avro::{ParsedSchema, diff::{diff, ChangeKind}};
/// let a = ParsedSchema::parse(r#"{"type":"record","name":"A","fields":[{"name":"x","type":"int"}]}"#)?;
/// let b = ParsedSchema::parse(r#"{"type":"record","name":"A","fields":[
///     {"name":"x","type":"long"},{"name":"y","type":"string","default":""}]}"#)?;
/// let d = diff(&a, &b);
/// assert_eq!((d[0].kind, d[0].path.as_str()), (ChangeKind::Changed, "x"));
/// assert_eq!(d[1].new.as_deref(), Some(r#"string = """#));
/// # Ok::<_, herald_avro::Error>(())
/// ```
pub fn diff(old: &ParsedSchema, new: &ParsedSchema) -> Vec<FieldChange> {
    let mut d = Differ {
        old: old.names(),
        new: new.names(),
        seen: HashSet::new(),
        out: Vec::new(),
    };
    d.schema(old.schema(), new.schema(), "");
    d.out
}

struct Differ<'a> {
    old: &'a Names,
    new: &'a Names,
    seen: HashSet<(String, String)>,
    out: Vec<FieldChange>,
}

impl<'a> Differ<'a> {
    fn schema(&mut self, o: &'a Schema, n: &'a Schema, path: &str) {
        match (Shape::of(self.old, o), Shape::of(self.new, n)) {
            (Shape::Record(or), Shape::Record(nr)) => {
                if !self.seen.insert((or.name.to_string(), nr.name.to_string())) {
                    return;
                }
                let join = |f: &str| {
                    if path.is_empty() {
                        f.to_owned()
                    } else {
                        format!("{path}.{f}")
                    }
                };
                let mut matched = HashSet::new();
                for nf in &nr.fields {
                    let of = std::iter::once(&nf.name)
                        .chain(&nf.aliases)
                        .find_map(|a| or.fields.iter().find(|f| &f.name == a));
                    let Some(of) = of else {
                        self.push(
                            ChangeKind::Added,
                            join(&nf.name),
                            None,
                            Some(self.field(self.new, nf)),
                        );
                        continue;
                    };
                    matched.insert(&of.name);
                    let (mut ol, nl) = (self.field(self.old, of), self.field(self.new, nf));
                    if of.name != nf.name {
                        ol = format!("`{}` {ol}", of.name);
                    }
                    let both_records = matches!(
                        (
                            Shape::of(self.old, &of.schema),
                            Shape::of(self.new, &nf.schema)
                        ),
                        (Shape::Record(_), Shape::Record(_))
                    );
                    if ol != nl {
                        self.push(ChangeKind::Changed, join(&nf.name), Some(ol), Some(nl));
                    }
                    if both_records {
                        self.schema(&of.schema, &nf.schema, &join(&nf.name));
                    }
                }
                for of in or.fields.iter().filter(|f| !matched.contains(&f.name)) {
                    self.push(
                        ChangeKind::Removed,
                        join(&of.name),
                        Some(self.field(self.old, of)),
                        None,
                    );
                }
            }
            _ => {
                let (ol, nl) = (label(self.old, o), label(self.new, n));
                if ol != nl {
                    self.push(ChangeKind::Changed, path.to_owned(), Some(ol), Some(nl));
                }
            }
        }
    }

    fn push(&mut self, kind: ChangeKind, path: String, old: Option<String>, new: Option<String>) {
        self.out.push(FieldChange {
            kind,
            path,
            old,
            new,
        });
    }

    fn field(&self, names: &Names, f: &RecordField) -> String {
        let ty = label(names, &f.schema);
        match &f.default {
            Some(d) => format!("{ty} = {d}"),
            None => ty,
        }
    }
}

/// A short type label: `string`, `long (timestamp-millis)`, `array<string>`,
/// `null | string`, `enum Status {A, B}`, `fixed Md5[16]`, a record's full name.
pub fn label(names: &Names, s: &Schema) -> String {
    let logical = match s {
        Schema::Date => Some("date"),
        Schema::TimeMillis => Some("time-millis"),
        Schema::TimeMicros => Some("time-micros"),
        Schema::TimestampMillis => Some("timestamp-millis"),
        Schema::TimestampMicros => Some("timestamp-micros"),
        Schema::TimestampNanos => Some("timestamp-nanos"),
        Schema::LocalTimestampMillis => Some("local-timestamp-millis"),
        Schema::LocalTimestampMicros => Some("local-timestamp-micros"),
        Schema::LocalTimestampNanos => Some("local-timestamp-nanos"),
        Schema::Uuid(_) => Some("uuid"),
        Schema::Decimal(_) | Schema::BigDecimal => Some("decimal"),
        Schema::Duration(_) => Some("duration"),
        _ => None,
    };
    let base = match Shape::of(names, s) {
        Shape::Array(i) => format!("array<{}>", label(names, i)),
        Shape::Map(v) => format!("map<{}>", label(names, v)),
        Shape::Union(b) => b
            .iter()
            .map(|b| label(names, b))
            .collect::<Vec<_>>()
            .join(" | "),
        Shape::Record(r) => r.name.to_string(),
        Shape::Enum(e) => format!("enum {} {{{}}}", e.name, e.symbols.join(", ")),
        Shape::Fixed(f) => format!("fixed {}[{}]", f.name, f.size),
        other => other.describe(),
    };
    match logical {
        Some(l) => format!("{base} ({l})"),
        None => base,
    }
}
