//! Reading the version field of an SDP `o=` line (RFC 8866 §5.2), which we keep monotonic
//! towards each party.

/// The `<sess-version>` of the first `o=` line, if it is there and numeric.
pub(crate) fn origin_version(sdp: &[u8]) -> Option<u64> {
    let line = sdp
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .find(|l| l.starts_with(b"o="))?;
    // o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>
    let field = line
        .get(2..)?
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty())
        .nth(2)?;
    std::str::from_utf8(field).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::origin_version;

    #[test]
    fn reads_the_session_version() {
        let sdp = b"v=0\r\no=- 1234 5678 IN IP4 192.0.2.1\r\ns=-\r\n";
        assert_eq!(origin_version(sdp), Some(5678));
        assert_eq!(origin_version(b"v=0\no=alice 1 2 IN IP4 x\n"), Some(2));
        assert_eq!(origin_version(b"v=0\r\no=- 1\r\n"), None);
        assert_eq!(origin_version(b"v=0\r\no=- 1 x IN IP4 y\r\n"), None);
        assert_eq!(origin_version(b""), None);
    }
}
