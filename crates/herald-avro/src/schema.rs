//! [`ParsedSchema`]: an Avro schema parsed once, with its named types resolved.

use std::fmt;

use apache_avro::schema::{
    DecimalSchema, EnumSchema, FixedSchema, InnerDecimalSchema, Name, NamesRef, RecordSchema, ResolvedOwnedSchema,
    UuidSchema,
};
pub use apache_avro::Schema;

use crate::error::{Error, ErrorKind, Result};

/// A validated Avro schema: the parsed tree, its named types, the original text and a
/// normalized form that identifies it (two texts that differ only in whitespace or key order
/// normalize alike; a changed default or alias does not).
pub struct ParsedSchema {
    resolved: ResolvedOwnedSchema,
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
        let normalized = serde_json::to_string(&schema)
            .map_err(|e| Error::new(ErrorKind::InvalidSchema, e.to_string()))?;
        let resolved = ResolvedOwnedSchema::new(schema)
            .map_err(|e| Error::avro(ErrorKind::InvalidSchema, "resolving names", e))?;
        Ok(Self {
            resolved,
            fingerprint: fnv1a(normalized.as_bytes()),
            normalized,
            text: text.to_owned(),
        })
    }

    /// The schema tree.
    pub fn schema(&self) -> &Schema {
        self.resolved.get_root_schema()
    }

    /// Its named types (records, enums, fixed), by full name.
    pub fn names(&self) -> &NamesRef<'_> {
        self.resolved.get_names()
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

    /// Follows a named reference to its definition.
    pub(crate) fn deref<'a>(&'a self, s: &'a Schema) -> &'a Schema {
        deref(self.names(), s)
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

/// Follows `Schema::Ref`s through `names` (unknown names stay as they are: the parser
/// already rejected them).
pub(crate) fn deref<'a>(names: &NamesRef<'a>, mut s: &'a Schema) -> &'a Schema {
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
    pub(crate) fn of(names: &NamesRef<'a>, s: &'a Schema) -> Self {
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
