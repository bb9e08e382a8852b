//! The binary encoding of [`Headers`] in the outbox's `headers bytea` column.
//!
//! Format (version 1): one version byte `0x01`, then for each entry in order a 4-byte
//! big-endian name length, the UTF-8 name, a 4-byte big-endian value length and the value
//! bytes. Order and repeated names are kept; values may hold any bytes.

use bytes::Bytes;
use herald_core::Headers;

use super::{OutboxError, OutboxErrorKind};

const VERSION: u8 = 1;

/// Encodes headers (ordered multimap, binary values) for the `headers` column.
pub(crate) fn encode(headers: &Headers) -> Result<Vec<u8>, OutboxError> {
    let mut out = Vec::with_capacity(1 + headers.byte_len() + 8 * headers.len());
    out.push(VERSION);
    for (name, value) in headers {
        put_chunk(&mut out, name.as_bytes())?;
        put_chunk(&mut out, value)?;
    }
    Ok(out)
}

fn put_chunk(out: &mut Vec<u8>, chunk: &[u8]) -> Result<(), OutboxError> {
    let len = u32::try_from(chunk.len()).map_err(|_| {
        OutboxError::new(
            OutboxErrorKind::InvalidMessage,
            format!(
                "a header of {} bytes does not fit the outbox encoding",
                chunk.len()
            ),
        )
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(chunk);
    Ok(())
}

/// Decodes the `headers` column; malformed input is [`OutboxErrorKind::Corrupt`].
pub(crate) fn decode(raw: &[u8]) -> Result<Headers, OutboxError> {
    let corrupt = |why: &str| OutboxError::new(OutboxErrorKind::Corrupt, format!("headers: {why}"));
    let (&version, mut rest) = raw.split_first().ok_or_else(|| corrupt("empty"))?;
    if version != VERSION {
        return Err(corrupt(&format!("unknown encoding version {version}")));
    }
    let mut headers = Headers::new();
    while !rest.is_empty() {
        let name = take_chunk(&mut rest).ok_or_else(|| corrupt("truncated name"))?;
        let name = std::str::from_utf8(name).map_err(|_| corrupt("name is not UTF-8"))?;
        let value = take_chunk(&mut rest).ok_or_else(|| corrupt("truncated value"))?;
        headers.append(name, Bytes::copy_from_slice(value));
    }
    Ok(headers)
}

fn take_chunk<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, tail) = rest.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
    if tail.len() < len {
        return None;
    }
    let (chunk, tail) = tail.split_at(len);
    *rest = tail;
    Some(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_order_repeats_and_binary_values() {
        let mut h = Headers::new();
        h.append("ce-type", "x.v1");
        h.append("bin", Bytes::from_static(&[0, 255, 0, 10, 13]));
        h.append("bin", Bytes::from_static(b""));
        h.append("", "empty name");
        let raw = encode(&h).expect("encodes");
        assert_eq!(decode(&raw).expect("decodes"), h);
        assert_eq!(
            decode(&encode(&Headers::new()).expect("encodes")).expect("decodes"),
            Headers::new()
        );
    }

    #[test]
    fn malformed_input_is_a_typed_error() {
        let good = {
            let mut h = Headers::new();
            h.append("a", "b");
            encode(&h).expect("encodes")
        };
        for bad in [
            &[][..],
            &[2][..],
            &good[..good.len() - 1],
            &[1, 0, 0, 0, 9, b'a'][..],
            &[1, 0, 0, 0, 1, 0xff, 0, 0, 0, 0][..],
            &[1, 0xff, 0xff, 0xff, 0xff][..],
        ] {
            let err = decode(bad).expect_err("rejects");
            assert_eq!(err.kind(), OutboxErrorKind::Corrupt, "{bad:?}");
        }
    }
}
