//! Request handling: check the internal credential, read the principal, route, answer.

use std::sync::Arc;

use bytes::Bytes;
use cls_contracts::http::{self, Page};
use cls_contracts::internal::{INTERNAL_TOKEN_HEADER, LookupKey, PRINCIPAL_HEADER, RegisterOperation, ResolveApiKey, ValidateKey};
use cls_contracts::{Principal, Problem, ProblemCode, format_time};
use chrono::Utc;
use cls_domain::{Email, KeyHash};
use cls_runtime::http::{Body, json};
use cls_store::{audit, brands, licenses, views};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tracing::Instrument;
use uuid::Uuid;

use crate::State;
use crate::hot::HotError;
use cls_contracts::read_model::LicenseDoc;
use crate::operations::{self, Lookup};

type Reply = Result<Response<Body>, Problem>;

/// Every line logged while a request is served carries the gateway's request id (the `request`
/// span); the gateway logs the request itself, so the line here is at debug level.
pub async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| Uuid::now_v7().to_string());
    let span = tracing::info_span!("request", id = %request_id);
    async move {
        let started = std::time::Instant::now();
        let method = req.method().clone();
        let template = path_template(req.uri().path());
        let mut response = match route(&state, req, &request_id).await {
            Ok(r) => r,
            Err(problem) => problem_response(&problem),
        };
        if let Ok(v) = request_id.parse() {
            response.headers_mut().insert("x-request-id", v);
        }
        let status = response.status().as_u16();
        // Without the internal credential the path is anyone's input: keep it out of the labels.
        let route = if status == 401 { "unauthenticated".to_owned() } else { template };
        let elapsed = started.elapsed();
        tracing::debug!(%method, route, status, ms = elapsed.as_secs_f64() * 1000.0, "request served");
        state.http.observe(route, status, elapsed);
        response
    }
    .instrument(span)
    .await
}

/// The path with the id after a collection name replaced by `{id}`: a label from a closed set.
fn path_template(path: &str) -> String {
    let mut previous = "";
    let mut template = String::with_capacity(path.len());
    for segment in path.trim_start_matches('/').split('/') {
        template.push('/');
        template.push_str(if matches!(previous, "licenses" | "operations" | "brands") { "{id}" } else { segment });
        previous = segment;
    }
    template
}

async fn route(state: &State, req: Request<Incoming>, request_id: &str) -> Reply {
    let presented = req.headers().get(INTERNAL_TOKEN_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
    if !state.internal_token.matches(presented) {
        return Err(Problem::new(ProblemCode::Unauthenticated, "The internal credential is missing or wrong.", request_id));
    }
    let principal: Option<Principal> = req
        .headers()
        .get(PRINCIPAL_HEADER)
        .and_then(|v| serde_json::from_slice(v.as_bytes()).ok());
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    let internal_error = |e: cls_store::StoreError| {
        tracing::error!(error = format!("{e:#}"), "read failed");
        Problem::new(ProblemCode::Unavailable, "The database is unavailable; retry shortly.", request_id)
    };
    let hot_error = |e: HotError| match e {
        HotError::Store(e) => internal_error(e),
        HotError::Overloaded => Problem::new(ProblemCode::Unavailable, "Too many reads are waiting; retry shortly.", request_id),
    };

    match (&method, segments.as_slice(), principal) {
        (&Method::POST, ["internal", "api-keys", "resolve"], _) => {
            let body: ResolveApiKey = read_json(req, request_id).await?;
            let Ok(hash) = KeyHash::from_hex(&body.key_hash) else {
                return Err(Problem::new(ProblemCode::NotFound, "Unknown API key.", request_id));
            };
            match state.hot.api_key(&hash).await.map_err(hot_error)? {
                Some(resolved) => Ok(json(StatusCode::OK, serde_json::to_vec(&resolved).expect("serializable"))),
                None => Err(Problem::new(ProblemCode::NotFound, "Unknown API key.", request_id)),
            }
        }
        (&Method::PUT, ["internal", "operations", id], _) => {
            let id = parse_id(id, ProblemCode::OperationNotFound, request_id)?;
            let body: RegisterOperation = read_json(req, request_id).await?;
            operations::register_pending(state.read_model.client(), &state.settings.namespace, id, &body.principal)
                .await
                .map_err(|_| Problem::new(ProblemCode::Unavailable, "Redis is unavailable.", request_id))?;
            Ok(json(StatusCode::NO_CONTENT, Bytes::new()))
        }
        (&Method::GET, ["v1", "operations", id], Some(principal)) => {
            let id = parse_id(id, ProblemCode::OperationNotFound, request_id)?;
            let found = operations::find(&state.pool, &state.read_model, &state.secrets, &state.settings.namespace, id, &principal.scope())
                .await
                .map_err(internal_error)?;
            match found {
                Lookup::Found(op) => Ok(json(StatusCode::OK, serde_json::to_vec(&op).expect("serializable"))),
                Lookup::NotFound => Err(Problem::new(ProblemCode::OperationNotFound, "No such operation.", request_id)),
            }
        }
        (&Method::GET, ["v1", "admin", "brands"], Some(Principal::Admin)) => {
            let (after, limit) = paging(&query, request_id)?;
            let mut conn = state.pool.acquire().await.map_err(|e| internal_error(e.into()))?;
            let rows = brands::list_brands(&mut conn, after, limit + 1).await.map_err(internal_error)?;
            Ok(page(rows, limit, |b| b.id, |b| http::Brand {
                id: b.id.to_string(),
                slug: b.slug,
                name: b.name,
                key_prefix: b.key_prefix,
                created_at: format_time(b.created_at),
            }))
        }
        (&Method::GET, ["v1", "admin", "brands", brand_id, "api-keys"], Some(Principal::Admin)) => {
            let brand_id = parse_id(brand_id, ProblemCode::NotFound, request_id)?;
            let (after, limit) = paging(&query, request_id)?;
            let mut conn = state.pool.acquire().await.map_err(|e| internal_error(e.into()))?;
            if brands::find_brand(&mut conn, brand_id).await.map_err(internal_error)?.is_none() {
                return Err(Problem::new(ProblemCode::NotFound, "No brand with this id.", request_id));
            }
            let rows = brands::list_api_keys(&mut conn, brand_id, after, limit + 1).await.map_err(internal_error)?;
            Ok(page(rows, limit, |k| k.id, |k| http::ApiKey {
                id: k.id.to_string(),
                brand_id: k.brand_id.to_string(),
                name: k.name,
                display_prefix: k.display_prefix,
                scopes: k.scopes,
                created_at: format_time(k.created_at),
                revoked_at: k.revoked_at.map(format_time),
            }))
        }
        (&Method::GET, ["v1", "products"], Some(Principal::ApiKey { brand_id, .. })) => {
            let brand_id = parse_id(&brand_id, ProblemCode::NotFound, request_id)?;
            let (after, limit) = paging(&query, request_id)?;
            let mut conn = state.pool.acquire().await.map_err(|e| internal_error(e.into()))?;
            let rows = brands::list_products(&mut conn, brand_id, after, limit + 1).await.map_err(internal_error)?;
            Ok(page(rows, limit, |p| p.id, |p| cls_store::views::product(&p)))
        }
        (&Method::GET, ["v1", "licenses"], Some(Principal::ApiKey { brand_id, .. })) => {
            let brand_id = parse_id(&brand_id, ProblemCode::NotFound, request_id)?;
            let email = email_param(&query, false, request_id)?;
            let (after, limit) = paging(&query, request_id)?;
            let mut conn = state.pool.acquire().await.map_err(|e| internal_error(e.into()))?;
            let rows = licenses::list_licenses(&mut conn, brand_id, email.as_ref(), after, limit + 1).await.map_err(internal_error)?;
            let now = Utc::now();
            Ok(page(rows, limit, |l| l.id, |l| http::ListedLicense { license: views::license(&l, now), customer_email: l.customer_email }))
        }
        (&Method::GET, ["v1", "licenses", id], Some(Principal::ApiKey { brand_id, .. })) => {
            let brand_id = parse_id(&brand_id, ProblemCode::NotFound, request_id)?;
            let id = parse_id(id, ProblemCode::NotFound, request_id)?;
            // Another brand's license answers exactly like an unknown one.
            let LicenseDoc::Live(doc) = state.hot.license(id).await.map_err(hot_error)? else {
                return Err(license_not_found(request_id));
            };
            if doc.brand_id != brand_id.to_string() {
                return Err(license_not_found(request_id));
            }
            let detail = http::LicenseDetail { license: effective(doc.license, Utc::now()), activations: doc.activations };
            Ok(json(StatusCode::OK, serde_json::to_vec(&detail).expect("serializable")))
        }
        (&Method::GET, ["v1", "licenses", id, "history"], Some(Principal::ApiKey { brand_id, .. })) => {
            let brand_id = parse_id(&brand_id, ProblemCode::NotFound, request_id)?;
            let id = parse_id(id, ProblemCode::NotFound, request_id)?;
            let (before, limit) = paging(&query, request_id)?;
            let mut conn = state.pool.acquire().await.map_err(|e| internal_error(e.into()))?;
            licenses::license(&mut conn, brand_id, id).await.map_err(internal_error)?.ok_or_else(|| license_not_found(request_id))?;
            let rows = audit::list_for_target(&mut conn, id, before, limit + 1).await.map_err(internal_error)?;
            Ok(page(rows, limit, |e| e.id, |e| views::audit_entry(&e)))
        }
        (&Method::POST, ["internal", "license-keys", "lookup"], Some(Principal::ApiKey { brand_id, .. })) => {
            let brand_id = parse_id(&brand_id, ProblemCode::NotFound, request_id)?;
            let body: LookupKey = read_json(req, request_id).await?;
            let not_found = || Problem::new(ProblemCode::LicenseKeyNotFound, "No such license key.", request_id);
            let hash = KeyHash::from_hex(&body.key_hash).map_err(|_| not_found())?;
            let mut conn = state.pool.acquire().await.map_err(|e| internal_error(e.into()))?;
            // Another brand's key answers exactly like an unknown one.
            let key = licenses::find_key_by_hash(&mut conn, &hash).await.map_err(internal_error)?.filter(|k| k.brand_id == brand_id).ok_or_else(not_found)?;
            let held = licenses::licenses_of_key(&mut conn, key.id).await.map_err(internal_error)?;
            let now = Utc::now();
            let answer = http::LookedUpKey {
                id: key.id.to_string(),
                key_hint: key.key_hint,
                customer_email: key.customer_email,
                created_at: format_time(key.created_at),
                licenses: held.iter().map(|l| views::license(l, now)).collect(),
            };
            Ok(json(StatusCode::OK, serde_json::to_vec(&answer).expect("serializable")))
        }
        (&Method::POST, ["internal", "license-keys", "validate"], _) => {
            let body: ValidateKey = read_json(req, request_id).await?;
            let answer = crate::validate::validate(&state.hot, &body).await.map_err(hot_error)?;
            Ok(json(StatusCode::OK, serde_json::to_vec(&answer).expect("serializable")))
        }
        (&Method::GET, ["v1", "ecosystem", "licenses"], Some(Principal::ApiKey { .. })) => {
            let email = email_param(&query, true, request_id)?.expect("required");
            let (after, limit) = paging(&query, request_id)?;
            let mut conn = state.pool.acquire().await.map_err(|e| internal_error(e.into()))?;
            let rows = licenses::ecosystem_licenses(&mut conn, &email, after, limit + 1).await.map_err(internal_error)?;
            let now = Utc::now();
            Ok(page(rows, limit, |l| l.id, |l| views::ecosystem_license(&l, now)))
        }
        _ => Err(Problem::new(ProblemCode::NotFound, "No such route for this principal.", request_id)),
    }
}

/// `?limit=` (1-200, default 50) and `?cursor=` (the opaque cursor is the last id seen).
fn paging(query: &str, request_id: &str) -> Result<(Option<Uuid>, i64), Problem> {
    let mut limit = 50;
    let mut after = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "limit" => match value.parse::<i64>() {
                Ok(n) if (1..=200).contains(&n) => limit = n,
                _ => return Err(invalid("limit", "must be a whole number from 1 to 200", request_id)),
            },
            "cursor" => match value.parse::<Uuid>() {
                Ok(id) => after = Some(id),
                Err(_) => return Err(invalid("cursor", "is not a cursor this API returned", request_id)),
            },
            _ => {}
        }
    }
    Ok((after, limit))
}

/// `?customer_email=`, normalized; `required` makes its absence a 400.
fn email_param(query: &str, required: bool, request_id: &str) -> Result<Option<Email>, Problem> {
    match form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "customer_email") {
        Some((_, v)) => Email::parse(&v).map(Some).map_err(|e| invalid("customer_email", &e.message, request_id)),
        None if required => Err(invalid("customer_email", "is required", request_id)),
        None => Ok(None),
    }
}

fn invalid(field: &str, message: &str, request_id: &str) -> Problem {
    Problem::invalid(
        vec![cls_contracts::problem::FieldProblem { field: field.to_owned(), message: message.to_owned() }],
        request_id,
    )
}

/// Turns `limit + 1` rows into a page: the extra row only says there is a next page.
fn page<R, T: serde::Serialize>(mut rows: Vec<R>, limit: i64, id: impl Fn(&R) -> Uuid, to_item: impl Fn(R) -> T) -> Response<Body> {
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| id(r).to_string())
    } else {
        None
    };
    let page = Page { items: rows.into_iter().map(to_item).collect(), next_cursor };
    json(StatusCode::OK, serde_json::to_vec(&page).expect("serializable"))
}

/// A license document (stored status) as answered at `now` (effective status).
fn effective(mut license: http::License, now: chrono::DateTime<Utc>) -> http::License {
    let expires_at = license.expires_at.as_deref().and_then(cls_contracts::parse_time);
    if let Ok(status) = cls_domain::LicenseStatus::parse(&license.status) {
        license.status = status.effective(expires_at, now).as_str().to_owned();
    }
    license
}

fn license_not_found(request_id: &str) -> Problem {
    Problem::new(ProblemCode::NotFound, "No license with this id.", request_id)
}

fn parse_id(s: &str, not_found: ProblemCode, request_id: &str) -> Result<Uuid, Problem> {
    s.parse().map_err(|_| Problem::new(not_found, "Not found.", request_id))
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>, request_id: &str) -> Result<T, Problem> {
    let bytes = Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|_| Problem::new(ProblemCode::InvalidRequest, "Unreadable body.", request_id))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|_| Problem::new(ProblemCode::InvalidRequest, "Malformed JSON.", request_id))
}

fn problem_response(problem: &Problem) -> Response<Body> {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    cls_runtime::http::respond(status, "application/problem+json", problem.to_json())
}
