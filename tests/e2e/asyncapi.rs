//! `docs/asyncapi.yaml` against the code: the document lists exactly the event types the code
//! can emit, each on the channel of its routing key, with the payload fields, types and
//! nullability of the Rust type, and the envelope a subscriber decodes.
//!
//! Nothing here is a hand-kept list. The event types are the variant names serde derives for
//! [`Event`] (the tags a consumer reads in `type`), obtained by asking `Event`'s `Deserialize`
//! for an unknown tag; a payload's fields are the names its derived `Deserialize` asks for; a
//! field's JSON types are the probe values (nil, string, integer, boolean, array) its
//! `Deserialize` accepts. From those, one sample per type is deserialized, published through
//! `event_type()` (what the relay uses as routing key) and encoded with `cls_contracts::encode`
//! (what goes on the wire), so the routing key and the MessagePack map keys come from the code
//! paths that really run. No cluster is needed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use cls_bus::Topology;
use cls_contracts::event::{EVENT_SCHEMA_VERSION, Event, EventEnvelope};
use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, Deserialize, Deserializer, IntoDeserializer, Visitor};
use serde_json::{Value, json};

fn document() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/asyncapi.yaml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

#[test]
fn the_document_describes_every_event_the_code_can_emit() {
    // The hand-kept list in cls-contracts must agree with serde's too.
    let derived: BTreeSet<&str> = event_types().into_iter().collect();
    let listed: BTreeSet<&str> = Event::ALL_TYPES.iter().copied().collect();
    assert_eq!(derived, listed, "Event::ALL_TYPES differs from the variants serde derives for Event");

    let problems = check(&document());
    assert!(problems.is_empty(), "docs/asyncapi.yaml does not describe the code:\n  - {}", problems.join("\n  - "));
}

/// The check can fail: each kind of drift from the code is reported.
#[test]
fn the_check_reports_a_document_that_drifted() {
    let mut doc = document();
    let channels = doc["channels"].as_object_mut().unwrap();
    // A type the code can emit goes missing.
    let expired = channels.remove("licenseExpired").expect("the document has licenseExpired");
    // A type the code cannot emit appears.
    let mut bogus = expired.clone();
    bogus["address"] = json!("license.exploded");
    channels.insert("licenseExploded".into(), bogus);
    // Another type's routing key is wrong.
    channels["licenseRenewed"]["address"] = json!("license.renew");
    let schemas = doc["components"]["schemas"].as_object_mut().unwrap();
    // A payload field goes missing, another changes type, another loses its null.
    let brand = &mut schemas["BrandCreated"];
    brand["properties"].as_object_mut().unwrap().remove("slug");
    brand["required"] = json!(["brand_id", "name", "key_prefix", "created_at"]);
    schemas["ActivationChanged"]["properties"]["seats_used"]["type"] = json!("string");
    schemas["LicenseState"]["properties"]["reason"]["type"] = json!("string");
    // The envelope loses a member.
    schemas["Envelope"]["properties"].as_object_mut().unwrap().remove("causation_id");

    let problems = check(&doc).join("\n");
    for expected in [
        "license.expired: the code can emit it",
        "license.exploded: the document lists it",
        "license.renewed: the code can emit it",
        "license.renew: the document lists it",
        "brand.created: data properties",
        "activation.created: data.seats_used",
        "license.suspended: data.reason",
        "envelope properties",
    ] {
        assert!(problems.contains(expected), "the check did not report {expected:?}; it reported:\n{problems}");
    }
}

/// Every way `doc` differs from the code, one line each; empty when it describes the code.
fn check(doc: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if doc["asyncapi"].as_str().is_none_or(|v| !v.starts_with("3.")) {
        problems.push(format!("asyncapi: expected a 3.x document, found {}", doc["asyncapi"]));
    }
    if doc["defaultContentType"] != json!(cls_bus::MSGPACK) {
        problems.push(format!("defaultContentType: expected {}, found {}", cls_bus::MSGPACK, doc["defaultContentType"]));
    }
    let documented = channels_by_routing_key(doc, &mut problems);

    let code: BTreeSet<&str> = event_types().into_iter().collect();
    for t in &code {
        if !documented.contains_key(*t) {
            problems.push(format!("{t}: the code can emit it, the document has no channel with that address"));
        }
    }
    for t in documented.keys() {
        if !code.contains(t.as_str()) {
            problems.push(format!("{t}: the document lists it, the code cannot emit it"));
        }
    }

    check_envelope(doc, &mut problems);
    for t in &code {
        if let Some(channel) = documented.get(*t) {
            check_event(doc, t, channel, &mut problems);
        }
    }
    problems
}

/// The channels of `<ns>.events`, by address (= routing key); checks each one's binding and
/// that an operation sends on it.
fn channels_by_routing_key<'a>(doc: &'a Value, problems: &mut Vec<String>) -> BTreeMap<String, &'a Value> {
    let exchange = Topology::new("cls").events_exchange();
    let sending: BTreeSet<String> = doc["operations"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, op)| op["action"] == "send")
        .filter_map(|(_, op)| op["channel"]["$ref"].as_str().map(str::to_owned))
        .collect();
    let mut by_key = BTreeMap::new();
    for (name, channel) in doc["channels"].as_object().into_iter().flatten() {
        let Some(address) = channel["address"].as_str() else {
            problems.push(format!("channel {name}: no address"));
            continue;
        };
        let amqp = &resolve(doc, &channel["bindings"])["amqp"];
        let x = &amqp["exchange"];
        if amqp["is"] != "routingKey" || x["name"] != exchange.as_str() || x["type"] != "topic" || x["durable"] != true {
            problems.push(format!(
                "{address}: its AMQP binding must be the routing key on the durable topic exchange {exchange} (Topology::events_exchange for the default namespace), found {amqp}"
            ));
        }
        if !sending.contains(&format!("#/channels/{name}")) {
            problems.push(format!("{address}: no operation sends on channel {name}"));
        }
        if by_key.insert(address.to_owned(), channel).is_some() {
            problems.push(format!("{address}: more than one channel has this address"));
        }
    }
    by_key
}

/// One event type: routing key, message binding, payload fields, types and nullability.
fn check_event(doc: &Value, event_type: &str, channel: &Value, problems: &mut Vec<String>) {
    let messages: Vec<&Value> = channel["messages"].as_object().into_iter().flatten().map(|(_, m)| resolve(doc, m)).collect();
    let [message] = messages[..] else {
        problems.push(format!("{event_type}: expected one message on its channel, found {}", messages.len()));
        return;
    };
    let sample = sample_event(event_type);
    // The relay publishes with the outbox row's type, which is `event_type()`.
    if sample.event_type() != event_type {
        problems.push(format!("{event_type}: the code routes it as {}", sample.event_type()));
    }
    let amqp_type = &resolve(doc, &message["bindings"])["amqp"]["messageType"];
    if amqp_type != event_type {
        problems.push(format!("{event_type}: the message's AMQP messageType is {amqp_type}"));
    }
    let all_of = message["payload"]["allOf"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !all_of.iter().any(|s| s["$ref"] == "#/components/schemas/Envelope") {
        problems.push(format!("{event_type}: the payload is not allOf the Envelope schema and its own"));
    }
    // The type's own part: `type` as a const, `data` as its payload schema.
    let Some(own) = all_of.iter().map(|s| resolve(doc, s)).find(|s| s["properties"]["type"].get("const").is_some()) else {
        problems.push(format!("{event_type}: the payload has no part with a type const"));
        return;
    };
    if own["properties"]["type"]["const"] != event_type {
        problems.push(format!("{event_type}: the payload's type const is {}", own["properties"]["type"]["const"]));
    }
    let data = resolve(doc, &own["properties"]["data"]);

    // What a subscriber decodes: the sample, enveloped and encoded as the worker does.
    let wire = decode_generically(&cls_contracts::encode(&envelope_of(sample)));
    let wire_data: BTreeSet<String> = match &wire["data"] {
        Value::Object(m) => m.keys().cloned().collect(),
        other => {
            problems.push(format!("{event_type}: data is not a map on the wire: {other}"));
            BTreeSet::new()
        }
    };
    let fields: BTreeSet<String> = payload_fields(event_type).iter().map(|f| f.to_string()).collect();
    assert_eq!(wire_data, fields, "{event_type}: the encoder writes other keys than the type declares");
    compare_object_schema(&format!("{event_type}: data"), data, &fields, problems);
    for field in &fields {
        let derived = field_types(|probe| accepts(event_type, field, probe));
        compare_field(&format!("{event_type}: data.{field}"), &data["properties"][field], &derived, problems);
    }
}

/// The envelope: members on the wire, each one's types and nullability.
fn check_envelope(doc: &Value, problems: &mut Vec<String>) {
    let envelope = &doc["components"]["schemas"]["Envelope"];
    let sample = envelope_of(sample_event("api_key.revoked"));
    let wire = decode_generically(&cls_contracts::encode(&sample));
    let members: BTreeSet<String> = wire.as_object().expect("a map").keys().cloned().collect();
    compare_object_schema("envelope", envelope, &members, problems);
    let base = serde_json::to_value(&sample).unwrap();
    for member in members.iter().filter(|m| !["type", "data"].contains(&m.as_str())) {
        let derived = field_types(|probe| {
            let mut entries = Probe::from_json(&base);
            if let Probe::Map(entries) = &mut entries {
                entries.iter_mut().filter(|(k, _)| k == member).for_each(|(_, v)| *v = probe.clone());
            }
            EventEnvelope::deserialize(entries).is_ok()
        });
        compare_field(&format!("envelope {member}"), &envelope["properties"][member], &derived, problems);
    }
    if envelope["properties"]["schema_version"]["const"] != json!(EVENT_SCHEMA_VERSION) {
        problems.push(format!("envelope schema_version: const must be {EVENT_SCHEMA_VERSION}"));
    }
}

/// Properties and `required` of an object schema against the keys the code always writes
/// (every key is written, `None` as nil, so every key is required).
fn compare_object_schema(what: &str, schema: &Value, keys: &BTreeSet<String>, problems: &mut Vec<String>) {
    let properties: BTreeSet<String> = schema["properties"].as_object().into_iter().flatten().map(|(k, _)| k.clone()).collect();
    if &properties != keys {
        problems.push(format!("{what} properties: the code writes {keys:?}, the document lists {properties:?}"));
    }
    let required: BTreeSet<String> = schema["required"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect();
    if &required != keys {
        problems.push(format!("{what} required: the code always writes {keys:?}, the document requires {required:?}"));
    }
}

/// What the code accepts for one field, in JSON Schema terms.
#[derive(Debug, PartialEq)]
struct FieldTypes {
    /// `null`, `string`, `integer`, `boolean`, `array`.
    types: BTreeSet<String>,
    /// For an array: the element types.
    items: BTreeSet<String>,
    /// An integer that refuses negative values (`u16`, `u32`): the document says `minimum: 0`.
    unsigned: bool,
}

/// A JSON type's name and a value of it to probe with.
type Scalar = (&'static str, fn() -> Probe);

const SCALARS: [Scalar; 4] = [
    ("null", || Probe::Null),
    ("string", || Probe::Str("x".into())),
    ("integer", || Probe::Int(1)),
    ("boolean", || Probe::Bool(true)),
];

fn field_types(accepts: impl Fn(Probe) -> bool) -> FieldTypes {
    let accepted = |wrap: fn(Probe) -> Probe| -> BTreeSet<String> {
        SCALARS.iter().filter(|(_, p)| accepts(wrap(p()))).map(|(t, _)| t.to_string()).collect()
    };
    let mut types = accepted(|p| p);
    let items = accepted(|p| Probe::Seq(vec![p]));
    if !items.is_empty() {
        types.insert("array".into());
    }
    let unsigned = types.contains("integer") && !accepts(Probe::Int(-1));
    FieldTypes { types, items, unsigned }
}

fn compare_field(what: &str, schema: &Value, code: &FieldTypes, problems: &mut Vec<String>) {
    let set = |v: &Value| -> BTreeSet<String> {
        match v {
            Value::String(s) => BTreeSet::from([s.clone()]),
            Value::Array(a) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => BTreeSet::new(),
        }
    };
    let documented = FieldTypes { types: set(&schema["type"]), items: set(&schema["items"]["type"]), unsigned: schema["minimum"] == json!(0) };
    if &documented != code {
        problems.push(format!("{what}: the code accepts {code:?}, the document says {documented:?}"));
    }
}

/// Follows a local `$ref` (`#/components/...`).
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v["$ref"].as_str() {
        Some(r) => doc.pointer(r.trim_start_matches('#')).unwrap_or(&Value::Null),
        None => v,
    }
}

/// Decodes MessagePack as a consumer without our types would, into JSON; panics on a
/// non-string map key or an array where a map belongs (the document promises maps).
fn decode_generically(bytes: &[u8]) -> Value {
    fn convert(v: rmpv::Value) -> Value {
        match v {
            rmpv::Value::Nil => Value::Null,
            rmpv::Value::Boolean(b) => json!(b),
            rmpv::Value::Integer(i) => i.as_i64().map(Value::from).or(i.as_u64().map(Value::from)).unwrap(),
            rmpv::Value::String(s) => json!(s.into_str().expect("UTF-8")),
            rmpv::Value::Array(a) => Value::Array(a.into_iter().map(convert).collect()),
            rmpv::Value::Map(m) => Value::Object(
                m.into_iter().map(|(k, v)| (k.as_str().expect("map keys are strings").to_owned(), convert(v))).collect(),
            ),
            other => panic!("unexpected MessagePack value {other}"),
        }
    }
    let value = convert(rmpv::decode::read_value(&mut &bytes[..]).expect("MessagePack"));
    assert!(value.is_object(), "an event is a map, not {value}");
    value
}

fn envelope_of(event: Event) -> EventEnvelope {
    EventEnvelope {
        id: "0192f0e0-0000-7000-8000-000000000001".into(),
        schema_version: EVENT_SCHEMA_VERSION,
        occurred_at: "2026-11-28T10:00:00.000000Z".into(),
        brand_id: Some("0192f0e0-0000-7000-8000-000000000002".into()),
        aggregate_id: "0192f0e0-0000-7000-8000-000000000003".into(),
        aggregate_version: 1,
        correlation_id: Some("req".into()),
        causation_id: Some("0192f0e0-0000-7000-8000-000000000004".into()),
        event,
    }
}

// ---- Reading the derived `Deserialize` impls ----------------------------------------------

/// The event types: the variant names serde derives for `Event` (its `type` tags).
fn event_types() -> Vec<&'static str> {
    match Event::deserialize(Probe::Map(vec![("type".into(), Probe::Capture)])) {
        Err(ProbeError::Variants(v)) => v.to_vec(),
        other => panic!("expected Event's variant list, got {other:?}"),
    }
}

/// The field names of an event type's payload, as its derived `Deserialize` declares them.
fn payload_fields(event_type: &str) -> &'static [&'static str] {
    let probe = Probe::Map(vec![("type".into(), Probe::Str(event_type.into())), ("data".into(), Probe::Capture)]);
    match Event::deserialize(probe) {
        Err(ProbeError::Fields(f)) => f,
        other => panic!("expected the payload fields of {event_type}, got {other:?}"),
    }
}

/// Whether the payload of `event_type` accepts `value` for `field` (other fields left out: a
/// missing-field error means `field` itself was fine).
fn accepts(event_type: &str, field: &str, value: Probe) -> bool {
    let data = Probe::Map(vec![(field.to_owned(), value)]);
    let probe = Probe::Map(vec![("type".into(), Probe::Str(event_type.into())), ("data".into(), data)]);
    matches!(Event::deserialize(probe), Ok(_) | Err(ProbeError::Missing(_)))
}

/// One event of `event_type`, every field set to a value of a type it accepts (non-null when it
/// can be).
fn sample_event(event_type: &str) -> Event {
    let data = payload_fields(event_type)
        .iter()
        .map(|field| {
            let value = [Probe::Str("x".into()), Probe::Int(1), Probe::Bool(true), Probe::Seq(vec![Probe::Str("x".into())]), Probe::Null]
                .into_iter()
                .find(|p| accepts(event_type, field, p.clone()))
                .unwrap_or_else(|| panic!("{event_type}.{field} accepts none of the probe values"));
            (field.to_string(), value)
        })
        .collect();
    let probe = Probe::Map(vec![("type".into(), Probe::Str(event_type.into())), ("data".into(), Probe::Map(data))]);
    Event::deserialize(probe).unwrap_or_else(|e| panic!("cannot build a sample {event_type}: {e}"))
}

/// A value fed to a derived `Deserialize`; `Capture` reports what the impl asks for instead.
#[derive(Debug, Clone)]
enum Probe {
    Null,
    Str(String),
    Int(i64),
    Bool(bool),
    Seq(Vec<Probe>),
    Map(Vec<(String, Probe)>),
    /// Read as an enum: fails with the variant names; as a struct: with the field names.
    Capture,
}

impl Probe {
    fn from_json(v: &Value) -> Probe {
        match v {
            Value::Null => Probe::Null,
            Value::Bool(b) => Probe::Bool(*b),
            Value::Number(n) => Probe::Int(n.as_i64().expect("an integer")),
            Value::String(s) => Probe::Str(s.clone()),
            Value::Array(a) => Probe::Seq(a.iter().map(Probe::from_json).collect()),
            Value::Object(m) => Probe::Map(m.iter().map(|(k, v)| (k.clone(), Probe::from_json(v))).collect()),
        }
    }
}

#[derive(Debug)]
enum ProbeError {
    Variants(&'static [&'static str]),
    Fields(&'static [&'static str]),
    Missing(&'static str),
    Other(String),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Variants(v) => write!(f, "the variants are {v:?}"),
            ProbeError::Fields(v) => write!(f, "the fields are {v:?}"),
            ProbeError::Missing(field) => write!(f, "missing field {field}"),
            ProbeError::Other(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for ProbeError {}

impl de::Error for ProbeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ProbeError::Other(msg.to_string())
    }

    fn missing_field(field: &'static str) -> Self {
        ProbeError::Missing(field)
    }
}

impl<'de> IntoDeserializer<'de, ProbeError> for Probe {
    type Deserializer = Probe;

    fn into_deserializer(self) -> Probe {
        self
    }
}

impl<'de> Deserializer<'de> for Probe {
    type Error = ProbeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        match self {
            Probe::Null => visitor.visit_unit(),
            Probe::Str(s) => visitor.visit_string(s),
            Probe::Int(n) => match u64::try_from(n) {
                Ok(n) => visitor.visit_u64(n),
                Err(_) => visitor.visit_i64(n),
            },
            Probe::Bool(b) => visitor.visit_bool(b),
            Probe::Seq(items) => visitor.visit_seq(SeqDeserializer::new(items.into_iter())),
            Probe::Map(entries) => visitor.visit_map(MapDeserializer::new(entries.into_iter())),
            Probe::Capture => Err(ProbeError::Other("a capture probe read as a value".into())),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        match self {
            Probe::Null => visitor.visit_none(),
            other => visitor.visit_some(other),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(self, _name: &'static str, variants: &'static [&'static str], visitor: V) -> Result<V::Value, ProbeError> {
        match self {
            Probe::Capture => Err(ProbeError::Variants(variants)),
            Probe::Str(s) => visitor.visit_enum(IntoDeserializer::<ProbeError>::into_deserializer(s)),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(self, _name: &'static str, fields: &'static [&'static str], visitor: V) -> Result<V::Value, ProbeError> {
        match self {
            Probe::Capture => Err(ProbeError::Fields(fields)),
            other => other.deserialize_any(visitor),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit
        unit_struct newtype_struct seq tuple tuple_struct map identifier ignored_any
    }
}
