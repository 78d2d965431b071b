//! Golden tests: our `sdp_rewrite::rewrite` must write what rtpengine 10.5 wrote, line for
//! line, for every step captured in `tests/fixtures/sdp/*.sdpcase` (see the README there).
//!
//! The plan for each step (ports, rtcp-mux, `o=` version) is read from rtpengine's own output,
//! because choosing them is the NG logic's job; what this proves is the SDP that surrounds
//! them. Flags (`replace`, `ICE`) come from the NG command that was sent.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use pop_relay_core::sdp_rewrite::{rewrite, MediaPlan, RewritePlan};
use pop_wire::sdp::Sdp;

struct Step {
    case: String,
    number: usize,
    relay: IpAddr,
    lf_input: bool,
    flags: Vec<String>,
    input: Vec<String>,
    expected: Vec<String>,
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sdp")
}

fn load_cases() -> Vec<Step> {
    let mut files: Vec<PathBuf> = fs::read_dir(fixtures_dir())
        .expect("fixture directory tests/fixtures/sdp must exist")
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "sdpcase"))
        .collect();
    files.sort();
    let mut steps = Vec::new();
    for file in files {
        let case = file
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("UTF-8 file name")
            .to_owned();
        let text = fs::read_to_string(&file).expect("readable fixture");
        let mut section = "";
        let mut number = 0;
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            if let Some(header) = line.strip_prefix("=== ") {
                number += 1;
                let field = |key: &str| {
                    header
                        .split(' ')
                        .find_map(|f| f.strip_prefix(key))
                        .unwrap_or_else(|| panic!("{case}: step header lacks {key}"))
                        .to_owned()
                };
                let flags = field("flags=");
                steps.push(Step {
                    case: case.clone(),
                    number,
                    relay: field("relay=").parse().expect("relay address"),
                    lf_input: field("input=") == "lf",
                    flags: if flags == "-" {
                        Vec::new()
                    } else {
                        flags.split(',').map(str::to_owned).collect()
                    },
                    input: Vec::new(),
                    expected: Vec::new(),
                });
                section = "";
                continue;
            }
            if line == "--- input" || line == "--- rtpengine" {
                section = line;
                continue;
            }
            let step = steps.last_mut().expect("SDP line before the first step");
            match section {
                "--- input" => step.input.push(line.to_owned()),
                "--- rtpengine" => step.expected.push(line.to_owned()),
                _ => panic!("{case}: line outside a section"),
            }
        }
        assert!(number > 0, "{case}: fixture has no steps");
    }
    steps
}

fn join(lines: &[String], end: &str) -> String {
    lines.iter().map(|l| format!("{l}{end}")).collect()
}

/// Derives the plan the NG logic would have made from rtpengine's output.
fn plan_for(step: &Step) -> RewritePlan {
    let expected =
        Sdp::parse(join(&step.expected, "\r\n").as_bytes()).expect("rtpengine output parses");
    let input = Sdp::parse(join(&step.input, "\r\n").as_bytes()).expect("input parses");
    let media = expected
        .media
        .iter()
        .map(|m| {
            let rtp_port = m.description.port();
            let rtcp_mux = m.rtcp_mux();
            let rtcp = m.rtcp().expect("rtpengine's a=rtcp parses").map(|r| r.port);
            MediaPlan {
                rtp_port,
                rtcp_port: rtcp.filter(|p| !(rtcp_mux && *p == rtp_port)),
                rtcp_mux,
                direction: None,
            }
        })
        .collect();
    let version_of = |sdp: &Sdp| sdp.origin().and_then(|o| o.version());
    let out_version = version_of(&expected);
    let has = |flag: &str| step.flags.iter().any(|f| f == flag);
    RewritePlan {
        media_address: step.relay,
        media,
        replace_origin: has("replace:origin"),
        replace_session_connection: has("replace:session-connection"),
        ice_remove: has("ICE:remove"),
        origin_version: out_version.filter(|v| Some(*v) != version_of(&input)),
    }
}

/// rtpengine writes `a=rtpmap:<pt> /0` for a dynamic payload type it has no mapping for; that
/// line is invalid SDP and we deliberately omit it. Returns the expected lines without it and
/// how many were removed.
fn without_known_deviations(expected: &[String]) -> (Vec<String>, usize) {
    let kept: Vec<String> = expected
        .iter()
        .filter(|l| !(l.starts_with("a=rtpmap:") && l.ends_with(" /0")))
        .cloned()
        .collect();
    let removed = expected.len() - kept.len();
    (kept, removed)
}

#[test]
fn rewrite_matches_rtpengine_line_for_line() {
    let steps = load_cases();
    assert!(
        steps.len() >= 40,
        "golden corpus shrank to {} steps",
        steps.len()
    );
    let mut failures = Vec::new();
    let mut deviations = Vec::new();
    for step in &steps {
        let input = join(&step.input, if step.lf_input { "\n" } else { "\r\n" });
        let plan = plan_for(step);
        let (expected, removed) = without_known_deviations(&step.expected);
        if removed > 0 {
            deviations.push(step.case.clone());
        }
        let expected = join(&expected, "\r\n");
        match rewrite(input.as_bytes(), &plan) {
            Ok(out) => {
                let out = String::from_utf8(out).expect("UTF-8 output");
                if out != expected {
                    failures.push(format!(
                        "{} step {}:\n--- expected (rtpengine)\n{expected}--- got\n{out}",
                        step.case, step.number
                    ));
                }
            }
            Err(e) => failures.push(format!("{} step {}: error {e}", step.case, step.number)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        deviations,
        vec!["static_pts".to_owned()],
        "known deviations moved"
    );
}

#[test]
fn corpus_covers_required_scenarios() {
    let steps = load_cases();
    for required in [
        "plain",
        "mux_offer",
        "mux_accept",
        "mux_demux",
        "hold_sendonly",
        "hold_inactive",
        "hold_zero_addr",
        "ipv6",
        "audio_video",
        "ice_remove",
        "replace_origin_sessconn",
    ] {
        let steps_of_case = steps.iter().filter(|s| s.case == required).count();
        assert!(
            steps_of_case >= 2,
            "{required}: needs offer and answer steps"
        );
    }
}

#[test]
fn lf_input_is_normalised_to_crlf() {
    let steps = load_cases();
    let step = steps
        .iter()
        .find(|s| s.lf_input)
        .expect("an LF-input case in the corpus");
    let input = join(&step.input, "\n");
    let out = rewrite(input.as_bytes(), &plan_for(step)).expect("rewrite");
    let crlf = out.windows(2).filter(|w| w == b"\r\n").count();
    let lf = out.iter().filter(|b| **b == b'\n').count();
    assert_eq!(crlf, lf, "every line must end in CRLF");
}

/// The value of the first JSON string member `key` in `json`, unescaped. Enough for the NG
/// corpus files (pretty-printed JSON objects of strings and string lists).
fn json_string(json: &str, key: &str) -> Option<String> {
    let start = json.find(&format!("\"{key}\": \""))? + key.len() + 5;
    let mut out = String::new();
    let mut chars = json.get(start..)?.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'r' => out.push('\r'),
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// The NG corpus captured by the NG-fixture tool (`tests/fixtures/ng/` at the workspace root):
/// every offer and answer reply's SDP must equal our rewrite of the request's SDP.
#[test]
fn rewrite_matches_ng_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/ng");
    let mut cases: Vec<PathBuf> = fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("NG corpus {} missing: {e}", root.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    let mut checked = 0;
    let mut failures = Vec::new();
    for case in &cases {
        let mut requests: Vec<PathBuf> = fs::read_dir(case)
            .expect("case directory")
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.to_string_lossy().ends_with(".request.json"))
            .collect();
        requests.sort();
        for request_path in requests {
            let request = fs::read_to_string(&request_path).expect("request file");
            let Some(input) = json_string(&request, "sdp") else {
                continue; // delete, query: no SDP
            };
            let reply_path = request_path
                .to_string_lossy()
                .replace(".request.", ".reply.");
            let reply = fs::read_to_string(&reply_path).expect("reply file next to request");
            let expected = json_string(&reply, "sdp")
                .unwrap_or_else(|| panic!("{reply_path}: reply has no SDP"));
            let step = Step {
                case: case.display().to_string(),
                number: checked,
                relay: if expected.contains("IN IP6 ::1") {
                    "::1"
                } else {
                    "127.0.0.1"
                }
                .parse()
                .expect("address"),
                lf_input: false,
                flags: [
                    ("replace:origin", request.contains("\"origin\"")),
                    (
                        "replace:session-connection",
                        request.contains("\"session-connection\""),
                    ),
                    ("ICE:remove", request.contains("\"ICE\": \"remove\"")),
                ]
                .iter()
                .filter(|(_, on)| *on)
                .map(|(f, _)| (*f).to_owned())
                .collect(),
                input: input.lines().map(str::to_owned).collect(),
                expected: expected.lines().map(str::to_owned).collect(),
            };
            let out = rewrite(input.as_bytes(), &plan_for(&step)).map(String::from_utf8);
            match out {
                Ok(Ok(out)) if out == expected => {}
                other => failures.push(format!(
                    "{}:\n--- expected (rtpengine)\n{expected}--- got\n{other:?}",
                    request_path.display()
                )),
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "NG corpus has only {checked} SDP steps");
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
