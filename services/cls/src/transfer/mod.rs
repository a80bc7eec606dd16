//! `cls import` and `cls export`: moving a brand's licenses in and out of CLS as CSV, through the
//! public API only (the same routes, scopes, rate limits and idempotency as any brand system),
//! for brands migrating from another licensing system.
//!
//! - [`rows`]: the CSV header and rows, the provisioning body and idempotency key of a row;
//! - [`api`]: requests retried until they have a definite answer (429, 503, 202);
//! - [`import`] and [`export`]: the two commands; [`progress`]: the import's progress display.

pub mod api;
pub mod export;
pub mod import;
pub mod progress;
pub mod rows;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use cls_runtime::Secret;

/// Exit status of an import that ran but left rows in the rejects file (1 = it could not run:
/// unreadable file, bad header, refused API key, unreachable gateway).
pub const EXIT_SOME_REJECTED: i32 = 2;

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The CSV file: a header row, then one license per row. Columns, in any order (others are
    /// ignored): customer_email, product, expires_at (RFC 3339; empty or `never` = perpetual),
    /// seat_limit (empty or `unlimited` = unlimited), import_key (the customer's key in the
    /// previous system, kept as is; empty = the brand's latest key for the email, or a new one).
    /// A column left out entirely means the product's default for every row.
    pub file: PathBuf,
    /// The brand's API key (scope licenses:write).
    #[arg(long, env = "CLS_API_KEY", hide_env_values = true, value_parser = secret)]
    pub api_key: Secret,
    /// The gateway's base URL (default: http://CLS_HTTP_ADDR, else http://127.0.0.1:8080).
    #[arg(long)]
    pub url: Option<String>,
    /// Where to write the rejected rows with their reasons (default: FILE with `.rejects.csv`
    /// for its extension). Always written, empty when nothing was rejected.
    #[arg(long, value_name = "FILE")]
    pub rejects: Option<PathBuf>,
    /// Rows in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The brand's API key (scope licenses:read or licenses:write).
    #[arg(long, env = "CLS_API_KEY", hide_env_values = true, value_parser = secret)]
    pub api_key: Secret,
    /// The gateway's base URL (default: http://CLS_HTTP_ADDR, else http://127.0.0.1:8080).
    #[arg(long)]
    pub url: Option<String>,
    /// The CSV file to write (default: standard output).
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

fn secret(s: &str) -> Result<Secret, String> {
    if s.trim().is_empty() { Err("is empty".to_owned()) } else { Ok(Secret::new(s.trim())) }
}

/// `--url`, else `http://` + `CLS_HTTP_ADDR` (0.0.0.0 read as localhost), else the default.
pub fn gateway_url(url: Option<String>, http_addr: Option<String>) -> anyhow::Result<String> {
    if let Some(url) = url {
        return Ok(url);
    }
    let addr = http_addr.unwrap_or_else(|| crate::DEFAULT_HTTP_ADDR.to_owned());
    let addr: SocketAddr = addr.parse().with_context(|| format!("CLS_HTTP_ADDR {addr:?} is not host:port"))?;
    Ok(format!("http://{}", crate::up::reachable(addr)))
}

/// Writes `path` through a temporary file beside it and a rename, so a reader (or a crash)
/// never sees half a file.
fn write_atomically(path: &std::path::Path, write: impl FnOnce(std::fs::File) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let file = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    write(file).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}
