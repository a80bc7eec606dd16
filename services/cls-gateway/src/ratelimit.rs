//! Rate limits (SPEC §3), shared by every gateway replica through Redis: per API key on brand
//! routes, per client IP and per license key on product routes, each `CLS_RATE_*` requests per
//! minute (0 = off).
//!
//! A bucket is a Redis counter that lives one minute from its first request (`INCR`, and
//! `PEXPIRE` when it is new, in one script): the limit holds per window, and `RateLimit-Reset`
//! is the time left in it. If Redis cannot answer, requests pass (fail open) and
//! `cls_rate_limit_fail_open_total` counts them: limits protect the service, they must not take
//! it down with Redis.

use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;
use hyper::header::HeaderValue;
use prometheus_client::metrics::counter::Counter;

/// The window every limit counts over.
const WINDOW: Duration = Duration::from_secs(60);

/// Counts one request in each bucket; returns `[count, ms left]` per bucket.
const HIT: &str = r#"
local out = {}
for i, key in ipairs(KEYS) do
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('PEXPIRE', key, ARGV[1]) end
  local ttl = redis.call('PTTL', key)
  if ttl < 0 then redis.call('PEXPIRE', key, ARGV[1]); ttl = tonumber(ARGV[1]) end
  out[#out + 1] = n
  out[#out + 1] = ttl
end
return out
"#;

/// What a request is counted against.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// `api_key`, `ip` or `license_key`.
    pub kind: &'static str,
    pub id: String,
    /// Requests per window; 0 = no limit.
    pub limit: u32,
}

/// The verdict for a request: allowed or not, and the headers that describe the tightest bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the tightest bucket's window ends.
    pub reset: u64,
}

impl Verdict {
    /// Adds `RateLimit-Limit`, `-Remaining`, `-Reset` (and `Retry-After` when refused).
    pub fn apply(&self, headers: &mut hyper::HeaderMap) {
        headers.insert("ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert("ratelimit-reset", HeaderValue::from(self.reset));
        if !self.allowed {
            headers.insert(hyper::header::RETRY_AFTER, HeaderValue::from(self.reset.max(1)));
        }
    }
}

pub struct Limiter {
    redis: fred::clients::Client,
    namespace: String,
    script: Script,
    pub fail_opens: Counter,
}

impl Limiter {
    pub fn new(redis: fred::clients::Client, namespace: &str) -> Limiter {
        Limiter { redis, namespace: namespace.to_owned(), script: Script::from_lua(HIT), fail_opens: Counter::default() }
    }

    /// For `/health/cache`: without Redis, requests pass unlimited (fail open).
    pub async fn ping(&self) -> Result<(), String> {
        if !self.redis.is_connected() {
            return Err("Redis is not connected; rate limits fail open".to_owned());
        }
        self.redis.ping::<String>(None).await.map(|_| ()).map_err(|e| format!("Redis does not answer ({e}); rate limits fail open"))
    }

    pub async fn quit(&self) {
        let _ = self.redis.quit().await;
    }

    /// Counts the request in every bucket whose limit is on; `None` when no limit applies.
    pub async fn check(&self, buckets: &[Bucket]) -> Option<Verdict> {
        let active: Vec<&Bucket> = buckets.iter().filter(|b| b.limit > 0).collect();
        if active.is_empty() {
            return None;
        }
        let keys: Vec<String> = active.iter().map(|b| format!("{}:rl:{}:{}", self.namespace, b.kind, b.id)).collect();
        let counted: Result<Vec<i64>, _> = if self.redis.is_connected() {
            self.script.evalsha_with_reload(&self.redis, keys, vec![WINDOW.as_millis() as u64]).await
        } else {
            Err(fred::error::Error::new(fred::error::ErrorKind::IO, "not connected"))
        };
        let counted = match counted {
            Ok(c) if c.len() == active.len() * 2 => c,
            other => {
                if let Err(error) = other {
                    tracing::debug!(%error, "rate limiter unavailable; letting the request pass");
                }
                self.fail_opens.inc();
                return None;
            }
        };
        let verdicts = active.iter().zip(counted.chunks(2)).map(|(b, c)| {
            let (count, ttl_ms) = (c[0].max(0) as u64, c[1].max(0) as u64);
            Verdict {
                allowed: count <= b.limit as u64,
                limit: b.limit,
                remaining: (b.limit as u64).saturating_sub(count) as u32,
                reset: ttl_ms.div_ceil(1000),
            }
        });
        // The refusing bucket if any, else the one with the fewest requests left.
        verdicts.min_by_key(|v| (v.allowed, v.remaining))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_says_when_to_retry() {
        let mut headers = hyper::HeaderMap::new();
        Verdict { allowed: false, limit: 120, remaining: 0, reset: 17 }.apply(&mut headers);
        assert_eq!(headers["retry-after"], "17");
        assert_eq!(headers["ratelimit-limit"], "120");
        assert_eq!(headers["ratelimit-remaining"], "0");
        let mut headers = hyper::HeaderMap::new();
        Verdict { allowed: true, limit: 6000, remaining: 5999, reset: 60 }.apply(&mut headers);
        assert!(headers.get("retry-after").is_none());
    }
}
