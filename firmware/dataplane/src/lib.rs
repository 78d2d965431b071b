//! Media forwarding data plane (being written).
