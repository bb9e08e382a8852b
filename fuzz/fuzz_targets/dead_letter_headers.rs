//! The dead-letter header handling: dead-lettering any message twice leaves exactly one
//! copy of each herald dead-letter header, keeps every other header, and never panics.
#![no_main]

use std::sync::Arc;

use bytes::Bytes;
use herald_core::{
    HandlerError, Inbound, Message, Origin, RouteInfo,
    middleware::dead_letter::{dead_letter_message, is_dead_letter_header},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut m = Message::with_id("id-1", Bytes::from_static(b"{}"));
    let mut parts = data.split(|b| *b == 0xff);
    while let (Some(n), Some(v)) = (parts.next(), parts.next()) {
        let Ok(n) = String::from_utf8(n.to_vec()) else { return };
        m = m.with_header(n, Bytes::copy_from_slice(v));
    }
    let reason = String::from_utf8_lossy(data).into_owned();
    let route = Arc::new(RouteInfo {
        handler: "h".into(),
        topic: "orders".into(),
        group: "g".into(),
    });
    let err = HandlerError::permanent(&reason);
    let origin = Origin::new("orders").with("offset", 3);
    let once = dead_letter_message(
        &Inbound::new(m.clone(), origin.clone(), 1, route.clone()),
        &err,
    );
    let twice = dead_letter_message(&Inbound::new(once.clone(), origin, 2, route), &err);
    for name in [
        "herald-error",
        "herald-error-class",
        "herald-attempts",
        "herald-original-topic",
        "herald-original-offset",
        "herald-handler",
        "herald-group",
        "herald-failed-at",
    ] {
        assert_eq!(twice.headers.get_all(name).count(), 1, "{name}");
    }
    assert_eq!(twice.header("herald-error"), Some(reason.as_str()));
    let kept = |msg: &Message| {
        msg.headers
            .iter()
            .filter(|(n, _)| !is_dead_letter_header(n))
            .map(|(n, v)| (n.to_owned(), v.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(kept(&twice), kept(&m));
    assert_eq!(twice.id, m.id);
    assert_eq!(twice.payload, m.payload);
});
