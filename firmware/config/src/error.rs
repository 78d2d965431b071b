//! [`ConfigError`]: what is wrong with a configuration document, as a dotted field path and a
//! reason, and the mapping from TOML/serde errors to that shape.

/// Why a configuration document was refused.
///
/// `field` is a dotted path as written in the document (`firewall.sip_peers[2]`,
/// `linkmon.damping.reuse_below`); for a TOML syntax error it is the best location that can be
/// told (the table and key on the offending line, or `line N`). The agent copies both into
/// `ConfigOutcome::Refused`, so the operator sees exactly what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {reason}")]
pub struct ConfigError {
    /// Dotted path of the offending field.
    pub field: String,
    /// What is wrong and, where possible, what would be accepted.
    pub reason: String,
}

impl ConfigError {
    /// A refusal of `field` because of `reason`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Maps a deserialization error, with the path serde reached, to a field and reason.
    pub(crate) fn from_toml(text: &str, err: &serde_path_to_error::Error<toml::de::Error>) -> Self {
        let inner = err.inner();
        let message = inner.message().trim().replace('\n', "; ");
        let mut field = path_string(err.path());
        // serde reports a missing field at the path of the table that lacks it.
        if let Some(name) = backticked_after(&message, "missing field `") {
            field = join(&field, name);
        }
        let location = inner.span().map(|span| line_col(text, span.start));
        if field.is_empty() {
            // Syntax errors (and duplicate keys) never reach serde's path tracking: recover the
            // table and key from the text around the error instead.
            field = match inner.span() {
                Some(span) => path_at(text, span.start),
                None => "document".to_owned(),
            };
        }
        let reason = match location {
            Some((line, col)) => format!("{message} (line {line}, column {col})"),
            None => message,
        };
        Self { field, reason }
    }
}

/// `serde_path_to_error` writes the root as `.`; the rest is already dotted with `[i]` indices.
fn path_string(path: &serde_path_to_error::Path) -> String {
    let s = path.to_string();
    if s == "." {
        String::new()
    } else {
        s
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

fn backticked_after<'a>(message: &'a str, marker: &str) -> Option<&'a str> {
    let rest = &message[message.find(marker)? + marker.len()..];
    Some(&rest[..rest.find('`')?])
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(text, offset);
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before, |nl| &before[nl + 1..])
        .chars()
        .count()
        + 1;
    (line, col)
}

fn floor_char_boundary(text: &str, offset: usize) -> usize {
    let mut o = offset.min(text.len());
    while !text.is_char_boundary(o) {
        o -= 1;
    }
    o
}

/// Best-effort dotted path of the key at byte `offset`: the last `[table]` / `[[array]]` header
/// above it, plus the bare key on its line when the line reads `key = ...`.
fn path_at(text: &str, offset: usize) -> String {
    let offset = floor_char_boundary(text, offset);
    let line_start = text[..offset].rfind('\n').map_or(0, |nl| nl + 1);
    let line_end = text[offset..]
        .find('\n')
        .map_or(text.len(), |nl| offset + nl);
    let mut table = String::new();
    for line in text[..line_start].lines() {
        if let Some(header) = header_name(line) {
            table = header;
        }
    }
    let line = &text[line_start..line_end];
    if let Some(header) = header_name(line) {
        return header;
    }
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && k.chars().all(is_key_char));
    match key {
        Some(k) => join(&table, k),
        None if !table.is_empty() => table,
        None => format!("line {}", line_col(text, offset).0),
    }
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

fn header_name(line: &str) -> Option<String> {
    let t = line.trim();
    let t = t.split_once('#').map_or(t, |(h, _)| h).trim_end();
    let inner = t
        .strip_prefix("[[")
        .and_then(|r| r.strip_suffix("]]"))
        .or_else(|| t.strip_prefix('[').and_then(|r| r.strip_suffix(']')))?;
    let name: String = inner
        .split('.')
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(".");
    (!name.is_empty() && name.chars().all(is_key_char)).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_at_finds_table_and_key() {
        let text = "version = 1\n[firewall]\nssh_port = = 3\n";
        let off = text.find("= 3").unwrap_or(0);
        assert_eq!(path_at(text, off), "firewall.ssh_port");
        assert_eq!(path_at("[a . b]\nx y\n", 9), "a.b");
        assert_eq!(path_at("x y\n", 2), "line 1");
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncdé f", 8), (2, 5));
        assert_eq!(
            line_col("é", 1),
            (1, 1),
            "offset inside a character is floored"
        );
    }
}
