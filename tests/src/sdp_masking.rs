//! Making two relays' SDP comparable: ports masked consistently, then a readable line diff.

use std::collections::HashMap;

/// Replaces port numbers in `m=` and `a=rtcp:` lines by `<PORT n>`, numbering distinct ports in
/// order of first appearance. Keep one masker per call, so that "the re-offer kept the same port"
/// and "RTCP is on its own port" survive masking, while the actual numbers (random per run and
/// per relay) do not matter.
#[derive(Debug, Default)]
pub struct PortMasker {
    seen: HashMap<String, usize>,
}

impl PortMasker {
    /// A masker with no ports seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The SDP's lines (CRLF or LF separated) with ports masked.
    pub fn mask_sdp(&mut self, sdp: &str) -> Vec<String> {
        sdp.lines()
            .map(|line| line.trim_end_matches('\r'))
            .map(|line| self.mask_line(line))
            .collect()
    }

    fn mask_line(&mut self, line: &str) -> String {
        if let Some(rest) = line.strip_prefix("m=") {
            let mut fields = rest.splitn(3, ' ');
            let (Some(media), Some(port)) = (fields.next(), fields.next()) else {
                return line.to_owned();
            };
            let tail = fields.next().map(|t| format!(" {t}")).unwrap_or_default();
            // Port 0 (rejected stream) is meaningful, not random.
            if port == "0" {
                return line.to_owned();
            }
            return format!("m={media} {}{tail}", self.token(port));
        }
        if let Some(rest) = line.strip_prefix("a=rtcp:") {
            let (port, tail) = rest.split_once(' ').map_or((rest, ""), |(p, t)| (p, t));
            let tail = if tail.is_empty() {
                String::new()
            } else {
                format!(" {tail}")
            };
            return format!("a=rtcp:{}{tail}", self.token(port));
        }
        line.to_owned()
    }

    fn token(&mut self, port: &str) -> String {
        let next = self.seen.len() + 1;
        let n = *self.seen.entry(port.to_owned()).or_insert(next);
        format!("<PORT {n}>")
    }
}

/// A unified-style diff of two line lists (`-` only in `left`, `+` only in `right`), or `None`
/// when they are equal.
pub fn line_diff(
    left_name: &str,
    left: &[String],
    right_name: &str,
    right: &[String],
) -> Option<String> {
    if left == right {
        return None;
    }
    // Longest common subsequence; SDP bodies are tens of lines, so the quadratic table is fine.
    let (n, m) = (left.len(), right.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if left[i] == right[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = format!("--- {left_name}\n+++ {right_name}\n");
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && left[i] == right[j] {
            out.push_str(&format!("  {}\n", left[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("+ {}\n", right[j]));
            j += 1;
        } else {
            out.push_str(&format!("- {}\n", left[i]));
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_port_gets_same_token_across_bodies() {
        let mut m = PortMasker::new();
        let a = m.mask_sdp("m=audio 40000 RTP/AVP 0\r\na=rtcp:40001\r\n");
        let b = m.mask_sdp("m=audio 40000 RTP/AVP 0\r\na=rtcp:40000\r\n");
        assert_eq!(a, ["m=audio <PORT 1> RTP/AVP 0", "a=rtcp:<PORT 2>"]);
        assert_eq!(b, ["m=audio <PORT 1> RTP/AVP 0", "a=rtcp:<PORT 1>"]);
    }

    #[test]
    fn rejected_stream_port_zero_is_kept() {
        let mut m = PortMasker::new();
        assert_eq!(m.mask_sdp("m=video 0 RTP/AVP 96"), ["m=video 0 RTP/AVP 96"]);
    }

    #[test]
    fn diff_shows_changed_line() {
        let l: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let r: Vec<String> = ["a", "x", "c"].map(String::from).to_vec();
        let d = line_diff("l", &l, "r", &r).unwrap_or_default();
        assert!(d.contains("- b\n") && d.contains("+ x\n"), "{d}");
        assert!(line_diff("l", &l, "l", &l).is_none());
    }
}
