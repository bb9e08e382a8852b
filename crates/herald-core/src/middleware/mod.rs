//! Middleware: see the module docs.
