//! The one normal form of a request path that ingress routes on and sends
//! upstream (RFC 3986 §6.2.2: percent-encoded unreserved characters
//! decoded, dot segments removed; and, as lenient servers do, repeated
//! slashes merged and a trailing slash dropped). A provider or front proxy
//! that normalises paths bills what the normal form names, so routing on
//! anything else would let a metered call pass as unmetered.

use std::borrow::Cow;

/// Why a path has no normal form tollgate will vouch for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%2F` or `%5C`: servers disagree on whether it separates segments.
    #[error("the path encodes a '{0}' (servers disagree on whether it separates segments)")]
    EncodedSeparator(char),
    /// A backslash, which some servers read as a slash.
    #[error("the path contains a backslash")]
    Backslash,
    /// A NUL or another control character, raw or encoded.
    #[error("the path contains a control character")]
    Control,
    /// A `%` not followed by two hex digits.
    #[error("the path contains a '%' that is not a percent-escape")]
    BadEscape,
}

/// The normal form of `path` (borrowed when it already is one).
pub fn normalise(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        // `*` (OPTIONS) and the like: nothing to route on, nothing to fix.
        return Ok(Cow::Borrowed(path));
    }
    // One pass (six `contains` scans were measurable per request): an
    // escape, a backslash, `//`, `/.`, a control or a trailing slash.
    let bytes = path.as_bytes();
    let odd = (bytes.len() > 1 && bytes.ends_with(b"/"))
        || bytes.iter().enumerate().any(|(i, &b)| match b {
            b'%' | b'\\' => true,
            b'/' => matches!(bytes.get(i + 1), Some(b'/' | b'.')),
            _ => b.is_ascii_control(),
        });
    if !odd {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                // Above the root stays at the root (RFC 3986 §5.2.4).
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// Decodes `%XX` of unreserved characters; keeps other escapes (upper-case
/// hex); refuses separators, controls and broken escapes.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hex = |j: usize| bytes.get(j).and_then(|&h| (h as char).to_digit(16));
                let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
                    return Err(PathError::BadEscape);
                };
                let c = (hi * 16 + lo) as u8;
                match c {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator(c as char)),
                    c if c.is_ascii_control() => return Err(PathError::Control),
                    c if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => {
                        out.push(c as char);
                    }
                    c => out.push_str(&format!("%{c:02X}")),
                }
                i += 3;
                continue;
            }
            b'\\' => return Err(PathError::Backslash),
            b if b.is_ascii_control() => return Err(PathError::Control),
            _ => {}
        }
        // Copy the run up to the next byte of interest in one go (keeps
        // non-ASCII UTF-8 whole).
        let end = bytes[i..]
            .iter()
            .position(|&b| b == b'%' || b == b'\\' || b.is_ascii_control())
            .map_or(bytes.len(), |n| i + n);
        out.push_str(&path[i..end]);
        i = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        normalise(p).expect("normalisable").into_owned()
    }

    #[test]
    fn every_spelling_of_a_path_has_one_normal_form() {
        // (The spellings issue 12 lists are in tests/hardening.rs.)
        for p in [
            "/v1/messages",
            "///v1/.//./messages",
            "/../../v1/messages",
            "/%76%31/mess%61ges",
            "/v1/messages/.",
            "/v1/messages/x/..",
            "/v1/messages/",
        ] {
            assert_eq!(n(p), "/v1/messages", "{p}");
        }
        assert_eq!(n("/"), "/");
        assert_eq!(n("/.."), "/");
        assert_eq!(n("/v1/models/"), "/v1/models");
        assert_eq!(n("*"), "*");
        // Escapes of other characters stay escaped (upper-case hex).
        assert_eq!(n("/v1/a%3fb/%e2%82%ac"), "/v1/a%3Fb/%E2%82%AC");
        assert_eq!(n("/v1/é//x"), "/v1/é/x");
    }

    #[test]
    fn a_path_already_normal_is_borrowed() {
        assert!(matches!(
            normalise("/v1/messages/count_tokens"),
            Ok(Cow::Borrowed(_))
        ));
        assert!(matches!(normalise("/v1/.x/..y"), Ok(Cow::Owned(s)) if s == "/v1/.x/..y"));
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        assert_eq!(
            normalise("/v1%2fmessages"),
            Err(PathError::EncodedSeparator('/'))
        );
        assert_eq!(
            normalise("/v1%5Cmessages"),
            Err(PathError::EncodedSeparator('\\'))
        );
        assert_eq!(normalise("/v1\\messages"), Err(PathError::Backslash));
        assert_eq!(normalise("/v1/messages%00"), Err(PathError::Control));
        assert_eq!(normalise("/v1/messages\t"), Err(PathError::Control));
        assert_eq!(normalise("/v1/messages%"), Err(PathError::BadEscape));
        assert_eq!(normalise("/v1/messages%4"), Err(PathError::BadEscape));
        assert_eq!(normalise("/v1/mess%zzages"), Err(PathError::BadEscape));
    }
}
