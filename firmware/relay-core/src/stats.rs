//! RFC 3550 receive statistics (being written)
