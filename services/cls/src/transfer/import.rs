//! `cls import FILE`: provisions one license per CSV row through `POST /v1/licenses`, safe to
//! run again after an interruption, and writes the rows it could not import, with the reason,
//! to a rejects file.
//!
//! How a re-run imports nothing twice: each request carries an `Idempotency-Key` derived from
//! the row's content ([`License::idempotency_key`]), so the server answers a row it has seen with
//! its stored outcome (`Idempotent-Replayed`), counted as "already imported". A *replayed
//! rejection* (e.g. `PRODUCT_NOT_FOUND` from a run before the product was created) wrote
//! nothing, so the row is then sent again under the next key of its chain (`…-r1`, `…-r2`): a
//! fixed cause is picked up at once instead of after the server forgets the first outcome.
//!
//! Keys: rows without `import_key` go on the brand's latest key for the email (the server's
//! rule). Rows sharing an `import_key` run in file order as one unit: the first creates the key
//! (`import_key`), the next ones name it by id (`license_key_id`), because a second `import_key`
//! request for the same key answers `KEY_EXISTS`. A `KEY_EXISTS` for a key this brand already
//! holds (an earlier file, an earlier run) is looked up and the row goes on that key. All
//! `import_key` rows run before the other rows, so a customer's imported key is their latest key
//! by the time their rows without one are provisioned.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use hyper::{Method, StatusCode};
use serde_json::json;

use super::api::{Api, Reply};
use super::progress::{Counts, Progress};
use super::rows::{Header, KeyChoice, License, REJECT_COLUMNS, Reject};
use super::{EXIT_SOME_REJECTED, ImportArgs};

/// Longest chain of attempt keys one row walks (one link per earlier run that was rejected).
const MAX_ATTEMPTS: u32 = 100;

/// One data row of the file.
struct Line {
    /// Where the record starts in the file (1-based; the header is line 1).
    number: u64,
    /// The fields as read, for the rejects file.
    fields: Vec<String>,
    /// The license it asks for, or why it cannot be imported (settled without a request).
    parsed: Result<License, Reject>,
}

/// How a row ended.
#[derive(Debug, Clone)]
enum Outcome {
    Imported,
    /// The server answered the stored outcome of an earlier run (or an earlier try).
    AlreadyImported,
    Rejected(Reject),
}

/// What every task of the run shares.
struct Run {
    api: Api,
    counts: Arc<Counts>,
    progress: Progress,
}

impl Run {
    fn settle(&self, outcome: &Outcome) {
        let counter = match outcome {
            Outcome::Imported => &self.counts.imported,
            Outcome::AlreadyImported => &self.counts.already,
            Outcome::Rejected(_) => &self.counts.rejected,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.progress.row_done();
    }
}

/// Runs the import; exits the process with [`EXIT_SOME_REJECTED`] if any row was rejected.
pub async fn run(args: ImportArgs, http_addr: Option<String>) -> anyhow::Result<()> {
    let started = Instant::now();
    let base_url = super::gateway_url(args.url, http_addr)?;
    let (header, lines) = read(&args.file)?;
    let rejects_path = args.rejects.unwrap_or_else(|| default_rejects_path(&args.file));
    let api = Api::new(&base_url, args.api_key);
    preflight(&api).await?;

    // Rows settled locally: a parse error, or the same license as an earlier row.
    let mut outcomes: Vec<Option<Outcome>> = vec![None; lines.len()];
    let mut seen: HashMap<String, u64> = HashMap::new();
    let counts = Arc::new(Counts::default());
    for (i, line) in lines.iter().enumerate() {
        let reject = match &line.parsed {
            Err(reject) => Some(reject.clone()),
            // The first occurrence counts; a later one would only replay it.
            Ok(license) => match seen.entry(license.fingerprint()) {
                Entry::Occupied(first) => Some(Reject::new("DUPLICATE_ROW", format!("the same license as line {}", first.get()))),
                Entry::Vacant(entry) => {
                    entry.insert(line.number);
                    None
                }
            },
        };
        if let Some(reject) = reject {
            counts.rejected.fetch_add(1, Ordering::Relaxed);
            outcomes[i] = Some(Outcome::Rejected(reject));
        }
    }

    // Units of work: rows sharing an import key (in file order), then single rows.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group_of: HashMap<String, usize> = HashMap::new();
    let mut singles: Vec<Vec<usize>> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Ok(license) = &line.parsed else { continue };
        if outcomes[i].is_some() {
            continue;
        }
        match &license.import_key {
            Some(key) => {
                let g = *group_of.entry(key.expose().to_owned()).or_insert_with(|| {
                    groups.push(Vec::new());
                    groups.len() - 1
                });
                groups[g].push(i);
            }
            None => singles.push(vec![i]),
        }
    }

    let progress = Progress::start(lines.len() as u64, counts.clone());
    let run = Run { api, counts: counts.clone(), progress };
    let concurrency = usize::from(args.concurrency);
    let mut result = Ok(());
    for phase in [groups, singles] {
        let mut units = futures_util::stream::iter(phase).map(|unit| import_unit(&run, &lines, unit)).buffer_unordered(concurrency);
        while let Some(done) = units.next().await {
            match done {
                Ok(settled) => settled.into_iter().for_each(|(i, outcome)| outcomes[i] = Some(outcome)),
                Err(error) => {
                    result = Err(error);
                    break;
                }
            }
        }
        if result.is_err() {
            break;
        }
    }
    run.progress.finish().await;
    result?;

    let outcomes: Vec<Outcome> = outcomes.into_iter().map(|o| o.expect("every row settled")).collect();
    write_rejects(&rejects_path, &header, &lines, &outcomes)?;
    let rejected = print_summary(&args.file, &rejects_path, &outcomes, started.elapsed());
    let (limited, accepted) = (run.api.rate_limited.load(Ordering::Relaxed), run.api.accepted.load(Ordering::Relaxed));
    if limited > 0 {
        println!("Rate limited {limited} times: waited as the gateway's Retry-After said (lower --concurrency, or raise CLS_RATE_API_KEY).");
    }
    if accepted > 0 {
        println!("{accepted} requests answered 202 (still running) and were followed to their outcome.");
    }
    if rejected > 0 {
        std::io::stdout().flush()?;
        std::process::exit(EXIT_SOME_REJECTED);
    }
    Ok(())
}

/// `licenses.csv` → `licenses.rejects.csv`.
fn default_rejects_path(file: &Path) -> PathBuf {
    let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "import".to_owned());
    file.with_file_name(format!("{stem}.rejects.csv"))
}

/// Reads the whole file: the header (a bad one is fatal) and every row, parsed.
fn read(path: &Path) -> anyhow::Result<(Header, Vec<Line>)> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = csv::ReaderBuilder::new().flexible(true).has_headers(true).from_reader(std::io::BufReader::new(file));
    let names: Vec<String> = reader.headers().with_context(|| format!("cannot read the header of {}", path.display()))?.iter().map(str::to_owned).collect();
    if names.iter().all(|n| n.trim().is_empty()) {
        bail!("{} is empty: expected a header row such as customer_email,product,expires_at,seat_limit,import_key", path.display());
    }
    let header = Header::parse(&names).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut lines = Vec::new();
    for record in reader.records() {
        let record = record.with_context(|| format!("cannot read {} (save it as UTF-8 CSV)", path.display()))?;
        let fields: Vec<String> = record.iter().map(str::to_owned).collect();
        let number = record.position().map_or(0, |p| p.line());
        lines.push(Line { number, parsed: header.row(&fields), fields });
    }
    Ok((header, lines))
}

/// Checks the gateway and the API key once, so a wrong URL or key fails the run instead of
/// filling the rejects file with the same reason.
async fn preflight(api: &Api) -> anyhow::Result<()> {
    let reply = api
        .first_contact("/v1/products?limit=1")
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the gateway at {} ({e:#}); is it running? (--url)", api.base_url()))?;
    if reply.status != StatusCode::OK {
        let Reject { code, detail } = reply.reject();
        bail!("the gateway at {} refused the API key: {code}: {detail}", api.base_url());
    }
    Ok(())
}

/// Imports the rows of one unit in order. `Err` only for a refused credential (fatal).
async fn import_unit(run: &Run, lines: &[Line], unit: Vec<usize>) -> anyhow::Result<Vec<(usize, Outcome)>> {
    let mut settled = Vec::with_capacity(unit.len());
    // The imported key's id once a row of the unit created or found it.
    let mut key_id: Option<String> = None;
    for i in unit {
        let license = lines[i].parsed.as_ref().expect("only parsed rows are sent");
        let choice = match (&license.import_key, &key_id) {
            (None, _) => KeyChoice::Latest,
            (Some(_), None) => KeyChoice::Import,
            (Some(_), Some(id)) => KeyChoice::Existing(id.clone()),
        };
        let (outcome, created_key) = provision(run, license, choice).await?;
        if license.import_key.is_some() && key_id.is_none() {
            key_id = created_key;
        }
        run.settle(&outcome);
        settled.push((i, outcome));
    }
    Ok(settled)
}

/// Provisions one row on the chosen key; answers how it ended and the key id it landed on.
async fn provision(run: &Run, license: &License, mut choice: KeyChoice) -> anyhow::Result<(Outcome, Option<String>)> {
    let mut attempt = 0;
    loop {
        let key = license.idempotency_key(&choice, attempt);
        let reply = match run.api.call(Method::POST, "/v1/licenses", Some(&license.body(&choice)), Some(&key)).await {
            Ok(reply) => reply,
            Err(reject) => return Ok((Outcome::Rejected(reject), None)),
        };
        if reply.status.is_success() {
            let key_id = reply.body["license_key"]["id"].as_str().map(str::to_owned);
            return Ok((if reply.replayed { Outcome::AlreadyImported } else { Outcome::Imported }, key_id));
        }
        fatal_if_refused(&reply)?;
        let reject = reply.reject();
        if reject.code == "KEY_EXISTS" && choice == KeyChoice::Import {
            match lookup(run, license).await? {
                Ok(id) => {
                    choice = KeyChoice::Existing(id);
                    attempt = 0;
                    continue;
                }
                Err(reject) => return Ok((Outcome::Rejected(reject), None)),
            }
        }
        // A stored rejection wrote nothing: try again under the next key of the chain.
        let retriable = reply.replayed && reply.status.is_client_error() && reject.code != "IDEMPOTENCY_KEY_REUSED";
        if retriable && attempt < MAX_ATTEMPTS {
            attempt += 1;
            continue;
        }
        return Ok((Outcome::Rejected(reject), None));
    }
}

/// The id of this brand's key equal to the row's `import_key` (it answered `KEY_EXISTS`).
async fn lookup(run: &Run, license: &License) -> anyhow::Result<Result<String, Reject>> {
    let key = license.import_key.as_ref().expect("only import rows look their key up");
    let body = json!({ "license_key": key.expose() });
    let reply = match run.api.call(Method::POST, "/v1/license-keys/lookup", Some(&body), None).await {
        Ok(reply) => reply,
        Err(reject) => return Ok(Err(reject)),
    };
    fatal_if_refused(&reply)?;
    match reply.body["id"].as_str() {
        Some(id) if reply.status == StatusCode::OK => Ok(Ok(id.to_owned())),
        _ if reply.status == StatusCode::NOT_FOUND => {
            Ok(Err(Reject::new("KEY_EXISTS", "import_key: this key already exists in CLS, and not among this brand's keys")))
        }
        _ => Ok(Err(reply.reject())),
    }
}

fn fatal_if_refused(reply: &Reply) -> anyhow::Result<()> {
    if reply.is_credential_problem() {
        let Reject { code, detail } = reply.reject();
        bail!("the gateway refused the API key during the import: {code}: {detail} (re-run with a valid key: rows already imported are not imported twice)");
    }
    Ok(())
}

/// The rejects file: the reason columns first (so a short row stays short and a corrected file
/// can be imported again as it is: those columns are ignored on import), then the original
/// fields. Reason columns of an input that was itself a rejects file are replaced.
fn write_rejects(path: &Path, header: &Header, lines: &[Line], outcomes: &[Outcome]) -> anyhow::Result<()> {
    let old: Vec<usize> =
        header.names.iter().enumerate().filter(|(_, n)| REJECT_COLUMNS.contains(&n.trim().to_ascii_lowercase().as_str())).map(|(i, _)| i).collect();
    let keep = |fields: &[String]| -> Vec<String> {
        fields.iter().enumerate().filter(|(i, _)| !old.contains(i)).map(|(_, f)| f.clone()).collect()
    };
    super::write_atomically(path, |file| {
        let mut writer = csv::WriterBuilder::new().flexible(true).from_writer(std::io::BufWriter::new(file));
        let mut names: Vec<String> = REJECT_COLUMNS.iter().map(|s| s.to_string()).collect();
        names.extend(keep(&header.names));
        writer.write_record(&names)?;
        for (line, outcome) in lines.iter().zip(outcomes) {
            if let Outcome::Rejected(Reject { code, detail }) = outcome {
                let mut record = vec![line.number.to_string(), code.clone(), detail.clone()];
                record.extend(keep(&line.fields));
                writer.write_record(&record)?;
            }
        }
        writer.flush()?;
        Ok(())
    })
}

/// Prints the summary on stdout; answers the number of rejected rows.
fn print_summary(file: &Path, rejects: &Path, outcomes: &[Outcome], elapsed: std::time::Duration) -> usize {
    let mut imported = 0;
    let mut already = 0;
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for outcome in outcomes {
        match outcome {
            Outcome::Imported => imported += 1,
            Outcome::AlreadyImported => already += 1,
            Outcome::Rejected(reject) => *reasons.entry(reject.code.as_str()).or_default() += 1,
        }
    }
    let rejected: usize = reasons.values().sum();
    println!("{} rows in {} ({:.1}s)", outcomes.len(), file.display(), elapsed.as_secs_f64());
    println!("  imported: {imported}");
    println!("  already imported: {already}");
    println!("  rejected: {rejected}");
    for (code, n) in &reasons {
        println!("    {code}: {n}");
    }
    if rejected > 0 {
        println!("Rejected rows, with their reasons: {}", rejects.display());
        println!("Fix them there and import that file again; rows already imported are not imported twice.");
    } else {
        println!("Nothing rejected ({} is empty).", rejects.display());
    }
    rejected
}
