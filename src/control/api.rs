//! The HTTP surface: one table of routes (which the OpenAPI document is
//! checked against), the caller's credential as an extractor, errors as
//! `{"error": {"type", "message"}}`, and per-route metrics.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put, MethodRouter};
use axum::{Json, Router};

use super::accounts::{AccountPatch, NewAccount};
use super::aliases::{AliasSpec, AliasView};
use super::audit::AuditQuery;
use super::budgets::{BudgetPatch, BudgetView, NewBudget};
use super::byok::{NewProviderKey, ProviderKeyView, Rotation};
use super::credentials::{NewGatewayKey, NewSidecar};
use super::ledger::{Ack, UsageQuery};
use super::model::{AccountView, AuditView, CredentialView};
use super::{auth, ApiError, Control, Principal};
use crate::plan::Plan;

type AppState = Arc<Control>;

/// Largest usage batch accepted (MessagePack).
const MAX_INGEST_BYTES: usize = 16 << 20;

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The kind of an error answer, for the metrics layer.
#[derive(Clone, Copy, Debug)]
struct ErrorKind(&'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": {"type": self.kind, "message": self.message}
        });
        let mut r = (self.status, Json(body)).into_response();
        r.extensions_mut().insert(ErrorKind(self.kind));
        r
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, c: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let secret = auth::bearer(header).map(str::to_owned);
        blocking(c, move |c| c.authenticate(secret.as_deref())).await
    }
}

/// Runs `f` on the blocking pool: the store's calls may wait on the disk.
async fn blocking<T: Send + 'static>(
    c: &AppState,
    f: impl FnOnce(&Control) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let c = c.clone();
    tokio::task::spawn_blocking(move || f(&c))
        .await
        .map_err(|e| ApiError::internal(format!("the request's task failed: {e}")))?
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(t)| t)
        .map_err(|e| ApiError::invalid(e.body_text()))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::invalid(e.body_text()))
}

/// Every route: (method, path, handler). The router is built from this
/// table and `tests/control.rs` checks the OpenAPI document against it.
pub fn routes() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    vec![
        (Method::GET, "/healthz", get(healthz)),
        (Method::GET, "/readyz", get(healthz)),
        (Method::GET, "/metrics", get(metrics)),
        (Method::GET, "/api/v1/openapi.json", get(openapi)),
        (Method::GET, "/api/v1/whoami", get(whoami)),
        (Method::GET, "/api/v1/plans", get(plans)),
        (Method::GET, "/api/v1/accounts", get(list_accounts)),
        (Method::POST, "/api/v1/accounts", post(create_account)),
        (Method::GET, "/api/v1/accounts/{account}", get(get_account)),
        (
            Method::PATCH,
            "/api/v1/accounts/{account}",
            patch(update_account),
        ),
        (
            Method::GET,
            "/api/v1/accounts/{account}/gateway-keys",
            get(list_gateway_keys),
        ),
        (
            Method::POST,
            "/api/v1/accounts/{account}/gateway-keys",
            post(create_gateway_key),
        ),
        (
            Method::DELETE,
            "/api/v1/gateway-keys/{id}",
            delete(revoke_gateway_key),
        ),
        (Method::GET, "/api/v1/sidecars", get(list_sidecars)),
        (Method::POST, "/api/v1/sidecars", post(create_sidecar)),
        (
            Method::DELETE,
            "/api/v1/sidecars/{id}",
            delete(revoke_sidecar),
        ),
        (Method::GET, "/api/v1/audit", get(audit)),
        (Method::GET, "/api/v1/byok/keys", get(list_provider_keys)),
        (Method::POST, "/api/v1/byok/keys", post(put_provider_key)),
        (
            Method::DELETE,
            "/api/v1/byok/keys/{account}/{provider}",
            delete(remove_provider_key),
        ),
        (
            Method::POST,
            "/api/v1/byok/rotate-master-key",
            post(rotate_master_key),
        ),
        (
            Method::POST,
            "/api/v1/ingest",
            post(ingest).layer(axum::extract::DefaultBodyLimit::max(MAX_INGEST_BYTES)),
        ),
        (Method::GET, "/api/v1/llm/usage", get(usage)),
        (Method::GET, "/api/v1/sync", get(sync)),
        (Method::GET, "/api/v1/budgets", get(list_budgets)),
        (Method::POST, "/api/v1/budgets", post(create_budget)),
        (
            Method::PATCH,
            "/api/v1/budgets/{name}",
            patch(update_budget),
        ),
        (
            Method::DELETE,
            "/api/v1/budgets/{name}",
            delete(delete_budget),
        ),
        (
            Method::GET,
            "/api/v1/budgets/{name}/status",
            get(budget_status),
        ),
        (Method::POST, "/api/v1/leases", post(renew_leases)),
        (Method::GET, "/api/v1/aliases", get(list_aliases)),
        (Method::PUT, "/api/v1/aliases/{name}", put(put_alias)),
        (
            Method::DELETE,
            "/api/v1/aliases/{name}",
            delete(delete_alias),
        ),
    ]
}

/// The router over `control`.
pub fn router(control: AppState) -> Router {
    let mut r: Router<AppState> = Router::new();
    for (_, path, handler) in routes() {
        // Routes of one path with other methods merge into one.
        r = r.route(path, handler);
    }
    r.route_layer(middleware::from_fn_with_state(control.clone(), track))
        .fallback(unknown_route)
        .with_state(control)
}

/// Counts each answer by route, method and status, and auth failures.
async fn track(State(c): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    let method = req.method().clone();
    let resp = next.run(req).await;
    count(&c, &route, &method, &resp);
    resp
}

fn count(c: &Control, route: &str, method: &Method, resp: &Response) {
    let m = c.metrics();
    m.requests
        .with_label_values(&[route, method.as_str(), resp.status().as_str()])
        .inc();
    if let Some(ErrorKind(kind)) = resp.extensions().get::<ErrorKind>() {
        if matches!(*kind, "unauthorized" | "forbidden") {
            m.auth_failures.with_label_values(&[kind]).inc();
        }
    }
}

async fn unknown_route(State(c): State<AppState>, method: Method) -> Response {
    let resp = ApiError::not_found("no such route (see /api/v1/openapi.json)").into_response();
    count(&c, "unmatched", &method, &resp);
    resp
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(c): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        c.metrics().render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn whoami(p: Principal) -> Json<serde_json::Value> {
    Json(p.describe())
}

async fn plans(State(c): State<AppState>, p: Principal) -> Result<Json<Vec<Plan>>, ApiError> {
    p.admin()?;
    Ok(Json(c.plans()))
}

async fn list_accounts(
    State(c): State<AppState>,
    p: Principal,
) -> Result<Json<Vec<AccountView>>, ApiError> {
    p.admin()?;
    Ok(Json(blocking(&c, |c| c.accounts()).await?))
}

async fn create_account(
    State(c): State<AppState>,
    p: Principal,
    b: Result<Json<NewAccount>, JsonRejection>,
) -> Result<(StatusCode, Json<AccountView>), ApiError> {
    let actor = p.admin()?;
    let req = body(b)?;
    let view = blocking(&c, move |c| c.create_account(&actor, req)).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn get_account(
    State(c): State<AppState>,
    p: Principal,
    Path(account): Path<String>,
) -> Result<Json<AccountView>, ApiError> {
    p.reads_account(&account)?;
    Ok(Json(blocking(&c, move |c| c.account(&account)).await?))
}

async fn update_account(
    State(c): State<AppState>,
    p: Principal,
    Path(account): Path<String>,
    b: Result<Json<AccountPatch>, JsonRejection>,
) -> Result<Json<AccountView>, ApiError> {
    let actor = p.admin()?;
    let req = body(b)?;
    Ok(Json(
        blocking(&c, move |c| c.update_account(&actor, &account, req)).await?,
    ))
}

async fn list_gateway_keys(
    State(c): State<AppState>,
    p: Principal,
    Path(account): Path<String>,
) -> Result<Json<Vec<CredentialView>>, ApiError> {
    p.reads_account(&account)?;
    Ok(Json(blocking(&c, move |c| c.gateway_keys(&account)).await?))
}

async fn create_gateway_key(
    State(c): State<AppState>,
    p: Principal,
    Path(account): Path<String>,
    b: Result<Json<NewGatewayKey>, JsonRejection>,
) -> Result<(StatusCode, Json<CredentialView>), ApiError> {
    let actor = p.admin()?;
    let req = body(b)?;
    let view = blocking(&c, move |c| c.create_gateway_key(&actor, &account, req)).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn revoke_gateway_key(
    State(c): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<CredentialView>, ApiError> {
    let actor = p.admin()?;
    Ok(Json(
        blocking(&c, move |c| c.revoke_gateway_key(&actor, &id)).await?,
    ))
}

async fn list_sidecars(
    State(c): State<AppState>,
    p: Principal,
) -> Result<Json<Vec<CredentialView>>, ApiError> {
    p.admin()?;
    Ok(Json(blocking(&c, |c| c.sidecars()).await?))
}

async fn create_sidecar(
    State(c): State<AppState>,
    p: Principal,
    b: Result<Json<NewSidecar>, JsonRejection>,
) -> Result<(StatusCode, Json<CredentialView>), ApiError> {
    let actor = p.admin()?;
    let req = body(b)?;
    let view = blocking(&c, move |c| c.create_sidecar(&actor, req)).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn revoke_sidecar(
    State(c): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<CredentialView>, ApiError> {
    let actor = p.admin()?;
    Ok(Json(
        blocking(&c, move |c| c.revoke_sidecar(&actor, &id)).await?,
    ))
}

async fn audit(
    State(c): State<AppState>,
    p: Principal,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Vec<AuditView>>, ApiError> {
    p.admin()?;
    let q = query(q)?;
    Ok(Json(blocking(&c, move |c| c.audit_entries(&q)).await?))
}

/// `?account=` of a listing: one account (its gateway keys may read it),
/// or all (admins only).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountFilter {
    account: Option<String>,
}

impl AccountFilter {
    fn allowed_for(&self, p: &Principal) -> Result<(), ApiError> {
        match &self.account {
            Some(a) => p.reads_account(a),
            None => p.admin().map(|_| ()),
        }
    }
}

async fn list_provider_keys(
    State(c): State<AppState>,
    p: Principal,
    q: Result<Query<AccountFilter>, QueryRejection>,
) -> Result<Json<Vec<ProviderKeyView>>, ApiError> {
    let q = query(q)?;
    q.allowed_for(&p)?;
    Ok(Json(
        blocking(&c, move |c| c.provider_keys(q.account.as_deref())).await?,
    ))
}

async fn put_provider_key(
    State(c): State<AppState>,
    p: Principal,
    b: Result<Json<NewProviderKey>, JsonRejection>,
) -> Result<(StatusCode, Json<ProviderKeyView>), ApiError> {
    let actor = p.admin()?;
    let req = body(b)?;
    let view = blocking(&c, move |c| c.put_provider_key(&actor, req)).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn remove_provider_key(
    State(c): State<AppState>,
    p: Principal,
    Path((account, provider)): Path<(String, String)>,
) -> Result<Json<ProviderKeyView>, ApiError> {
    let actor = p.admin()?;
    Ok(Json(
        blocking(&c, move |c| {
            c.remove_provider_key(&actor, &account, &provider)
        })
        .await?,
    ))
}

async fn rotate_master_key(
    State(c): State<AppState>,
    p: Principal,
    b: Result<Json<Rotation>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let actor = p.admin()?;
    let req = body(b)?;
    Ok(Json(
        blocking(&c, move |c| c.rotate_master_key(&actor, req)).await?,
    ))
}

async fn ingest(
    State(c): State<AppState>,
    p: Principal,
    body: axum::body::Bytes,
) -> Result<Json<Ack>, ApiError> {
    Ok(Json(blocking(&c, move |c| c.ingest(&p, &body)).await?))
}

async fn usage(
    State(c): State<AppState>,
    p: Principal,
    q: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "format: json or csv, not {other:?}"
            )))
        }
    };
    let report = blocking(&c, move |c| c.usage(&p, &q)).await?;
    if csv {
        let text = report
            .to_csv()
            .map_err(|e| ApiError::internal(format!("writing CSV: {e}")))?;
        Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], text).into_response())
    } else {
        Ok(Json(report.to_json()).into_response())
    }
}

/// `GET /api/v1/sync` query.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncQuery {
    /// The version the sidecar holds; absent: answer at once.
    version: Option<u64>,
    /// Seconds to wait for a change (at most 30).
    wait: Option<u64>,
}

async fn sync(
    State(c): State<AppState>,
    p: Principal,
    q: Result<Query<SyncQuery>, QueryRejection>,
) -> Result<Json<crate::snapshot::Snapshot>, ApiError> {
    let q = query(q)?;
    if !matches!(p, Principal::Sidecar { .. }) {
        return Err(ApiError::forbidden("only a sidecar credential syncs"));
    }
    if let Some(seen) = q.version {
        let wait = std::time::Duration::from_secs(q.wait.unwrap_or(0));
        c.wait_for_change(seen, wait).await;
    }
    Ok(Json(blocking(&c, move |c| c.snapshot(&p)).await?))
}

async fn list_budgets(
    State(c): State<AppState>,
    p: Principal,
    q: Result<Query<AccountFilter>, QueryRejection>,
) -> Result<Json<Vec<BudgetView>>, ApiError> {
    let q = query(q)?;
    q.allowed_for(&p)?;
    Ok(Json(
        blocking(&c, move |c| c.budgets(q.account.as_deref())).await?,
    ))
}

async fn create_budget(
    State(c): State<AppState>,
    p: Principal,
    b: Result<Json<NewBudget>, JsonRejection>,
) -> Result<(StatusCode, Json<BudgetView>), ApiError> {
    let actor = p.admin()?;
    let req = body(b)?;
    let view = blocking(&c, move |c| c.create_budget(&actor, req)).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn update_budget(
    State(c): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
    b: Result<Json<BudgetPatch>, JsonRejection>,
) -> Result<Json<BudgetView>, ApiError> {
    let actor = p.admin()?;
    let req = body(b)?;
    Ok(Json(
        blocking(&c, move |c| c.update_budget(&actor, &name, req)).await?,
    ))
}

async fn delete_budget(
    State(c): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
) -> Result<Json<BudgetView>, ApiError> {
    let actor = p.admin()?;
    Ok(Json(
        blocking(&c, move |c| c.delete_budget(&actor, &name)).await?,
    ))
}

async fn budget_status(
    State(c): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
) -> Result<Json<super::leases::BudgetStatus>, ApiError> {
    Ok(Json(
        blocking(&c, move |c| c.budget_status(&p, &name)).await?,
    ))
}

async fn list_aliases(
    State(c): State<AppState>,
    p: Principal,
) -> Result<Json<Vec<AliasView>>, ApiError> {
    p.admin()?;
    Ok(Json(blocking(&c, |c| c.aliases()).await?))
}

async fn put_alias(
    State(c): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
    b: Result<Json<AliasSpec>, JsonRejection>,
) -> Result<(StatusCode, Json<AliasView>), ApiError> {
    let actor = p.admin()?;
    let spec = body(b)?;
    let (view, created) = blocking(&c, move |c| c.put_alias(&actor, &name, spec)).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)))
}

async fn delete_alias(
    State(c): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
) -> Result<Json<AliasView>, ApiError> {
    let actor = p.admin()?;
    Ok(Json(
        blocking(&c, move |c| c.delete_alias(&actor, &name)).await?,
    ))
}

async fn renew_leases(
    State(c): State<AppState>,
    p: Principal,
    b: Result<Json<crate::lease::LeaseRequest>, JsonRejection>,
) -> Result<Json<crate::lease::LeaseResponse>, ApiError> {
    let req = body(b)?;
    Ok(Json(blocking(&c, move |c| c.renew_leases(&p, &req)).await?))
}
