//! Schema, parsing and validation tests.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;

/// The smallest valid document.
pub(crate) fn minimal(version: u64) -> String {
    format!(
        "version = {version}\n\
         [firewall]\n\
         management_networks = [\"10.10.0.0/16\"]\n\
         control_plane = [\"198.51.100.7:443\"]\n"
    )
}

const FULL: &str = r#"
version = 42

[relay]
max_sessions = 1000
no_media_secs = 30
max_duration_secs = 14400
unanswered_offer_secs = 90

[linkmon]
probe_miss_threshold = 4
probe_recover_threshold = 2
hold_down_ms = 20000

[linkmon.damping]
penalty_per_failure = 500.0
suppress_above = 2000.0
reuse_below = 750.0
half_life_ms = 30000
max_penalty = 6000.0

[firewall]
sip_peers = ["192.0.2.0/24", "2001:db8:5::/48", "203.0.113.9"]
sip_ports = [5060, 5080]
rtp_port_min = 20000
rtp_port_max = 29999
ng_port = 2224
ng_proxies = ["10.0.0.5", "fd00::5"]
management_networks = ["10.10.0.0/16", "fd00:10::/64"]
ssh_port = 2222
control_plane = ["198.51.100.7:443", "[2001:db8::7]:8443"]
bfd_peers = ["192.0.2.1", "2001:db8:5::1"]

[firewall.rate_limits]
sip_per_source_pps = 300
ng_per_source_pps = 1500
ssh_new_per_source_per_minute = 6

[logging]
level = "debug"

[privacy]
log_personal_data = true

[sip]

[recording]
"#;

fn refused(text: &str) -> ConfigError {
    match parse(text) {
        Err(e) => e,
        Ok(cfg) => panic!("accepted: {cfg:?}\n{text}"),
    }
}

/// `minimal` with `extra` lines added to the `[firewall]` table (or after it, when they open
/// their own table).
fn with_firewall(extra: &str) -> String {
    format!("{}{extra}\n", minimal(1))
}

#[test]
fn minimal_document_gets_the_shipped_defaults() {
    let cfg = parse(&minimal(1)).unwrap();
    assert_eq!(cfg.version, 1);
    assert_eq!(cfg.relay, RelaySection::default());
    assert_eq!(cfg.relay.max_sessions, 4000);
    assert_eq!(cfg.linkmon.hold_down_ms, 10_000);
    assert_eq!(cfg.firewall.sip_ports, vec![5060]);
    assert_eq!(
        (cfg.firewall.rtp_port_min, cfg.firewall.rtp_port_max),
        (30000, 39999)
    );
    assert_eq!((cfg.firewall.ng_port, cfg.firewall.ssh_port), (2223, 22));
    assert_eq!(cfg.logging.level, LogLevel::Info);
    assert!(
        !cfg.privacy.log_personal_data,
        "personal data off by default"
    );
    assert_eq!((cfg.sip.as_ref(), cfg.recording.as_ref()), (None, None));
}

#[test]
fn full_document_parses_and_round_trips() {
    let cfg = parse(FULL).unwrap();
    assert_eq!(cfg.version, 42);
    assert_eq!(cfg.relay.max_duration_secs, 14400);
    assert_eq!(cfg.linkmon.damping.reuse_below, 750.0);
    assert_eq!(cfg.firewall.control_plane[1], "[2001:db8::7]:8443");
    assert_eq!(cfg.firewall.rate_limits.ssh_new_per_source_per_minute, 6);
    assert_eq!(cfg.logging.level, LogLevel::Debug);
    assert!(cfg.privacy.log_personal_data);
    assert_eq!(cfg.sip, Some(toml::Table::new()));
    let text = cfg.to_toml();
    assert_eq!(parse(&text).unwrap(), cfg, "round trip of\n{text}");
    assert_eq!(
        parse(&text).unwrap().to_toml(),
        text,
        "to_toml is deterministic"
    );
}

#[test]
fn unknown_keys_are_refused_with_their_path() {
    let e = refused(&with_firewall("ssh_prot = 22"));
    assert_eq!(e.field, "firewall.ssh_prot", "{e}");
    assert!(e.reason.contains("unknown field `ssh_prot`"), "{e}");
    let e = refused(&with_firewall("[firewall.rate_limits]\nsip_pps = 1"));
    assert_eq!(e.field, "firewall.rate_limits.sip_pps", "{e}");
    let e = refused(&format!("{}[relay]\nmax_session = 3\n", minimal(1)));
    assert_eq!(e.field, "relay.max_session", "{e}");
    let e = refused(&format!("colour = 1\n{}", minimal(1)));
    assert_eq!(e.field, "colour", "{e}");
}

#[test]
fn wrong_types_name_the_element() {
    let e = refused(&with_firewall("sip_ports = [5060, 70000]"));
    assert_eq!(e.field, "firewall.sip_ports[1]", "{e}");
    let e = refused(&with_firewall("sip_peers = [\"192.0.2.1\", 7]"));
    assert_eq!(e.field, "firewall.sip_peers[1]", "{e}");
    let e = refused(&format!("{}[logging]\nlevel = \"verbose\"\n", minimal(1)));
    assert_eq!(e.field, "logging.level", "{e}");
    let e = refused(&format!("{}[relay]\nmax_sessions = -1\n", minimal(1)));
    assert_eq!(e.field, "relay.max_sessions", "{e}");
}

#[test]
fn missing_required_parts_are_named() {
    assert_eq!(refused("[firewall]\n").field, "version");
    assert_eq!(refused("version = 1\n").field, "firewall");
}

#[test]
fn syntax_errors_carry_a_location() {
    let e = refused("version = 1\n[firewall]\nssh_port = = 22\n");
    assert_eq!(e.field, "firewall.ssh_port", "{e}");
    assert!(e.reason.contains("line 3"), "{e}");
    let e = refused("version = 1\n[firewall\n");
    assert!(e.reason.contains("line 2"), "{e}");
    let e = refused(&format!("{}sip_ports = [1]\nsip_ports = [2]\n", minimal(1)));
    assert!(e.reason.contains("duplicate key"), "{e}");
    assert_eq!(e.field, "firewall.sip_ports", "{e}");
}

#[test]
fn invalid_values_name_their_field() {
    let m = minimal(1);
    let fw = |extra: &str| with_firewall(extra);
    // The lists of the minimal document are replaced by redefining the whole firewall table.
    let firewall_with = |mgmt: &str, cp: &str| {
        format!("version = 1\n[firewall]\nmanagement_networks = {mgmt}\ncontrol_plane = {cp}\n")
    };
    let cases: Vec<(String, &str)> = vec![
        (m.replace("version = 1", "version = 0"), "version"),
        (
            format!("{m}[relay]\nmax_sessions = 0\n"),
            "relay.max_sessions",
        ),
        (
            format!("{m}[relay]\nno_media_secs = 0\n"),
            "relay.no_media_secs",
        ),
        (
            format!("{m}[relay]\nunanswered_offer_secs = 0\n"),
            "relay.unanswered_offer_secs",
        ),
        (
            format!("{m}[relay]\nmax_duration_secs = 99999999\n"),
            "relay.max_duration_secs",
        ),
        (
            format!("{m}[linkmon]\nprobe_miss_threshold = 0\n"),
            "linkmon.probe_miss_threshold",
        ),
        (
            format!("{m}[linkmon]\nprobe_recover_threshold = 0\n"),
            "linkmon.probe_recover_threshold",
        ),
        (
            format!("{m}[linkmon]\nhold_down_ms = 999999999999\n"),
            "linkmon.hold_down_ms",
        ),
        (
            format!("{m}[linkmon.damping]\nreuse_below = 3000.0\n"),
            "linkmon.damping.reuse_below",
        ),
        (
            format!("{m}[linkmon.damping]\npenalty_per_failure = -1.0\n"),
            "linkmon.damping.penalty_per_failure",
        ),
        (
            format!("{m}[linkmon.damping]\nmax_penalty = 100.0\n"),
            "linkmon.damping.max_penalty",
        ),
        (
            format!("{m}[linkmon.damping]\nhalf_life_ms = 5\n"),
            "linkmon.damping.half_life_ms",
        ),
        (
            format!("{m}[linkmon.damping]\nsuppress_above = nan\n"),
            "linkmon.damping.suppress_above",
        ),
        (
            fw("sip_peers = [\"192.0.2.0/24\", \"2001:db8::/32\", \"192.0.2.1/24\"]"),
            "firewall.sip_peers[2]",
        ),
        (
            fw("sip_peers = [\"carrier.example\"]"),
            "firewall.sip_peers[0]",
        ),
        (
            fw("ng_proxies = [\"10.0.0.0/33\"]"),
            "firewall.ng_proxies[0]",
        ),
        (
            firewall_with("[]", "[\"198.51.100.7:443\"]"),
            "firewall.management_networks",
        ),
        (
            firewall_with("[\"10.0.0.0/8\", \"x\"]", "[\"198.51.100.7:443\"]"),
            "firewall.management_networks[1]",
        ),
        (
            firewall_with("[\"10.0.0.0/8\"]", "[]"),
            "firewall.control_plane",
        ),
        (
            firewall_with("[\"10.0.0.0/8\"]", "[\"198.51.100.7\"]"),
            "firewall.control_plane[0]",
        ),
        (
            firewall_with("[\"10.0.0.0/8\"]", "[\"cp.example:443\"]"),
            "firewall.control_plane[0]",
        ),
        (
            firewall_with("[\"10.0.0.0/8\"]", "[\"198.51.100.7:0\"]"),
            "firewall.control_plane[0]",
        ),
        (
            fw("bfd_peers = [\"192.0.2.0/30\"]"),
            "firewall.bfd_peers[0]",
        ),
        (fw("rtp_port_min = 80"), "firewall.rtp_port_min"),
        (
            fw("rtp_port_min = 40000\nrtp_port_max = 40002"),
            "firewall.rtp_port_max",
        ),
        (fw("rtp_port_min = 65535"), "firewall.rtp_port_max"),
        (fw("ssh_port = 30022"), "firewall.ssh_port"),
        (fw("ssh_port = 0"), "firewall.ssh_port"),
        (fw("ng_port = 5060"), "firewall.ng_port"),
        (fw("sip_ports = [5060, 31000]"), "firewall.sip_ports[1]"),
        (fw("sip_ports = [5060, 5060]"), "firewall.sip_ports[1]"),
        (fw("sip_ports = [3784]"), "firewall.sip_ports[0]"),
        (
            fw("sip_ports = []\nsip_peers = [\"192.0.2.1\"]"),
            "firewall.sip_ports",
        ),
        (
            fw("rtp_port_min = 3000\nrtp_port_max = 5000"),
            "firewall.rtp_port_min",
        ),
        (
            fw("[firewall.rate_limits]\nsip_per_source_pps = 0"),
            "firewall.rate_limits.sip_per_source_pps",
        ),
        (
            fw("[firewall.rate_limits]\nng_per_source_pps = 0"),
            "firewall.rate_limits.ng_per_source_pps",
        ),
        (
            fw("[firewall.rate_limits]\nssh_new_per_source_per_minute = 0"),
            "firewall.rate_limits.ssh_new_per_source_per_minute",
        ),
        (format!("{m}[sip]\nlisten = 5060\n"), "sip.listen"),
        (
            format!("{m}[recording]\n[recording.s3]\nbucket = \"b\"\n"),
            "recording.s3",
        ),
    ];
    for (text, field) in cases {
        let e = refused(&text);
        assert_eq!(e.field, field, "{e}\n---\n{text}");
        assert!(!e.reason.is_empty());
    }
}

#[test]
fn lockout_refusals_say_why() {
    let e = refused("version = 1\n[firewall]\nmanagement_networks = [\"10.0.0.0/8\"]\n");
    assert!(
        e.reason.contains("lock itself out of its control plane"),
        "{e}"
    );
    let e = refused(&format!("{}[sip]\nx = 1\n", minimal(1)));
    assert!(e.reason.contains("not supported yet"), "{e}");
}

#[test]
fn unrepresentable_config_is_refused_not_panicked() {
    let mut cfg = parse(&minimal(1)).unwrap();
    cfg.version = u64::MAX;
    assert_eq!(cfg.validate().unwrap_err().field, "version");
    assert!(cfg.try_to_toml().is_err());
    let text = cfg.to_toml();
    assert!(parse(&text).is_err(), "{text}");
}

#[test]
fn oversized_documents_are_refused_before_parsing() {
    let big = format!("{}# {}\n", minimal(1), "x".repeat(MAX_DOCUMENT_BYTES));
    assert_eq!(refused(&big).field, "document");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parse_never_panics_on_arbitrary_text(text in "\\PC*") {
        let _ = parse(&text);
    }

    #[test]
    fn parse_never_panics_on_mutated_documents(
        cut in 0usize..FULL.len(),
        insert in "[\\[\\]=\"#\\n. a-z0-9/:,{}-]{0,12}",
    ) {
        let mut text = FULL.to_owned();
        let cut = (0..=cut).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.insert_str(cut, &insert);
        if let Err(e) = parse(&text) {
            prop_assert!(!e.field.is_empty());
            prop_assert!(!e.reason.is_empty());
        }
    }

    #[test]
    fn valid_documents_round_trip(
        version in 1u64..=i64::MAX as u64,
        pps in 1u32..=1_000_000,
        level in prop::sample::select(vec!["error", "warn", "info", "debug", "trace"]),
    ) {
        let text = format!(
            "{}[firewall.rate_limits]\nsip_per_source_pps = {pps}\n[logging]\nlevel = \"{level}\"\n",
            minimal(version)
        );
        let cfg = parse(&text).unwrap();
        prop_assert_eq!(parse(&cfg.to_toml()).unwrap(), cfg);
    }
}
