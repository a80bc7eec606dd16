//! What each scenario sends: request number `seq` of a run → one HTTP request. Bodies that do
//! not depend on `seq` are serialized once, before the run, so the load generator spends its
//! share of the CPU on sending, not on JSON.

use std::sync::Arc;

use bytes::Bytes;
use hyper::header::HeaderValue;
use serde_json::json;

use super::setup::Fixture;

/// `POST /v1/license-keys/validate` answers for the fixture's keys start with this.
const VALID: &[u8] = br#"{"valid":true"#;

/// One request to send.
pub struct Planned {
    /// The figure it counts in.
    pub kind: &'static str,
    pub path: &'static str,
    pub body: Bytes,
    /// `X-API-Key` (brand routes).
    pub api_key: Option<HeaderValue>,
    /// A 2xx body must start with this, else the answer counts as unexpected.
    pub expect: Option<&'static [u8]>,
}

/// A scenario's request mix. A closed set, dispatched by one `match`.
pub enum Workload {
    /// Warm keys: of every five checks of a key, two name the product and an active instance,
    /// two name the key's other product, one names the key only.
    Validate(Arc<Validations>),
    /// A new instance per request, on the fixture's high-seat licenses (one license per key,
    /// taken in turn, so concurrent requests rarely wait for the same license row).
    Activate(Writes),
    /// A new customer (email) per request, so each provisioning creates a key and a license.
    Provision(Writes),
    /// 95 % validations, 5 % writes (activations and provisionings in turn).
    Mixed(Arc<Validations>, Writes),
    /// The read-path reference: the same validation body, answered by one Redis GET.
    RedisReference(Bytes),
}

/// Validation bodies, by key, then by check.
pub struct Validations {
    bodies: Vec<[Bytes; 5]>,
}

/// What write requests are built from; `pass` makes instance ids and emails distinct across the
/// runs of one invocation.
pub struct Writes {
    fixture_run: String,
    pass: String,
    api_key: HeaderValue,
    product: String,
    activation_keys: Vec<String>,
}

impl Validations {
    pub fn new(fixture: &Fixture) -> Validations {
        let body = |v: serde_json::Value| Bytes::from(serde_json::to_vec(&v).expect("serializable"));
        let bodies = fixture
            .validation_keys
            .iter()
            .map(|k| {
                let with_instance = body(json!({"license_key": k.key, "product": fixture.product_a, "instance_id": k.instance}));
                let other_product = body(json!({"license_key": k.key, "product": fixture.product_b}));
                let key_only = body(json!({"license_key": k.key}));
                [with_instance.clone(), other_product.clone(), with_instance, other_product, key_only]
            })
            .collect();
        Validations { bodies }
    }

    fn request(&self, seq: u64) -> Planned {
        let keys = self.bodies.len() as u64;
        let checks = &self.bodies[(seq % keys) as usize];
        let body = checks[((seq / keys) % checks.len() as u64) as usize].clone();
        Planned { kind: "validate", path: "/v1/license-keys/validate", body, api_key: None, expect: Some(VALID) }
    }

    /// One validation body, for the reference server to receive.
    pub fn sample(&self) -> Bytes {
        self.bodies[0][0].clone()
    }
}

impl Writes {
    pub fn new(fixture: &Fixture, pass: &str) -> Writes {
        Writes {
            fixture_run: fixture.run_id.clone(),
            pass: pass.to_owned(),
            api_key: fixture.api_key.clone(),
            product: fixture.product_a.clone(),
            activation_keys: fixture.activation_keys.clone(),
        }
    }

    fn activate(&self, seq: u64) -> Planned {
        let key = &self.activation_keys[(seq % self.activation_keys.len() as u64) as usize];
        let instance = format!("https://{}-{}-{seq}.bench.example", self.fixture_run, self.pass);
        let body = json!({"license_key": key, "product": self.product, "instance_id": instance});
        Planned {
            kind: "activate",
            path: "/v1/activations",
            body: Bytes::from(serde_json::to_vec(&body).expect("serializable")),
            api_key: None,
            expect: None,
        }
    }

    fn provision(&self, seq: u64) -> Planned {
        let email = format!("c{seq}-{}@{}.bench.example", self.pass, self.fixture_run);
        let body = json!({"customer_email": email, "products": [{"code": self.product}]});
        Planned {
            kind: "provision",
            path: "/v1/licenses",
            body: Bytes::from(serde_json::to_vec(&body).expect("serializable")),
            api_key: Some(self.api_key.clone()),
            expect: None,
        }
    }
}

impl Workload {
    pub fn request(&self, seq: u64) -> Planned {
        match self {
            Workload::Validate(v) => v.request(seq),
            Workload::Activate(w) => w.activate(seq),
            Workload::Provision(w) => w.provision(seq),
            Workload::Mixed(v, w) => match (seq % 20, (seq / 20) % 2) {
                (0, 0) => w.activate(seq),
                (0, _) => w.provision(seq),
                _ => v.request(seq),
            },
            Workload::RedisReference(body) => {
                Planned { kind: "redis-get", path: "/reference", body: body.clone(), api_key: None, expect: None }
            }
        }
    }
}
