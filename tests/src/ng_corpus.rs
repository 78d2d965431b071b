//! The NG offer/answer corpus under `tests/fixtures/ng/` (see its README).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use pop_wire::bencode::Value;

/// One call of the corpus.
#[derive(Debug)]
pub struct NgCase {
    /// Directory name, e.g. `hold_sendonly`.
    pub name: String,
    /// Steps in order.
    pub steps: Vec<NgStep>,
}

impl NgCase {
    /// Whether the case's media is IPv6 (the relay needs an IPv6 media address for it).
    pub fn is_ipv6(&self) -> bool {
        self.steps
            .iter()
            .filter_map(|s| s.request.dict_get("sdp").and_then(Value::as_str))
            .any(|sdp| sdp.contains("IN IP6 "))
    }
}

/// One NG request and the reply rtpengine gave when the corpus was captured.
#[derive(Debug)]
pub struct NgStep {
    /// File stem, e.g. `01-offer`.
    pub label: String,
    /// The request, ready to send.
    pub request: Value,
    /// rtpengine's stored reply.
    pub captured_reply: Value,
}

/// `tests/fixtures/ng`.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/ng")
}

/// Loads every case, sorted by name; steps sorted by file name.
pub fn load_corpus(dir: &Path) -> Result<Vec<NgCase>> {
    let mut cases = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if !path.is_dir() {
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow!("non-UTF-8 case directory {}", path.display()))?
            .to_owned();
        let mut requests: Vec<PathBuf> = fs::read_dir(&path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".request.json"))
            .collect();
        requests.sort();
        let mut steps = Vec::new();
        for req_path in requests {
            let file = req_path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let label = file.trim_end_matches(".request.json").to_owned();
            let reply_path = path.join(format!("{label}.reply.json"));
            steps.push(NgStep {
                request: read_json_as_bencode(&req_path)?,
                captured_reply: read_json_as_bencode(&reply_path)?,
                label,
            });
        }
        if steps.is_empty() {
            bail!("corpus case {name} has no *.request.json");
        }
        cases.push(NgCase { name, steps });
    }
    if cases.is_empty() {
        bail!("no corpus cases under {}", dir.display());
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(cases)
}

fn read_json_as_bencode(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    json_to_bencode(&json).with_context(|| format!("converting {}", path.display()))
}

/// JSON → bencode: strings become byte strings, arrays lists, objects dictionaries.
pub fn json_to_bencode(json: &serde_json::Value) -> Result<Value> {
    Ok(match json {
        serde_json::Value::String(s) => Value::str(s),
        serde_json::Value::Number(n) => Value::int(
            n.as_i64()
                .ok_or_else(|| anyhow!("{n} is not a bencode integer"))?,
        ),
        serde_json::Value::Array(items) => Value::list(
            items
                .iter()
                .map(json_to_bencode)
                .collect::<Result<Vec<_>>>()?,
        ),
        serde_json::Value::Object(map) => {
            let mut dict = Value::dict([]);
            for (k, v) in map {
                dict.dict_insert(k, json_to_bencode(v)?);
            }
            dict
        }
        serde_json::Value::Bool(_) | serde_json::Value::Null => {
            bail!("bencode has no booleans or null")
        }
    })
}
