//! BFD control packets (being written)
