//! Tracing setup: human-readable lines by default, JSON with `CLS_LOG_FORMAT=json`; the filter
//! comes from `CLS_LOG` (e.g. `info,cls_worker=debug`), default `info`.

use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

/// Installs the global subscriber. Safe to call more than once (tests): later calls do nothing.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("CLS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(true);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
