//! Kubernetes value syntax the injector checks before it writes a value
//! into a pod: a resource quantity, a DNS subdomain (Secret names), a
//! label value. Pure rules, so that the config and the webhook agree.

/// Whether `s` is a Kubernetes resource quantity (`100m`, `0.5`, `64Mi`,
/// `1e3`): a signed decimal number and an optional suffix, binary (`Ki` …
/// `Ei`), decimal (`n u m k M G T P E`) or an exponent (`e3`, `E-2`).
pub fn is_quantity(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let digits_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(digits_end);
    let number_ok = !number.is_empty()
        && number != "."
        && number.matches('.').count() <= 1
        && number.bytes().any(|b| b.is_ascii_digit());
    number_ok && is_quantity_suffix(suffix)
}

fn is_quantity_suffix(suffix: &str) -> bool {
    const BINARY: &[&str] = &["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    const DECIMAL: &[&str] = &["", "n", "u", "m", "k", "M", "G", "T", "P", "E"];
    if BINARY.contains(&suffix) || DECIMAL.contains(&suffix) {
        return true;
    }
    let Some(exp) = suffix.strip_prefix(['e', 'E']) else {
        return false;
    };
    let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
    !exp.is_empty() && exp.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `s` is a DNS-1123 subdomain (names of Secrets and most objects):
/// at most 253 characters, dot-separated labels of lower-case letters,
/// digits and `-`, each starting and ending with a letter or digit.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Whether `s` is a DNS-1123 label (container and port names): 1-63 lower-
/// case letters, digits and `-`, starting and ending with a letter or digit.
pub fn is_dns_label(s: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| alnum(b) || b == b'-')
        && s.bytes().next().is_some_and(alnum)
        && s.bytes().last().is_some_and(alnum)
}

/// Whether `s` is an image reference the injector accepts: non-empty, no
/// white space or control characters (the registry checks the rest).
pub fn is_image(s: &str) -> bool {
    !s.is_empty() && s.len() <= 512 && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for ok in [
            "100m", "0.5", "1", "64Mi", "1Gi", "2k", "1e3", "1E-2", ".5", "+1", "250u",
        ] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in [
            "", "lots", "1mi", "1 Gi", "1.2.3", "Mi", ".", "1e", "1KB", "-",
        ] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert!(is_dns_subdomain("tollgate-ca"));
        assert!(is_dns_subdomain("a.b-c.d"));
        assert!(!is_dns_subdomain("Tollgate"));
        assert!(!is_dns_subdomain("-a"));
        assert!(!is_dns_subdomain("a..b"));
        assert!(is_dns_label("tollgate"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_image("ghcr.io/tollgate-dev/tollgate:0.1.0"));
        assert!(!is_image("bad image"));
    }
}
