//! The relay service (being written).
