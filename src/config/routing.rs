//! `[aliases.<name>]` and `[routing]`: model aliases over provider/model
//! targets, and how attempts, retries and circuit breakers behave. The
//! rules live in [`crate::route`]; this section checks targets against the
//! configured providers and the price table.

use serde::Deserialize;
use std::collections::BTreeMap;

use super::schema::{render_key, Key, Type};
use super::values::{duration, name};
use super::{Problem, Provider};
use crate::meter::prices::PriceTable;
use crate::route::{
    Alias, AliasTarget, BreakerSettings, Policy, Routing, Target, TargetPattern, AUTO,
};

const DEFAULT_DEADLINE: &str = "60s";
const DEFAULT_BACKOFF_BASE: &str = "200ms";
const DEFAULT_BACKOFF_MAX: &str = "5s";
const DEFAULT_BREAKER_WINDOW: &str = "30s";
const DEFAULT_BREAKER_OPEN_FOR: &str = "30s";

#[rustfmt::skip]
pub(super) static KEYS: &[Key] = &[
    Key::new("aliases.<name>.targets", Type::Strings, "-",
     "[aliases.<name>]: a model name clients may send (instead of a provider's model) that routes to these provider/model targets, e.g. [\"anthropic/claude-sonnet-4-5\", \"openrouter/openai/gpt-5\"] (the provider is the part before the first /; it must be configured). <name> auto is reserved (see routing.default_alias)."),
    Key::new("aliases.<name>.policy", Type::Str, "ordered",
     "ordered (config order), cheapest (lowest worst case for the request, by the price table: every target needs a price) or fastest (lowest moving average of time to first token; unmeasured targets first). Ties keep config order; targets with an open circuit breaker are skipped."),
    Key::new("aliases.<name>.overrides.<model>.max_tokens", Type::Integer, "-",
     "Caps the output bound sent to (and reserved for) one of the alias's targets; <model> is the target as listed, e.g. [aliases.smart.overrides.\"openrouter/openai/gpt-5\"]."),
    Key::new("routing.default_alias", Type::Str, "\"\"",
     "The alias the model \"auto\" resolves to; \"\" = none (auto is then sent as a model like any other)."),
    Key::new("routing.max_attempts", Type::Integer, "3",
     "Attempts per request over all its targets: each failure falls back to the next target, then retries from the first after a backoff."),
    Key::new("routing.deadline", Type::Duration, DEFAULT_DEADLINE,
     "Time for all attempts of one request, backoff included; no attempt starts after it."),
    Key::new("routing.backoff_base", Type::Duration, DEFAULT_BACKOFF_BASE,
     "Retry backoff: a uniformly random wait up to base × 2^retry (full jitter), at most backoff_max; a longer retry-after from the provider wins."),
    Key::new("routing.backoff_max", Type::Duration, DEFAULT_BACKOFF_MAX,
     "Largest backoff ceiling."),
    Key::new("routing.breaker_failures", Type::Integer, "5",
     "Failures (connect, first-byte timeout, 408, 429, 500–504, 529, overloaded_error) of one target within breaker_window that open its circuit breaker."),
    Key::new("routing.breaker_window", Type::Duration, DEFAULT_BREAKER_WINDOW,
     "The sliding window breaker failures are counted in."),
    Key::new("routing.breaker_open_for", Type::Duration, DEFAULT_BREAKER_OPEN_FOR,
     "How long an open breaker skips its target; then it half-opens."),
    Key::new("routing.breaker_probes", Type::Integer, "1",
     "Attempts let through at once by a half-open breaker: a success closes it, a failure opens it again."),
    Key::new("routing.fallback_on_client_errors", Type::Bool, "false",
     "Whether a client error (400, 401, 402, 403, 404, 413…) falls back to another target; by default it goes to the client, since another provider would refuse the request too."),
    Key::new("routing.header_targets", Type::Strings, "[\"*\"]",
     "Targets an x-tollgate-fallback header may name: \"*\" (any), \"provider/*\" or \"provider/model\"; [] refuses the header. Another target is a 403."),
    Key::new("routing.accounts.<name>.header_targets", Type::Strings, "-",
     "Replaces routing.header_targets for the account <name>."),
];

/// The section as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSection {
    pub aliases: Option<BTreeMap<String, RawAlias>>,
    pub routing: Option<RawRouting>,
}

/// `[aliases.<name>]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlias {
    pub targets: Option<Vec<String>>,
    pub policy: Option<String>,
    pub overrides: Option<BTreeMap<String, RawOverride>>,
}

/// `[aliases.<name>.overrides."<target>"]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOverride {
    pub max_tokens: Option<i64>,
}

/// `[routing]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    pub default_alias: Option<String>,
    pub max_attempts: Option<i64>,
    pub deadline: Option<String>,
    pub backoff_base: Option<String>,
    pub backoff_max: Option<String>,
    pub breaker_failures: Option<i64>,
    pub breaker_window: Option<String>,
    pub breaker_open_for: Option<String>,
    pub breaker_probes: Option<i64>,
    pub fallback_on_client_errors: Option<bool>,
    pub header_targets: Option<Vec<String>>,
    pub accounts: Option<BTreeMap<String, RawAccount>>,
}

/// `[routing.accounts.<name>]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccount {
    pub header_targets: Option<Vec<String>>,
}

/// What targets are checked against.
pub(super) struct Known<'a> {
    pub providers: &'a [Provider],
    pub prices: &'a PriceTable,
}

pub(super) fn validate(raw: RawSection, known: &Known<'_>, problems: &mut Vec<Problem>) -> Routing {
    let mut aliases = BTreeMap::new();
    for (alias_name, ra) in raw.aliases.unwrap_or_default() {
        if let Some(a) = alias(&alias_name, ra, known, problems) {
            aliases.insert(alias_name, a);
        }
    }
    let r = raw.routing.unwrap_or_default();
    let d = Routing::default();
    let dur = |key: &str, v: &Option<String>, default: &str, problems: &mut Vec<Problem>| {
        duration(
            &format!("routing.{key}"),
            v.as_deref(),
            default,
            true,
            problems,
        )
    };
    let deadline = dur("deadline", &r.deadline, DEFAULT_DEADLINE, problems);
    let backoff_base = dur(
        "backoff_base",
        &r.backoff_base,
        DEFAULT_BACKOFF_BASE,
        problems,
    );
    let backoff_max = dur("backoff_max", &r.backoff_max, DEFAULT_BACKOFF_MAX, problems);
    if let (Some(base), Some(max)) = (backoff_base, backoff_max) {
        if base > max {
            problems.push(Problem::new(
                "routing.backoff_base",
                format!("{base:?} is more than routing.backoff_max ({max:?})"),
            ));
        }
    }
    let window = dur(
        "breaker_window",
        &r.breaker_window,
        DEFAULT_BREAKER_WINDOW,
        problems,
    );
    let open_for = dur(
        "breaker_open_for",
        &r.breaker_open_for,
        DEFAULT_BREAKER_OPEN_FOR,
        problems,
    );
    let default_alias = match r.default_alias.as_deref() {
        None | Some("") => None,
        Some(a) if aliases.contains_key(a) => Some(a.to_string()),
        Some(a) => {
            problems.push(Problem::new(
                "routing.default_alias",
                format!("{a:?} is not an alias (define it in [aliases.{a}])"),
            ));
            None
        }
    };
    let mut accounts = BTreeMap::new();
    for (account, ra) in r.accounts.unwrap_or_default() {
        let key = render_key(&["routing", "accounts", account.as_str(), "header_targets"]);
        if let Err(e) = name(&account) {
            problems.push(Problem::new(key, e));
            continue;
        }
        let list = ra.header_targets.unwrap_or_default();
        accounts.insert(account, patterns(&key, &list, known, problems));
    }
    let header_targets = match r.header_targets {
        None => d.header_targets,
        Some(list) => patterns("routing.header_targets", &list, known, problems),
    };
    Routing {
        aliases,
        default_alias,
        max_attempts: count(
            "routing.max_attempts",
            r.max_attempts,
            d.max_attempts,
            problems,
        ),
        deadline: deadline.unwrap_or(d.deadline),
        backoff_base: backoff_base.unwrap_or(d.backoff_base),
        backoff_max: backoff_max.unwrap_or(d.backoff_max),
        breaker: BreakerSettings {
            failures: count(
                "routing.breaker_failures",
                r.breaker_failures,
                d.breaker.failures,
                problems,
            ),
            window: window.unwrap_or(d.breaker.window),
            open_for: open_for.unwrap_or(d.breaker.open_for),
            probes: count(
                "routing.breaker_probes",
                r.breaker_probes,
                d.breaker.probes,
                problems,
            ),
        },
        fallback_on_client_errors: r.fallback_on_client_errors.unwrap_or(false),
        header_targets,
        account_header_targets: accounts,
    }
}

/// An integer key of at least 1 (at most 1000: a sanity bound).
fn count(key: &str, v: Option<i64>, default: u32, problems: &mut Vec<Problem>) -> u32 {
    match v {
        None => default,
        Some(n) if (1..=1000).contains(&n) => n as u32,
        Some(n) => {
            problems.push(Problem::new(
                key,
                format!("must be between 1 and 1000, not {n}"),
            ));
            default
        }
    }
}

fn alias(
    alias_name: &str,
    ra: RawAlias,
    known: &Known<'_>,
    problems: &mut Vec<Problem>,
) -> Option<Alias> {
    let key = |field: &str| render_key(&["aliases", alias_name, field]);
    let before = problems.len();
    if alias_name == AUTO {
        problems.push(Problem::new(
            render_key(&["aliases", alias_name]),
            "\"auto\" is reserved: name the alias otherwise and set routing.default_alias to it",
        ));
    } else if let Err(e) = name(alias_name) {
        problems.push(Problem::new(render_key(&["aliases", alias_name]), e));
    }
    let policy = match ra.policy.as_deref() {
        None => Policy::Ordered,
        Some(p) => Policy::parse(p).unwrap_or_else(|| {
            problems.push(Problem::new(
                key("policy"),
                format!("{p:?} is not ordered, cheapest or fastest"),
            ));
            Policy::Ordered
        }),
    };
    let mut targets: Vec<AliasTarget> = Vec::new();
    match ra.targets {
        None => problems.push(Problem::new(key("targets"), "required")),
        Some(list) if list.is_empty() => problems.push(Problem::new(
            key("targets"),
            "must name at least one target",
        )),
        Some(list) => {
            for s in list {
                let Some(t) = target(&key("targets"), &s, known, problems) else {
                    continue;
                };
                if targets.iter().any(|a| a.target == t) {
                    problems.push(Problem::new(
                        key("targets"),
                        format!("{s:?} is listed twice"),
                    ));
                } else if policy == Policy::Cheapest && known.prices.lookup(&t.model).is_none() {
                    problems.push(Problem::new(
                        key("targets"),
                        format!(
                            "policy cheapest needs a price for {s:?}: the model {:?} is not in the price table (add [prices.\"{}\"])",
                            t.model, t.model
                        ),
                    ));
                } else {
                    targets.push(AliasTarget {
                        target: t,
                        max_tokens: None,
                    });
                }
            }
        }
    }
    for (t, o) in ra.overrides.unwrap_or_default() {
        let okey = render_key(&["aliases", alias_name, "overrides", t.as_str(), "max_tokens"]);
        let Some(at) = targets.iter_mut().find(|a| a.target.to_string() == t) else {
            problems.push(Problem::new(
                render_key(&["aliases", alias_name, "overrides", t.as_str()]),
                format!("{t:?} is not one of the alias's targets"),
            ));
            continue;
        };
        match o.max_tokens {
            None => {}
            Some(n) if n >= 1 => at.max_tokens = Some(n as u64),
            Some(n) => problems.push(Problem::new(okey, format!("must be at least 1, not {n}"))),
        }
    }
    (problems.len() == before).then_some(Alias { policy, targets })
}

/// A `provider/model` target of a configured provider.
fn target(key: &str, s: &str, known: &Known<'_>, problems: &mut Vec<Problem>) -> Option<Target> {
    let t = Target::parse(s)
        .map_err(|e| problems.push(Problem::new(key, e)))
        .ok()?;
    provider_known(key, s, &t.provider, known, problems).then_some(t)
}

fn provider_known(
    key: &str,
    s: &str,
    provider: &str,
    known: &Known<'_>,
    problems: &mut Vec<Problem>,
) -> bool {
    if known.providers.iter().any(|p| p.name == provider) {
        return true;
    }
    let names: Vec<&str> = known.providers.iter().map(|p| p.name.as_str()).collect();
    problems.push(Problem::new(
        key,
        format!(
            "{s:?}: {provider:?} is not a configured provider (configured: {})",
            names.join(", ")
        ),
    ));
    false
}

/// Header target patterns, each naming a configured provider (or `*`).
fn patterns(
    key: &str,
    list: &[String],
    known: &Known<'_>,
    problems: &mut Vec<Problem>,
) -> Vec<TargetPattern> {
    let mut out = Vec::new();
    for s in list {
        match TargetPattern::parse(s) {
            Err(e) => problems.push(Problem::new(
                key,
                format!("{e} (or \"*\", or \"provider/*\")"),
            )),
            Ok(p) => {
                if p.provider()
                    .is_none_or(|prov| provider_known(key, s, prov, known, problems))
                {
                    out.push(p);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::{ok, problems};
    use crate::route::{Policy, Target, TargetPattern};

    const EXAMPLE: &str = r#"
[aliases.smart]
policy = "ordered"
targets = ["anthropic/claude-sonnet-4-5", "openrouter/openai/gpt-5"]
[aliases.smart.overrides."openrouter/openai/gpt-5"]
max_tokens = 4096
[aliases.thrifty]
policy = "cheapest"
targets = ["openai/gpt-5-mini", "anthropic/claude-haiku-4-5"]
[routing]
default_alias = "smart"
max_attempts = 4
deadline = "20s"
backoff_base = "100ms"
backoff_max = "2s"
breaker_failures = 3
breaker_window = "10s"
breaker_open_for = "15s"
breaker_probes = 2
fallback_on_client_errors = true
header_targets = ["anthropic/*", "openrouter/openai/gpt-5"]
[routing.accounts.batch]
header_targets = []
"#;

    #[test]
    fn aliases_and_routing() {
        let r = ok(EXAMPLE, &[]).routing;
        let smart = &r.aliases["smart"];
        assert_eq!(smart.policy, Policy::Ordered);
        assert_eq!(
            smart.targets[1].target,
            Target::new("openrouter", "openai/gpt-5")
        );
        assert_eq!(smart.targets[1].max_tokens, Some(4096));
        assert_eq!(smart.targets[0].max_tokens, None);
        assert_eq!(r.aliases["thrifty"].policy, Policy::Cheapest);
        assert_eq!(r.default_alias.as_deref(), Some("smart"));
        assert_eq!(r.max_attempts, 4);
        assert_eq!(r.deadline, Duration::from_secs(20));
        assert_eq!(r.backoff_base, Duration::from_millis(100));
        assert_eq!(r.breaker.failures, 3);
        assert_eq!(r.breaker.open_for, Duration::from_secs(15));
        assert_eq!(r.breaker.probes, 2);
        assert!(r.fallback_on_client_errors);
        assert_eq!(
            r.header_targets,
            [
                TargetPattern::Provider("anthropic".into()),
                TargetPattern::Exact(Target::new("openrouter", "openai/gpt-5"))
            ]
        );
        assert_eq!(r.account_header_targets["batch"], []);
    }

    #[test]
    fn defaults_and_the_environment() {
        let r = ok("", &[]).routing;
        assert_eq!(r, crate::route::Routing::default());
        let r = ok(
            EXAMPLE,
            &[
                ("TOLLGATE_ROUTING__MAX_ATTEMPTS", "2"),
                ("TOLLGATE_ALIASES__SMART__POLICY", "fastest"),
            ],
        )
        .routing;
        assert_eq!(r.max_attempts, 2);
        assert_eq!(r.aliases["smart"].policy, Policy::Fastest);
    }

    #[test]
    fn bad_aliases_are_named() {
        let got = problems(
            r#"
[aliases.auto]
targets = ["anthropic/claude-sonnet-4-5"]
[aliases.a]
policy = "random"
targets = ["mistral/large", "gpt-5", "anthropic/claude-sonnet-4-5", "anthropic/claude-sonnet-4-5"]
[aliases.a.overrides."openai/gpt-5"]
max_tokens = 10
[aliases.b]
policy = "cheapest"
targets = ["openai/my-finetune"]
[aliases.c]
targets = []
[aliases.d]
targets = ["openai/gpt-5"]
[aliases.d.overrides."openai/gpt-5"]
max_tokens = 0
[aliases.e]
policy = "ordered"
"#,
            &[],
        );
        assert_eq!(
            got,
            [
                "aliases.a.policy: \"random\" is not ordered, cheapest or fastest",
                "aliases.a.targets: \"mistral/large\": \"mistral\" is not a configured provider (configured: anthropic, openai, openrouter)",
                "aliases.a.targets: \"gpt-5\" is not a provider/model target: expected provider/model, e.g. anthropic/claude-sonnet-4-5",
                "aliases.a.targets: \"anthropic/claude-sonnet-4-5\" is listed twice",
                "aliases.a.overrides.\"openai/gpt-5\": \"openai/gpt-5\" is not one of the alias's targets",
                "aliases.auto: \"auto\" is reserved: name the alias otherwise and set routing.default_alias to it",
                "aliases.b.targets: policy cheapest needs a price for \"openai/my-finetune\": the model \"my-finetune\" is not in the price table (add [prices.\"my-finetune\"])",
                "aliases.c.targets: must name at least one target",
                "aliases.d.overrides.\"openai/gpt-5\".max_tokens: must be at least 1, not 0",
                "aliases.e.targets: required",
            ]
        );
    }

    #[test]
    fn a_priced_model_may_be_cheapest() {
        let r = ok(
            "[prices.\"my-finetune\"]\ninput = \"1\"\noutput = \"2\"\n[aliases.b]\npolicy = \"cheapest\"\ntargets = [\"openai/my-finetune\"]\n",
            &[],
        )
        .routing;
        assert_eq!(r.aliases["b"].targets.len(), 1);
    }

    #[test]
    fn bad_routing_keys_are_named() {
        let got = problems(
            r#"
[routing]
default_alias = "nope"
max_attempts = 0
deadline = "soon"
backoff_base = "10s"
breaker_probes = -1
header_targets = ["anthropic", "mistral/*"]
[routing.accounts."bad name"]
header_targets = ["*"]
"#,
            &[],
        );
        assert_eq!(
            got,
            [
                "routing.deadline: not a duration: \"soon\" (expected e.g. \"500ms\", \"10s\", \"5m\", \"30d\")",
                "routing.backoff_base: 10s is more than routing.backoff_max (5s)",
                "routing.default_alias: \"nope\" is not an alias (define it in [aliases.nope])",
                "routing.accounts.\"bad name\".header_targets: value: \"bad name\" is not a valid name (1-128 of A-Z a-z 0-9 . _ - : / @)",
                "routing.header_targets: \"anthropic\" is not a provider/model target: expected provider/model, e.g. anthropic/claude-sonnet-4-5 (or \"*\", or \"provider/*\")",
                "routing.header_targets: \"mistral/*\": \"mistral\" is not a configured provider (configured: anthropic, openai, openrouter)",
                "routing.max_attempts: must be between 1 and 1000, not 0",
                "routing.breaker_probes: must be between 1 and 1000, not -1",
            ]
        );
        let unknown = problems(
            "[aliases.a]\ntargets = [\"openai/gpt-5\"]\nweight = 2\n",
            &[],
        );
        assert_eq!(unknown.len(), 1, "{unknown:?}");
        assert!(unknown[0].starts_with("aliases.a.weight"), "{unknown:?}");
    }
}
