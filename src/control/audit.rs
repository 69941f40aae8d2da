//! The audit log: every administrative change (who, when, what, the
//! record before and after; never a secret) is appended, and read back
//! with filters at `GET /api/v1/audit`.

use serde::{Deserialize, Serialize};

use super::model::{self, AuditEntry, AuditView};
use super::{ApiError, Control};

/// Entries returned when the query names no limit, and the most it may.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// Filters of `GET /api/v1/audit`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Exact actor (`admin:1a2b3c4d`).
    pub actor: Option<String>,
    /// Action, or a prefix of one ending in `.` (`gateway_key.`).
    pub action: Option<String>,
    /// Exact target (`account:acme`).
    pub target: Option<String>,
    /// RFC 3339; entries at or after.
    pub since: Option<String>,
    /// RFC 3339; entries before.
    pub until: Option<String>,
    /// Entries numbered above this (paging).
    pub after: Option<u64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

fn parse_time(key: &str, s: &Option<String>) -> Result<Option<i64>, ApiError> {
    s.as_deref()
        .map(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map(|t| t.unix_timestamp())
                .map_err(|_| {
                    ApiError::invalid(format!(
                        "{key}: not an RFC 3339 time (e.g. 2026-12-03T00:00:00Z)"
                    ))
                })
        })
        .transpose()
}

impl Control {
    /// Appends one entry for a change `actor` made. `before` / `after` are
    /// the API views of the record (which hold no secret).
    pub(crate) fn audit<B: Serialize, A: Serialize>(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        before: Option<&B>,
        after: Option<&A>,
    ) -> Result<(), ApiError> {
        let entry = AuditEntry {
            seq: 0,
            ts: model::now(),
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            before: before.and_then(|b| serde_json::to_string(b).ok()),
            after: after.and_then(|a| serde_json::to_string(a).ok()),
        };
        let seq = self.records.audit.append(&model::encode(&entry)?)?;
        // The change and its entry are durable before the caller hears
        // of either.
        self.records.flush()?;
        self.metrics.audit_entries.inc();
        // Sidecars long-polling for changes wake up now.
        self.version.send_replace(seq);
        Ok(())
    }

    /// The entries matching `q`, oldest first.
    pub fn audit_entries(&self, q: &AuditQuery) -> Result<Vec<AuditView>, ApiError> {
        let since = parse_time("since", &q.since)?;
        let until = parse_time("until", &q.until)?;
        let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(ApiError::invalid(format!(
                "limit: between 1 and {MAX_LIMIT}"
            )));
        }
        let mut out = Vec::new();
        let mut failed = None;
        self.records
            .audit
            .scan_from(q.after.map_or(0, |a| a + 1), &mut |seq, bytes| {
                let mut e: AuditEntry = match model::decode(bytes) {
                    Ok(e) => e,
                    Err(err) => {
                        failed = Some(err);
                        return false;
                    }
                };
                e.seq = seq;
                let action_ok = q.action.as_deref().is_none_or(|a| {
                    if a.ends_with('.') {
                        e.action.starts_with(a)
                    } else {
                        e.action == a
                    }
                });
                if q.actor.as_deref().is_none_or(|a| e.actor == a)
                    && action_ok
                    && q.target.as_deref().is_none_or(|t| e.target == t)
                    && since.is_none_or(|s| e.ts >= s)
                    && until.is_none_or(|u| e.ts < u)
                {
                    out.push(e.view());
                }
                out.len() < limit
            })?;
        match failed {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}
