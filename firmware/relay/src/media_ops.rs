//! [`MediaOps`] over real sockets and the data plane: the core says which ports and streams
//! exist, this binds the sockets and hands them to the workers.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};

use pop_dataplane::{Dataplane, DataplaneError, DataplaneTotals, LegPeers, LegSockets};
use pop_relay_core::media::{
    BindError, LegSpec, LocalPortsId, MediaError, MediaOps, MediaTotals, StreamId, StreamSpec,
    StreamStats,
};

/// Sockets bound for a port pair that no stream owns yet (between offer allocation and stream
/// creation), or the RTCP socket a muxing leg does not use but whose port stays reserved.
#[derive(Debug)]
struct BoundPorts {
    rtp: Option<UdpSocket>,
    rtcp: Option<UdpSocket>,
}

/// Production [`MediaOps`]: binds UDP sockets on the media address and moves them into the
/// data plane when the core creates a stream.
#[derive(Debug)]
pub struct DataplaneMedia {
    dataplane: Dataplane,
    bound: HashMap<LocalPortsId, BoundPorts>,
    next_ports_id: u64,
}

impl DataplaneMedia {
    /// Wraps a started data plane.
    pub fn new(dataplane: Dataplane) -> Self {
        Self {
            dataplane,
            bound: HashMap::new(),
            next_ports_id: 1,
        }
    }

    /// Aggregate forwarding counters of every worker.
    pub fn totals(&self) -> DataplaneTotals {
        self.dataplane.totals()
    }

    /// Whether every data-plane worker is still running.
    pub fn workers_alive(&self) -> bool {
        self.dataplane.workers_alive()
    }

    /// Stops the workers (closing every socket they own).
    pub fn shutdown(self) {
        self.dataplane.shutdown();
    }

    /// Port pairs bound but not (yet) forwarding, for leak checks.
    pub fn idle_port_pairs(&self) -> usize {
        self.bound.len()
    }

    /// Takes a leg's sockets out of the idle set. The RTCP socket of a leg whose peer muxes RTCP
    /// stays behind, bound, so its port is not reused until the core releases the pair.
    fn take_leg(&mut self, leg: &LegSpec) -> Result<LegSockets, MediaError> {
        let ports = self.bound.get_mut(&leg.local).ok_or(MediaError::Unknown)?;
        let rtp = ports.rtp.take().ok_or(MediaError::Unknown)?;
        let rtcp = if leg.rtcp_mux {
            None
        } else {
            ports.rtcp.take()
        };
        Ok(LegSockets {
            rtp,
            rtcp,
            peer_rtp: leg.peer_rtp,
            peer_rtcp: leg.peer_rtcp,
            rtcp_mux: leg.rtcp_mux,
            codecs: leg.codecs,
        })
    }
}

fn peers(leg: &LegSpec) -> LegPeers {
    LegPeers {
        peer_rtp: leg.peer_rtp,
        peer_rtcp: leg.peer_rtcp,
        rtcp_mux: leg.rtcp_mux,
        codecs: leg.codecs,
    }
}

fn bind_one(ip: IpAddr, port: u16) -> Result<UdpSocket, BindError> {
    let addr = SocketAddr::new(ip, port);
    let sock = UdpSocket::bind(addr).map_err(|e| match e.kind() {
        io::ErrorKind::AddrInUse => BindError::InUse(port),
        _ => BindError::Fatal {
            addr,
            reason: e.to_string(),
        },
    })?;
    sock.set_nonblocking(true).map_err(|e| BindError::Fatal {
        addr,
        reason: e.to_string(),
    })?;
    Ok(sock)
}

/// The NG `statistics` subset of the data plane's counters. Stale drops (packets that raced a
/// stream's removal) are counted with "no destination": both mean nowhere to send.
fn media_totals(t: &DataplaneTotals) -> MediaTotals {
    MediaTotals {
        forwarded_packets: t.forwarded_packets,
        forwarded_bytes: t.forwarded_bytes,
        dropped_malformed: t.dropped_malformed,
        dropped_spoofed: t.dropped_spoofed,
        dropped_no_destination: t.dropped_no_destination + t.dropped_stale,
        send_errors: t.send_errors,
        buffer_ring_empty: t.buffer_ring_empty,
    }
}

fn media_error(e: DataplaneError) -> MediaError {
    match e {
        DataplaneError::UnknownStream(_) => MediaError::Unknown,
        other => MediaError::Overloaded(other.to_string()),
    }
}

impl MediaOps for DataplaneMedia {
    fn bind_ports(
        &mut self,
        ip: IpAddr,
        rtp_port: u16,
        rtcp_mux_only: bool,
    ) -> Result<LocalPortsId, BindError> {
        let rtp = bind_one(ip, rtp_port)?;
        let rtcp = if rtcp_mux_only {
            None
        } else {
            let rtcp_port = rtp_port.checked_add(1).ok_or(BindError::InUse(rtp_port))?;
            Some(bind_one(ip, rtcp_port)?)
        };
        let id = LocalPortsId(self.next_ports_id);
        self.next_ports_id += 1;
        self.bound.insert(
            id,
            BoundPorts {
                rtp: Some(rtp),
                rtcp,
            },
        );
        Ok(id)
    }

    fn release_ports(&mut self, ports: LocalPortsId) {
        // Dropping closes whatever is still held here; sockets moved into a stream were closed
        // by the data plane when the stream was removed.
        self.bound.remove(&ports);
    }

    fn create_stream(&mut self, spec: StreamSpec) -> Result<(), MediaError> {
        let a = self.take_leg(&spec.a)?;
        let b = match self.take_leg(&spec.b) {
            Ok(b) => b,
            Err(e) => {
                // Put leg A's sockets back so the core can release them normally.
                if let Some(ports) = self.bound.get_mut(&spec.a.local) {
                    ports.rtp = Some(a.rtp);
                    if a.rtcp.is_some() {
                        ports.rtcp = a.rtcp;
                    }
                }
                return Err(e);
            }
        };
        self.dataplane
            .add_stream(spec.id, a, b, spec.policy)
            .map_err(media_error)
    }

    fn update_stream(&mut self, spec: StreamSpec) -> Result<(), MediaError> {
        self.dataplane
            .update_stream(spec.id, peers(&spec.a), peers(&spec.b), spec.policy)
            .map_err(media_error)
    }

    fn remove_stream(&mut self, id: StreamId) -> Result<StreamStats, MediaError> {
        self.dataplane.remove_stream(id).map_err(media_error)
    }

    fn stream_stats(&mut self, id: StreamId) -> Result<StreamStats, MediaError> {
        self.dataplane.stream_stats(id).map_err(media_error)
    }

    fn totals(&mut self) -> MediaTotals {
        media_totals(&self.dataplane.totals())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_map_every_drop_reason() {
        let t = DataplaneTotals {
            forwarded_packets: 1,
            forwarded_bytes: 2,
            dropped_malformed: 3,
            dropped_spoofed: 4,
            dropped_no_destination: 5,
            dropped_stale: 6,
            send_errors: 7,
            recv_errors: 8,
            buffer_ring_empty: 9,
            rearms: 10,
        };
        assert_eq!(
            media_totals(&t),
            MediaTotals {
                forwarded_packets: 1,
                forwarded_bytes: 2,
                dropped_malformed: 3,
                dropped_spoofed: 4,
                dropped_no_destination: 11,
                send_errors: 7,
                buffer_ring_empty: 9,
            }
        );
    }
}
