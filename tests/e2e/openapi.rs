//! The OpenAPI document (`docs/openapi.json`) against the gateway: served byte for byte at
//! `GET /openapi.json` without credentials, documenting exactly the gateway's route table, and
//! listing the status (and problem code) a route really answers.

use std::collections::BTreeSet;

use cls_tests::TestCluster;
use hyper::{Method, StatusCode};
use serde_json::Value;

/// The gateway's route table itself: a route added there without its documentation fails here.
use cls_gateway::routes;

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
const HTTP_METHODS: [&str; 8] = ["get", "put", "post", "delete", "patch", "head", "options", "trace"];
/// Stands for every path parameter (all of them are ids).
const SAMPLE_ID: &str = "0190a000-0000-7000-8000-00000000abcd";

/// Every `(METHOD, path template)` the document describes.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            let methods = item.as_object().expect("path item").keys().filter(|k| HTTP_METHODS.contains(&k.as_str()));
            methods.map(|m| (m.to_uppercase(), path.clone())).collect::<Vec<_>>()
        })
        .collect()
}

fn with_sample_id(template: &str) -> String {
    template.split('/').map(|part| if part.starts_with('{') { SAMPLE_ID } else { part }).collect::<Vec<_>>().join("/")
}

/// A `$ref` to a place in the document, or the value itself.
fn deref<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value["$ref"].as_str() {
        Some(pointer) => doc.pointer(pointer.trim_start_matches('#')).unwrap_or_else(|| panic!("dangling $ref {pointer}")),
        None => value,
    }
}

fn every_ref<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            out.extend(map.get("$ref").and_then(Value::as_str));
            map.values().for_each(|v| every_ref(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| every_ref(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_served_document_is_the_committed_one_and_covers_the_route_table() {
    let c = TestCluster::spawn().await;

    let committed = std::fs::read(COMMITTED).expect("docs/openapi.json");
    let r = c.get("/openapi.json", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.body == committed, "the gateway serves another document than docs/openapi.json (rebuild it?)");
    let doc: Value = serde_json::from_slice(&committed).expect("docs/openapi.json is JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    let mut refs = Vec::new();
    every_ref(&doc, &mut refs);
    for pointer in refs {
        assert!(doc.pointer(pointer.trim_start_matches('#')).is_some(), "dangling $ref {pointer}");
    }

    // Exactly the route table: every route documented with its methods, nothing else.
    let table: BTreeSet<(String, String)> = routes::ROUTES.iter().map(|(m, t, _)| (m.to_string(), t.to_string())).collect();
    let documented = documented(&doc);
    let undocumented: Vec<_> = table.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&table).collect();
    assert!(undocumented.is_empty(), "routes missing from docs/openapi.json: {undocumented:?}");
    assert!(unknown.is_empty(), "documented routes the gateway does not have: {unknown:?}");

    // Every documented operation resolves, and its answer to a bare request (no credential, no
    // body) is one the document lists for it, with a documented problem code.
    for (method, template) in &documented {
        let method: Method = method.parse().unwrap();
        let path = with_sample_id(template);
        assert!(routes::Route::resolve(&method, &path).is_ok(), "{method} {template} does not resolve");
        let r = c.request(method.clone(), &path, &[], None).await;
        let operation = &doc["paths"][template][method.as_str().to_lowercase()];
        let listed = &operation["responses"][r.status.as_str()];
        assert!(!listed.is_null(), "{method} {template} answered an undocumented {}: {:?}", r.status, String::from_utf8_lossy(&r.body));
        if r.header("content-type") == Some("application/problem+json") {
            let schema = &deref(&doc, listed)["content"]["application/problem+json"]["schema"];
            let allowed = &schema["allOf"][1]["properties"]["code"]["enum"];
            let code = &r.json()["code"];
            assert!(allowed.as_array().is_some_and(|codes| codes.contains(code)), "{method} {template}: {code} is not a documented {} code", r.status);
        }
    }

    // A miss is not quietly documented: an unknown path is a 404, a known one with another
    // method a 405.
    assert_eq!(c.get("/openapi.yaml", &[]).await.status, StatusCode::NOT_FOUND);
    assert_eq!(c.request(Method::POST, "/openapi.json", &[], None).await.status, StatusCode::METHOD_NOT_ALLOWED);

    c.stop().await;
}
