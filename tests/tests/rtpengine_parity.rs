//! Same answers as rtpengine: every NG corpus case (tests/fixtures/ng) sent to rtpengine and to
//! popd, the rewritten SDP compared line by line with ports masked.
//!
//! Run: `cargo build -p popd && cargo test -p pop-system-tests --test rtpengine_parity`.
//! Needs rtpengine (scripts/setup). `o=` lines are compared verbatim: rtpengine 10.5 copies the
//! session id and version from the input, so there is nothing random to mask there.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use pop_system_tests::ng_corpus::{corpus_dir, load_corpus, NgCase};
use pop_system_tests::relays::{self, RelayKind, RelayProcess};
use pop_system_tests::sdp_masking::{line_diff, PortMasker};
use pop_system_tests::{NgClient, TestDir};
use pop_wire::bencode::Value;

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// One side of a comparison: a stored or live source of replies, with its own port numbering.
struct Side<'a> {
    name: &'a str,
    masker: PortMasker,
}

/// Compares two replies to the same request; `None` when equivalent.
fn compare(
    step: &str,
    left: &mut Side<'_>,
    left_reply: &Value,
    right: &mut Side<'_>,
    right_reply: &Value,
) -> Option<String> {
    let result = |v: &Value| {
        v.dict_get("result")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let (lr, rr) = (result(left_reply), result(right_reply));
    if lr != rr {
        return Some(format!(
            "{step}: result {}={lr:?} but {}={rr:?} ({})",
            left.name,
            right.name,
            pop_system_tests::ng_client::describe_error(right_reply)
        ));
    }
    let sdp = |v: &Value| v.dict_get("sdp").and_then(Value::as_str).map(str::to_owned);
    match (sdp(left_reply), sdp(right_reply)) {
        (None, None) => None,
        (Some(l), Some(r)) => {
            let l = left.masker.mask_sdp(&l);
            let r = right.masker.mask_sdp(&r);
            line_diff(left.name, &l, right.name, &r).map(|d| format!("{step}: SDP differs\n{d}"))
        }
        (l, r) => Some(format!(
            "{step}: sdp present in {}: {}, in {}: {}",
            left.name,
            l.is_some(),
            right.name,
            r.is_some()
        )),
    }
}

fn replay(case: &NgCase, client: &NgClient) -> anyhow::Result<Vec<Value>> {
    case.steps
        .iter()
        .map(|step| {
            client
                .request(&step.request)
                .map_err(|e| e.context(format!("{}/{}", case.name, step.label)))
        })
        .collect()
}

fn report(mismatches: &[String], cases: usize) {
    if !mismatches.is_empty() {
        panic!(
            "{} mismatch(es) over {cases} corpus cases:\n\n{}",
            mismatches.len(),
            mismatches.join("\n")
        );
    }
}

/// rtpengine today must still give the stored replies: proves the corpus is current and that
/// masking hides exactly what varies between runs.
#[test]
fn rtpengine_reproduces_stored_corpus() {
    let dir = TestDir::new("parity-reference").unwrap_or_else(|e| panic!("{e:#}"));
    let run = || -> anyhow::Result<Vec<String>> {
        let cases = load_corpus(&corpus_dir())?;
        let rtpengine = relays::start_rtpengine(&dir, "rtpengine", &[V4, V6])?;
        let client = rtpengine.ng()?;
        let mut mismatches = Vec::new();
        for case in &cases {
            let live = replay(case, &client)?;
            let mut stored_side = Side {
                name: "stored",
                masker: PortMasker::new(),
            };
            let mut live_side = Side {
                name: "rtpengine",
                masker: PortMasker::new(),
            };
            for (step, reply) in case.steps.iter().zip(&live) {
                let label = format!("{}/{}", case.name, step.label);
                if let Some(m) = compare(
                    &label,
                    &mut stored_side,
                    &step.captured_reply,
                    &mut live_side,
                    reply,
                ) {
                    mismatches.push(m);
                }
            }
        }
        Ok(mismatches)
    };
    match run() {
        Ok(mismatches) => report(
            &mismatches,
            load_corpus(&corpus_dir()).map_or(0, |c| c.len()),
        ),
        Err(e) => panic!("{e:#}"),
    }
}

/// Cases where popd deliberately keeps a call's ports where rtpengine moves it to new ones:
/// rtpengine 10.5 allocates new local ports when a re-INVITE changes the offerer's media port;
/// popd keeps the call's ports, so the other party's latched flow (and any NAT or firewall
/// pinhole on its side) stays valid. The issue compares SDP "on every line except ports"; in
/// these cases ports are numbered per SDP body instead of per call, so every other line —
/// including whether `a=rtcp` repeats the RTP port — is still compared.
const PORTS_RENUMBERED_PER_BODY: &[&str] = &["reinvite"];

/// popd gives the same SDP as rtpengine for every corpus case.
#[test]
fn popd_answers_like_rtpengine() {
    let dir = TestDir::new("parity-popd").unwrap_or_else(|e| panic!("{e:#}"));
    let run = || -> anyhow::Result<(Vec<String>, usize)> {
        let cases = load_corpus(&corpus_dir())?;
        let rtpengine = relays::start_rtpengine(&dir, "rtpengine", &[V4, V6])?;
        let popd_v4 = relays::start(RelayKind::Popd, &dir, "popd-v4", &[V4])?;
        // Our relay advertises one address; the IPv6 cases get their own instance.
        let mut popd_v6: Option<RelayProcess> = None;
        let reference = rtpengine.ng()?;
        let mut mismatches = Vec::new();
        for case in &cases {
            let popd = if case.is_ipv6() {
                if popd_v6.is_none() {
                    popd_v6 = Some(relays::start(RelayKind::Popd, &dir, "popd-v6", &[V6])?);
                }
                popd_v6.as_ref().unwrap_or(&popd_v4)
            } else {
                &popd_v4
            };
            let expected = replay(case, &reference)?;
            let got = replay(case, &popd.ng()?)?;
            let mut left = Side {
                name: "rtpengine",
                masker: PortMasker::new(),
            };
            let mut right = Side {
                name: "popd",
                masker: PortMasker::new(),
            };
            for ((step, e), g) in case.steps.iter().zip(&expected).zip(&got) {
                let label = format!("{}/{}", case.name, step.label);
                if PORTS_RENUMBERED_PER_BODY.contains(&case.name.as_str()) {
                    left.masker = PortMasker::new();
                    right.masker = PortMasker::new();
                }
                if let Some(m) = compare(&label, &mut left, e, &mut right, g) {
                    mismatches.push(m);
                }
            }
        }
        let mut popd_v4 = popd_v4;
        popd_v4.process.ensure_running()?;
        if let Some(mut p) = popd_v6 {
            p.process.ensure_running()?;
        }
        Ok((mismatches, cases.len()))
    };
    match run() {
        Ok((mismatches, cases)) => report(&mismatches, cases),
        Err(e) => panic!("{e:#}"),
    }
}
