//! The NATS header mapping: any message that `outbound` accepts comes back from
//! `inbound` with the same id, key and headers (values byte for byte), and `inbound`
//! never panics on whatever headers a stored message carries.
#![no_main]

use bytes::Bytes;
use herald_core::Message;
use herald_nats::{
    async_nats::HeaderMap,
    mapping::{decode_value, encode_value, inbound, outbound},
};
use libfuzzer_sys::fuzz_target;

/// Fields separated by 0xff: id, key ("" = none, else key bytes after a 1-byte flag),
/// then name/value pairs.
fn message(data: &[u8]) -> Option<Message> {
    let mut parts = data.split(|b| *b == 0xff);
    let id = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let key = parts.next()?;
    let mut m = Message::with_id(id, Bytes::from_static(b"payload"));
    if let [_, k @ ..] = key {
        m = m.with_key(Bytes::copy_from_slice(k));
    }
    while let (Some(n), Some(v)) = (parts.next(), parts.next()) {
        let n = String::from_utf8(n.to_vec()).ok()?;
        m = m.with_header(n, Bytes::copy_from_slice(v));
    }
    Some(m)
}

fn is_adapter(n: &str) -> bool {
    matches!(n, "ce-id" | "ce-specversion" | "herald-key" | "Nats-Msg-Id")
}

fuzz_target!(|data: &[u8]| {
    // Any text decodes.
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = decode_value(s);
    }
    // Encoding is reversible.
    assert_eq!(decode_value(&encode_value(data)), data);

    let Some(m) = message(data) else { return };
    let Ok(out) = outbound("orders", m.clone()) else {
        return;
    };
    let back = inbound(&out.subject, Some(&out.headers), out.payload.clone(), "orders", 1);
    assert_eq!(back.id, m.id, "id");
    assert_eq!(back.key, m.key, "key");
    let mut want: Vec<(String, Bytes)> = m
        .headers
        .iter()
        .filter(|(n, _)| !is_adapter(n))
        .map(|(n, v)| (n.to_owned(), v.clone()))
        .collect();
    let mut got: Vec<(String, Bytes)> = back
        .headers
        .iter()
        .map(|(n, v)| (n.to_owned(), v.clone()))
        .collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "headers");

    // Arbitrary stored headers never panic `inbound`.
    let mut raw = HeaderMap::new();
    for pair in data.chunks(16) {
        let (n, v) = pair.split_at(pair.len() / 2);
        let (Ok(n), Ok(v)) = (std::str::from_utf8(n), std::str::from_utf8(v)) else {
            continue;
        };
        // What the client library accepts on the wire (no CR/LF, a valid name).
        if let (Ok(name), Ok(value)) = (
            n.parse::<herald_nats::async_nats::HeaderName>(),
            v.parse::<herald_nats::async_nats::HeaderValue>(),
        ) {
            raw.append(name, value);
        }
    }
    let _ = inbound("orders.x.y", Some(&raw), Bytes::new(), "orders", 7);
});
