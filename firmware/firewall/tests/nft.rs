//! `nft` accepts what `render` produces, and applying is atomic (in a namespace of the test's
//! own). Needs root and nftables; fails, never skips, without them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{require_root_and_tools, Netns};
use pop_config::FirewallSection;
use pop_firewall::{render, FirewallError};

fn base() -> FirewallSection {
    FirewallSection {
        management_networks: vec!["10.10.0.0/16".into()],
        control_plane: vec!["198.51.100.7:443".into()],
        ..FirewallSection::default()
    }
}

fn configs() -> Vec<(&'static str, FirewallSection)> {
    let full = FirewallSection {
        sip_peers: vec![
            "192.0.2.0/24".into(),
            "192.0.2.7".into(), // inside the network above: auto-merge must take it
            "203.0.113.9".into(),
            "2001:db8:5::/48".into(),
            "2001:db8:6::1".into(),
        ],
        sip_ports: vec![5060, 5080],
        rtp_port_min: 20000,
        rtp_port_max: 29999,
        ng_port: 22222,
        ng_proxies: vec!["10.0.0.5".into(), "fd00::5".into()],
        management_networks: vec!["10.10.0.0/16".into(), "fd00:10::/64".into()],
        ssh_port: 2222,
        control_plane: vec!["198.51.100.7:443".into(), "[2001:db8::7]:8443".into()],
        bfd_peers: vec!["192.0.2.1".into(), "2001:db8:5::1".into()],
        ..FirewallSection::default()
    };
    let mut v6_only = base();
    v6_only.management_networks = vec!["::/0".into()];
    v6_only.control_plane = vec!["[2001:db8::7]:443".into()];
    v6_only.sip_peers = vec!["2001:db8::/32".into()];
    let mut no_sip = base();
    no_sip.sip_ports.clear();
    let mut limits = base();
    limits.rate_limits.sip_per_source_pps = 1;
    limits.rate_limits.ng_per_source_pps = 1_000_000;
    limits.rate_limits.ssh_new_per_source_per_minute = 1_000_000;
    vec![
        ("minimal", base()),
        ("full", full),
        ("v6_only", v6_only),
        ("no_sip", no_sip),
        ("limits", limits),
    ]
}

#[test]
fn nft_check_accepts_every_rendered_config() {
    require_root_and_tools();
    for (name, fw) in configs() {
        let script = render(&fw);
        if let Err(e) = pop_firewall::check(&script) {
            panic!("{name}: {e}\n{script}");
        }
    }
}

#[test]
fn nft_check_rejects_a_broken_script_with_nfts_diagnostics() {
    require_root_and_tools();
    let script = format!(
        "{}add rule inet popd input tcp dport 22 frobnicate\n",
        render(&base())
    );
    match pop_firewall::check(&script) {
        Err(FirewallError::Rejected { action, stderr, .. }) => {
            assert_eq!(action, "check");
            assert!(stderr.contains("frobnicate"), "{stderr}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
}

#[test]
fn apply_is_atomic_and_remove_is_idempotent() {
    require_root_and_tools();
    let ns = Netns::new("atomic");
    let nft = ns.nft();
    assert_eq!(nft.current().unwrap(), None, "fresh namespace has no table");

    nft.apply(&render(&base())).unwrap();
    let a = nft.current().unwrap().expect("table after apply");
    assert!(a.contains("10.10.0.0/16"), "{a}");
    assert!(a.contains("policy drop"), "{a}");

    let mut other = base();
    other.management_networks = vec!["172.16.0.0/12".into()];
    let b_script = render(&other);

    // Refused by the parser: nothing reaches the kernel.
    let parse_error = format!("{b_script}add rule inet popd input bogus garbage\n");
    match nft.apply(&parse_error) {
        Err(FirewallError::Rejected { stderr, .. }) => {
            assert!(stderr.contains("Error"), "{stderr}")
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(nft.current().unwrap().as_deref(), Some(a.as_str()));

    // Refused by the kernel at the end of the batch, after the delete and the new table were
    // already sent: the whole transaction is rolled back.
    let kernel_error = format!("{b_script}delete set inet popd no_such_set\n");
    match nft.apply(&kernel_error) {
        Err(FirewallError::Rejected { stderr, .. }) => {
            assert!(stderr.contains("No such file or directory"), "{stderr}")
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(
        nft.current().unwrap().as_deref(),
        Some(a.as_str()),
        "old table intact after a kernel-side failure"
    );

    // The good script replaces the table.
    nft.apply(&b_script).unwrap();
    let b = nft.current().unwrap().unwrap();
    assert!(
        b.contains("172.16.0.0/12") && !b.contains("10.10.0.0/16"),
        "{b}"
    );

    nft.remove().unwrap();
    assert_eq!(nft.current().unwrap(), None);
    nft.remove().unwrap();
}

#[test]
fn a_missing_namespace_is_an_error_not_a_host_change() {
    require_root_and_tools();
    let nft = pop_firewall::Nft::in_netns(format!("popfw-{}-absent", std::process::id()));
    assert!(matches!(
        nft.apply(&render(&base())),
        Err(FirewallError::Rejected { .. })
    ));
    assert!(matches!(
        pop_firewall::Nft::in_netns("../etc").current(),
        Err(FirewallError::InvalidNetns { .. })
    ));
}
