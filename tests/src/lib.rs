//! Harness for real-process tests (being written).
