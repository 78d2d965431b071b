//! SDP inspection and rewriting (being written)
