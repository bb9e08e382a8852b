//! Idempotent consumers: the dedupe store contract.
