//! Keyed pseudonyms for call parties and call ids.
//!
//! A CDR must let the provider answer "erase everything about +15551230001" without the
//! appliance ever storing the number: the number is normalised and hashed with HMAC-SHA-256
//! under a device secret, truncated to 16 bytes. The same number always gives the same
//! pseudonym on this device (so erasure can match it), and without the secret — sealed by the
//! keystore, never leaving the appliance — a pseudonym cannot be reversed by trying every
//! number, which a plain hash would allow (phone numbers are a small space).

use ring::hmac;

/// Length of a pseudonym.
pub const PSEUDONYM_LEN: usize = 16;

/// HMAC key for pseudonyms.
pub struct Pseudonymiser {
    key: hmac::Key,
}

impl std::fmt::Debug for Pseudonymiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonymiser(redacted)")
    }
}

impl Pseudonymiser {
    /// A pseudonymiser keyed with `secret` (32 random bytes from the keystore).
    pub fn new(secret: &[u8]) -> Self {
        Pseudonymiser {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// The pseudonym of a party: `number` may be an E.164 number, a SIP or tel URI, or a user
    /// part; formatting differences (`sip:`, `tel:`, host, parameters, spaces, dashes) do not
    /// change the pseudonym.
    pub fn party(&self, number: &str) -> [u8; PSEUDONYM_LEN] {
        self.raw(b"party\0", normalise_party(number).as_bytes())
    }

    /// The pseudonym of a call id (domain-separated from parties).
    pub fn call(&self, call_id: &[u8]) -> [u8; PSEUDONYM_LEN] {
        self.raw(b"call\0", call_id)
    }

    fn raw(&self, domain: &[u8], value: &[u8]) -> [u8; PSEUDONYM_LEN] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(domain);
        ctx.update(value);
        let tag = ctx.sign();
        let mut out = [0u8; PSEUDONYM_LEN];
        out.copy_from_slice(
            tag.as_ref()
                .get(..PSEUDONYM_LEN)
                .unwrap_or(&[0u8; PSEUDONYM_LEN]),
        );
        out
    }
}

/// `sip:+1 (555) 123-0001@pop;user=phone` → `+15551230001`; a non-numeric user part is kept
/// lower-cased (`sip:Alice@x` → `alice`).
pub fn normalise_party(s: &str) -> String {
    let s = s.trim();
    let lower = s.to_ascii_lowercase();
    let rest = ["sips:", "sip:", "tel:"]
        .iter()
        .find_map(|p| lower.strip_prefix(p))
        .unwrap_or(&lower);
    let user = rest.split(['@', ';']).next().unwrap_or_default().trim();
    let digits: String = user
        .chars()
        .enumerate()
        .filter(|&(i, c)| c.is_ascii_digit() || (i == 0 && c == '+'))
        .map(|(_, c)| c)
        .collect();
    let has_digit = digits.chars().any(|c| c.is_ascii_digit());
    let only_number_chars = user
        .chars()
        .all(|c| c.is_ascii_digit() || " +-().".contains(c));
    if has_digit && only_number_chars {
        digits
    } else {
        user.to_owned()
    }
}

/// Parties named in rtpengine's free-form `metadata` string, which this appliance reads as
/// `key:value` pairs separated by `|` (`from:+15551230001|to:+15551230002`, the form rtpengine
/// writes recording metadata in). Unknown keys are ignored.
pub fn parties_from_metadata(metadata: &str) -> (Option<String>, Option<String>) {
    let mut from = None;
    let mut to = None;
    for pair in metadata.split('|') {
        let Some((k, v)) = pair.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if v.is_empty() {
            continue;
        }
        match k.trim().to_ascii_lowercase().as_str() {
            "from" | "caller" => from = Some(v.to_owned()),
            "to" | "callee" => to = Some(v.to_owned()),
            _ => {}
        }
    }
    (from, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_does_not_change_the_pseudonym_but_the_key_does() {
        let p = Pseudonymiser::new(&[7u8; 32]);
        let a = p.party("+15551230001");
        assert_eq!(p.party("sip:+1 (555) 123-0001@pop.example;user=phone"), a);
        assert_eq!(p.party("tel:+1-555-123-0001"), a);
        assert_ne!(p.party("+15551230002"), a);
        assert_ne!(Pseudonymiser::new(&[8u8; 32]).party("+15551230001"), a);
        assert_ne!(p.call(b"+15551230001"), a, "domains are separated");
    }

    #[test]
    fn normalisation_keeps_names_and_numbers_apart() {
        assert_eq!(normalise_party("sip:Alice@example.org"), "alice");
        assert_eq!(normalise_party(" 0049 30 1234 "), "0049301234");
        assert_eq!(normalise_party("sip:user123@x"), "user123");
    }

    #[test]
    fn metadata_names_the_parties() {
        assert_eq!(
            parties_from_metadata("from:+15551230001|to:+15551230002|x:y"),
            (Some("+15551230001".into()), Some("+15551230002".into()))
        );
        assert_eq!(parties_from_metadata("garbage"), (None, None));
        assert_eq!(parties_from_metadata(""), (None, None));
    }

    #[test]
    fn debug_shows_no_key() {
        assert_eq!(
            format!("{:?}", Pseudonymiser::new(&[1; 32])),
            "Pseudonymiser(redacted)"
        );
    }
}
