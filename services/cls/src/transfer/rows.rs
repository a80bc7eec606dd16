//! The import file's rows: the CSV header, one row parsed into a [`License`] (or the reason it
//! cannot be imported), the provisioning body it becomes, and its `Idempotency-Key`.
//!
//! A row is checked here with the same domain parsers the gateway uses (email, product code,
//! seat limit, imported key), so a bad row is rejected locally with a precise reason and never
//! costs a request. What only the server knows (an unknown product, a key that exists) comes back
//! as its problem code.

use std::collections::HashMap;
use std::fmt::Write as _;

use cls_domain::{Email, LicenseKey, ProductCode, SeatLimit};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The columns `cls import` reads; any other column (e.g. those `cls export` adds) is ignored.
pub const EMAIL: &str = "customer_email";
pub const PRODUCT: &str = "product";
pub const EXPIRES_AT: &str = "expires_at";
pub const SEAT_LIMIT: &str = "seat_limit";
pub const IMPORT_KEY: &str = "import_key";

/// Columns the rejects file appends to the original ones (replaced if the input already has
/// them, so a corrected rejects file can be imported as it is).
pub const REJECT_COLUMNS: [&str; 3] = ["source_line", "reason_code", "reason_detail"];

/// Where each column the import reads sits in a row; the optional ones may be absent.
#[derive(Debug, Clone)]
pub struct Header {
    /// The header as written in the file (the rejects file repeats it).
    pub names: Vec<String>,
    email: usize,
    product: usize,
    expires_at: Option<usize>,
    seat_limit: Option<usize>,
    import_key: Option<usize>,
}

impl Header {
    /// Reads the header row: names are matched trimmed and case-insensitively; `customer_email`
    /// and `product` are required; a name given twice is an error (which one would count?).
    pub fn parse(names: &[String]) -> Result<Header, String> {
        let mut positions: HashMap<String, usize> = HashMap::new();
        for (i, name) in names.iter().enumerate() {
            // A UTF-8 byte-order mark (spreadsheet exports) is not part of the first name.
            let name = name.trim_start_matches('\u{feff}').trim().to_ascii_lowercase();
            if positions.insert(name.clone(), i).is_some() && !name.is_empty() {
                return Err(format!("the header names the column {name:?} twice"));
            }
        }
        let required = |name: &str| positions.get(name).copied().ok_or_else(|| format!("the header has no {name:?} column (columns: {EMAIL}, {PRODUCT}, and optionally {EXPIRES_AT}, {SEAT_LIMIT}, {IMPORT_KEY})"));
        Ok(Header {
            names: names.iter().map(|n| n.trim_start_matches('\u{feff}').to_owned()).collect(),
            email: required(EMAIL)?,
            product: required(PRODUCT)?,
            expires_at: positions.get(EXPIRES_AT).copied(),
            seat_limit: positions.get(SEAT_LIMIT).copied(),
            import_key: positions.get(IMPORT_KEY).copied(),
        })
    }

    /// Parses one data row (its fields as read). A row with fewer or more fields than the header
    /// is rejected as a whole: which value belongs to which column is then a guess.
    pub fn row(&self, fields: &[String]) -> Result<License, Reject> {
        if fields.len() < self.names.len() {
            let missing: Vec<&str> = self.names[fields.len()..].iter().map(String::as_str).collect();
            return Err(Reject::new(
                "MISSING_COLUMN",
                format!("the row has {} fields, the header {}: no value for {}", fields.len(), self.names.len(), missing.join(", ")),
            ));
        }
        if fields.len() > self.names.len() {
            return Err(Reject::new(
                "EXTRA_COLUMN",
                format!("the row has {} fields, the header only {} (an unquoted comma in a value?)", fields.len(), self.names.len()),
            ));
        }
        let cell = |i: usize| fields[i].trim();
        // Every problem of the row is reported at once; the first one names the reason code.
        let mut problems: Vec<(&'static str, String)> = Vec::new();
        let email = Email::parse(cell(self.email)).map_err(|e| problems.push(("INVALID_EMAIL", format!("{EMAIL}: {e}")))).ok();
        let product = ProductCode::parse(cell(self.product)).map_err(|e| problems.push(("INVALID_PRODUCT", format!("{PRODUCT}: {e}")))).ok();
        let expires_at = match self.expires_at.map(cell) {
            None => Some(Setting::Default),
            Some("") => Some(Setting::None),
            Some(s) if s.eq_ignore_ascii_case("never") => Some(Setting::None),
            Some(s) => match cls_contracts::parse_time(s) {
                // One spelling per instant, so `+00:00` and `Z` rows are the same row.
                Some(t) => Some(Setting::Value(cls_contracts::format_time(t))),
                None => {
                    problems.push(("INVALID_EXPIRES_AT", format!("{EXPIRES_AT}: must be an RFC 3339 time such as 2027-01-31T00:00:00Z, or empty / never for no expiry")));
                    None
                }
            },
        };
        let seat_limit = match self.seat_limit.map(cell) {
            None => Some(Setting::Default),
            Some("") => Some(Setting::None),
            Some(s) if s.eq_ignore_ascii_case("unlimited") => Some(Setting::None),
            Some(s) => match s.parse::<i64>().map_err(|_| ()).and_then(|n| SeatLimit::new(n).map_err(|_| ())) {
                Ok(limit) => Some(Setting::Value(limit.get())),
                Err(()) => {
                    problems.push(("INVALID_SEAT_LIMIT", format!("{SEAT_LIMIT}: must be a whole number from 1 to {}, or empty / unlimited for no limit", SeatLimit::MAX)));
                    None
                }
            },
        };
        let import_key = match self.import_key.map(cell) {
            None | Some("") => Some(None),
            Some(s) => LicenseKey::parse_import(s).map(Some).map_err(|e| problems.push(("INVALID_IMPORT_KEY", format!("{IMPORT_KEY}: {e}")))).ok(),
        };
        match (email, product, expires_at, seat_limit, import_key) {
            (Some(email), Some(product), Some(expires_at), Some(seat_limit), Some(import_key)) => {
                Ok(License { email, product, expires_at, seat_limit, import_key })
            }
            _ => {
                let code = problems[0].0;
                Err(Reject::new(code, problems.into_iter().map(|(_, p)| p).collect::<Vec<_>>().join("; ")))
            }
        }
    }
}

/// A value the row sets: the product's default (column absent), none (empty cell: perpetual,
/// unlimited), or a value. Mirrors the API's absent / `null` / value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting<T> {
    Default,
    None,
    Value(T),
}

impl<T: serde::Serialize> Setting<T> {
    fn describe(&self) -> String {
        match self {
            Setting::Default => "default".to_owned(),
            Setting::None => "none".to_owned(),
            Setting::Value(v) => format!("value:{}", json!(v)),
        }
    }

    /// Adds the field to a JSON object unless it is the default (absent in the API).
    fn put(&self, object: &mut Value, field: &str) {
        match self {
            Setting::Default => {}
            Setting::None => object[field] = Value::Null,
            Setting::Value(v) => object[field] = json!(v),
        }
    }
}

/// One license to import, as checked locally.
#[derive(Debug, Clone)]
pub struct License {
    pub email: Email,
    pub product: ProductCode,
    pub expires_at: Setting<String>,
    pub seat_limit: Setting<u32>,
    /// The key from the previous system to keep (normalized).
    pub import_key: Option<LicenseKey>,
}

/// Which key a provisioning puts the license on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChoice {
    /// The brand's most recent key for the email, or a new one (rows without `import_key`).
    Latest,
    /// Create the key from the previous system (the first row of that key).
    Import,
    /// The key by its id, once an earlier row created (or found) it.
    Existing(String),
}

impl License {
    /// The row's identity for spotting the same row twice in a file: everything it asks for.
    pub fn fingerprint(&self) -> String {
        let mut text = String::new();
        let _ = write!(
            text,
            "{EMAIL}={}\n{PRODUCT}={}\n{EXPIRES_AT}={}\n{SEAT_LIMIT}={}\n{IMPORT_KEY}={}\n",
            self.email.as_str(),
            self.product.as_str(),
            self.expires_at.describe(),
            self.seat_limit.describe(),
            self.import_key.as_ref().map_or("", |k| k.expose()),
        );
        text
    }

    /// The `POST /v1/licenses` body for this row on the given key.
    pub fn body(&self, key: &KeyChoice) -> Value {
        let mut item = json!({ "code": self.product.as_str() });
        self.seat_limit.put(&mut item, "seat_limit");
        self.expires_at.put(&mut item, "expires_at");
        let mut body = json!({ "customer_email": self.email.as_str(), "products": [item] });
        match key {
            KeyChoice::Latest => {}
            KeyChoice::Import => {
                body["import_key"] = json!(self.import_key.as_ref().expect("only rows with an import key import it").expose())
            }
            KeyChoice::Existing(id) => body["license_key_id"] = json!(id),
        }
        body
    }

    /// The request's `Idempotency-Key`: SHA-256 of the row's normalized content and of the key
    /// choice, so the same row sent again (a re-run, a retry) is the same command and the server
    /// answers its stored outcome instead of provisioning twice.
    ///
    /// Not the line number: a corrected, re-sorted or shortened file would then give one row's
    /// key to another row (422, or a second license for a row that moved). Not the API key
    /// either: the server already scopes keys to the brand, and the brand may rotate its API key
    /// between two runs of one migration. `attempt` > 0 only follows a *replayed rejection* (which
    /// wrote nothing), so the row is tried again against today's state.
    pub fn idempotency_key(&self, key: &KeyChoice, attempt: u32) -> String {
        let mut text = String::from("cls-import/v1\n");
        text.push_str(&self.fingerprint());
        match key {
            KeyChoice::Latest => text.push_str("key=latest\n"),
            KeyChoice::Import => text.push_str("key=import\n"),
            KeyChoice::Existing(id) => {
                let _ = writeln!(text, "key=license_key_id:{id}");
            }
        }
        let digest = hex::encode(Sha256::digest(text.as_bytes()));
        if attempt == 0 { format!("cls-import-{digest}") } else { format!("cls-import-{digest}-r{attempt}") }
    }
}

/// Why a row was not imported: a problem code (the API's, or a local one such as
/// `INVALID_EMAIL`) and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub code: String,
    pub detail: String,
}

impl Reject {
    pub fn new(code: impl Into<String>, detail: impl Into<String>) -> Self {
        Reject { code: code.into(), detail: detail.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(names: &[&str]) -> Header {
        Header::parse(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn row(h: &Header, fields: &[&str]) -> Result<License, Reject> {
        h.row(&fields.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn header_needs_email_and_product_and_ignores_other_columns() {
        let h = header(&["\u{feff}Customer_Email", " product ", "status", "license_id"]);
        assert_eq!(h.names[0], "Customer_Email");
        assert!(Header::parse(&["customer_email".into()]).unwrap_err().contains("\"product\""));
        assert!(Header::parse(&["product".into(), "customer_email".into(), "product".into()]).unwrap_err().contains("twice"));
        let l = row(&h, &["Jane@Example.com ", "seo-pro", "cancelled", "x"]).unwrap();
        assert_eq!(l.email.as_str(), "jane@example.com");
        // Columns absent: the product's defaults (absent in the body).
        assert_eq!(l.body(&KeyChoice::Latest), json!({"customer_email": "jane@example.com", "products": [{"code": "seo-pro"}]}));
    }

    #[test]
    fn cells_map_to_absent_null_or_value() {
        let h = header(&["customer_email", "product", "expires_at", "seat_limit", "import_key"]);
        let l = row(&h, &["a@b.io", "app", "", "", ""]).unwrap();
        assert_eq!(l.body(&KeyChoice::Latest)["products"][0], json!({"code": "app", "seat_limit": null, "expires_at": null}));
        let l = row(&h, &["a@b.io", "app", "never", "Unlimited", ""]).unwrap();
        assert_eq!(l.body(&KeyChoice::Latest)["products"][0], json!({"code": "app", "seat_limit": null, "expires_at": null}));
        let l = row(&h, &["a@b.io", "app", "2027-01-31T01:00:00+01:00", " 3 ", "old-key-1234"]).unwrap();
        assert_eq!(l.body(&KeyChoice::Import), json!({
            "customer_email": "a@b.io", "import_key": "OLD-KEY-1234",
            "products": [{"code": "app", "seat_limit": 3, "expires_at": "2027-01-31T00:00:00.000000Z"}]
        }));
        assert_eq!(l.body(&KeyChoice::Existing("k1".into()))["license_key_id"], "k1");
        assert!(l.body(&KeyChoice::Existing("k1".into())).get("import_key").is_none());
    }

    #[test]
    fn bad_rows_say_why() {
        let h = header(&["customer_email", "product", "expires_at", "seat_limit"]);
        let code = |fields: &[&str]| row(&h, fields).unwrap_err().code;
        assert_eq!(code(&["not-an-email", "app", "", "1"]), "INVALID_EMAIL");
        assert_eq!(code(&["", "app", "", "1"]), "INVALID_EMAIL");
        assert_eq!(code(&["a@b.io", "App Pro", "", "1"]), "INVALID_PRODUCT");
        assert_eq!(code(&["a@b.io", "app", "31/12/2027", "1"]), "INVALID_EXPIRES_AT");
        assert_eq!(code(&["a@b.io", "app", "", "0"]), "INVALID_SEAT_LIMIT");
        assert_eq!(code(&["a@b.io", "app", "", "-2"]), "INVALID_SEAT_LIMIT");
        assert_eq!(code(&["a@b.io", "app", "", "1.5"]), "INVALID_SEAT_LIMIT");
        assert_eq!(code(&["a@b.io", "app", ""]), "MISSING_COLUMN");
        assert_eq!(code(&["a@b.io", "app", "", "1", "x"]), "EXTRA_COLUMN");
        let both = row(&h, &["nope", "app", "soon", "1"]).unwrap_err();
        assert_eq!(both.code, "INVALID_EMAIL");
        assert!(both.detail.contains("customer_email:") && both.detail.contains("expires_at:"), "{}", both.detail);
        let h = header(&["customer_email", "product", "import_key"]);
        assert_eq!(row(&h, &["a@b.io", "app", "short"]).unwrap_err().code, "INVALID_IMPORT_KEY");
    }

    #[test]
    fn idempotency_keys_follow_content_not_spelling_or_position() {
        let h = header(&["customer_email", "product", "expires_at", "seat_limit", "import_key"]);
        let a = row(&h, &["Jane@Example.com", "app", "2027-01-31T00:00:00Z", "2", "old-key-1234"]).unwrap();
        let b = row(&h, &[" jane@example.com", "app", "2027-01-31T00:00:00+00:00", "2", "OLD-KEY-1234 "]).unwrap();
        let key = a.idempotency_key(&KeyChoice::Import, 0);
        assert_eq!(key, b.idempotency_key(&KeyChoice::Import, 0));
        assert!(key.len() <= 255 && key.bytes().all(|c| c.is_ascii_graphic()));
        assert_ne!(key, a.idempotency_key(&KeyChoice::Import, 1));
        assert_ne!(key, a.idempotency_key(&KeyChoice::Existing("k".into()), 0));
        let c = row(&h, &["jane@example.com", "app", "2027-01-31T00:00:00Z", "3", "old-key-1234"]).unwrap();
        assert_ne!(key, c.idempotency_key(&KeyChoice::Import, 0));
        // Absent column (the product's default) and empty cell (none) are different rows.
        let h2 = header(&["customer_email", "product"]);
        let d = row(&h2, &["a@b.io", "app"]).unwrap();
        let e = row(&header(&["customer_email", "product", "seat_limit"]), &["a@b.io", "app", ""]).unwrap();
        assert_ne!(d.fingerprint(), e.fingerprint());
    }
}
