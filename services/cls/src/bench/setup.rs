//! The benchmark's own data, created through the public API before any measurement: a brand
//! (with the admin token) or the caller's brand (with an API key), two products, keys to
//! validate (each with one active instance) and high-seat licenses to activate on.
//!
//! Everything is named after a fresh run id (`bench-<hex>`), so runs against one cluster never
//! collide, and nothing is cleaned up: the data is ordinary licenses of a brand named `bench-…`.

use std::sync::Arc;

use anyhow::{Context, bail};
use cls_contracts::http::{ApiKeyCreated, Brand, Provisioned};
use cls_runtime::Secret;
use hyper::header::HeaderValue;
use hyper::{Method, StatusCode};
use rand::Rng;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::http::{self, Client};

/// Setup requests in flight at once.
const SETUP_CONCURRENCY: usize = 8;
/// Seats of each license the activate scenario activates on: never the limit in a run.
const HIGH_SEAT_LIMIT: u32 = 1_000_000;

/// Who the benchmark is.
pub enum Credential {
    /// The operator token: the benchmark creates its own brand and API key.
    Admin(Secret),
    /// A brand's API key with `licenses:write`: the benchmark works inside that brand.
    ApiKey(Secret),
}

/// A key the validate scenario checks, and the instance active on it (product A).
pub struct ValidationKey {
    pub key: String,
    pub instance: String,
}

/// What the scenarios send requests about.
pub struct Fixture {
    /// `bench-<hex>`: the brand slug and the prefix of product codes, emails and instance ids.
    pub run_id: String,
    pub api_key: HeaderValue,
    pub product_a: String,
    pub product_b: String,
    pub validation_keys: Vec<ValidationKey>,
    /// Keys holding one high-seat license of product A each.
    pub activation_keys: Vec<String>,
}

/// Creates the fixture through the gateway at `base_url`.
pub async fn prepare(base_url: &str, credential: &Credential, validation_keys: usize, activation_keys: usize) -> anyhow::Result<Fixture> {
    let client = http::client();
    let mut id = [0u8; 4];
    rand::rng().fill_bytes(&mut id);
    let run_id = format!("bench-{}", hex::encode(id));

    let api_key = match credential {
        Credential::ApiKey(key) => key.expose().to_owned(),
        Credential::Admin(token) => {
            let admin = [("x-admin-token", token.expose())];
            let body = json!({"slug": run_id, "name": format!("CLS bench {run_id}"), "key_prefix": format!("B{}", hex::encode_upper(&id[..3]))});
            let brand: Brand = post(&client, &format!("{base_url}/v1/admin/brands"), &admin, &body).await.context("cannot create the benchmark's brand")?;
            let body = json!({"name": "bench", "scopes": ["licenses:write"]});
            let created: ApiKeyCreated = post(&client, &format!("{base_url}/v1/admin/brands/{}/api-keys", brand.id), &admin, &body)
                .await
                .context("cannot create the benchmark's API key")?;
            created.api_key
        }
    };
    let header = HeaderValue::from_str(&api_key).context("the API key has characters HTTP does not allow")?;

    let (product_a, product_b) = (format!("{run_id}-a"), format!("{run_id}-b"));
    for code in [&product_a, &product_b] {
        let body = json!({"code": code, "name": code, "default_seat_limit": 10, "default_duration_days": null});
        let _: serde_json::Value = post(&client, &format!("{base_url}/v1/products"), &[("x-api-key", &api_key)], &body)
            .await
            .with_context(|| format!("cannot create product {code} (does the API key have licenses:write?)"))?;
    }

    let permits = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for i in 0..validation_keys {
        let (client, permits, base_url, api_key) = (client.clone(), permits.clone(), base_url.to_owned(), api_key.clone());
        let (run_id, a, b) = (run_id.clone(), product_a.clone(), product_b.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire().await.expect("never closed");
            let body = json!({"customer_email": format!("v{i}@{run_id}.bench.example"), "products": [{"code": a}, {"code": b}]});
            let key = provision(&client, &base_url, &api_key, &body).await?;
            let instance = format!("https://site-{i}.{run_id}.bench.example");
            let body = json!({"license_key": key, "product": a, "instance_id": instance});
            let _: serde_json::Value = post(&client, &format!("{base_url}/v1/activations"), &[], &body).await.context("cannot activate a validation instance")?;
            anyhow::Ok((i, Some(ValidationKey { key, instance }), None))
        });
    }
    for i in 0..activation_keys {
        let (client, permits, base_url, api_key) = (client.clone(), permits.clone(), base_url.to_owned(), api_key.clone());
        let (run_id, a) = (run_id.clone(), product_a.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire().await.expect("never closed");
            let body = json!({"customer_email": format!("a{i}@{run_id}.bench.example"), "products": [{"code": a, "seat_limit": HIGH_SEAT_LIMIT}]});
            anyhow::Ok((i, None, Some(provision(&client, &base_url, &api_key, &body).await?)))
        });
    }
    let mut validation: Vec<(usize, ValidationKey)> = Vec::new();
    let mut activation: Vec<(usize, String)> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (i, v, a) = joined.context("a setup task failed")??;
        validation.extend(v.map(|v| (i, v)));
        activation.extend(a.map(|a| (i, a)));
    }
    validation.sort_by_key(|(i, _)| *i);
    activation.sort_by_key(|(i, _)| *i);
    Ok(Fixture {
        run_id,
        api_key: header,
        product_a,
        product_b,
        validation_keys: validation.into_iter().map(|(_, v)| v).collect(),
        activation_keys: activation.into_iter().map(|(_, a)| a).collect(),
    })
}

/// Provisions licenses for a new customer; returns the new key.
async fn provision(client: &Client, base_url: &str, api_key: &str, body: &serde_json::Value) -> anyhow::Result<String> {
    let provisioned: Provisioned =
        post(client, &format!("{base_url}/v1/licenses"), &[("x-api-key", api_key)], body).await.context("cannot provision a benchmark license")?;
    provisioned.license_key.key.context("a new customer's provisioning did not return a new key")
}

/// POSTs JSON and decodes a 200/201 answer; anything else is an error naming the status and the
/// problem's code (never a header: they hold secrets).
async fn post<T: DeserializeOwned>(client: &Client, url: &str, headers: &[(&str, &str)], body: &serde_json::Value) -> anyhow::Result<T> {
    let answer = http::send(client, Method::POST, url, headers, Some(body)).await?;
    match answer.status {
        StatusCode::OK | StatusCode::CREATED => serde_json::from_slice(&answer.body).with_context(|| format!("unexpected answer from {url}")),
        StatusCode::ACCEPTED => bail!("{url} answered 202: the command outlived the gateway's reply timeout (is the cluster overloaded?)"),
        status => {
            let code = serde_json::from_slice::<serde_json::Value>(&answer.body)
                .ok()
                .and_then(|v| v.get("code").and_then(|c| c.as_str()).map(str::to_owned))
                .unwrap_or_default();
            let hint = if status == StatusCode::TOO_MANY_REQUESTS { " (rate limited: see `cls bench --help`)" } else { "" };
            bail!("{url} answered {status} {code}{hint}")
        }
    }
}
