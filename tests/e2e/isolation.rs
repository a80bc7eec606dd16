//! Tenant isolation and access control, as a matrix generated from the gateway's route table
//! (SPEC §3 "Principals" and "Tenancy"):
//!
//! - [`MATRIX`] lists every public route (method, path template, access rule) as data; a check
//!   compares it with the gateway's own table (`routes::ROUTES` and `Route::access`) and fails
//!   when they disagree, so a new route cannot slip past these tests; at run time every path
//!   answers 405 with the exact `Allow` set of the matrix for every other method.
//! - Brand A's API key on every resource of brand B (path or body) answers exactly like an
//!   unknown id (404, same problem), never 403 or 2xx, and B's data is unchanged afterwards.
//! - Every admin and brand route refuses a missing, wrong, unknown or revoked credential (401)
//!   and a key without the route's scope (403).
//! - The query service's internal address refuses requests without the internal credential.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cls_tests::{ADMIN_TOKEN, TestCluster, TestResponse, eventually};
use http_body_util::{BodyExt, Full};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

/// Who may call a route (SPEC §3), as `Route::access` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Access {
    Public,
    Admin,
    /// `X-API-Key` with `licenses:read` (implied by `licenses:write`).
    Read,
    /// `X-API-Key` with `licenses:write`.
    Write,
    /// `X-API-Key` with `ecosystem:read`.
    Ecosystem,
    /// The principal that sent the command (admin, brand or, with no header, a product).
    Sender,
    /// No header: the license key in the body.
    Product,
}

/// One public route: the `Route` variant, the method, the path template and who may call it.
/// Placeholders: `{brand}`, `{api_key}`, `{operation}`, `{license}`, `{key}` (a license key id),
/// `{activation}`.
#[derive(Debug, Clone, Copy)]
struct RouteSpec {
    variant: &'static str,
    method: &'static str,
    path: &'static str,
    access: Access,
}

const fn route(variant: &'static str, method: &'static str, path: &'static str, access: Access) -> RouteSpec {
    RouteSpec { variant, method, path, access }
}

/// Every route of the gateway. `the_matrix_is_the_route_table` keeps it equal to `routes.rs`.
const MATRIX: &[RouteSpec] = &[
    route("Health", "GET", "/health", Access::Public),
    route("Ready", "GET", "/ready", Access::Public),
    route("OpenApi", "GET", "/openapi.json", Access::Public),
    route("CreateBrand", "POST", "/v1/admin/brands", Access::Admin),
    route("ListBrands", "GET", "/v1/admin/brands", Access::Admin),
    route("CreateApiKey", "POST", "/v1/admin/brands/{brand}/api-keys", Access::Admin),
    route("ListApiKeys", "GET", "/v1/admin/brands/{brand}/api-keys", Access::Admin),
    route("RevokeApiKey", "DELETE", "/v1/admin/api-keys/{api_key}", Access::Admin),
    route("CreateProduct", "POST", "/v1/products", Access::Write),
    route("ListProducts", "GET", "/v1/products", Access::Read),
    route("GetOperation", "GET", "/v1/operations/{operation}", Access::Sender),
    route("Provision", "POST", "/v1/licenses", Access::Write),
    route("ListLicenses", "GET", "/v1/licenses", Access::Read),
    route("GetLicense", "GET", "/v1/licenses/{license}", Access::Read),
    route("LicenseHistory", "GET", "/v1/licenses/{license}/history", Access::Read),
    route("Renew", "POST", "/v1/licenses/{license}/renew", Access::Write),
    route("Suspend", "POST", "/v1/licenses/{license}/suspend", Access::Write),
    route("Resume", "POST", "/v1/licenses/{license}/resume", Access::Write),
    route("Cancel", "POST", "/v1/licenses/{license}/cancel", Access::Write),
    route("ChangeSeats", "POST", "/v1/licenses/{license}/seats", Access::Write),
    route("RotateKey", "POST", "/v1/license-keys/{key}/rotate", Access::Write),
    route("TransferKey", "POST", "/v1/license-keys/{key}/transfer", Access::Write),
    route("Activate", "POST", "/v1/activations", Access::Product),
    route("Deactivate", "POST", "/v1/activations/deactivate", Access::Product),
    route("ReleaseActivation", "DELETE", "/v1/activations/{activation}", Access::Write),
    route("LookupKey", "POST", "/v1/license-keys/lookup", Access::Read),
    route("Validate", "POST", "/v1/license-keys/validate", Access::Product),
    route("EcosystemLicenses", "GET", "/v1/ecosystem/licenses", Access::Ecosystem),
];

/// Brand routes that name no resource of their own: tenancy there means "lists show only the
/// caller's data" (checked separately), or the one named exception, `ecosystem:read`.
const NO_RESOURCE: &[&str] = &["CreateProduct", "ListProducts", "ListLicenses", "EcosystemLicenses"];

/// Placeholders that name a brand's resource.
const RESOURCE_PLACEHOLDERS: &[&str] = &["{operation}", "{license}", "{key}", "{activation}"];

// ---------------------------------------------------------------------------------------------
// The gateway's route table.

/// `(variant, method, path, access)` of every entry of `routes::ROUTES`, a path parameter as `{}`.
fn route_table() -> BTreeSet<(String, String, String, Access)> {
    use cls_domain::Scope;
    use cls_gateway::routes::{Access as Rule, ROUTES};
    ROUTES
        .iter()
        .map(|(method, template, make)| {
            let route = make("x".to_owned());
            let variant: String = format!("{route:?}").chars().take_while(char::is_ascii_alphanumeric).collect();
            let access = match route.access() {
                Rule::Public => Access::Public,
                Rule::Admin => Access::Admin,
                Rule::Brand(Scope::LicensesRead) => Access::Read,
                Rule::Brand(Scope::LicensesWrite) => Access::Write,
                Rule::Brand(Scope::EcosystemRead) => Access::Ecosystem,
                Rule::Sender => Access::Sender,
                Rule::Product => Access::Product,
            };
            (variant, method.to_string(), normalized(template), access)
        })
        .collect()
}

fn normalized(template: &str) -> String {
    template.split('/').map(|s| if s.starts_with('{') { "{}" } else { s }).collect::<Vec<_>>().join("/")
}

#[test]
fn the_matrix_is_the_route_table() {
    let table = route_table();
    assert!(table.len() >= 28, "the route table looks too small: {table:?}");
    let matrix: BTreeSet<(String, String, String, Access)> =
        MATRIX.iter().map(|r| (r.variant.to_owned(), r.method.to_owned(), normalized(r.path), r.access)).collect();
    assert_eq!(matrix.len(), MATRIX.len(), "the matrix lists a route twice");
    let missing: Vec<_> = table.difference(&matrix).collect();
    let stale: Vec<_> = matrix.difference(&table).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "routes.rs and the isolation matrix disagree; add the route to MATRIX (and to the tenancy probes):\n  in routes.rs only: {missing:?}\n  in the matrix only: {stale:?}"
    );
    // Every brand route is either probed for tenancy or explicitly names no resource.
    for r in MATRIX.iter().filter(|r| matches!(r.access, Access::Read | Access::Write | Access::Ecosystem | Access::Sender)) {
        let probed = RESOURCE_PLACEHOLDERS.iter().any(|p| r.path.contains(p)) || !body_probes(r.variant).is_empty();
        assert!(probed ^ NO_RESOURCE.contains(&r.variant), "{}: classify it as probed for tenancy or as naming no resource", r.variant);
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures.

/// One brand with its keys and one license (with a key, an activation and an operation).
#[derive(Debug, Clone)]
struct Tenant {
    slug: String,
    brand_id: String,
    write_key: String,
    write_key_id: String,
    read_key: String,
    eco_key: String,
    product: String,
    email: String,
    license_id: String,
    key_id: String,
    full_key: String,
    instance: String,
    activation_id: String,
    /// The operation (command id) of the provisioning that created the license: its stored
    /// outcome holds the full license key.
    operation_id: String,
}

/// Creates an API key; returns (id, secret).
async fn api_key(c: &TestCluster, brand_id: &str, scopes: &[&str]) -> (String, String) {
    let r = c.admin_post(&format!("/v1/admin/brands/{brand_id}/api-keys"), &json!({"name": scopes.join(" "), "scopes": scopes})).await;
    assert_eq!(r.status, StatusCode::CREATED, "create api key: {:?}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    (j["id"].as_str().unwrap().to_owned(), j["api_key"].as_str().unwrap().to_owned())
}

async fn tenant(c: &TestCluster, slug: &str, prefix: &str) -> Tenant {
    let brand = c.create_brand(slug, prefix).await;
    let brand_id = brand["id"].as_str().unwrap().to_owned();
    let (write_key_id, write_key) = api_key(c, &brand_id, &["licenses:write"]).await;
    let (_, read_key) = api_key(c, &brand_id, &["licenses:read"]).await;
    let (_, eco_key) = api_key(c, &brand_id, &["ecosystem:read"]).await;
    let product = format!("{slug}-pro");
    for code in [product.as_str(), "shared"] {
        let r = c.post("/v1/products", &[("x-api-key", &write_key)], &json!({"code": code, "name": code, "default_seat_limit": 5})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", String::from_utf8_lossy(&r.body));
    }
    let email = format!("{slug}@iso.io");
    let request_id = format!("{slug}-provision");
    let r = c
        .post("/v1/licenses", &[("x-api-key", &write_key), ("x-request-id", &request_id)], &json!({"customer_email": email, "products": [{"code": product}]}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", String::from_utf8_lossy(&r.body));
    let p = r.json();
    let instance = format!("{slug}.example.com");
    let full_key = p["license_key"]["key"].as_str().unwrap().to_owned();
    let a = c.post("/v1/activations", &[], &json!({"license_key": full_key, "product": product, "instance_id": instance})).await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", String::from_utf8_lossy(&a.body));
    let operation_id: String = sqlx::query_scalar("SELECT command_id::text FROM inbox WHERE request_id = $1")
        .bind(&request_id)
        .fetch_one(&c.pool)
        .await
        .expect("the provisioning's inbox row");
    Tenant {
        slug: slug.to_owned(),
        brand_id,
        write_key,
        write_key_id,
        read_key,
        eco_key,
        product,
        email,
        license_id: p["licenses"][0]["id"].as_str().unwrap().to_owned(),
        key_id: p["license_key"]["id"].as_str().unwrap().to_owned(),
        full_key,
        instance,
        activation_id: a.json()["activation"]["id"].as_str().unwrap().to_owned(),
        operation_id,
    }
}

/// What a brand sees of its license, key and activation, to compare before and after.
async fn snapshot(c: &TestCluster, t: &Tenant) -> Value {
    let l = c.get(&format!("/v1/licenses/{}", t.license_id), &[("x-api-key", &t.write_key)]).await;
    assert_eq!(l.status, StatusCode::OK, "{}: own license: {:?}", t.slug, String::from_utf8_lossy(&l.body));
    let l = l.json();
    let v = c.post("/v1/license-keys/validate", &[], &json!({"license_key": t.full_key, "product": t.product, "instance_id": t.instance})).await;
    assert_eq!(v.status, StatusCode::OK);
    let v = v.json();
    assert_eq!(v["code"], "VALID", "{}: its key validates with its instance: {v}", t.slug);
    let k = c.post("/v1/license-keys/lookup", &[("x-api-key", &t.write_key)], &json!({"license_key": t.full_key})).await;
    assert_eq!(k.status, StatusCode::OK, "{}: own key lookup: {:?}", t.slug, String::from_utf8_lossy(&k.body));
    let k = k.json();
    let h = c.get(&format!("/v1/licenses/{}/history", t.license_id), &[("x-api-key", &t.write_key)]).await.json();
    let activations: Vec<Value> = l["activations"].as_array().unwrap().iter().map(|a| json!([a["id"], a["instance_id"]])).collect();
    json!({
        "status": l["status"], "version": l["version"], "expires_at": l["expires_at"], "seat_limit": l["seat_limit"],
        "seats_used": l["seats_used"], "activations": activations,
        "validation": [v["valid"], v["code"], v["licenses"][0]["instance_active"], v["key_hint"]],
        "key": [k["id"], k["customer_email"], k["key_hint"]],
        "history": h["items"].as_array().map(Vec::len),
    })
}

// ---------------------------------------------------------------------------------------------
// Requests.

/// A request of the matrix: label (for messages), method, path, headers, raw body.
#[derive(Debug, Clone)]
struct Call {
    label: String,
    method: Method,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
}

impl Call {
    fn new(label: impl Into<String>, r: &RouteSpec, path: String, headers: &[(&str, &str)], body: Option<Value>) -> Call {
        Call {
            label: label.into(),
            method: Method::from_bytes(r.method.as_bytes()).unwrap(),
            path,
            headers: headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            body: body.map(|b| serde_json::to_vec(&b).unwrap()),
        }
    }
}

/// Sends the calls, at most 16 at a time; answers in the calls' order.
async fn send_all(c: &Arc<TestCluster>, calls: Vec<Call>) -> Vec<(Call, TestResponse)> {
    let gate = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, call) in calls.into_iter().enumerate() {
        let (c, gate) = (c.clone(), gate.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let mut headers: Vec<(&str, &str)> = call.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            if call.body.is_some() {
                headers.push(("content-type", "application/json"));
            }
            let r = c.request(call.method.clone(), &call.path, &headers, call.body.clone()).await;
            (i, call, r)
        });
    }
    let mut out: Vec<(usize, Call, TestResponse)> = tasks.join_all().await;
    out.sort_by_key(|(i, _, _)| *i);
    out.into_iter().map(|(_, c, r)| (c, r)).collect()
}

fn text(r: &TestResponse) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The problem document of an error answer, without its request id.
fn problem(call: &Call, r: &TestResponse) -> Value {
    assert_eq!(r.header("content-type"), Some("application/problem+json"), "{}: {} {:?}", call.label, r.status, text(r));
    let mut p = r.json();
    p.as_object_mut().unwrap().remove("request_id");
    p
}

/// The problem with every value the caller sent (path ids, body strings) replaced by `<sent>`:
/// a detail may echo the caller's own input, which tells it nothing about another brand.
fn problem_without_echo(call: &Call, r: &TestResponse) -> Value {
    fn strings(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Array(items) => items.iter().for_each(|i| strings(i, out)),
            Value::Object(map) => map.values().for_each(|i| strings(i, out)),
            _ => {}
        }
    }
    let mut sent: Vec<String> = call.path.split(['/', '?', '=', '&']).map(str::to_owned).collect();
    if let Some(body) = call.body.as_deref().and_then(|b| serde_json::from_slice::<Value>(b).ok()) {
        strings(&body, &mut sent);
    }
    sent.retain(|s| s.len() >= 8);
    sent.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut text = problem(call, r).to_string();
    for s in sent {
        text = text.replace(&s, "<sent>");
    }
    serde_json::from_str(&text).unwrap()
}

fn expect_problem(call: &Call, r: &TestResponse, status: StatusCode, code: &str) {
    assert_eq!(r.status, status, "{} → {:?}", call.label, text(r));
    assert_eq!(problem(call, r)["code"], code, "{}", call.label);
}

/// Fills a path template from a placeholder → value function, and adds the query a route needs.
fn fill(r: &RouteSpec, value: impl Fn(&str) -> String) -> String {
    let mut path = r.path.to_owned();
    for p in ["{brand}", "{api_key}", "{operation}", "{license}", "{key}", "{activation}"] {
        if path.contains(p) {
            path = path.replace(p, &value(p));
        }
    }
    match r.variant {
        "EcosystemLicenses" => path + "?customer_email=someone%40iso.io",
        _ => path,
    }
}

/// The tenant's own id for a placeholder.
fn own(t: &Tenant) -> impl Fn(&str) -> String + '_ {
    move |p| match p {
        "{brand}" => t.brand_id.clone(),
        "{api_key}" => t.write_key_id.clone(),
        "{operation}" => t.operation_id.clone(),
        "{license}" => t.license_id.clone(),
        "{key}" => t.key_id.clone(),
        "{activation}" => t.activation_id.clone(),
        other => panic!("unknown placeholder {other}"),
    }
}

/// A body that the route would accept from its rightful caller, so a broken check would act.
fn body(r: &RouteSpec, t: &Tenant) -> Option<Value> {
    match r.variant {
        "CreateBrand" => Some(json!({"slug": "intruder", "name": "Intruder", "key_prefix": "INTR"})),
        "CreateApiKey" => Some(json!({"name": "intruder", "scopes": ["licenses:write"]})),
        "CreateProduct" => Some(json!({"code": "intruder", "name": "Intruder"})),
        "Provision" => Some(json!({"customer_email": "intruder@iso.io", "products": [{"code": t.product}]})),
        "Renew" => Some(json!({"extend_days": 30})),
        "Suspend" | "Cancel" => Some(json!({"reason": "intruder"})),
        "Resume" | "RotateKey" => Some(json!({})),
        "ChangeSeats" => Some(json!({"seat_limit": 1})),
        "TransferKey" => Some(json!({"customer_email": "intruder@iso.io"})),
        "LookupKey" => Some(json!({"license_key": t.full_key})),
        "Activate" => Some(json!({"license_key": t.full_key, "product": t.product, "instance_id": "intruder"})),
        "Deactivate" => Some(json!({"license_key": t.full_key, "product": t.product, "instance_id": t.instance})),
        "Validate" => Some(json!({"license_key": t.full_key})),
        _ => None,
    }
}

/// Resources a brand route names in its body: (what, body naming the victim's resource, body
/// naming an unknown one), built from the caller `a` and the victim `b`.
/// (what, builder of (body naming the victim's resource, body naming an unknown one)).
type Probe = (&'static str, fn(&Tenant, &Tenant) -> (Value, Value));

fn body_probes(variant: &str) -> Vec<Probe> {
    match variant {
        "Provision" => vec![
            ("license_key_id", |a, b| {
                let body = |id: &str| json!({"customer_email": b.email, "license_key_id": id, "products": [{"code": a.product}]});
                (body(&b.key_id), body(&Uuid::now_v7().to_string()))
            }),
            ("product code", |_, b| {
                let body = |code: &str| json!({"customer_email": "buyer@iso.io", "products": [{"code": code}]});
                (body(&b.product), body("no-such-product"))
            }),
        ],
        "LookupKey" => vec![("license key", |_, b| {
            let prefix = cls_domain::KeyPrefix::parse(&b.full_key[..2]).unwrap();
            let unknown = cls_domain::LicenseKey::generate(&prefix, &mut rand::rng());
            (json!({"license_key": b.full_key}), json!({"license_key": unknown.expose()}))
        })],
        _ => Vec::new(),
    }
}

async fn two_tenants() -> (Arc<TestCluster>, Tenant, Tenant) {
    let c = TestCluster::spawn().await;
    let (a, b) = tokio::join!(tenant(&c, "iso-a", "IA"), tenant(&c, "iso-b", "IB"));
    (Arc::new(c), a, b)
}

/// (scope name, API key).
type Keys<'a> = Vec<(&'a str, &'a str)>;

/// (method, path, principal header, body, status with the right credential).
type InternalRequest<'a> = (Method, String, Option<&'a str>, Option<Value>, StatusCode);

async fn count(c: &TestCluster, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&c.pool).await.unwrap()
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_path_answers_405_with_the_matrix_methods_for_any_other_method() {
    let c = Arc::new(TestCluster::spawn().await);
    let random = |_: &str| Uuid::now_v7().to_string();
    let mut allowed: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for r in MATRIX {
        allowed.entry(r.path).or_default().insert(r.method);
    }
    let mut calls = Vec::new();
    for (template, methods) in &allowed {
        let r = MATRIX.iter().find(|r| r.path == *template).unwrap();
        let path = fill(r, random);
        for m in ["GET", "POST", "PUT", "PATCH", "DELETE"].into_iter().filter(|m| !methods.contains(m)) {
            let mut call = Call::new(format!("{m} {template}"), r, path.clone(), &[("x-admin-token", ADMIN_TOKEN)], None);
            call.method = Method::from_bytes(m.as_bytes()).unwrap();
            calls.push(call);
        }
    }
    assert!(calls.len() > 60);
    for (call, r) in send_all(&c, calls).await {
        expect_problem(&call, &r, StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED");
        let template = call.label.split_once(' ').unwrap().1;
        let allow: BTreeSet<&str> = r.header("allow").unwrap_or_default().split(',').map(str::trim).collect();
        assert_eq!(allow, allowed[template], "{}: Allow", call.label);
    }
    Arc::into_inner(c).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_brands_resources_answer_exactly_like_unknown_ones() {
    let (c, a, b) = two_tenants().await;
    let before_b = snapshot(&c, &b).await;
    let before_a = snapshot(&c, &a).await;
    let writes_before = (count(&c, "SELECT count(*) FROM outbox").await, count(&c, "SELECT count(*) FROM audit_entries").await);

    // For every brand route that names a resource: A's key on B's resource, and on an unknown id.
    let mut calls = Vec::new();
    let mut probed = BTreeSet::new();
    for r in MATRIX.iter().filter(|r| matches!(r.access, Access::Read | Access::Write | Access::Sender)) {
        let keys: &[(&str, &str)] = match r.access {
            Access::Read => &[("write key", &a.write_key), ("read key", &a.read_key)],
            _ => &[("write key", &a.write_key)],
        };
        if RESOURCE_PLACEHOLDERS.iter().any(|p| r.path.contains(p)) {
            probed.insert(r.variant);
            let victim = fill(r, own(&b));
            let unknown = fill(r, |_| Uuid::now_v7().to_string());
            for (which, key) in keys {
                let headers = [("x-api-key", *key)];
                calls.push(Call::new(format!("{} {} with A's {which} on B's id", r.method, r.path), r, victim.clone(), &headers, body(r, &a)));
                calls.push(Call::new(format!("{} {} with A's {which} on an unknown id", r.method, r.path), r, unknown.clone(), &headers, body(r, &a)));
            }
        }
        for (what, probe) in body_probes(r.variant) {
            probed.insert(r.variant);
            let (victim, unknown) = probe(&a, &b);
            let path = fill(r, own(&a));
            for (which, key) in keys {
                let headers = [("x-api-key", *key)];
                calls.push(Call::new(format!("{} {} with A's {which}, B's {what} in the body", r.method, r.path), r, path.clone(), &headers, Some(victim.clone())));
                calls.push(Call::new(format!("{} {} with A's {which}, an unknown {what} in the body", r.method, r.path), r, path.clone(), &headers, Some(unknown.clone())));
            }
        }
    }
    // B's operation (its outcome holds B's full key) read by the other principals: the operator and
    // an end-user product (no header).
    let ops = MATRIX.iter().find(|r| r.variant == "GetOperation").unwrap();
    for (who, headers) in [("the admin token", vec![("x-admin-token", ADMIN_TOKEN)]), ("no header", vec![])] {
        calls.push(Call::new(format!("GET operation with {who} on B's id"), ops, fill(ops, own(&b)), &headers, None));
        calls.push(Call::new(format!("GET operation with {who} on an unknown id"), ops, fill(ops, |_| Uuid::now_v7().to_string()), &headers, None));
    }
    // The gateway does not pass a client's internal headers on: B's principal forged next to A's key.
    let forged = serde_json::to_string(&cls_contracts::Principal::ApiKey {
        api_key_id: b.write_key_id.clone(),
        brand_id: b.brand_id.clone(),
        scopes: vec!["licenses:write".into()],
    })
    .unwrap();
    let get_license = MATRIX.iter().find(|r| r.variant == "GetLicense").unwrap();
    let internal = c.settings.internal_token.as_ref().expect("the test cluster has one").expose();
    for (whose, path) in [("B's id", fill(get_license, own(&b))), ("an unknown id", fill(get_license, |_| Uuid::now_v7().to_string()))] {
        let headers = [("x-api-key", a.write_key.as_str()), ("x-cls-principal", forged.as_str()), ("x-cls-internal-token", internal)];
        calls.push(Call::new(format!("GET license with A's key and B's principal forged on {whose}"), get_license, path, &headers, None));
    }
    let expected: BTreeSet<&str> = MATRIX
        .iter()
        .filter(|r| matches!(r.access, Access::Read | Access::Write | Access::Sender) && !NO_RESOURCE.contains(&r.variant))
        .map(|r| r.variant)
        .collect();
    assert_eq!(probed, expected, "every brand route that names a resource is probed");

    let answers = send_all(&c, calls).await;
    for pair in answers.chunks(2) {
        let [(victim_call, victim), (unknown_call, unknown)] = pair else { unreachable!() };
        assert!(victim.status != StatusCode::FORBIDDEN && !victim.status.is_success(), "{}: {} {:?}", victim_call.label, victim.status, text(victim));
        assert_eq!(victim.status, StatusCode::NOT_FOUND, "{}: {:?}", victim_call.label, text(victim));
        assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}: {:?}", unknown_call.label, text(unknown));
        let (pv, pu) = (problem_without_echo(victim_call, victim), problem_without_echo(unknown_call, unknown));
        assert_eq!(pv["code"], pu["code"], "{}: the code differs from an unknown id's", victim_call.label);
        assert_eq!(pv, pu, "{}: the problem differs from an unknown id's", victim_call.label);
        // Nothing of B's that the caller did not send itself comes back.
        let sent = format!("{} {}", victim_call.path, victim_call.body.as_deref().map(String::from_utf8_lossy).unwrap_or_default());
        for b_data in [&b.full_key, &b.email, &b.key_id, &b.license_id, &b.brand_id, &b.slug] {
            assert!(sent.contains(b_data.as_str()) || !text(victim).contains(b_data.as_str()), "{}: the answer names B's {b_data}", victim_call.label);
        }
    }

    // Nothing was written, and B (and A) read exactly as before.
    let writes_after = (count(&c, "SELECT count(*) FROM outbox").await, count(&c, "SELECT count(*) FROM audit_entries").await);
    assert_eq!(writes_after, writes_before, "(events, audit entries) after the cross-brand calls");
    assert_eq!(snapshot(&c, &b).await, before_b, "B's license, key and activation are unchanged");
    assert_eq!(snapshot(&c, &a).await, before_a, "A's license, key and activation are unchanged");

    // Listings show only the caller's data.
    let h = [("x-api-key", a.read_key.as_str())];
    let listed = c.get(&format!("/v1/licenses?customer_email={}", b.email.replace('@', "%40")), &h).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.json()["items"], json!([]), "A lists B's customer's licenses");
    let all = c.get("/v1/licenses", &h).await;
    assert_eq!(all.status, StatusCode::OK);
    let ids: Vec<String> = all.json()["items"].as_array().unwrap().iter().map(|l| l["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, std::slice::from_ref(&a.license_id), "A's listing holds exactly A's license");
    let products = c.get("/v1/products", &h).await;
    assert_eq!(products.status, StatusCode::OK);
    let codes: BTreeSet<String> = products.json()["items"].as_array().unwrap().iter().map(|p| p["code"].as_str().unwrap().to_owned()).collect();
    assert_eq!(codes, BTreeSet::from([a.product.clone(), "shared".to_owned()]), "A's products");

    // The same Idempotency-Key on the same path and body is another command for another brand:
    // never a replay of B's outcome (which holds B's new key).
    let order = json!({"customer_email": "same@iso.io", "products": [{"code": "shared"}]});
    let rb = c.post("/v1/licenses", &[("x-api-key", &b.write_key), ("idempotency-key", "order-1")], &order).await;
    assert_eq!(rb.status, StatusCode::CREATED, "{:?}", text(&rb));
    let ra = c.post("/v1/licenses", &[("x-api-key", &a.write_key), ("idempotency-key", "order-1")], &order).await;
    assert_eq!(ra.status, StatusCode::CREATED, "{:?}", text(&ra));
    assert_eq!(ra.header("idempotent-replayed"), None, "A got B's outcome replayed");
    assert_ne!(ra.json()["license_key"]["key"], rb.json()["license_key"]["key"]);
    assert!(!text(&ra).contains(rb.json()["license_key"]["key"].as_str().unwrap()));
    let validated = c.post("/v1/license-keys/validate", &[], &json!({"license_key": ra.json()["license_key"]["key"], "product": "shared"})).await.json();
    assert_eq!(validated["code"], "VALID");
    let looked_up = c.post("/v1/license-keys/lookup", &[("x-api-key", &a.write_key)], &json!({"license_key": rb.json()["license_key"]["key"]})).await;
    assert_eq!(looked_up.status, StatusCode::NOT_FOUND, "A looks up B's new key");

    Arc::into_inner(c).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_admin_and_brand_route_refuses_bad_credentials_and_missing_scopes() {
    let c = TestCluster::spawn().await;
    let a = tenant(&c, "cred-a", "CA").await;
    let c = Arc::new(c);
    let before = snapshot(&c, &a).await;
    let brands_before = c.admin_get("/v1/admin/brands").await.json()["items"].as_array().unwrap().len();
    let unknown_key = format!("cls_{}", Uuid::now_v7().simple());

    let wrong_admin = "wrong-admin-token-0123456789";
    let longer_admin = format!("{ADMIN_TOKEN}x");
    let shorter_admin = &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1];
    let admin_refusals: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("no credential", vec![]),
        ("a wrong admin token", vec![("x-admin-token", wrong_admin)]),
        ("the admin token plus a char", vec![("x-admin-token", &longer_admin)]),
        ("a prefix of the admin token", vec![("x-admin-token", shorter_admin)]),
        ("an empty admin token", vec![("x-admin-token", "")]),
        ("an API key instead", vec![("x-api-key", &a.write_key)]),
        ("an API key as the admin token", vec![("x-admin-token", &a.write_key)]),
    ];
    let brand_refusals: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("no credential", vec![]),
        ("an unknown API key", vec![("x-api-key", &unknown_key)]),
        ("a malformed API key", vec![("x-api-key", "not a key")]),
        ("an empty API key", vec![("x-api-key", "")]),
        ("the admin token instead", vec![("x-admin-token", ADMIN_TOKEN)]),
        ("the admin token as API key", vec![("x-api-key", ADMIN_TOKEN)]),
        ("a prefix of a valid API key", vec![("x-api-key", &a.write_key[..a.write_key.len() - 1])]),
    ];
    // Warm the negative entries of the unknown keys, so the burst below reads them from Redis
    // instead of queueing at the query service's bounded gate to Postgres.
    for (what, headers) in &brand_refusals {
        assert_eq!(c.get("/v1/products", headers).await.status, StatusCode::UNAUTHORIZED, "{what}");
    }
    let sender_refusals: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("a wrong admin token", vec![("x-admin-token", wrong_admin)]),
        ("an unknown API key", vec![("x-api-key", &unknown_key)]),
    ];

    let mut calls = Vec::new();
    let mut covered = BTreeSet::new();
    for r in MATRIX {
        let path = fill(r, own(&a));
        let refusals = match r.access {
            Access::Admin => &admin_refusals,
            Access::Read | Access::Write | Access::Ecosystem => &brand_refusals,
            Access::Sender => &sender_refusals,
            Access::Public | Access::Product => continue,
        };
        covered.insert(r.variant);
        for (what, headers) in refusals {
            calls.push(Call::new(format!("{} {} with {what}", r.method, r.path), r, path.clone(), headers, body(r, &a)));
        }
        if r.access != Access::Sender {
            // Authentication comes before the body: a malformed body still gets 401.
            let mut call = Call::new(format!("{} {} with no credential and a malformed body", r.method, r.path), r, path.clone(), &[], None);
            call.body = Some(b"{not json".to_vec());
            calls.push(call);
        }
    }
    assert_eq!(covered.len(), MATRIX.iter().filter(|r| !matches!(r.access, Access::Public | Access::Product)).count());
    for (call, r) in send_all(&c, calls).await {
        expect_problem(&call, &r, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    }

    // Scopes: a key without the route's scope gets 403; one with it gets through.
    let mut calls = Vec::new();
    let mut allowed = Vec::new();
    for r in MATRIX {
        let path = fill(r, own(&a));
        let (lacking, holding): (Keys, Keys) = match r.access {
            Access::Write => (vec![("licenses:read", &a.read_key), ("ecosystem:read", &a.eco_key)], vec![]),
            Access::Read => (vec![("ecosystem:read", &a.eco_key)], vec![("licenses:read", &a.read_key), ("licenses:write", &a.write_key)]),
            Access::Ecosystem => (vec![("licenses:write", &a.write_key), ("licenses:read", &a.read_key)], vec![("ecosystem:read", &a.eco_key)]),
            _ => continue,
        };
        for (scope, key) in lacking {
            calls.push(Call::new(format!("{} {} with a {scope} key", r.method, r.path), r, path.clone(), &[("x-api-key", key)], body(r, &a)));
        }
        for (scope, key) in holding {
            allowed.push(Call::new(format!("{} {} with a {scope} key", r.method, r.path), r, path.clone(), &[("x-api-key", key)], body(r, &a)));
        }
    }
    for (call, r) in send_all(&c, calls).await {
        expect_problem(&call, &r, StatusCode::FORBIDDEN, "FORBIDDEN");
    }
    for (call, r) in send_all(&c, allowed).await {
        assert_eq!(r.status, StatusCode::OK, "{}: {:?}", call.label, text(&r));
    }

    // A revoked key: refused within 2 s on every route, even right after it was used (the
    // gateway caches keys for up to 1 s).
    let (revoked_id, revoked) = api_key(&c, &a.brand_id, &["licenses:write", "ecosystem:read"]).await;
    assert_eq!(c.get("/v1/products", &[("x-api-key", &revoked)]).await.status, StatusCode::OK, "the new key works");
    let revoke = c.request(Method::DELETE, &format!("/v1/admin/api-keys/{revoked_id}"), &[("x-admin-token", ADMIN_TOKEN)], None).await;
    assert_eq!(revoke.status, StatusCode::NO_CONTENT, "{:?}", text(&revoke));
    eventually(Duration::from_secs(2), "the revoked key is refused", || async {
        c.get("/v1/products", &[("x-api-key", &revoked)]).await.status == StatusCode::UNAUTHORIZED
    })
    .await;
    let mut calls = Vec::new();
    for r in MATRIX.iter().filter(|r| matches!(r.access, Access::Read | Access::Write | Access::Ecosystem | Access::Sender)) {
        calls.push(Call::new(format!("{} {} with a revoked key", r.method, r.path), r, fill(r, own(&a)), &[("x-api-key", &revoked)], body(r, &a)));
    }
    for (call, r) in send_all(&c, calls).await {
        expect_problem(&call, &r, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    }
    let again = c.request(Method::DELETE, &format!("/v1/admin/api-keys/{revoked_id}"), &[("x-admin-token", ADMIN_TOKEN)], None).await;
    assert_eq!(again.status, StatusCode::NO_CONTENT, "revoking again");

    // None of the refused calls acted.
    assert_eq!(snapshot(&c, &a).await, before, "A's license, key and activation are unchanged");
    let brands = c.admin_get("/v1/admin/brands").await.json();
    assert_eq!(brands["items"].as_array().unwrap().len(), brands_before, "no brand was created: {brands}");
    let keys = c.admin_get(&format!("/v1/admin/brands/{}/api-keys", a.brand_id)).await.json();
    let live: Vec<&str> = keys["items"].as_array().unwrap().iter().filter(|k| k["revoked_at"].is_null()).map(|k| k["name"].as_str().unwrap()).collect();
    assert_eq!(live.len(), 3, "A's three keys are live and no key was added: {keys}");
    let products = c.get("/v1/products", &[("x-api-key", &a.read_key)]).await.json();
    assert_eq!(products["items"].as_array().unwrap().len(), 2, "no product was created: {products}");
    Arc::into_inner(c).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_query_service_refuses_requests_without_the_internal_credential() {
    let c = TestCluster::spawn().await;
    let a = tenant(&c, "internal-a", "NA").await;
    let internal = c.settings.internal_token.as_ref().expect("the test cluster has one").expose().to_owned();
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Full<Bytes>>();
    let base = format!("http://{}", c.query_addr);
    let key_hash = cls_domain::LicenseKey::parse(&a.full_key).unwrap().hash().into_inner();
    let api_key_hash = cls_domain::ApiKeySecret::parse(&a.write_key).unwrap().hash().into_inner();
    let brand = serde_json::to_string(&cls_contracts::Principal::ApiKey {
        api_key_id: a.write_key_id.clone(),
        brand_id: a.brand_id.clone(),
        scopes: vec!["licenses:write".into()],
    })
    .unwrap();
    let admin = serde_json::to_string(&cls_contracts::Principal::Admin).unwrap();
    let email = a.email.replace('@', "%40");
    let requests: Vec<InternalRequest> = vec![
        (Method::POST, "/internal/license-keys/validate".into(), None, Some(json!({"key_hash": key_hash, "product": a.product, "instance_id": null})), StatusCode::OK),
        (Method::GET, format!("/v1/licenses/{}", a.license_id), Some(&brand), None, StatusCode::OK),
        (Method::GET, format!("/v1/licenses/{}/history", a.license_id), Some(&brand), None, StatusCode::OK),
        (Method::POST, "/internal/api-keys/resolve".into(), None, Some(json!({"key_hash": api_key_hash})), StatusCode::OK),
        (Method::POST, "/internal/license-keys/lookup".into(), Some(&brand), Some(json!({"key_hash": key_hash})), StatusCode::OK),
        (Method::GET, "/v1/admin/brands".into(), Some(&admin), None, StatusCode::OK),
        (Method::GET, format!("/v1/ecosystem/licenses?customer_email={email}"), Some(&brand), None, StatusCode::OK),
        (Method::GET, format!("/v1/operations/{}", a.operation_id), Some(&brand), None, StatusCode::OK),
        (Method::PUT, format!("/internal/operations/{}", Uuid::now_v7()), None, Some(json!({"principal": "admin"})), StatusCode::NO_CONTENT),
    ];
    let upper = internal.to_uppercase();
    let tokens: Vec<(&str, Option<&str>)> = vec![
        ("no internal token", None),
        ("a wrong internal token", Some("wrong-internal-token-0123456789")),
        ("an empty internal token", Some("")),
        ("a prefix of the internal token", Some(&internal[..internal.len() - 1])),
        ("the internal token upper-cased", Some(&upper)),
        ("the admin token", Some(ADMIN_TOKEN)),
        ("an API key", Some(&a.write_key)),
        ("the right token", Some(&internal)),
    ];
    let mut tasks = tokio::task::JoinSet::new();
    for (method, path, principal, body, ok) in &requests {
        for (what, token) in &tokens {
            let mut req = hyper::Request::builder().method(method.clone()).uri(format!("{base}{path}"));
            if let Some(t) = token {
                req = req.header("x-cls-internal-token", *t);
            }
            if let Some(p) = principal {
                req = req.header("x-cls-principal", *p);
            }
            if body.is_some() {
                req = req.header("content-type", "application/json");
            }
            let req = req.body(Full::new(Bytes::from(body.as_ref().map(|b| serde_json::to_vec(b).unwrap()).unwrap_or_default()))).unwrap();
            let label = format!("{method} {path} with {what}");
            let expected = if token == &Some(internal.as_str()) { *ok } else { StatusCode::UNAUTHORIZED };
            let http = http.clone();
            tasks.spawn(async move {
                let r = http.request(req).await.expect("the query service answers");
                let status = r.status();
                let body = r.into_body().collect().await.unwrap().to_bytes();
                (label, expected, status, body)
            });
        }
    }
    let answers = tasks.join_all().await;
    assert_eq!(answers.len(), requests.len() * tokens.len());
    for (label, expected, status, body) in answers {
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, expected, "{label}: {text}");
        if status == StatusCode::UNAUTHORIZED {
            let p: Value = serde_json::from_slice(&body).unwrap_or_else(|_| panic!("{label}: not JSON: {text}"));
            assert_eq!(p["code"], "UNAUTHENTICATED", "{label}");
            for leak in [&a.email, &a.license_id, &a.brand_id, &a.product, &internal] {
                assert!(!text.contains(leak.as_str()), "{label}: the refusal names {leak}: {text}");
            }
        }
    }
    c.stop().await;
}
