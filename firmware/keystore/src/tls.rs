//! rustls adapter (being written).
