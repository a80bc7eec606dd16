//! `cls export`: every license of the brand as CSV, paging through `GET /v1/licenses` (all of
//! the brand's licenses, cancelled and expired included, in id order, `limit` 200 and the
//! opaque `next_cursor`).
//!
//! The first four columns are the ones `cls import` reads, written the way it reads them (empty
//! `expires_at` = perpetual, empty `seat_limit` = unlimited), so an export imports as it is. The
//! full license key is not exported: CLS stores only its SHA-256 and shows the key once, when it
//! is created, so `key_hint` and `license_key_id` are what identify a key here.
//! Licenses written while the export runs appear if their id sorts after the page being read
//! (ids are UUIDv7, so new ones usually do); the file is not a snapshot of one instant.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use cls_contracts::http::{ListedLicense, Page};
use hyper::{Method, StatusCode};

use super::ExportArgs;
use super::api::Api;
use super::rows::{EMAIL, EXPIRES_AT, PRODUCT, SEAT_LIMIT};

/// The largest page the API serves.
const PAGE_SIZE: u32 = 200;

/// The columns, in order.
const COLUMNS: [&str; 11] = [
    EMAIL,
    PRODUCT,
    EXPIRES_AT,
    SEAT_LIMIT,
    "status",
    "seats_used",
    "license_id",
    "license_key_id",
    "key_hint",
    "created_at",
    "updated_at",
];

pub async fn run(args: ExportArgs, http_addr: Option<String>) -> anyhow::Result<()> {
    let base_url = super::gateway_url(args.url, http_addr)?;
    let api = Api::new(&base_url, args.api_key);
    // A file is written beside its final name and renamed at the end: an interrupted export
    // leaves no truncated file behind.
    let tmp = args.output.as_ref().map(|path| {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        PathBuf::from(tmp)
    });
    let sink: Box<dyn Write> = match &tmp {
        Some(tmp) => Box::new(std::fs::File::create(tmp).with_context(|| format!("cannot create {}", tmp.display()))?),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut writer = csv::Writer::from_writer(std::io::BufWriter::new(sink));
    let written = write_pages(&api, &mut writer).await;
    drop(writer);
    let count = match written {
        Ok(count) => count,
        Err(error) => {
            if let Some(tmp) = &tmp {
                let _ = std::fs::remove_file(tmp);
            }
            return Err(error);
        }
    };
    match (&tmp, &args.output) {
        (Some(tmp), Some(path)) => {
            std::fs::rename(tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
            eprintln!("Exported {count} licenses to {}.", path.display());
        }
        _ => eprintln!("Exported {count} licenses."),
    }
    Ok(())
}

/// Writes the header and every page; answers the number of licenses written.
async fn write_pages<W: Write>(api: &Api, writer: &mut csv::Writer<W>) -> anyhow::Result<u64> {
    writer.write_record(COLUMNS)?;
    let mut cursor: Option<String> = None;
    let mut count = 0u64;
    loop {
        let mut path = format!("/v1/licenses?limit={PAGE_SIZE}");
        if let Some(cursor) = &cursor {
            path.push_str("&cursor=");
            path.push_str(&encode(cursor));
        }
        let reply = if cursor.is_none() {
            api.first_contact(&path).await.map_err(|e| anyhow::anyhow!("cannot reach the gateway at {} ({e:#}); is it running? (--url)", api.base_url()))?
        } else {
            api.call(Method::GET, &path, None, None).await.map_err(|r| {
                anyhow::anyhow!("cannot read the licenses from {} after {count} ({}: {})", api.base_url(), r.code, r.detail)
            })?
        };
        if reply.status != StatusCode::OK {
            let reject = reply.reject();
            bail!("the gateway at {} answered {}: {}: {}", api.base_url(), reply.status, reject.code, reject.detail);
        }
        let page: Page<ListedLicense> = serde_json::from_value(reply.body).context("unexpected answer from GET /v1/licenses")?;
        for item in &page.items {
            writer.write_record(record(item))?;
            count += 1;
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    writer.flush()?;
    Ok(count)
}

/// One license as a CSV record, in [`COLUMNS`] order.
fn record(item: &ListedLicense) -> [String; 11] {
    let l = &item.license;
    [
        item.customer_email.clone(),
        l.product.clone(),
        l.expires_at.clone().unwrap_or_default(),
        l.seat_limit.map(|n| n.to_string()).unwrap_or_default(),
        l.status.clone(),
        l.seats_used.to_string(),
        l.id.clone(),
        l.license_key_id.clone(),
        l.key_hint.clone(),
        l.created_at.clone(),
        l.updated_at.clone(),
    ]
}

/// Percent-encodes a query value (the cursor is opaque: it may hold any character).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { char::from(b).to_string() } else { format!("%{b:02X}") })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::rows::Header;

    #[test]
    fn an_exported_record_imports_as_the_same_license() {
        let item: ListedLicense = serde_json::from_value(serde_json::json!({
            "id": "l1", "license_key_id": "k1", "key_hint": "RM-…-7F3K", "product": "app", "status": "valid",
            "expires_at": null, "seat_limit": null, "seats_used": 0, "seats_remaining": null,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z", "version": 1,
            "customer_email": "a@b.io"
        }))
        .unwrap();
        let header = Header::parse(&COLUMNS.map(String::from)).unwrap();
        let license = header.row(&record(&item)).unwrap();
        let body = license.body(&crate::transfer::rows::KeyChoice::Latest);
        assert_eq!(body, serde_json::json!({"customer_email": "a@b.io", "products": [{"code": "app", "seat_limit": null, "expires_at": null}]}));
        assert_eq!(encode("a b/ü"), "a%20b%2F%C3%BC");
    }
}
