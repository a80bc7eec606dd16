//! `cls import` and `cls export` (the built binary) against a real cluster: good and bad rows,
//! the rejects file, re-runs and interruptions that import nothing twice, imported keys kept,
//! 202s and rate limits waited out, and an export that imports back as the same licenses.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use cls_tests::{Options, TestCluster, binary_path};
use hyper::StatusCode;
use serde_json::{Value, json};

/// A scratch directory for one test's files, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("cls-import-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `cls <args> --url <gateway>` with the API key in `CLS_API_KEY`.
fn cls(gateway: &str, api_key: &str, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(binary_path("cls"));
    command.args(args).args(["--url", gateway]).env("CLS_API_KEY", api_key).env_remove("CLS_HTTP_ADDR").kill_on_drop(true);
    command
}

async fn run(gateway: &str, api_key: &str, args: &[&str]) -> Output {
    cls(gateway, api_key, args).output().await.expect("cls runs (run `cargo build --bins` first)")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn describe(out: &Output) -> String {
    format!("exit {:?}\nstdout:\n{}\nstderr:\n{}", out.status.code(), stdout(out), String::from_utf8_lossy(&out.stderr))
}

/// A brand with a write key and products.
async fn brand(c: &TestCluster, slug: &str, prefix: &str, products: &[&str]) -> String {
    let (_, key) = c.brand_with_key(slug, prefix).await;
    for code in products {
        let r = c.post("/v1/products", &[("x-api-key", &key)], &json!({"code": code, "name": code})).await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    key
}

/// Every license of the brand, through the API.
async fn licenses(c: &TestCluster, key: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut path = "/v1/licenses?limit=200".to_owned();
    loop {
        let r = c.get(&path, &[("x-api-key", key)]).await;
        assert_eq!(r.status, StatusCode::OK);
        let page = r.json();
        all.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/licenses?limit=200&cursor={cursor}"),
            None => return all,
        }
    }
}

/// A small RFC 4180 reader (quoted fields, doubled quotes, commas and newlines inside quotes),
/// so the test checks the files without trusting the code under test.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut field) = (Vec::new(), Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(ch) = chars.next() {
        match (quoted, ch) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, _) => field.push(ch),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, _) => field.push(ch),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

/// A CSV file as a header and its rows as (column → value) maps.
fn read_csv(path: &Path) -> (Vec<String>, Vec<std::collections::HashMap<String, String>>) {
    let mut rows = parse_csv(&std::fs::read_to_string(path).unwrap());
    let header = rows.remove(0);
    let maps = rows.into_iter().map(|r| header.iter().cloned().zip(r).collect()).collect();
    (header, maps)
}

/// One license as the import file states it: (email, product, expiry instant, seat limit).
type Stated = (String, String, Option<String>, Option<u64>);

/// An RFC 3339 time in one spelling, so `Z` and `.000000Z` compare equal.
fn instant(s: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("{s:?}: {e}")).with_timezone(&chrono::Utc).to_rfc3339()
}

fn stated(license: &Value) -> Stated {
    (
        license["customer_email"].as_str().unwrap().to_owned(),
        license["product"].as_str().unwrap().to_owned(),
        license["expires_at"].as_str().map(instant),
        license["seat_limit"].as_u64(),
    )
}

const HEADER: &str = "customer_email,product,expires_at,seat_limit,import_key";

/// The good rows of the mixed file, and the licenses they must become.
const GOOD: [(&str, &str); 5] = [
    ("Jane@Example.com,app,2027-01-31T00:00:00Z,3,", "line 2"),
    ("bob@example.com,app,,,", "perpetual and unlimited"),
    ("bob@example.com,addon,2020-01-01T00:00:00+00:00,1,", "already expired (imports may be)"),
    ("carol@example.com,app,2027-06-30T12:00:00Z,2,legacy-carol-0001", "keeps its key"),
    ("carol@example.com,addon,,5,LEGACY-CAROL-0001", "same imported key"),
];

fn expected_good() -> BTreeSet<Stated> {
    BTreeSet::from([
        ("jane@example.com".into(), "app".into(), Some(instant("2027-01-31T00:00:00Z")), Some(3)),
        ("bob@example.com".into(), "app".into(), None, None),
        ("bob@example.com".into(), "addon".into(), Some(instant("2020-01-01T00:00:00Z")), Some(1)),
        ("carol@example.com".into(), "app".into(), Some(instant("2027-06-30T12:00:00Z")), Some(2)),
        ("carol@example.com".into(), "addon".into(), None, Some(5)),
    ])
}

/// The bad rows, with the reason each must be rejected for.
const BAD: [(&str, &str); 8] = [
    ("not-an-email,app,,1,", "INVALID_EMAIL"),
    ("dave@example.com,ghost,,1,", "PRODUCT_NOT_FOUND"),
    ("erin@example.com,app,31/12/2027,1,", "INVALID_EXPIRES_AT"),
    ("frank@example.com,app,,0,", "INVALID_SEAT_LIMIT"),
    ("gina@example.com,app,,-2,", "INVALID_SEAT_LIMIT"),
    ("hank@example.com,app", "MISSING_COLUMN"),
    ("\"ivy@example.com\",\"app, pro\",,1,", "INVALID_PRODUCT"),
    ("jane@example.com,app,2027-01-31T00:00:00.000Z,3,", "DUPLICATE_ROW"),
];

/// The mixed file: good and bad rows interleaved. Answers the file and the bad rows' lines.
fn mixed_file(scratch: &Scratch) -> (PathBuf, Vec<(u64, &'static str, &'static str)>) {
    let mut text = format!("{HEADER}\n");
    let mut bad = Vec::new();
    let mut line = 1;
    for i in 0..GOOD.len().max(BAD.len()) {
        if let Some((row, _)) = GOOD.get(i) {
            line += 1;
            text.push_str(row);
            text.push('\n');
        }
        if let Some((row, code)) = BAD.get(i) {
            line += 1;
            text.push_str(row);
            text.push('\n');
            bad.push((line, *row, *code));
        }
    }
    (scratch.write("licenses.csv", &text), bad)
}

#[tokio::test]
async fn import_rejects_bad_rows_reruns_without_duplicates_and_exports_round_trip() {
    let c = TestCluster::spawn().await;
    let key = brand(&c, "migrating", "MG", &["app", "addon"]).await;
    let scratch = Scratch::new();
    let (file, bad) = mixed_file(&scratch);
    let rejects = scratch.path("rejects.csv");
    let args = ["import", file.to_str().unwrap(), "--rejects", rejects.to_str().unwrap()];

    let out = run(&c.gateway, &key, &args).await;
    assert_eq!(out.status.code(), Some(2), "some rows rejected → exit 2\n{}", describe(&out));
    let text = stdout(&out);
    for line in ["imported: 5", "already imported: 0", "rejected: 8", "INVALID_SEAT_LIMIT: 2", "PRODUCT_NOT_FOUND: 1", "DUPLICATE_ROW: 1"] {
        assert!(text.contains(line), "{line:?} in\n{}", describe(&out));
    }

    // The good rows became licenses with the fields of their row.
    let imported = licenses(&c, &key).await;
    assert_eq!(imported.iter().map(stated).collect::<BTreeSet<_>>(), expected_good(), "{imported:#?}");
    let status = |email: &str, product: &str| {
        imported.iter().find(|l| l["customer_email"] == email && l["product"] == product).unwrap()["status"].as_str().unwrap().to_owned()
    };
    assert_eq!(status("bob@example.com", "addon"), "expired");
    assert_eq!(status("jane@example.com", "app"), "valid");
    // One key per customer: bob's two rows share the brand's latest key for his email.
    let key_of = |email: &str| imported.iter().filter(|l| l["customer_email"] == email).map(|l| l["license_key_id"].as_str().unwrap().to_owned()).collect::<BTreeSet<_>>();
    assert_eq!(key_of("bob@example.com").len(), 1);
    assert_eq!(key_of("carol@example.com").len(), 1);

    // The imported key is the customer's key: it validates, with both of its licenses.
    let v = c.post("/v1/license-keys/validate", &[], &json!({"license_key": "Legacy-Carol-0001", "product": "addon"})).await.json();
    assert_eq!(v["code"], "VALID", "{v}");
    let v = c.post("/v1/license-keys/validate", &[], &json!({"license_key": "legacy-carol-0001"})).await.json();
    assert_eq!(v["licenses"].as_array().unwrap().len(), 2, "{v}");

    // The rejects file holds exactly the bad rows: their line, reason and original fields.
    let check_rejects = || {
        let (header, rows) = read_csv(&rejects);
        assert_eq!(header, ["source_line", "reason_code", "reason_detail", "customer_email", "product", "expires_at", "seat_limit", "import_key"]);
        let got: Vec<(u64, String)> = rows.iter().map(|r| (r["source_line"].parse().unwrap(), r["reason_code"].clone())).collect();
        let want: Vec<(u64, String)> = bad.iter().map(|(line, _, code)| (*line, code.to_string())).collect();
        assert_eq!(got, want);
        let raw = parse_csv(&std::fs::read_to_string(&rejects).unwrap());
        for ((_, row, _), fields) in bad.iter().zip(&raw[1..]) {
            assert_eq!(fields[3..].to_vec(), parse_csv(&format!("{row}\n"))[0], "original fields of {row}");
        }
        for r in &rows {
            assert!(!r["reason_detail"].is_empty(), "{r:?}");
        }
        rows
    };
    let rows = check_rejects();
    let detail = |code: &str| rows.iter().find(|r| r["reason_code"] == code).unwrap()["reason_detail"].clone();
    assert!(detail("DUPLICATE_ROW").contains("line 2"), "{}", detail("DUPLICATE_ROW"));
    assert!(detail("MISSING_COLUMN").contains("expires_at"), "{}", detail("MISSING_COLUMN"));

    // Run again: nothing is imported twice, the server answers the stored outcomes.
    let out = run(&c.gateway, &key, &args).await;
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let text = stdout(&out);
    assert!(text.contains("imported: 0") && text.contains("already imported: 5") && text.contains("rejected: 8"), "{}", describe(&out));
    assert_eq!(licenses(&c, &key).await.len(), 5);
    check_rejects();

    // Export: the brand's licenses as CSV, the import columns written the way import reads them.
    let exported = scratch.path("export.csv");
    let out = run(&c.gateway, &key, &["export", "--output", exported.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", describe(&out));
    let (header, rows) = read_csv(&exported);
    assert_eq!(&header[..4], ["customer_email", "product", "expires_at", "seat_limit"]);
    assert!(header.contains(&"license_id".to_owned()) && header.contains(&"key_hint".to_owned()) && !header.contains(&"key".to_owned()));
    let as_stated = |r: &std::collections::HashMap<String, String>| -> Stated {
        let expires = Some(r["expires_at"].as_str()).filter(|s| !s.is_empty()).map(instant);
        (r["customer_email"].clone(), r["product"].clone(), expires, r["seat_limit"].parse().ok())
    };
    assert_eq!(rows.iter().map(as_stated).collect::<BTreeSet<_>>(), expected_good());
    let carol = rows.iter().find(|r| r["customer_email"] == "carol@example.com").unwrap();
    assert!(carol["key_hint"].ends_with("0001"), "{carol:?}");

    // The export imports as it is into another brand, and exports back the same licenses.
    let other = brand(&c, "staging", "ST", &["app", "addon"]).await;
    let out = run(&c.gateway, &other, &["import", exported.to_str().unwrap(), "--rejects", scratch.path("r2.csv").to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(stdout(&out).contains("imported: 5"), "{}", describe(&out));
    let out = run(&c.gateway, &other, &["export"]).await;
    assert!(out.status.success(), "{}", describe(&out));
    let again = scratch.write("again.csv", &stdout(&out));
    assert_eq!(read_csv(&again).1.iter().map(as_stated).collect::<BTreeSet<_>>(), expected_good());
    c.stop().await;
}

/// `n` rows for distinct customers; every third one keeps a key from the old system.
fn rows(n: usize) -> String {
    let mut text = format!("{HEADER}\n");
    for i in 0..n {
        let key = if i % 3 == 0 { format!("OLD-SYSTEM-{i:04}") } else { String::new() };
        text.push_str(&format!("user{i}@example.com,app,2030-01-01T00:00:00Z,{},{key}\n", 1 + i % 4));
    }
    text
}

/// The number on the summary line `  <label>: N`.
fn count(text: &str, label: &str) -> i64 {
    let prefix = format!("  {label}: ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_else(|| panic!("no {label:?} line in\n{text}")).parse().unwrap()
}

async fn license_count(c: &TestCluster) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM licenses").fetch_one(&c.pool).await.unwrap()
}

#[tokio::test]
async fn an_interrupted_import_resumes_with_exactly_one_license_per_row() {
    let c = TestCluster::spawn().await;
    let key = brand(&c, "resuming", "RS", &["app"]).await;
    let scratch = Scratch::new();
    const N: usize = 60;
    let whole = scratch.write("whole.csv", &rows(N));
    // The first half of the file, as a first run that stopped there would have sent it.
    let half: String = rows(N).lines().take(1 + N / 2).map(|l| format!("{l}\n")).collect();
    let half = scratch.write("half.csv", &half);
    let rejects = scratch.path("rejects.csv");
    let import = |file: &Path| {
        let file = file.to_str().unwrap().to_owned();
        let rejects = rejects.to_str().unwrap().to_owned();
        cls(&c.gateway, &key, &["import", &file, "--rejects", &rejects, "--concurrency", "2"])
    };

    let out = import(&half).output().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(stdout(&out).contains(&format!("imported: {}", N / 2)), "{}", describe(&out));

    // The whole file, killed mid-way (requests in flight die with it).
    let mut child = import(&whole).stdout(std::process::Stdio::null()).spawn().unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    while license_count(&c).await <= (N / 2 + 5) as i64 && child.try_wait().unwrap().is_none() {
        assert!(tokio::time::Instant::now() < until, "the second run imported nothing within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
    let before = license_count(&c).await;

    // The whole file again: the missing rows are imported, the others are replays (a request
    // in flight when the run died may commit after `before` was read: it replays too).
    let out = import(&whole).output().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = stdout(&out);
    let (imported, already) = (count(&text, "imported"), count(&text, "already imported"));
    assert_eq!(imported + already, N as i64, "{}", describe(&out));
    assert!(already >= before && before > (N / 2) as i64, "{before} before\n{}", describe(&out));
    assert_eq!(license_count(&c).await, N as i64);
    let all = licenses(&c, &key).await;
    let emails: BTreeSet<String> = all.iter().map(|l| l["customer_email"].as_str().unwrap().to_owned()).collect();
    assert_eq!(emails.len(), N, "one license per row");
    // Every kept key is the customer's key.
    for i in (0..N).step_by(3) {
        let v = c.post("/v1/license-keys/validate", &[], &json!({"license_key": format!("old-system-{i:04}"), "product": "app"})).await.json();
        assert_eq!(v["code"], "VALID", "row {i}: {v}");
    }
    c.stop().await;
}

#[tokio::test]
async fn a_fixed_cause_is_picked_up_and_an_existing_imported_key_is_reused() {
    let c = TestCluster::spawn().await;
    let key = brand(&c, "fixing", "FX", &["app"]).await;
    let scratch = Scratch::new();
    let file = scratch.write(
        "licenses.csv",
        &format!("{HEADER}\nann@example.com,app,,2,ANN-OLD-KEY-1\nann@example.com,pro,,2,ANN-OLD-KEY-1\nben@example.com,pro,,1,\n"),
    );
    let rejects = scratch.path("rejects.csv");
    let args = ["import", file.to_str().unwrap(), "--rejects", rejects.to_str().unwrap()];
    let out = run(&c.gateway, &key, &args).await;
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(stdout(&out).contains("PRODUCT_NOT_FOUND: 2"), "{}", describe(&out));

    // The brand creates the missing product and imports the rejects file as it is: the stored
    // rejections are not replayed forever, and ann's second row joins her imported key.
    let r = c.post("/v1/products", &[("x-api-key", &key)], &json!({"code": "pro", "name": "Pro"})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let fixed = scratch.path("fixed.csv");
    std::fs::copy(&rejects, &fixed).unwrap();
    let out = run(&c.gateway, &key, &["import", fixed.to_str().unwrap(), "--rejects", rejects.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(stdout(&out).contains("imported: 2"), "{}", describe(&out));
    let (_, rows) = read_csv(&rejects);
    assert!(rows.is_empty(), "{rows:?}");

    // The original file once more: all three are already there.
    let out = run(&c.gateway, &key, &args).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(stdout(&out).contains("already imported: 3"), "{}", describe(&out));
    let all = licenses(&c, &key).await;
    assert_eq!(all.len(), 3);
    let v = c.post("/v1/license-keys/validate", &[], &json!({"license_key": "ann-old-key-1"})).await.json();
    assert_eq!(v["licenses"].as_array().unwrap().len(), 2, "{v}");

    // A wrong API key is fatal (exit 1), not a file full of rejections.
    let out = run(&c.gateway, "not-a-key", &args).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("UNAUTHENTICATED"), "{}", describe(&out));
    c.stop().await;
}

#[tokio::test]
async fn import_follows_202_to_the_outcome() {
    // No licenses worker at first: provisioning commands wait in their queue, the gateway
    // answers 202 after its reply timeout, and the import polls the operations.
    let mut c = TestCluster::spawn_with(Options { licenses_workers: 0, reply_timeout: Duration::from_secs(1), ..Options::default() }).await;
    let key = brand(&c, "patient", "PT", &["app"]).await;
    let scratch = Scratch::new();
    const N: usize = 9;
    let file = scratch.write("licenses.csv", &rows(N));
    let rejects = scratch.path("rejects.csv");
    let args = ["import", file.to_str().unwrap(), "--rejects", rejects.to_str().unwrap(), "--concurrency", "3"];
    let import = cls(&c.gateway, &key, &args).output();
    let import = tokio::spawn(import);

    // Once the gateway has answered a 202 (it registers the pending operation), the worker starts.
    let redis = c.redis().await;
    let pattern = format!("{}:op:*", c.namespace);
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        use fred::prelude::*;
        let command = fred::types::CustomCommand::new_static("KEYS", fred::types::ClusterHash::FirstKey, false);
        let keys: Vec<String> = redis.custom(command, vec![pattern.clone()]).await.unwrap();
        if !keys.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < until, "no 202 within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.start_worker(cls_tests::Module::Licenses).await;

    let out = tokio::time::timeout(Duration::from_secs(120), import).await.expect("the import ends").unwrap().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = stdout(&out);
    assert_eq!(count(&text, "imported"), N as i64, "{}", describe(&out));
    assert!(text.contains("answered 202"), "{}", describe(&out));
    assert_eq!(license_count(&c).await, N as i64);
    let _ = fred::prelude::ClientLike::quit(&redis).await;
    c.stop().await;
}

#[tokio::test]
async fn import_waits_out_rate_limits() {
    // 10 requests a minute per API key, and the window already used up: the import's first
    // request meets a 429 and must wait what Retry-After says (up to a minute) before going on.
    let c = TestCluster::spawn_with(Options { rate_limits: (10, 0, 0), ..Options::default() }).await;
    let key = brand(&c, "limited", "LM", &["app"]).await;
    let mut limited = false;
    while !limited {
        limited = c.get("/v1/products", &[("x-api-key", &key)]).await.status == StatusCode::TOO_MANY_REQUESTS;
    }
    let scratch = Scratch::new();
    let file = scratch.write("licenses.csv", &rows(3));
    let rejects = scratch.path("rejects.csv");
    let out = run(&c.gateway, &key, &["import", file.to_str().unwrap(), "--rejects", rejects.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = stdout(&out);
    assert_eq!(count(&text, "imported"), 3, "{}", describe(&out));
    assert!(text.contains("Rate limited"), "{}", describe(&out));
    assert_eq!(license_count(&c).await, 3);
    c.stop().await;
}
