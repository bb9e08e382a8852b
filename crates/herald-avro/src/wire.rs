//! The Confluent wire format: magic byte `0x00`, a 4-byte big-endian schema id, then the
//! Avro binary datum — and a bounded pre-check of that datum.
//!
//! ```text
//! +------+----------------+---------------------------+
//! | 0x00 | schema id (BE) | Avro binary datum ...     |
//! +------+----------------+---------------------------+
//!   1 B        4 B          rest of the payload
//! ```
//!
//! [`check_datum`] walks a datum against its writer's schema without allocating, and
//! rejects any string, bytes, array or map length that exceeds what is left of the
//! payload, nesting deeper than [`MAX_DEPTH`], more than [`MAX_EMPTY_ITEMS`] zero-byte
//! items, and trailing bytes. The codec runs it before handing the datum to `apache-avro`,
//! whose decoder sizes buffers from the lengths it reads (up to 512 MiB by default), so
//! garbage can cost an error, never a huge allocation, a stack overflow or a panic.

use apache_avro::schema::Names;

use crate::{
    error::{Error, ErrorKind, Result},
    schema::{ParsedSchema, Schema, Shape},
};

/// The first byte of every frame.
pub const MAGIC_BYTE: u8 = 0;
/// Magic byte plus schema id.
pub const HEADER_LEN: usize = 5;
/// How deep records, arrays, maps and unions may nest in one datum.
pub const MAX_DEPTH: usize = 256;
/// How many items that take no bytes (nulls, empty records) one datum may hold.
pub const MAX_EMPTY_ITEMS: u64 = 1 << 20;

/// Writes the header for `schema_id` followed by `datum`.
///
/// # Examples
/// ```
/// let frame = herald_avro::wire::frame(7, &[2, 4]);
/// assert_eq!(frame, [0, 0, 0, 0, 7, 2, 4]);
/// assert_eq!(herald_avro::wire::split(&frame)?, (7, &[2u8, 4][..]));
/// # Ok::<_, herald_avro::Error>(())
/// ```
pub fn frame(schema_id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + datum.len());
    out.push(MAGIC_BYTE);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

/// Splits a frame into its schema id and datum.
///
/// # Errors
/// [`ErrorKind::WrongMagicByte`] if the first byte is not `0x00`,
/// [`ErrorKind::TruncatedHeader`] if fewer than 5 bytes are present.
pub fn split(payload: &[u8]) -> Result<(u32, &[u8])> {
    match payload {
        [first, ..] if *first != MAGIC_BYTE => Err(Error::new(
            ErrorKind::WrongMagicByte,
            format!("payload starts with {first:#04x}, expected {MAGIC_BYTE:#04x}"),
        )),
        [_, a, b, c, d, datum @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), datum)),
        _ => Err(Error::new(
            ErrorKind::TruncatedHeader,
            format!(
                "payload has {} bytes, the header alone needs {HEADER_LEN}",
                payload.len()
            ),
        )),
    }
}

/// Checks that `datum` is one well-formed value of `schema`, within the bounds described in
/// the [module docs](self), consuming every byte.
///
/// # Errors
/// [`ErrorKind::InvalidDatum`], naming the offset where the datum went wrong.
pub fn check_datum(schema: &ParsedSchema, datum: &[u8]) -> Result<()> {
    let mut s = Scanner {
        buf: datum,
        pos: 0,
        names: schema.names(),
        empty_items: 0,
    };
    s.value(schema.schema(), 0)?;
    if s.pos != datum.len() {
        return Err(s.fail(format!("{} trailing bytes", datum.len() - s.pos)));
    }
    Ok(())
}

struct Scanner<'a, 'n> {
    buf: &'a [u8],
    pos: usize,
    names: &'n Names,
    empty_items: u64,
}

impl<'n> Scanner<'_, 'n> {
    fn fail(&self, what: impl std::fmt::Display) -> Error {
        Error::new(
            ErrorKind::InvalidDatum,
            format!("at byte {} of the datum: {what}", self.pos),
        )
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn skip(&mut self, n: usize) -> Result<()> {
        if n > self.remaining() {
            return Err(self.fail(format!("needs {n} bytes, {} left", self.remaining())));
        }
        self.pos += n;
        Ok(())
    }

    /// A zig-zag varint of at most `max_bytes` bytes.
    fn varint(&mut self, max_bytes: usize) -> Result<i64> {
        let mut acc: u64 = 0;
        for i in 0..max_bytes {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.fail("varint runs past the end"));
            };
            self.pos += 1;
            acc |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(((acc >> 1) as i64) ^ -((acc & 1) as i64));
            }
        }
        Err(self.fail("varint too long"))
    }

    fn long(&mut self) -> Result<i64> {
        self.varint(10)
    }

    /// A non-negative length that fits in what is left.
    fn len(&mut self) -> Result<usize> {
        let n = self.long()?;
        match usize::try_from(n) {
            Ok(n) if n <= self.remaining() => Ok(n),
            _ => Err(self.fail(format!(
                "length {n} is negative or exceeds the {} bytes left",
                self.remaining()
            ))),
        }
    }

    fn index(&mut self, count: usize, what: &str) -> Result<usize> {
        let i = self.long()?;
        usize::try_from(i)
            .ok()
            .filter(|i| *i < count)
            .ok_or_else(|| self.fail(format!("{what} index {i} out of range 0..{count}")))
    }

    fn value(&mut self, schema: &'n Schema, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(self.fail(format!("nesting deeper than {MAX_DEPTH}")));
        }
        match Shape::of(self.names, schema) {
            Shape::Null => Ok(()),
            Shape::Boolean => match self.buf.get(self.pos) {
                Some(0 | 1) => self.skip(1),
                _ => Err(self.fail("boolean is not 0 or 1")),
            },
            Shape::Int => {
                let v = self.varint(5)?;
                i32::try_from(v)
                    .map(drop)
                    .map_err(|_| self.fail("int out of range"))
            }
            Shape::Long => self.long().map(drop),
            Shape::Float => self.skip(4),
            Shape::Double => self.skip(8),
            Shape::Bytes | Shape::String => {
                let n = self.len()?;
                self.skip(n)
            }
            Shape::Fixed(f) => self.skip(f.size),
            Shape::Enum(e) => self.index(e.symbols.len(), "enum").map(drop),
            Shape::Union(branches) => {
                let i = self.index(branches.len(), "union")?;
                self.value(&branches[i], depth + 1)
            }
            Shape::Record(r) => r
                .fields
                .iter()
                .try_for_each(|f| self.value(&f.schema, depth + 1)),
            Shape::Array(items) => self.blocks(depth, |s| s.value(items, depth + 1)),
            Shape::Map(values) => self.blocks(depth, |s| {
                let n = s.len()?;
                s.skip(n)?;
                s.value(values, depth + 1)
            }),
            Shape::Unresolved(name) => Err(self.fail(format!("unresolved type {name}"))),
        }
    }

    /// Array and map blocks: a count (negative: followed by a byte size), items, until 0.
    fn blocks(
        &mut self,
        depth: usize,
        mut item: impl FnMut(&mut Self) -> Result<()>,
    ) -> Result<()> {
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                self.len()?;
            }
            for _ in 0..count.unsigned_abs() {
                let start = self.pos;
                item(self)?;
                if self.pos == start {
                    self.empty_items += 1;
                    if self.empty_items > MAX_EMPTY_ITEMS {
                        return Err(self.fail(format!(
                            "more than {MAX_EMPTY_ITEMS} zero-byte items (depth {depth})"
                        )));
                    }
                }
            }
        }
    }
}
