//! The SDP the load generator offers and answers, and the one fact it needs back from the
//! relay's rewritten SDP: where to send media.
//!
//! Deliberately tiny and independent of the relay's own SDP code, so a bug there cannot hide
//! itself from the benchmark.

use std::net::{Ipv4Addr, SocketAddrV4};

/// Media options of generated SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SdpOptions {
    /// Offer `a=rtcp-mux` (RTP and RTCP on one port). Off by default: carriers mostly send
    /// separate RTCP.
    pub rtcp_mux: bool,
}

/// SDP for one PCMU 20 ms audio endpoint at `addr`.
pub fn endpoint_sdp(addr: SocketAddrV4, session_id: u64, opts: SdpOptions) -> String {
    let ip = addr.ip();
    let port = addr.port();
    let mut s = format!(
        "v=0\r\no=- {session_id} 1 IN IP4 {ip}\r\ns=pop-loadgen\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n"
    );
    if opts.rtcp_mux {
        s.push_str("a=rtcp-mux\r\n");
    }
    s
}

/// Where the first audio stream of `sdp` wants media: the media-level `c=` if present, else the
/// session-level one, and the `m=audio` port. `None` if either is missing or not IPv4.
pub fn audio_destination(sdp: &str) -> Option<SocketAddrV4> {
    let mut session_ip: Option<Ipv4Addr> = None;
    let mut media_ip: Option<Ipv4Addr> = None;
    let mut port: Option<u16> = None;
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("m=") {
            if port.is_some() {
                break; // only the first audio stream matters
            }
            let mut f = rest.split_ascii_whitespace();
            if f.next() == Some("audio") {
                port = f.next().and_then(|p| p.parse().ok());
            }
        } else if let Some(rest) = line.strip_prefix("c=IN IP4 ") {
            let ip = rest.split('/').next().and_then(|a| a.trim().parse().ok());
            if port.is_some() {
                media_ip = ip;
            } else {
                session_ip = ip;
            }
        }
    }
    Some(SocketAddrV4::new(media_ip.or(session_ip)?, port?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_sdp_round_trips_destination() {
        let a = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 40002);
        let sdp = endpoint_sdp(a, 7, SdpOptions::default());
        assert_eq!(audio_destination(&sdp), Some(a));
        assert!(!sdp.contains("rtcp-mux"));
        assert!(endpoint_sdp(a, 7, SdpOptions { rtcp_mux: true }).contains("a=rtcp-mux\r\n"));
    }

    #[test]
    fn media_level_connection_wins() {
        let sdp = "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 3000 RTP/AVP 0\r\nc=IN IP4 127.0.0.9\r\n\
                   m=audio 4000 RTP/AVP 0\r\nc=IN IP4 127.0.0.8\r\n";
        assert_eq!(
            audio_destination(sdp),
            Some(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 9), 3000))
        );
    }

    #[test]
    fn missing_parts_rejected() {
        assert_eq!(audio_destination("v=0\r\nm=audio 3000 RTP/AVP 0\r\n"), None);
        assert_eq!(audio_destination("v=0\r\nc=IN IP4 1.2.3.4\r\n"), None);
        assert_eq!(
            audio_destination("c=IN IP6 ::1\r\nm=audio 1 RTP/AVP 0\r\n"),
            None
        );
    }
}
