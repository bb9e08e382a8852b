//! [`ParsedSchema`]: an Avro schema parsed once, with its named types resolved.

use std::{collections::HashMap, fmt};

pub use apache_avro::Schema;
use apache_avro::schema::{
    DecimalSchema, EnumSchema, FixedSchema, InnerDecimalSchema, Name, Names, NamesRef,
    RecordSchema, ResolvedSchema, UnionSchema, UuidSchema,
};

use crate::error::{Error, ErrorKind, Result};

/// A validated Avro schema: the parsed tree, its named types, the original text and a
/// normalized form that identifies it (two texts that differ only in whitespace or key order
/// normalize alike; a changed default or alias does not).
pub struct ParsedSchema {
    schema: Schema,
    names: Names,
    text: String,
    normalized: String,
    fingerprint: u64,
}

impl ParsedSchema {
    /// Parses and validates a schema.
    ///
    /// # Examples
    /// ```
    /// use herald_avro::ParsedSchema;
    /// let s = ParsedSchema::parse(r#"{"type":"record","name":"A","fields":[{"name":"x","type":"int"}]}"#)?;
    /// assert_eq!(s.full_name().as_deref(), Some("A"));
    /// assert!(ParsedSchema::parse(r#"{"type":"recrd"}"#).is_err());
    /// # Ok::<_, herald_avro::Error>(())
    /// ```
    pub fn parse(text: &str) -> Result<Self> {
        let schema = Schema::parse_str(text)
            .map_err(|e| Error::avro(ErrorKind::InvalidSchema, "parsing schema", e))?;
        Self::build(schema, Some(text))
    }

    /// Wraps an already parsed schema; its text is the normalized form.
    pub fn from_schema(schema: Schema) -> Result<Self> {
        Self::build(schema, None)
    }

    fn build(schema: Schema, text: Option<&str>) -> Result<Self> {
        let normalized = serde_json::to_string(&schema)
            .map_err(|e| Error::new(ErrorKind::InvalidSchema, e.to_string()))?;
        let names = ResolvedSchema::new(&schema)
            .map_err(|e| Error::avro(ErrorKind::InvalidSchema, "resolving names", e))?
            .get_names()
            .iter()
            .map(|(n, s)| (n.clone(), (*s).clone()))
            .collect();
        Ok(Self {
            schema,
            names,
            fingerprint: fnv1a(normalized.as_bytes()),
            text: text.map_or_else(|| normalized.clone(), str::to_owned),
            normalized,
        })
    }

    /// The writer's schema with its record fields renamed after the reader's field
    /// aliases (Avro's `applyAliases`), so resolution by name finds them; `None` when
    /// nothing needs renaming. Records pair up as in the compatibility rules: equal
    /// unqualified names, or the writer's name among the reader's aliases.
    pub(crate) fn with_reader_aliases(&self, reader: &ParsedSchema) -> Result<Option<Self>> {
        let mut by_name: HashMap<&str, &RecordSchema> = HashMap::new();
        for s in reader.names().values() {
            if let Schema::Record(r) = s {
                if r.fields.iter().all(|f| f.aliases.is_empty()) {
                    continue;
                }
                let aliases = r.aliases.iter().flatten().map(|a| a.name());
                for n in std::iter::once(r.name.name()).chain(aliases) {
                    by_name.insert(n, r);
                }
            }
        }
        if by_name.is_empty() {
            return Ok(None);
        }
        let mut schema = self.schema().clone();
        if !rename_fields(&mut schema, &by_name)? {
            return Ok(None);
        }
        Self::from_schema(schema).map(Some)
    }

    /// The schema tree.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Its named types (records, enums, fixed), by full name.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Its named types as `apache-avro`'s writer wants them.
    pub(crate) fn names_ref(&self) -> NamesRef<'_> {
        self.names.iter().map(|(n, s)| (n.clone(), s)).collect()
    }

    /// The text it was parsed from.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The normalized JSON form: what registries compare and store.
    pub fn normalized(&self) -> &str {
        &self.normalized
    }

    /// A stable 64-bit FNV-1a hash of [`normalized`](Self::normalized).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The full name of a named top-level type (`herald.examples.orders.OrderCreated`).
    pub fn full_name(&self) -> Option<String> {
        self.schema().name().map(|n| n.to_string())
    }
}

impl fmt::Debug for ParsedSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedSchema")
            .field("name", &self.full_name())
            .field("fingerprint", &format_args!("{:016x}", self.fingerprint))
            .finish()
    }
}

impl std::str::FromStr for ParsedSchema {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// Renames writer record fields after reader field aliases; returns whether any changed.
fn rename_fields(s: &mut Schema, readers: &HashMap<&str, &RecordSchema>) -> Result<bool> {
    Ok(match s {
        Schema::Record(w) => {
            let mut changed = false;
            if let Some(r) = readers.get(w.name.name()) {
                for rf in &r.fields {
                    if w.fields.iter().any(|f| f.name == rf.name) {
                        continue;
                    }
                    if let Some(wf) = w.fields.iter_mut().find(|f| rf.aliases.contains(&f.name)) {
                        wf.name.clone_from(&rf.name);
                        changed = true;
                    }
                }
                if changed {
                    w.lookup = w
                        .fields
                        .iter()
                        .enumerate()
                        .flat_map(|(i, f)| {
                            std::iter::once(&f.name)
                                .chain(&f.aliases)
                                .map(move |n| (n.clone(), i))
                        })
                        .collect();
                }
            }
            for f in &mut w.fields {
                changed |= rename_fields(&mut f.schema, readers)?;
            }
            changed
        }
        Schema::Array(a) => rename_fields(&mut a.items, readers)?,
        Schema::Map(m) => rename_fields(&mut m.types, readers)?,
        Schema::Union(u) => {
            let mut variants = u.variants().to_vec();
            let mut changed = false;
            for v in &mut variants {
                changed |= rename_fields(v, readers)?;
            }
            if changed {
                *u = UnionSchema::new(variants)
                    .map_err(|e| Error::avro(ErrorKind::InvalidSchema, "rebuilding a union", e))?;
            }
            changed
        }
        _ => false,
    })
}

/// Follows `Schema::Ref`s through `names` (unknown names stay as they are: the parser
/// already rejected them).
pub(crate) fn deref<'a>(names: &'a Names, mut s: &'a Schema) -> &'a Schema {
    while let Schema::Ref { name } = s {
        match names.get(name) {
            Some(t) => s = t,
            None => break,
        }
    }
    s
}

/// A schema as Avro's resolution rules see it: logical types reduced to the type they
/// annotate, references followed.
#[derive(Clone, Copy)]
pub(crate) enum Shape<'a> {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Array(&'a Schema),
    Map(&'a Schema),
    Union(&'a [Schema]),
    Record(&'a RecordSchema),
    Enum(&'a EnumSchema),
    Fixed(&'a FixedSchema),
    /// A reference the parser let through unresolved; matches nothing.
    Unresolved(&'a Name),
}

impl<'a> Shape<'a> {
    pub(crate) fn of(names: &'a Names, s: &'a Schema) -> Self {
        match deref(names, s) {
            Schema::Null => Self::Null,
            Schema::Boolean => Self::Boolean,
            Schema::Int | Schema::Date | Schema::TimeMillis => Self::Int,
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Self::Long,
            Schema::Float => Self::Float,
            Schema::Double => Self::Double,
            Schema::Bytes
            | Schema::BigDecimal
            | Schema::Uuid(UuidSchema::Bytes)
            | Schema::Decimal(DecimalSchema {
                inner: InnerDecimalSchema::Bytes,
                ..
            }) => Self::Bytes,
            Schema::String | Schema::Uuid(UuidSchema::String) => Self::String,
            Schema::Ref { name } => Self::Unresolved(name),
            Schema::Array(a) => Self::Array(&a.items),
            Schema::Map(m) => Self::Map(&m.types),
            Schema::Union(u) => Self::Union(u.variants()),
            Schema::Record(r) => Self::Record(r),
            Schema::Enum(e) => Self::Enum(e),
            Schema::Fixed(f)
            | Schema::Duration(f)
            | Schema::Uuid(UuidSchema::Fixed(f))
            | Schema::Decimal(DecimalSchema {
                inner: InnerDecimalSchema::Fixed(f),
                ..
            }) => Self::Fixed(f),
        }
    }

    /// The name used in messages: `long`, `record a.B`, `array`.
    pub(crate) fn describe(&self) -> String {
        let named = |kind: &str, n: &Name| format!("{kind} {n}");
        match self {
            Self::Null => "null".into(),
            Self::Boolean => "boolean".into(),
            Self::Int => "int".into(),
            Self::Long => "long".into(),
            Self::Float => "float".into(),
            Self::Double => "double".into(),
            Self::Bytes => "bytes".into(),
            Self::String => "string".into(),
            Self::Array(_) => "array".into(),
            Self::Map(_) => "map".into(),
            Self::Union(_) => "union".into(),
            Self::Record(r) => named("record", &r.name),
            Self::Enum(e) => named("enum", &e.name),
            Self::Fixed(f) => named("fixed", &f.name),
            Self::Unresolved(n) => named("unresolved", n),
        }
    }
}

/// FNV-1a, 64 bit: stable across builds and platforms, unlike `std`'s hasher.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
