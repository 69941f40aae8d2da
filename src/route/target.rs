//! Targets (`provider/model`), the `x-tollgate-fallback` header's list of
//! them, and the patterns that say which targets a header may name.

use std::fmt;

use super::RouteError;

/// Longest target accepted, provider and model together.
const MAX_TARGET: usize = 256;
/// Most targets one `x-tollgate-fallback` header may name.
pub const MAX_HEADER_TARGETS: usize = 8;

/// One place a request can be sent: a configured provider and the model
/// id sent to it. The model keeps any slashes of its own
/// (`openrouter/openai/gpt-5` is provider `openrouter`, model
/// `openai/gpt-5`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// A configured provider's name (`[providers.<name>]`).
    pub provider: String,
    /// The model id as the provider knows it.
    pub model: String,
}

impl Target {
    /// A target of `provider` and `model`, as they are.
    pub fn new(provider: impl Into<String>, model: impl Into<String>) -> Target {
        Target {
            provider: provider.into(),
            model: model.into(),
        }
    }

    /// Parses `provider/model`: split at the first `/`, both parts non-empty,
    /// no whitespace, commas or control characters (the header is a comma
    /// list). Whether the provider exists is the caller's check.
    pub fn parse(s: &str) -> Result<Target, String> {
        let bad = |why: &str| Err(format!("{s:?} is not a provider/model target: {why}"));
        if s.len() > MAX_TARGET {
            return bad("too long");
        }
        if s.bytes().any(|b| b <= b' ' || b == b',' || b == 0x7f) {
            return bad("no spaces, commas or control characters");
        }
        match s.split_once('/') {
            Some((p, m)) if !p.is_empty() && !m.is_empty() => Ok(Target::new(p, m)),
            _ => bad("expected provider/model, e.g. anthropic/claude-sonnet-4-5"),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.provider, self.model)
    }
}

/// Which targets an `x-tollgate-fallback` header may name: `*` (any),
/// `provider/*` (any model of a provider) or one exact target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPattern {
    /// `*`
    Any,
    /// `provider/*`
    Provider(String),
    /// `provider/model`
    Exact(Target),
}

impl TargetPattern {
    /// Parses `*`, `provider/*` or `provider/model`.
    pub fn parse(s: &str) -> Result<TargetPattern, String> {
        if s == "*" {
            return Ok(TargetPattern::Any);
        }
        let t = Target::parse(s)?;
        Ok(if t.model == "*" {
            TargetPattern::Provider(t.provider)
        } else {
            TargetPattern::Exact(t)
        })
    }

    /// The provider it names, if it names one.
    pub fn provider(&self) -> Option<&str> {
        match self {
            TargetPattern::Any => None,
            TargetPattern::Provider(p) => Some(p),
            TargetPattern::Exact(t) => Some(&t.provider),
        }
    }

    /// Whether `t` matches.
    pub fn matches(&self, t: &Target) -> bool {
        match self {
            TargetPattern::Any => true,
            TargetPattern::Provider(p) => *p == t.provider,
            TargetPattern::Exact(e) => e == t,
        }
    }
}

/// Parses an `x-tollgate-fallback` value: a comma list of targets
/// (spaces around commas ignored, empty items skipped, duplicates kept
/// once), each of a provider in `providers` and allowed by `allowed`.
pub fn parse_header(
    value: &str,
    providers: &[String],
    allowed: &[TargetPattern],
) -> Result<Vec<Target>, RouteError> {
    let mut out: Vec<Target> = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let t = Target::parse(item).map_err(RouteError::BadHeader)?;
        if !providers.contains(&t.provider) {
            return Err(RouteError::UnknownProvider(t));
        }
        if !allowed.iter().any(|a| a.matches(&t)) {
            return Err(RouteError::NotAllowed(t));
        }
        if !out.contains(&t) {
            out.push(t);
        }
    }
    if out.len() > MAX_HEADER_TARGETS {
        return Err(RouteError::BadHeader(format!(
            "at most {MAX_HEADER_TARGETS} targets"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn providers() -> Vec<String> {
        vec!["anthropic".into(), "openrouter".into()]
    }

    #[test]
    fn targets_split_at_the_first_slash() {
        let t = Target::parse("openrouter/openai/gpt-5").unwrap();
        assert_eq!(
            (t.provider.as_str(), t.model.as_str()),
            ("openrouter", "openai/gpt-5")
        );
        assert_eq!(t.to_string(), "openrouter/openai/gpt-5");
        for bad in ["gpt-5", "/gpt-5", "anthropic/", "a/b c", "a/b,c", ""] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn patterns() {
        let sonnet = Target::new("anthropic", "claude-sonnet-4-5");
        assert!(TargetPattern::parse("*").unwrap().matches(&sonnet));
        assert!(TargetPattern::parse("anthropic/*")
            .unwrap()
            .matches(&sonnet));
        assert!(!TargetPattern::parse("openai/*").unwrap().matches(&sonnet));
        assert!(TargetPattern::parse("anthropic/claude-sonnet-4-5")
            .unwrap()
            .matches(&sonnet));
        assert!(!TargetPattern::parse("anthropic/claude-opus-4-1")
            .unwrap()
            .matches(&sonnet));
        assert!(TargetPattern::parse("anthropic").is_err());
    }

    #[test]
    fn header_lists() {
        let any = [TargetPattern::Any];
        let got = parse_header(
            " anthropic/claude-sonnet-4-5 , openrouter/openai/gpt-5,,anthropic/claude-sonnet-4-5",
            &providers(),
            &any,
        )
        .unwrap();
        assert_eq!(
            got,
            [
                Target::new("anthropic", "claude-sonnet-4-5"),
                Target::new("openrouter", "openai/gpt-5")
            ]
        );
        assert_eq!(parse_header("", &providers(), &any).unwrap(), []);
        assert!(matches!(
            parse_header("gpt-5", &providers(), &any),
            Err(RouteError::BadHeader(_))
        ));
        assert!(matches!(
            parse_header("mistral/large", &providers(), &any),
            Err(RouteError::UnknownProvider(_))
        ));
        let many = ["anthropic/m"; 9]
            .iter()
            .enumerate()
            .map(|(i, t)| format!("{t}{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(matches!(
            parse_header(&many, &providers(), &any),
            Err(RouteError::BadHeader(_))
        ));
    }

    #[test]
    fn a_target_outside_the_allowed_list_is_refused() {
        let only = [TargetPattern::parse("anthropic/*").unwrap()];
        let err = parse_header("openrouter/openai/gpt-5", &providers(), &only).unwrap_err();
        assert_eq!(
            err,
            RouteError::NotAllowed(Target::new("openrouter", "openai/gpt-5"))
        );
        assert_eq!(err.status(), 403);
        assert!(parse_header("anthropic/claude-opus-4-1", &providers(), &only).is_ok());
        assert!(matches!(
            parse_header("anthropic/x", &providers(), &[]),
            Err(RouteError::NotAllowed(_))
        ));
    }
}
