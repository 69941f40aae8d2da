//! Identify: which account, workload and tags a request belongs to, from
//! `x-tollgate-account`, `x-tollgate-workload` and
//! `x-tollgate-tags: team=search,feature=summaries`, else the sidecar's
//! defaults (which an injected sidecar fills from the pod). The headers are
//! tollgate's own: forward never sends any `x-tollgate-*` header upstream.
//!
//! With gateway keys configured, the request must carry one where its SDK
//! sends a key (`x-api-key`, else `Authorization: Bearer`); the key decides
//! the account, and a header naming another account is refused.

use pingora::http::RequestHeader;

use super::error::ProxyError;
use crate::identity::{check_name, parse_tags, BadIdentity, Identity};
use crate::keys::KeyRing;

/// Header naming the account.
pub const ACCOUNT: &str = "x-tollgate-account";
/// Header naming the workload.
pub const WORKLOAD: &str = "x-tollgate-workload";
/// Header carrying `key=value` tags, comma-separated.
pub const TAGS: &str = "x-tollgate-tags";

/// The key a request presents: `x-api-key`, else `Authorization: Bearer`.
pub fn presented_key(req: &RequestHeader) -> Option<&str> {
    if let Some(v) = req.headers.get(crate::dialect::anthropic::X_API_KEY) {
        return v.to_str().ok();
    }
    let auth = req
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = auth.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

/// The request's identity: its gateway key's account when keys are
/// configured, then header by header, falling back to `defaults`.
pub fn identify(
    req: &RequestHeader,
    defaults: &Identity,
    keys: &KeyRing,
) -> Result<Identity, ProxyError> {
    if !keys.enabled() {
        return identify_headers(req, defaults);
    }
    let key = keys.verify(presented_key(req))?;
    let mut id = identify_headers(req, defaults)?;
    if req.headers.contains_key(ACCOUNT) && id.account != key.account {
        return Err(ProxyError::Forbidden(format!(
            "this gateway key belongs to account {:?}, not {:?}",
            key.account, id.account
        )));
    }
    id.account.clone_from(&key.account);
    id.key = Some(key.name.clone());
    Ok(id)
}

fn identify_headers(req: &RequestHeader, defaults: &Identity) -> Result<Identity, ProxyError> {
    let header = |name: &str| -> Result<Option<&str>, ProxyError> {
        match req.headers.get(name) {
            None => Ok(None),
            Some(v) => v
                .to_str()
                .map(|s| Some(s.trim()))
                .map_err(|_| ProxyError::BadIdentity(format!("{name}: not visible ASCII"))),
        }
    };
    let bad = |e: BadIdentity| ProxyError::BadIdentity(e.0);
    let account = match header(ACCOUNT)? {
        Some(a) => check_name(ACCOUNT, a).map_err(bad)?.to_string(),
        None => defaults.account.clone(),
    };
    let workload = match header(WORKLOAD)? {
        Some("") => String::new(),
        Some(w) => check_name(WORKLOAD, w).map_err(bad)?.to_string(),
        None => defaults.workload.clone(),
    };
    let tags = match header(TAGS)? {
        Some(t) => parse_tags(TAGS, t).map_err(bad)?,
        None => defaults.tags.clone(),
    };
    Ok(Identity {
        account,
        workload,
        tags,
        key: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/v1/messages", None).unwrap();
        for (k, v) in headers {
            r.insert_header(k.to_string(), v.to_string()).unwrap();
        }
        r
    }

    fn no_keys() -> KeyRing {
        KeyRing::new(Vec::new(), crate::keys::AcceptMode::Live)
    }

    #[test]
    fn gateway_key_decides_the_account() {
        use crate::keys::{generate, sha256, GatewayKey, KeyMode};
        let key = generate(KeyMode::Live).unwrap();
        let ring = KeyRing::new(
            vec![GatewayKey {
                name: "ci".into(),
                account: "acme".into(),
                sha256: sha256(&key),
                rpm: None,
                tpm: None,
            }],
            crate::keys::AcceptMode::Live,
        );
        let bearer = format!("Bearer {key}");
        let id = identify(&req(&[("authorization", &bearer)]), &defaults(), &ring).unwrap();
        assert_eq!(
            (id.account.as_str(), id.key.as_deref()),
            ("acme", Some("ci"))
        );
        let id = identify(
            &req(&[("x-api-key", &key), (ACCOUNT, "acme")]),
            &defaults(),
            &ring,
        )
        .unwrap();
        assert_eq!(id.account, "acme");
        let err = identify(
            &req(&[("x-api-key", &key), (ACCOUNT, "evil")]),
            &defaults(),
            &ring,
        );
        assert!(matches!(err, Err(ProxyError::Forbidden(_))));
        let err = identify(&req(&[]), &defaults(), &ring);
        assert!(matches!(err, Err(ProxyError::Unauthorized(_))));
        let err = identify(&req(&[("x-api-key", "sk-ant-x")]), &defaults(), &ring);
        assert!(matches!(err, Err(ProxyError::Unauthorized(_))));
    }

    fn defaults() -> Identity {
        Identity {
            account: "default".into(),
            workload: "web".into(),
            tags: vec![("env".into(), "prod".into())],
            key: None,
        }
    }

    #[test]
    fn headers_win_over_defaults() {
        let id = identify(
            &req(&[
                (ACCOUNT, "acme"),
                (WORKLOAD, "batch-jobs"),
                (TAGS, "team=search, feature=summaries"),
            ]),
            &defaults(),
            &no_keys(),
        )
        .unwrap();
        assert_eq!(id.account, "acme");
        assert_eq!(id.workload, "batch-jobs");
        assert_eq!(
            id.tags,
            vec![
                ("feature".into(), "summaries".into()),
                ("team".into(), "search".into())
            ]
        );
        assert_eq!(
            identify(&req(&[]), &defaults(), &no_keys()).unwrap(),
            defaults()
        );
    }

    #[test]
    fn bad_values_are_refused() {
        for (h, v) in [
            (ACCOUNT, ""),
            (ACCOUNT, "has space"),
            (ACCOUNT, &"x".repeat(129)),
            (TAGS, "novalue"),
            (TAGS, "a=1,a=2"),
            (TAGS, "k=v v"),
        ] {
            let err = identify(&req(&[(h, v)]), &defaults(), &no_keys()).unwrap_err();
            assert!(matches!(err, ProxyError::BadIdentity(_)), "{h}: {v}");
        }
    }
}
