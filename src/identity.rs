//! Who a request is for: account, workload and tags, and the rules for
//! their names. Pure: the proxy's identify stage reads them from headers,
//! config reads the sidecar's defaults, scopes and budgets match on them.

/// Longest account, workload, tag key or tag value.
const MAX_NAME: usize = 128;
/// Most tags on one request.
const MAX_TAGS: usize = 32;

/// Who a request is for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    pub account: String,
    pub workload: String,
    pub tags: Vec<(String, String)>,
    /// The gateway key's name, when the request presented one.
    pub key: Option<String>,
}

/// A bad identity value; the message names the header or key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct BadIdentity(pub String);

/// Checks an account / workload / tag name: 1–128 of `A-Z a-z 0-9 . _ - : / @`.
pub fn check_name<'a>(what: &str, name: &'a str) -> Result<&'a str, BadIdentity> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:/@".contains(&b));
    if ok {
        Ok(name)
    } else {
        Err(BadIdentity(format!(
            "{what}: {name:?} is not a valid name (1-{MAX_NAME} of A-Z a-z 0-9 . _ - : / @)"
        )))
    }
}

/// Parses `team=search,feature=summaries` (sorted by key; a key once).
pub fn parse_tags(what: &str, s: &str) -> Result<Vec<(String, String)>, BadIdentity> {
    let mut tags = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(BadIdentity(format!("{what}: {part:?} is not key=value")));
        };
        let (k, v) = (k.trim(), v.trim());
        check_name(what, k)?;
        check_name(what, v)?;
        if tags.iter().any(|(key, _): &(String, String)| key == k) {
            return Err(BadIdentity(format!("{what}: tag {k:?} given twice")));
        }
        tags.push((k.to_string(), v.to_string()));
    }
    if tags.len() > MAX_TAGS {
        return Err(BadIdentity(format!("{what}: more than {MAX_TAGS} tags")));
    }
    tags.sort();
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tags() {
        assert!(check_name("a", "acme-prod_1:x/y@z.w").is_ok());
        assert!(check_name("a", "").is_err());
        assert!(check_name("a", "has space").is_err());
        assert!(check_name("a", &"x".repeat(129)).is_err());
        assert_eq!(
            parse_tags("t", " team=search, feature=summaries ").unwrap(),
            vec![
                ("feature".to_string(), "summaries".to_string()),
                ("team".to_string(), "search".to_string())
            ]
        );
        assert!(parse_tags("t", "novalue").is_err());
        assert!(parse_tags("t", "a=1,a=2").is_err());
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert!(parse_tags("t", &many.join(",")).is_err());
    }
}
