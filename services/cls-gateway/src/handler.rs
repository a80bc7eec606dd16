//! One request, start to finish: request id, route, authenticate, then a command or a read.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use chrono::Utc;
use cls_bus::{MSGPACK, RpcOutcome};
use cls_contracts::command::{COMMAND_SCHEMA_VERSION, Command};
use cls_contracts::http::Accepted;
use cls_contracts::internal::RegisterOperation;
use cls_contracts::problem::FieldProblem;
use cls_contracts::{CommandEnvelope, Principal, Problem, ProblemCode, Reply};
use cls_runtime::IpRange;
use cls_runtime::http::{Body, respond};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use lapin::BasicProperties;
use sha2::{Digest, Sha256};
use tracing::Instrument;
use uuid::Uuid;

use crate::State;
use crate::auth::Failure;
use crate::commands::{self, Invalid};
use crate::ratelimit::{Bucket, Verdict};
use crate::routes::{Access, Miss, Route};

/// The OpenAPI document of the public API, served at `GET /openapi.json`.
const OPENAPI_JSON: &str = include_str!("../../../docs/openapi.json");
/// SPEC §3: request bodies over 64 KiB are refused.
const BODY_LIMIT: usize = 64 * 1024;
/// How much of an oversized body is read and discarded so the client can read the 413.
const DRAIN_LIMIT: usize = 8 * 1024 * 1024;
/// Namespace of the UUIDv5 command ids derived from idempotency keys.
const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x6c73_2d69_6465_6d70_6f74_656e_6379_0001);

/// The client's address, for the per-IP rate limit of product routes.
#[derive(Debug, Clone, Copy)]
struct ClientIp(std::net::IpAddr);

/// Every line logged while a request is served carries its id (the `request` span); one line
/// per request says how it ended: by route name, never the path (a client may put a key where an id
/// goes), a query string or a header.
pub async fn handle(state: Arc<State>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let request_id = request_id(&req);
    let span = tracing::info_span!("request", id = %request_id);
    handle_request(state, req, peer, request_id).instrument(span).await
}

async fn handle_request(state: Arc<State>, mut req: Request<Incoming>, peer: SocketAddr, request_id: String) -> Response<Body> {
    let started = std::time::Instant::now();
    let client = client_address(peer.ip(), req.headers(), &state.settings.trusted_proxies);
    req.extensions_mut().insert(ClientIp(client));
    let method = req.method().clone();
    let (route_name, mut response) = match Route::resolve(req.method(), req.uri().path()) {
        Ok(route) => (route.name(), dispatch(&state, route, req, &request_id).await),
        Err(Miss::NotFound) => ("unknown", problem(ProblemCode::NotFound, "No such route.", &request_id)),
        Err(Miss::MethodNotAllowed(allowed)) => {
            let mut r = problem(ProblemCode::MethodNotAllowed, "This route does not take this method.", &request_id);
            let allow = allowed.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_str(&allow).expect("method names are valid"));
            ("unknown", r)
        }
    };
    response
        .headers_mut()
        .insert("x-request-id", HeaderValue::from_str(&request_id).expect("request ids are visible ASCII"));
    let elapsed = started.elapsed();
    state.metrics.http.observe(route_name, response.status().as_u16(), elapsed);
    tracing::info!(
        %method,
        route = route_name,
        status = response.status().as_u16(),
        ms = elapsed.as_secs_f64() * 1000.0,
        "request served"
    );
    response
}

/// The caller's `X-Request-Id` if it is 1-128 visible ASCII characters, else a new UUIDv7.
fn request_id<B>(req: &Request<B>) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| Uuid::now_v7().to_string())
}

async fn dispatch(state: &State, route: Route, req: Request<Incoming>, request_id: &str) -> Response<Body> {
    let principal = match authenticate(state, &route, &req, request_id).await {
        Ok(p) => p,
        Err(response) => return response,
    };
    // Brand routes count against the API key; an end-user product polling its operation against
    // its IP. Product commands and validation count once their body names the license key.
    let bucket = match &principal {
        Some(Principal::ApiKey { api_key_id, .. }) => Some(Bucket { kind: "api_key", id: api_key_id.clone(), limit: state.settings.rate_api_key }),
        Some(Principal::LicenseKey { .. }) => Some(ip_bucket(state, client_ip(&req))),
        _ => None,
    };
    let verdict = match bucket {
        Some(bucket) => state.limiter.check(&[bucket]).await,
        None => None,
    };
    if let Some(v) = verdict.filter(|v| !v.allowed) {
        return rate_limited(v, request_id);
    }
    let mut response = serve(state, route, req, principal, request_id).await;
    if let Some(v) = verdict {
        v.apply(response.headers_mut());
    }
    response
}

/// The client's address, for per-IP limits: the TCP peer, unless the peer is a trusted proxy
/// (`CLS_TRUSTED_PROXIES`). Then it is the rightmost `X-Forwarded-For` address that is not a
/// trusted proxy itself: each proxy appends the address it received the request from, so only
/// the entries the trusted proxies appended are true, and everything left of them may be
/// whatever the client wrote. An entry that does not parse ends the walk at the last trusted hop.
fn client_address(peer: IpAddr, headers: &hyper::HeaderMap, trusted: &[IpRange]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|range| range.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(text) = value.to_str() else { return client };
        for entry in text.rsplit(',') {
            let Ok(ip) = entry.trim().parse::<IpAddr>() else { return client };
            client = ip;
            if !is_trusted(ip) {
                return ip;
            }
        }
    }
    client
}

fn client_ip<B>(req: &Request<B>) -> Option<ClientIp> {
    req.extensions().get::<ClientIp>().copied()
}

fn ip_bucket(state: &State, ip: Option<ClientIp>) -> Bucket {
    Bucket { kind: "ip", id: ip.map(|ip| ip.0.to_string()).unwrap_or_default(), limit: state.settings.rate_ip }
}

/// Counts a product request against its client IP and its license key (by hash).
async fn limit_product(state: &State, ip: Option<ClientIp>, key_hash: &str) -> Option<Verdict> {
    let buckets = [ip_bucket(state, ip), Bucket { kind: "license_key", id: key_hash.to_owned(), limit: state.settings.rate_license_key }];
    state.limiter.check(&buckets).await
}

fn rate_limited(verdict: Verdict, request_id: &str) -> Response<Body> {
    let mut r = problem(ProblemCode::RateLimited, "Too many requests; retry after the time in Retry-After.", request_id);
    verdict.apply(r.headers_mut());
    r
}

/// Adds the rate-limit headers of a counted request.
fn with_limits(mut r: Response<Body>, verdict: Option<Verdict>) -> Response<Body> {
    if let Some(v) = verdict {
        v.apply(r.headers_mut());
    }
    r
}

async fn serve(state: &State, route: Route, req: Request<Incoming>, principal: Option<Principal>, request_id: &str) -> Response<Body> {
    let brand_id = match &principal {
        Some(Principal::ApiKey { brand_id, .. }) => brand_id.clone(),
        _ => String::new(),
    };
    match route {
        Route::Health => cls_runtime::http::json(StatusCode::OK, r#"{"status":"ok"}"#),
        Route::Ready => match readiness(state).await {
            Ok(()) => cls_runtime::http::json(StatusCode::OK, r#"{"status":"ready"}"#),
            Err(reason) => with_retry_after(problem(ProblemCode::Unavailable, &reason, request_id)),
        },
        Route::OpenApi => cls_runtime::http::json(StatusCode::OK, OPENAPI_JSON),
        Route::ListBrands
        | Route::ListApiKeys { .. }
        | Route::ListProducts
        | Route::GetOperation { .. }
        | Route::ListLicenses
        | Route::GetLicense { .. }
        | Route::LicenseHistory { .. }
        | Route::EcosystemLicenses => forward(state, &req, principal.as_ref(), request_id).await,
        Route::LookupKey => lookup_key(state, req, principal.as_ref(), request_id).await,
        Route::Validate => validate(state, req, request_id).await,
        Route::Provision => command(state, req, principal, request_id, brand(|b| commands::provision(&brand_id, b))).await,
        Route::CreateBrand => command(state, req, principal, request_id, brand(commands::create_brand)).await,
        Route::CreateApiKey { brand_id } => {
            command(state, req, principal, request_id, brand(|b| commands::create_api_key(&brand_id, b))).await
        }
        Route::RevokeApiKey { api_key_id } => {
            command(state, req, principal, request_id, brand(|_| commands::revoke_api_key(&api_key_id))).await
        }
        Route::CreateProduct => command(state, req, principal, request_id, brand(|b| commands::create_product(&brand_id, b))).await,
        Route::Renew { id } => command(state, req, principal, request_id, brand(|b| commands::renew(&brand_id, &id, b))).await,
        Route::Suspend { id } => command(state, req, principal, request_id, brand(|b| commands::suspend(&brand_id, &id, b))).await,
        Route::Resume { id } => command(state, req, principal, request_id, brand(|b| commands::resume(&brand_id, &id, b))).await,
        Route::Cancel { id } => command(state, req, principal, request_id, brand(|b| commands::cancel(&brand_id, &id, b))).await,
        Route::ChangeSeats { id } => {
            command(state, req, principal, request_id, brand(|b| commands::change_seats(&brand_id, &id, b))).await
        }
        Route::RotateKey { id } => command(state, req, principal, request_id, brand(|b| commands::rotate_key(&brand_id, &id, b))).await,
        Route::TransferKey { id } => {
            command(state, req, principal, request_id, brand(|b| commands::transfer_key(&brand_id, &id, b))).await
        }
        Route::ReleaseActivation { id } => {
            command(state, req, principal, request_id, brand(|_| commands::release_activation(&brand_id, &id))).await
        }
        Route::Activate => command(state, req, None, request_id, |b| commands::activate(b).map(|(c, p)| (c, Some(p)))).await,
        Route::Deactivate => command(state, req, None, request_id, |b| commands::deactivate(b).map(|(c, p)| (c, Some(p)))).await,
    }
}

/// The route's principal, or the 401 / 403 / 503 to answer.
async fn authenticate(state: &State, route: &Route, req: &Request<Incoming>, request_id: &str) -> Result<Option<Principal>, Response<Body>> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let admin = || -> Result<Option<Principal>, Response<Body>> {
        let presented = header("x-admin-token").unwrap_or_default();
        match &state.settings.admin_token {
            Some(token) if !presented.is_empty() && cls_runtime::secret::same_secret(presented.as_bytes(), token.expose().as_bytes()) => {
                Ok(Some(Principal::Admin))
            }
            _ => Err(problem(ProblemCode::Unauthenticated, "A valid X-Admin-Token is required.", request_id)),
        }
    };
    let brand = |scope| async move {
        match state.keys.authenticate(&state.query, header("x-api-key").as_deref(), scope, request_id).await {
            Ok(key) => Ok(Some(Principal::ApiKey { api_key_id: key.api_key_id, brand_id: key.brand_id, scopes: key.scope_names })),
            Err(Failure::Unauthenticated) => Err(problem(ProblemCode::Unauthenticated, "A valid X-API-Key is required.", request_id)),
            Err(Failure::Forbidden) => Err(problem(ProblemCode::Forbidden, "This API key lacks the scope this route needs.", request_id)),
            Err(Failure::Unavailable) => Err(with_retry_after(problem(
                ProblemCode::Unavailable,
                "Authentication is temporarily unavailable.",
                request_id,
            ))),
        }
    };
    match route.access() {
        Access::Public | Access::Product => Ok(None),
        Access::Admin => admin(),
        Access::Brand(scope) => brand(Some(scope)).await,
        Access::Sender if req.headers().contains_key("x-admin-token") => admin(),
        Access::Sender if req.headers().contains_key("x-api-key") => brand(None).await,
        // An end-user product: the unguessable operation id is its credential.
        Access::Sender => Ok(Some(Principal::LicenseKey { key_hash: String::new() })),
    }
}

/// A builder of a command whose principal is the authenticated caller.
fn brand(build: impl FnOnce(&[u8]) -> Result<Command, Invalid>) -> impl FnOnce(&[u8]) -> Result<(Command, Option<Principal>), Invalid> {
    move |body| build(body).map(|c| (c, None))
}

/// Publishes the command and turns the worker's reply (or its absence) into the answer. The
/// builder may name the principal itself (product routes: the license key in the body).
async fn command(
    state: &State,
    req: Request<Incoming>,
    principal: Option<Principal>,
    request_id: &str,
    build: impl FnOnce(&[u8]) -> Result<(Command, Option<Principal>), Invalid>,
) -> Response<Body> {
    let idempotency_key = match req.headers().get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k) if (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()) => Some(k.to_owned()),
            _ => return invalid("Idempotency-Key", "must be 1-255 visible ASCII characters", request_id),
        },
    };
    let json = is_json(&req);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let ip = client_ip(&req);
    let body = match read_body(req.into_body()).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            let mut r = problem(ProblemCode::PayloadTooLarge, "The request body is over 64 KiB.", request_id);
            r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
        Err(BodyError::Unreadable) => return invalid("body", "could not be read", request_id),
    };
    // A body must be JSON; routes whose body is optional also take none at all.
    if !json && !body.is_empty() {
        return problem(ProblemCode::UnsupportedMediaType, "Send the body as application/json.", request_id);
    }
    let (command, own_principal) = match build(&body) {
        Ok(built) => built,
        Err(Invalid::Fields(errors)) => return problem_body(Problem::invalid(errors, request_id)),
        Err(Invalid::NotFound) => return problem(ProblemCode::NotFound, "Not found.", request_id),
        Err(Invalid::NotFoundAs(code)) => return problem(code, "Not found.", request_id),
    };
    let Some(principal) = own_principal.or(principal) else {
        return problem(ProblemCode::Unauthenticated, "A credential is required.", request_id);
    };
    let verdict = match &principal {
        Principal::LicenseKey { key_hash } if !key_hash.is_empty() => limit_product(state, ip, key_hash).await,
        _ => None,
    };
    if let Some(v) = verdict.filter(|v| !v.allowed) {
        return rate_limited(v, request_id);
    }

    let scope = principal.scope();
    let command_id = match &idempotency_key {
        Some(key) => Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, format!("{scope}\n{method}\n{path}\n{key}").as_bytes()),
        None => Uuid::now_v7(),
    };
    // The reply timeout counts from a fully read request, so a slow upload cannot eat it.
    let deadline = tokio::time::Instant::now() + state.settings.reply_timeout;
    let routing_key = command.routing_key();
    let mut hasher = Sha256::new();
    hasher.update(format!("{method}\n{path}\n").as_bytes());
    hasher.update(cls_contracts::encode(&command));
    let envelope = CommandEnvelope {
        command_id: command_id.to_string(),
        schema_version: COMMAND_SCHEMA_VERSION,
        request_id: request_id.to_owned(),
        principal,
        issued_at: cls_contracts::format_time(Utc::now()),
        request_hash: hex::encode(hasher.finalize()),
        command,
    };
    let properties = BasicProperties::default()
        .with_message_id(command_id.to_string().into())
        .with_type(routing_key.into())
        .with_content_type(MSGPACK.into())
        .with_delivery_mode(2);
    let sent = std::time::Instant::now();
    let outcome = state
        .rpc
        .call(&state.topology.commands_exchange(), routing_key, &cls_contracts::encode(&envelope), properties, deadline)
        .await;
    if let Ok(RpcOutcome::Replied(_)) = outcome {
        state.metrics.round_trip.get_or_create(&vec![("command".to_owned(), routing_key.to_owned())]).observe(sent.elapsed().as_secs_f64());
    }
    let response = match outcome {
        Ok(RpcOutcome::Replied(bytes)) => match cls_contracts::decode::<Reply>(&bytes) {
            // Committed, but the worker could not make it visible to reads yet (read-your-writes):
            // the operation reads `succeeded` once it is.
            Ok(reply) if reply.status == 202 => accepted_response(command_id),
            Ok(reply) => reply_response(reply),
            Err(error) => {
                tracing::error!(%error, "undecodable reply");
                problem(ProblemCode::Internal, "The worker's reply could not be read.", request_id)
            }
        },
        Ok(RpcOutcome::TimedOut) => accepted(state, command_id, &scope, request_id).await,
        Err(error) => {
            tracing::warn!(%error, routing_key, "command not accepted by the broker");
            with_retry_after(problem(ProblemCode::Unavailable, "The command could not be queued; retry shortly.", request_id))
        }
    };
    with_limits(response, verdict)
}

/// 202 with the operation to poll; the operation is registered so it reads `pending`, not 404.
async fn accepted(state: &State, command_id: Uuid, scope: &str, request_id: &str) -> Response<Body> {
    let registration = serde_json::to_vec(&RegisterOperation { principal: scope.to_owned() }).expect("serializable");
    let path = format!("/internal/operations/{command_id}");
    if state.query.send(Method::PUT, &path, None, request_id, Some(registration)).await.is_err() {
        tracing::warn!(%command_id, "could not register the pending operation");
    }
    accepted_response(command_id)
}

fn accepted_response(command_id: Uuid) -> Response<Body> {
    let body = serde_json::to_vec(&Accepted { operation_id: command_id.to_string() }).expect("serializable");
    let mut r = cls_runtime::http::json(StatusCode::ACCEPTED, body);
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_str(&format!("/v1/operations/{command_id}")).expect("ascii"));
    r
}

fn reply_response(reply: Reply) -> Response<Body> {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = if status == StatusCode::NO_CONTENT {
        let mut r = Response::new(Body::new(Bytes::new()));
        *r.status_mut() = status;
        r
    } else if status.is_client_error() || status.is_server_error() {
        respond(status, "application/problem+json", reply.body)
    } else {
        respond(status, "application/json", reply.body)
    };
    if reply.replayed {
        r.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    r
}

/// Forwards a read to the query service with the authenticated principal.
async fn forward(state: &State, req: &Request<Incoming>, principal: Option<&Principal>, request_id: &str) -> Response<Body> {
    let path_and_query = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    match state.query.send(Method::GET, path_and_query, principal, request_id, None).await {
        Ok(answer) => passthrough(answer),
        Err(_) => with_retry_after(problem(ProblemCode::Unavailable, "Reads are temporarily unavailable.", request_id)),
    }
}

fn passthrough(answer: crate::query::Answer) -> Response<Body> {
    let mut r = Response::new(Body::new(answer.body));
    *r.status_mut() = answer.status;
    if let Some(ct) = answer.content_type {
        r.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    // SPEC §3: every 503 says when to retry, also one the query service answered.
    if answer.status == StatusCode::SERVICE_UNAVAILABLE { with_retry_after(r) } else { r }
}

/// `POST /v1/license-keys/lookup`: the pasted key is hashed here, so only its hash reaches the
/// query service.
async fn lookup_key(state: &State, req: Request<Incoming>, principal: Option<&Principal>, request_id: &str) -> Response<Body> {
    let body = match json_body(req, request_id).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let lookup: cls_contracts::http::LookupRequest = match commands::parse_json(&body) {
        Ok(l) => l,
        Err(Invalid::Fields(errors)) => return problem_body(Problem::invalid(errors, request_id)),
        Err(Invalid::NotFound | Invalid::NotFoundAs(_)) => return problem(ProblemCode::NotFound, "Not found.", request_id),
    };
    let key = match cls_domain::LicenseKey::parse(&lookup.license_key) {
        Ok(k) => k,
        Err(e) => return invalid("license_key", &e.message, request_id),
    };
    let internal = serde_json::to_vec(&cls_contracts::internal::LookupKey { key_hash: key.hash().into_inner() }).expect("serializable");
    match state.query.send(Method::POST, "/internal/license-keys/lookup", principal, request_id, Some(internal)).await {
        Ok(answer) => passthrough(answer),
        Err(_) => with_retry_after(problem(ProblemCode::Unavailable, "Reads are temporarily unavailable.", request_id)),
    }
}

/// `POST /v1/license-keys/validate` (US4): the key is hashed here; the query service answers.
async fn validate(state: &State, req: Request<Incoming>, request_id: &str) -> Response<Body> {
    let ip = client_ip(&req);
    let body = match json_body(req, request_id).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let query = match commands::validate(&body) {
        Ok(q) => q,
        Err(Invalid::Fields(errors)) => return problem_body(Problem::invalid(errors, request_id)),
        Err(Invalid::NotFound | Invalid::NotFoundAs(_)) => return problem(ProblemCode::NotFound, "Not found.", request_id),
    };
    // A string that cannot be a key counts against the IP only.
    let verdict = match &query.key_hash {
        Some(hash) => limit_product(state, ip, hash).await,
        None => state.limiter.check(&[ip_bucket(state, ip)]).await,
    };
    if let Some(v) = verdict.filter(|v| !v.allowed) {
        return rate_limited(v, request_id);
    }
    let internal = serde_json::to_vec(&query).expect("serializable");
    let response = match state.query.send(Method::POST, "/internal/license-keys/validate", None, request_id, Some(internal)).await {
        Ok(answer) => passthrough(answer),
        Err(_) => with_retry_after(problem(ProblemCode::Unavailable, "Validation is temporarily unavailable.", request_id)),
    };
    with_limits(response, verdict)
}

/// A JSON request body, or the 415 / 413 / 400 to answer.
async fn json_body(req: Request<Incoming>, request_id: &str) -> Result<Bytes, Response<Body>> {
    if !is_json(&req) {
        return Err(problem(ProblemCode::UnsupportedMediaType, "Send the body as application/json.", request_id));
    }
    match read_body(req.into_body()).await {
        Ok(b) => Ok(b),
        Err(BodyError::TooLarge) => Err(problem(ProblemCode::PayloadTooLarge, "The request body is over 64 KiB.", request_id)),
        Err(BodyError::Unreadable) => Err(invalid("body", "could not be read", request_id)),
    }
}

/// Ready when commands can be published and every worker kind has a consumer.
pub(crate) async fn readiness(state: &State) -> Result<(), String> {
    if !state.rpc.is_open().await {
        return Err("cannot publish commands".to_owned());
    }
    if let Some(reason) = state.rpc.blocked() {
        return Err(format!("the broker blocks publishing ({reason})"));
    }
    // A passive declare of a missing queue closes its channel, so use a throwaway channel.
    let channel = state.amqp.create_channel().await.map_err(|_| "the broker connection is down".to_owned())?;
    for module in crate::SERVED_MODULES {
        let consumers = state.topology.command_consumers(&channel, *module).await.map_err(|_| format!("no {} command queue", module.as_str()))?;
        if consumers == 0 {
            let _ = channel.close(200, "ok".into()).await;
            return Err(format!("no {} worker is consuming", module.as_str()));
        }
    }
    let _ = channel.close(200, "ok".into()).await;
    Ok(())
}

fn is_json<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

enum BodyError {
    TooLarge,
    Unreadable,
}

/// How long a client may take to send its whole body.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads the body (within [`BODY_READ_TIMEOUT`]) up to the limit; past it, reads and discards
/// the rest (bounded) so the client gets to read the 413.
async fn read_body(body: Incoming) -> Result<Bytes, BodyError> {
    tokio::time::timeout(BODY_READ_TIMEOUT, read_body_unbounded(body)).await.unwrap_or(Err(BodyError::Unreadable))
}

async fn read_body_unbounded(mut body: Incoming) -> Result<Bytes, BodyError> {
    let mut buf = BytesMut::new();
    let mut too_large = false;
    let mut drained = 0usize;
    let drain_deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let frame = if too_large {
            match tokio::time::timeout_at(drain_deadline, body.frame()).await {
                Ok(f) => f,
                Err(_) => break,
            }
        } else {
            body.frame().await
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|_| BodyError::Unreadable)?;
        let Ok(data) = frame.into_data() else { continue };
        if too_large {
            drained += data.len();
            if drained > DRAIN_LIMIT {
                break;
            }
        } else if buf.len() + data.len() > BODY_LIMIT {
            too_large = true;
            buf.clear();
        } else {
            buf.extend_from_slice(&data);
        }
    }
    if too_large { Err(BodyError::TooLarge) } else { Ok(buf.freeze()) }
}

fn problem(code: ProblemCode, detail: &str, request_id: &str) -> Response<Body> {
    problem_body(Problem::new(code, detail, request_id))
}

fn invalid(field: &str, message: &str, request_id: &str) -> Response<Body> {
    problem_body(Problem::invalid(vec![FieldProblem { field: field.to_owned(), message: message.to_owned() }], request_id))
}

fn problem_body(p: Problem) -> Response<Body> {
    let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    respond(status, "application/problem+json", p.to_json())
}

fn with_retry_after(mut r: Response<Body>) -> Response<Body> {
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn forwarded(values: &[&str]) -> hyper::HeaderMap {
        let mut headers = hyper::HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    #[test]
    fn the_client_is_the_peer_unless_a_trusted_proxy_forwarded_it() {
        let trusted = [IpRange::parse("10.0.0.0/8").unwrap()];
        // No proxy trusted, or the peer is not one: the header is whatever the client wrote.
        assert_eq!(client_address(ip("10.0.0.5"), &forwarded(&["203.0.113.9"]), &[]), ip("10.0.0.5"));
        assert_eq!(client_address(ip("198.51.100.1"), &forwarded(&["203.0.113.9"]), &trusted), ip("198.51.100.1"));
        // Through a trusted proxy: the address it appended, not what the client put before it.
        assert_eq!(client_address(ip("10.0.0.5"), &forwarded(&["1.2.3.4, 203.0.113.9"]), &trusted), ip("203.0.113.9"));
        // Through two trusted proxies, in one header or two.
        assert_eq!(client_address(ip("10.0.0.5"), &forwarded(&["1.2.3.4, 203.0.113.9, 10.0.0.7"]), &trusted), ip("203.0.113.9"));
        assert_eq!(client_address(ip("10.0.0.5"), &forwarded(&["1.2.3.4, 203.0.113.9", "10.0.0.7"]), &trusted), ip("203.0.113.9"));
        // Nothing forwarded, or nothing usable: the last trusted hop.
        assert_eq!(client_address(ip("10.0.0.5"), &forwarded(&[]), &trusted), ip("10.0.0.5"));
        assert_eq!(client_address(ip("10.0.0.5"), &forwarded(&["10.0.0.7"]), &trusted), ip("10.0.0.7"));
        assert_eq!(client_address(ip("10.0.0.5"), &forwarded(&["203.0.113.9, junk"]), &trusted), ip("10.0.0.5"));
    }
}
