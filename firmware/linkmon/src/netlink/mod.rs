//! rtnetlink, hand-rolled: [`wire`] builds and parses the messages, [`RtnlSocket`] sends
//! requests and waits for their acknowledgement, [`LinkEvents`] reads carrier changes.

pub mod wire;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    bind, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

pub use wire::{LinkState, RouteEntry, RouteSpec, RuleSpec};

use crate::LinkmonError;

/// `RTMGRP_LINK`: link state changes.
const RTMGRP_LINK: u32 = 1;
/// Bound on how long a request waits for its acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

fn open(groups: u32, nonblocking: bool) -> Result<OwnedFd, LinkmonError> {
    let mut flags = SockFlag::SOCK_CLOEXEC;
    if nonblocking {
        flags |= SockFlag::SOCK_NONBLOCK;
    }
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        flags,
        SockProtocol::NetlinkRoute,
    )
    .map_err(|e| LinkmonError::Netlink {
        op: "socket",
        source: e.into(),
    })?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups)).map_err(|e| LinkmonError::Netlink {
        op: "bind",
        source: e.into(),
    })?;
    // Link events come in bursts on a busy host; a larger buffer makes ENOBUFS rarer.
    let _ = setsockopt(&fd, sockopt::RcvBuf, &(1 << 20));
    Ok(fd)
}

/// A request socket: one request at a time, each acknowledged before the next.
#[derive(Debug)]
pub struct RtnlSocket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl RtnlSocket {
    /// Opens a request socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, LinkmonError> {
        let fd = open(0, false)?;
        setsockopt(
            &fd,
            sockopt::ReceiveTimeout,
            &TimeVal::new(0, 200_000), // re-checked against ACK_TIMEOUT in the read loop
        )
        .map_err(|e| LinkmonError::Netlink {
            op: "SO_RCVTIMEO",
            source: e.into(),
        })?;
        Ok(Self {
            fd,
            seq: 1,
            buf: vec![0u8; 64 * 1024],
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    fn send(&self, op: &'static str, msg: &[u8]) -> Result<(), LinkmonError> {
        send(self.fd.as_raw_fd(), msg, MsgFlags::empty())
            .map(|_| ())
            .map_err(|e| LinkmonError::Netlink {
                op,
                source: e.into(),
            })
    }

    /// Reads until the message with `seq` is acknowledged (or, for dumps, done), handing every
    /// other message of that sequence to `each`.
    fn wait(
        &mut self,
        op: &'static str,
        seq: u32,
        mut each: impl FnMut(&wire::NlMsg<'_>),
    ) -> Result<(), LinkmonError> {
        let deadline = Instant::now() + ACK_TIMEOUT;
        loop {
            if Instant::now() > deadline {
                return Err(LinkmonError::Netlink {
                    op,
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no reply from the kernel",
                    ),
                });
            }
            let n = match recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty()) {
                Ok(n) => n,
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    return Err(LinkmonError::Netlink {
                        op,
                        source: e.into(),
                    })
                }
            };
            for m in wire::messages(self.buf.get(..n).unwrap_or_default()) {
                if m.seq != seq {
                    continue;
                }
                match m.msg_type {
                    wire::NLMSG_ERROR => {
                        let code = wire::error_code(m.payload).unwrap_or(-libc::EPROTO);
                        return if code == 0 {
                            Ok(())
                        } else {
                            Err(LinkmonError::Netlink {
                                op,
                                source: std::io::Error::from_raw_os_error(-code),
                            })
                        };
                    }
                    wire::NLMSG_DONE => return Ok(()),
                    _ => each(&m),
                }
            }
        }
    }

    /// Replaces (or creates) a route in one atomic kernel operation; returns how long the
    /// kernel took to acknowledge it.
    pub fn replace_route(&mut self, route: &RouteSpec) -> Result<Duration, LinkmonError> {
        let seq = self.next_seq();
        let msg = wire::route_replace(route, seq);
        let t0 = Instant::now();
        self.send("RTM_NEWROUTE replace", &msg)?;
        self.wait("RTM_NEWROUTE replace", seq, |_| {})?;
        Ok(t0.elapsed())
    }

    /// Adds a policy rule; an identical existing rule (from a previous run) is success.
    pub fn add_rule(&mut self, rule: &RuleSpec) -> Result<(), LinkmonError> {
        let seq = self.next_seq();
        self.send("RTM_NEWRULE", &wire::rule_add(rule, seq))?;
        match self.wait("RTM_NEWRULE", seq, |_| {}) {
            Err(LinkmonError::Netlink { source, .. })
                if source.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// Asks the kernel to resolve (or refresh) the neighbour `addr` on `ifindex`.
    pub fn refresh_neighbour(
        &mut self,
        ifindex: u32,
        addr: std::net::Ipv4Addr,
    ) -> Result<(), LinkmonError> {
        let seq = self.next_seq();
        self.send("RTM_NEWNEIGH use", &wire::neigh_use(ifindex, addr, seq))?;
        self.wait("RTM_NEWNEIGH use", seq, |_| {})
    }

    /// All IPv4 routes of all tables.
    pub fn routes(&mut self) -> Result<Vec<RouteEntry>, LinkmonError> {
        let seq = self.next_seq();
        self.send("RTM_GETROUTE dump", &wire::route_dump(seq))?;
        let mut out = Vec::new();
        self.wait("RTM_GETROUTE dump", seq, |m| {
            if let Some(r) = wire::parse_route(m) {
                out.push(r);
            }
        })?;
        Ok(out)
    }

    /// Every link with its carrier state.
    pub fn links(&mut self) -> Result<Vec<LinkState>, LinkmonError> {
        let seq = self.next_seq();
        self.send("RTM_GETLINK dump", &wire::link_dump(seq))?;
        let mut out = Vec::new();
        self.wait("RTM_GETLINK dump", seq, |m| {
            if let Some(l) = wire::parse_link(m) {
                out.push(l);
            }
        })?;
        Ok(out)
    }
}

/// A non-blocking subscription to link events (`RTMGRP_LINK`).
#[derive(Debug)]
pub struct LinkEvents {
    fd: OwnedFd,
    buf: Vec<u8>,
    /// Times the kernel reported a lost event (ENOBUFS); the caller should re-read the links.
    pub overruns: u64,
}

impl LinkEvents {
    /// Subscribes in the calling thread's network namespace.
    pub fn subscribe() -> Result<Self, LinkmonError> {
        Ok(Self {
            fd: open(RTMGRP_LINK, true)?,
            buf: vec![0u8; 64 * 1024],
            overruns: 0,
        })
    }

    /// Drains pending events into `out`. Returns `true` when events were lost and the caller
    /// must resynchronise with a link dump.
    pub fn drain(&mut self, out: &mut Vec<LinkState>) -> Result<bool, LinkmonError> {
        let mut lost = false;
        // Bounded: a flood of link changes must not starve the rest of the loop.
        for _ in 0..64 {
            match recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty()) {
                Ok(n) => {
                    out.extend(
                        wire::messages(self.buf.get(..n).unwrap_or_default())
                            .filter_map(|m| wire::parse_link(&m)),
                    );
                }
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::ENOBUFS) => {
                    self.overruns += 1;
                    lost = true;
                }
                Err(e) => {
                    return Err(LinkmonError::Netlink {
                        op: "link events",
                        source: e.into(),
                    })
                }
            }
        }
        Ok(lost)
    }

    /// The descriptor, for polling.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for LinkEvents {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
