//! The rendered ruleset, applied in an "appliance" namespace, seen from an "outside" namespace
//! joined to it by a veth pair: exactly the allowed ports answer each kind of source, and the
//! per-source SIP rate limit holds under a flood. Everything happens inside namespaces the test
//! creates (10.201.0.0/24 exists only there); they are deleted on drop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{
    require_root_and_tools, tcp_scan, udp_echoes, udp_echoes_from, veth_pair, Netns, Servers,
};
use pop_config::FirewallSection;
use pop_firewall::render;

const APP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
const PLAIN: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);
const MGMT: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 3);
const SIP_PEER: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 4);
const NG_PROXY: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 5);
const BFD_PEER: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 6);
const SIP_PEER_2: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 7);
const CONTROL: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 9);

const TCP_LISTEN: [u16; 5] = [22, 5060, 2223, 8080, 2224];
const UDP_LISTEN: [u16; 6] = [5060, 2223, 30000, 3784, 9999, 2224];

fn section(sip_pps: u32) -> FirewallSection {
    let mut fw = FirewallSection {
        sip_peers: vec![format!("{SIP_PEER}"), format!("{SIP_PEER_2}/32")],
        ng_proxies: vec![format!("{NG_PROXY}/32")],
        management_networks: vec![format!("{MGMT}/32")],
        control_plane: vec![format!("{CONTROL}:443")],
        bfd_peers: vec![format!("{BFD_PEER}")],
        ..FirewallSection::default()
    };
    fw.rate_limits.sip_per_source_pps = sip_pps;
    fw
}

/// The appliance and the outside world, with the ruleset applied in the appliance.
struct Rig {
    app: Netns,
    out: Netns,
}

fn rig(tag: &str, fw: &FirewallSection) -> Rig {
    require_root_and_tools();
    let app = Netns::new(&format!("{tag}-app"));
    let out = Netns::new(&format!("{tag}-out"));
    veth_pair(
        &app,
        APP,
        &out,
        &[
            PLAIN, MGMT, SIP_PEER, NG_PROXY, BFD_PEER, SIP_PEER_2, CONTROL,
        ],
    );
    let script = render(fw);
    app.nft()
        .apply(&script)
        .unwrap_or_else(|e| panic!("{e}\n{script}"));
    Rig { app, out }
}

#[test]
fn exactly_the_allowed_ports_answer_each_source() {
    let Rig { app, out } = rig("scan", &section(500));
    let _servers = Servers::start(&app, Ipv4Addr::UNSPECIFIED, &TCP_LISTEN, &UDP_LISTEN);

    let mut tcp_ports: Vec<u16> = (1..=1024).collect();
    tcp_ports.extend([5060, 2223, 8080, 2224, 30000]);
    let set = |v: &[u16]| v.iter().copied().collect::<BTreeSet<u16>>();
    let cases: [(&str, Ipv4Addr, BTreeSet<u16>, BTreeSet<u16>); 6] = [
        ("non-management, non-peer", PLAIN, set(&[]), set(&[30000])),
        ("management", MGMT, set(&[22]), set(&[30000])),
        ("SIP peer", SIP_PEER, set(&[5060]), set(&[5060, 30000])),
        ("NG proxy", NG_PROXY, set(&[2223]), set(&[2223, 30000])),
        ("BFD peer", BFD_PEER, set(&[]), set(&[3784, 30000])),
        ("control plane host", CONTROL, set(&[]), set(&[30000])),
    ];
    for (what, src, want_tcp, want_udp) in cases {
        let ports = tcp_ports.clone();
        let (tcp, udp) = out.run(move || {
            let tcp = tcp_scan(src, APP, &ports, Duration::from_millis(400));
            let udp: BTreeSet<u16> = UDP_LISTEN
                .iter()
                .copied()
                .filter(|&p| {
                    udp_echoes(src, SocketAddr::from((APP, p)), Duration::from_millis(300))
                })
                .collect();
            (tcp, udp)
        });
        assert_eq!(tcp, want_tcp, "TCP reachable from {what} ({src})");
        assert_eq!(udp, want_udp, "UDP reachable from {what} ({src})");
    }

    // Sanity of the scanner itself: without the table every listener answers, so the results
    // above come from the ruleset, not from a broken probe.
    app.nft().remove().unwrap();
    let (tcp, udp) = out.run(|| {
        let tcp = tcp_scan(PLAIN, APP, &TCP_LISTEN, Duration::from_millis(400));
        let udp: BTreeSet<u16> = UDP_LISTEN
            .iter()
            .copied()
            .filter(|&p| {
                udp_echoes(
                    PLAIN,
                    SocketAddr::from((APP, p)),
                    Duration::from_millis(300),
                )
            })
            .collect();
        (tcp, udp)
    });
    assert_eq!(tcp, set(&TCP_LISTEN));
    assert_eq!(udp, set(&UDP_LISTEN));
}

#[test]
fn output_reaches_only_the_control_plane_and_peers() {
    let Rig { app, out } = rig("egress", &section(500));
    // Bound to their own addresses: a UDP socket on 0.0.0.0 would answer from the interface's
    // primary address, not the one the probe was sent to.
    let _cp = Servers::start(&out, CONTROL, &[443, 444, 80], &[]);
    let _plain = Servers::start(&out, PLAIN, &[443], &[53, 5060]);
    let _peer = Servers::start(&out, SIP_PEER, &[], &[5060]);
    let (tcp_cp, tcp_other_host, udp) = app.run(|| {
        let cp = tcp_scan(APP, CONTROL, &[443, 444, 80], Duration::from_millis(400));
        let other = tcp_scan(APP, PLAIN, &[443], Duration::from_millis(400));
        let udp = [
            ("dns", PLAIN, 53),
            ("sip to peer", SIP_PEER, 5060),
            ("sip to non-peer", PLAIN, 5060),
        ]
        .map(|(what, dst, port)| {
            // A source port outside the RTP range: the range is open outbound (media goes to
            // anyone), so a socket on an ephemeral port that falls inside it would pass.
            let src = SocketAddr::from((APP, 45_000));
            let dst = SocketAddr::from((dst, port));
            (what, udp_echoes_from(src, dst, Duration::from_millis(300)))
        });
        (cp, other, udp)
    });
    assert_eq!(tcp_cp, BTreeSet::from([443]), "only the control-plane port");
    assert!(tcp_other_host.is_empty(), "443 on a non-control-plane host");
    assert_eq!(
        udp,
        [
            ("dns", false),
            ("sip to peer", true),
            ("sip to non-peer", false)
        ]
    );
}

#[test]
fn sip_flood_from_one_peer_is_limited_per_source() {
    const PPS: u32 = 200;
    let Rig { app, out } = rig("flood", &section(PPS));
    let _servers = Servers::start(&app, Ipv4Addr::UNSPECIFIED, &[], &[5060]);
    let (flood_echoed, elapsed, calm_echoed) = out.run(|| {
        let dst = SocketAddr::from((APP, 5060));
        let flood = UdpSocket::bind((SIP_PEER, 0)).unwrap();
        let calm = UdpSocket::bind((SIP_PEER_2, 0)).unwrap();
        // 2000 packets in 20 batches, one batch every 50 ms: 2000 pps for one second, ten
        // times the limit; the other peer sends one packet per batch (20 pps, under it).
        let start = Instant::now();
        for batch in 0..20u32 {
            for _ in 0..100 {
                let _ = flood.send_to(b"INVITE", dst);
            }
            let _ = calm.send_to(b"OPTIONS", dst);
            let next = start + Duration::from_millis(50 * u64::from(batch + 1));
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        let elapsed = start.elapsed();
        let count = |s: &UdpSocket| {
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut buf = [0u8; 64];
            let mut n = 0usize;
            // Bounded: at most every packet sent comes back.
            while n < 2000 && s.recv_from(&mut buf).is_ok() {
                n += 1;
            }
            n
        };
        (count(&flood), elapsed, count(&calm))
    });
    // Token bucket: the burst (a tenth of the rate) plus the rate over the sending time.
    let burst = f64::from((PPS / 10).max(5));
    let expected = f64::from(PPS) * elapsed.as_secs_f64() + burst;
    let got = flood_echoed as f64;
    eprintln!(
        "flood: {flood_echoed} of 2000 echoed in {elapsed:?} (expected ~{expected:.0}); \
         calm peer: {calm_echoed} of 20"
    );
    assert!(
        got >= expected * 0.5 && got <= expected * 1.5,
        "flooding peer got {flood_echoed} echoes in {elapsed:?}; expected about {expected:.0}"
    );
    assert_eq!(
        calm_echoed, 20,
        "the other peer is not limited by the flood"
    );
    let drops = app.nft().current().unwrap().unwrap();
    assert!(drops.contains("@sip_rate_v4"), "{drops}");
}
