//! Rate limits (SPEC §3), shared by every gateway replica through Redis: per API key on brand
//! routes, per client IP and per license key on product routes, each `CLS_RATE_*` requests per
//! minute (0 = off).
//!
//! # Windows
//!
//! A bucket counts over fixed one-minute windows. A window's shared count is the Redis counter
//! `<ns>:rl:<kind>:<id>`, which lives one minute from its creation: the window starts with the
//! bucket's first counted request, and `RateLimit-Reset` is the time left in it. Replicas learn
//! a window's end as Redis's time left (`PTTL`), a duration, so their clocks need not agree.
//!
//! # Counting without a round trip per request
//!
//! A request never waits for Redis. Each gateway counts in memory, per bucket (a [`Slot`] in a
//! sharded map, see [`Counts`]), and decides on *the shared total Redis last reported + what
//! this gateway counted since*. Every [`FLUSH_INTERVAL`] a background task sends the deltas of
//! every bucket counted since the previous flush in one script call (`INCRBY`, and `PEXPIRE`
//! when the counter is new); the answer, each counter's new total and time left, becomes the
//! next "last reported". Every counted request is added, refused ones too, as before this
//! design: the counter says how hard a bucket is being pushed.
//!
//! A bucket seen for the first time in a window is decided on its local count alone until its
//! first flush answers, rather than with one synchronous read: a product validates its license
//! key a few times an hour, so for license keys (and client IPs) that read would be a round trip
//! on almost every request — the cost this design removes. The price is in the bound below.
//!
//! # How far over a limit the replicas can go
//!
//! **One gateway is exact**: every request it counted is either in the total Redis reported or
//! in its own deltas since, so with limit L the (L+1)-th request of a window is refused.
//!
//! **N replicas**: a replica does not see what the others counted after the total it last read.
//! Once the shared total reaches L, the others' deltas reach Redis within one flush interval
//! plus a round trip, and each replica reads them back with its own next flush, within another.
//! So beyond L, each replica admits at most the requests it receives for that bucket in about
//! two flush intervals (≈ 200 ms; a bucket first seen, or resumed after a pause, is decided on
//! its stale total for one flush at most, which falls inside the same bound): the overshoot per
//! window is at most N × (requests per replica in two flush intervals), and never more than
//! (N − 1) × L, since each replica counts its own requests exactly. Example: a license key
//! (120/min) hammered at 50 requests/s through each of 3 replicas gets at most about 30 extra
//! answers before every replica refuses it.
//!
//! # Memory
//!
//! A slot lives until its window ends; a sweep every [`SWEEP_EVERY`] flushes drops ended
//! windows, so memory follows the buckets active in the last minute, at most [`MAX_SLOTS`]
//! (under 200 bytes each with a 64-character id: ≈ 20 MB). A new bucket that finds its shard
//! full is counted with one synchronous script call, the way every request was before this
//! design: slower, never unlimited.
//!
//! # Fail open
//!
//! While Redis is unavailable (the client is disconnected, or the last flush failed), requests
//! pass without `RateLimit-*` headers and `cls_rate_limit_fail_open_total` counts them (SPEC §3):
//! limits protect the service, they must not take it down with Redis. Counting continues
//! locally meanwhile, so when Redis answers again the window's deltas reach it and the limits
//! apply with the outage's requests included. (Deciding on the local count during an outage
//! would keep one replica exact, but SPEC §3 says requests pass.)
//!
//! The key names and the script's meaning are those of the previous design (one `INCR` per
//! request), so replicas of both versions share their counters during a rolling deploy.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::scripts::Script;
use hyper::header::HeaderValue;
use prometheus_client::metrics::counter::Counter;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// The window every limit counts over, in milliseconds.
const WINDOW_MS: u64 = 60_000;

/// How often the local deltas are sent to Redis (and the other replicas' counts read back).
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Ended windows are swept every this many flushes (once a second).
const SWEEP_EVERY: u32 = 10;

/// Independently locked parts of the local counts, so requests on different buckets do not wait
/// on one lock.
const SHARDS: usize = 32;

/// Buckets counted locally at most; beyond, a new bucket is counted in Redis synchronously.
const MAX_SLOTS: usize = 100_000;

/// Buckets per script call, so one flush after a burst of new buckets cannot hold Redis for
/// long (Redis runs a script alone).
const MAX_KEYS_PER_CALL: usize = 1_000;

/// The last flush, at shutdown, gives up after this long.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Adds each bucket's delta to its window's counter; a new counter lives one window.
/// `KEYS`: the buckets; `ARGV[1]`: the window (ms); `ARGV[i + 1]`: the delta of `KEYS[i]`.
/// Returns `[total, ms left]` per bucket, `[-1, -1]` for a bucket whose counter could not be
/// incremented (not an integer, out of memory): `pcall`, because Redis does not undo a script's
/// earlier writes when a later one fails, and a delta sent again must not count twice.
const ADD: &str = r#"
local out = {}
for i, key in ipairs(KEYS) do
  local n = redis.pcall('INCRBY', key, ARGV[i + 1])
  if type(n) == 'table' then
    out[#out + 1] = -1
    out[#out + 1] = -1
  else
    local ttl = redis.call('PTTL', key)
    if ttl < 0 then redis.call('PEXPIRE', key, ARGV[1]); ttl = tonumber(ARGV[1]) end
    out[#out + 1] = n
    out[#out + 1] = ttl
  end
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

    /// The refusing verdict if either refuses, else the one with fewer requests left (the first
    /// on a tie).
    fn tightest(current: Option<Verdict>, next: Verdict) -> Option<Verdict> {
        Some(match current {
            Some(v) if (v.allowed, v.remaining) <= (next.allowed, next.remaining) => v,
            _ => next,
        })
    }
}

/// A bucket's count in its current window, as this gateway knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    /// Requests in the window, this one included.
    total: u64,
    /// When the window ends, on the limiter's clock (ms).
    end: u64,
}

impl Tally {
    fn verdict(self, limit: u32, now: u64) -> Verdict {
        Verdict {
            allowed: self.total <= u64::from(limit),
            limit,
            remaining: u64::from(limit).saturating_sub(self.total) as u32,
            reset: self.end.saturating_sub(now).div_ceil(1000).clamp(1, WINDOW_MS / 1000),
        }
    }
}

pub struct Limiter {
    inner: Arc<Inner>,
    /// Requests let through because Redis was unavailable (`cls_rate_limit_fail_open_total`).
    pub fail_opens: Counter,
    /// Stops the flusher: cancelled by [`Limiter::quit`], after the last request, or on drop.
    stop: CancellationToken,
    /// The flusher task, awaited by `quit` so the last deltas reach Redis before it disconnects.
    flusher: Mutex<Option<JoinHandle<()>>>,
}

/// What the request path and the flusher share.
struct Inner {
    redis: fred::clients::Client,
    namespace: String,
    script: Script,
    counts: Counts,
    /// Whether Redis answered the last flush: while it does not, requests fail open. Kept by
    /// the flusher, so a request reads one atomic instead of the client's state.
    available: AtomicBool,
    /// The limiter's clock is milliseconds since this instant (monotonic; windows only ever
    /// cross replicas as durations).
    epoch: Instant,
}

impl Limiter {
    /// A limiter whose flusher runs until [`Limiter::quit`] (or until it is dropped).
    pub fn new(redis: fred::clients::Client, namespace: &str) -> Limiter {
        let limiter = Limiter::idle(redis, namespace, MAX_SLOTS);
        let flusher = tokio::spawn(flush_every(limiter.inner.clone(), limiter.stop.clone()));
        *lock(&limiter.flusher) = Some(flusher);
        limiter
    }

    /// A limiter without the flusher: its deltas reach Redis when [`Limiter::flush`] is called.
    fn idle(redis: fred::clients::Client, namespace: &str, max_slots: usize) -> Limiter {
        let available = AtomicBool::new(redis.is_connected());
        let inner = Inner {
            redis,
            namespace: namespace.to_owned(),
            script: Script::from_lua(ADD),
            counts: Counts::new(max_slots.div_ceil(SHARDS)),
            available,
            epoch: Instant::now(),
        };
        Limiter { inner: Arc::new(inner), fail_opens: Counter::default(), stop: CancellationToken::new(), flusher: Mutex::new(None) }
    }

    /// For `/health/cache`: without Redis, requests pass unlimited (fail open).
    pub async fn ping(&self) -> Result<(), String> {
        let redis = &self.inner.redis;
        if !redis.is_connected() {
            return Err("Redis is not connected; rate limits fail open".to_owned());
        }
        redis.ping::<String>(None).await.map(|_| ()).map_err(|e| format!("Redis does not answer ({e}); rate limits fail open"))
    }

    /// Stops the flusher after one last flush, then disconnects. Called once the server has
    /// stopped taking requests, so every counted request reaches the shared windows.
    pub async fn quit(&self) {
        self.stop.cancel();
        let flusher = lock(&self.flusher).take();
        if let Some(flusher) = flusher {
            let _ = flusher.await;
        }
        let _ = self.inner.redis.quit().await;
    }

    /// Counts the request in every bucket whose limit is on; `None` when no limit applies or
    /// when it fails open.
    pub async fn check(&self, buckets: &[Bucket]) -> Option<Verdict> {
        self.decide(buckets, self.inner.now()).await
    }

    async fn decide(&self, buckets: &[Bucket], now: u64) -> Option<Verdict> {
        let mut verdict = None;
        let mut overflow = Vec::new();
        for bucket in buckets.iter().filter(|b| b.limit > 0) {
            match self.inner.counts.count(bucket.kind, &bucket.id, now) {
                Some(tally) => verdict = Verdict::tightest(verdict, tally.verdict(bucket.limit, now)),
                None => overflow.push(bucket),
            }
        }
        if verdict.is_none() && overflow.is_empty() {
            return None;
        }
        if !self.inner.available.load(Ordering::Relaxed) {
            self.fail_opens.inc();
            return None;
        }
        if !overflow.is_empty() {
            match self.inner.add(overflow.iter().map(|b| (b.kind, b.id.as_str(), 1))).await {
                Ok(answers) => {
                    for (bucket, (total, left)) in overflow.iter().zip(answers) {
                        // A counter that refused the increment (-1) leaves the decision to the others.
                        if let (Ok(total), Ok(left)) = (u64::try_from(total), u64::try_from(left)) {
                            verdict = Verdict::tightest(verdict, Tally { total, end: now + left }.verdict(bucket.limit, now));
                        }
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "rate limiter unavailable; letting the request pass");
                    self.fail_opens.inc();
                    return None;
                }
            }
        }
        verdict
    }

    /// Sends the deltas counted since the last flush and takes the shared totals back.
    #[cfg(test)]
    async fn flush(&self, now: u64) {
        self.inner.flush(now).await;
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The flusher: every [`FLUSH_INTERVAL`] until `stop`, then once more.
async fn flush_every(inner: Arc<Inner>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    // A slow flush (Redis at its command timeout) delays the next one instead of bunching them.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut flushes = 0u32;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        inner.flush(inner.now()).await;
        flushes = flushes.wrapping_add(1);
        if flushes.is_multiple_of(SWEEP_EVERY) {
            inner.counts.evict(inner.now());
        }
    }
    // The requests counted since the last tick belong to the shared windows too.
    let _ = tokio::time::timeout(FINAL_FLUSH_TIMEOUT, inner.flush(inner.now())).await;
}

impl Inner {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// One flush: every bucket counted since the last one, in calls of at most
    /// [`MAX_KEYS_PER_CALL`] buckets. What Redis did not take stays counted here for the next.
    async fn flush(&self, now: u64) {
        if !self.redis.is_connected() {
            self.set_available(false, "not connected");
            return;
        }
        let mut batch = self.counts.take_dirty(now);
        if batch.is_empty() {
            // Nothing to send: while marked unavailable, a ping decides when Redis is back.
            if !self.available.load(Ordering::Relaxed) {
                match self.redis.ping::<String>(None).await {
                    Ok(_) => self.set_available(true, ""),
                    Err(error) => self.set_available(false, &error.to_string()),
                }
            }
            return;
        }
        while !batch.is_empty() {
            let call: Vec<Sending> = batch.drain(..batch.len().min(MAX_KEYS_PER_CALL)).collect();
            match self.add(call.iter().map(|s| (s.kind, &*s.id, s.delta))).await {
                Ok(answers) => self.counts.settle(call, &answers, now),
                Err(error) => {
                    self.counts.restore(call);
                    self.counts.restore(batch);
                    self.set_available(false, &error.to_string());
                    return;
                }
            }
        }
        self.set_available(true, "");
    }

    /// Runs [`ADD`]: `(kind, id, delta)` per bucket → `(total, ms left)` per bucket.
    async fn add<'a>(&self, deltas: impl Iterator<Item = (&'a str, &'a str, u64)>) -> Result<Vec<(i64, i64)>, fred::error::Error> {
        let mut keys = Vec::new();
        let mut args = vec![WINDOW_MS];
        for (kind, id, delta) in deltas {
            keys.push(format!("{}:rl:{kind}:{id}", self.namespace));
            args.push(delta);
        }
        let expected = keys.len();
        let answer: Vec<i64> = self.script.evalsha_with_reload(&self.redis, keys, args).await?;
        if answer.len() != expected * 2 {
            return Err(fred::error::Error::new(fred::error::ErrorKind::Protocol, "unexpected answer from the rate-limit script"));
        }
        Ok(answer.chunks(2).map(|c| (c[0], c[1])).collect())
    }

    /// Logs only the changes, not every failed flush of an outage.
    fn set_available(&self, available: bool, reason: &str) {
        let was = self.available.swap(available, Ordering::Relaxed);
        if was && !available {
            tracing::warn!(reason, "rate limiter: Redis is unavailable; requests pass unlimited (fail open) until it answers");
        } else if !was && available {
            tracing::info!("rate limiter: Redis answers; limits apply");
        }
    }
}

/// This gateway's counts, in [`SHARDS`] independently locked parts. A std `Mutex<HashMap>`
/// per shard, not a concurrent-map crate (DashMap is the same design): a critical section is
/// one lookup and a few additions, and the flusher takes each lock once per flush.
struct Counts {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// Slots per shard before new buckets are counted in Redis synchronously.
    capacity: usize,
}

#[derive(Default)]
struct Shard {
    kinds: Kinds,
    /// The buckets counted since the last flush, each once (see [`Slot::queued`]).
    dirty: Vec<(&'static str, Arc<str>)>,
    /// Slots in `kinds`.
    len: usize,
}

/// The slots by id, per bucket kind (`api_key`, `ip`, `license_key`: a handful, so a list).
type Kinds = Vec<(&'static str, HashMap<Arc<str>, Slot>)>;

/// One bucket's current window.
#[derive(Debug)]
struct Slot {
    /// The bucket's id (shared with the map's key and the dirty list).
    id: Arc<str>,
    /// When this window started (limiter's clock, ms). It names the window: a flush answer about
    /// an earlier window of the same bucket is ignored.
    started: u64,
    /// When it ends: `started` + one window, then as Redis's time left says after each flush
    /// (at most a round trip early, since the time left is counted from sending).
    end: u64,
    /// The window's total as Redis last reported it: every replica's flushed requests.
    shared: u64,
    /// Requests in the flush in flight.
    sending: u64,
    /// Requests counted since that flush was taken.
    unsent: u64,
    /// Whether the bucket is on its shard's dirty list.
    queued: bool,
}

/// A bucket's delta in a flush.
struct Sending {
    shard: usize,
    kind: &'static str,
    id: Arc<str>,
    /// The window the delta belongs to ([`Slot::started`]).
    started: u64,
    delta: u64,
}

impl Slot {
    fn new(id: Arc<str>, now: u64) -> Slot {
        Slot { id, started: now, end: now + WINDOW_MS, shared: 0, sending: 0, unsent: 0, queued: false }
    }

    /// Counts one request, starting a new window if the last one has ended.
    fn count(&mut self, kind: &'static str, now: u64, dirty: &mut Vec<(&'static str, Arc<str>)>) -> Tally {
        if now >= self.end {
            // What the ended window still had unsent no longer matters to anyone.
            (self.started, self.end, self.shared, self.sending, self.unsent) = (now, now + WINDOW_MS, 0, 0, 0);
        }
        self.unsent += 1;
        if !self.queued {
            self.queued = true;
            dirty.push((kind, self.id.clone()));
        }
        Tally { total: self.shared + self.sending + self.unsent, end: self.end }
    }
}

fn slots_of<'k>(kinds: &'k mut Kinds, kind: &'static str) -> &'k mut HashMap<Arc<str>, Slot> {
    let at = match kinds.iter().position(|(k, _)| *k == kind) {
        Some(at) => at,
        None => {
            kinds.push((kind, HashMap::new()));
            kinds.len() - 1
        }
    };
    &mut kinds[at].1
}

fn slot_in<'k>(kinds: &'k mut Kinds, kind: &str, id: &str) -> Option<&'k mut Slot> {
    kinds.iter_mut().find(|(k, _)| *k == kind).and_then(|(_, slots)| slots.get_mut(id))
}

impl Counts {
    fn new(capacity: usize) -> Counts {
        Counts { shards: (0..SHARDS).map(|_| Mutex::default()).collect(), hasher: RandomState::new(), capacity }
    }

    /// Counts one request in a bucket: its tally, or `None` when its shard has no room left for
    /// a new bucket.
    fn count(&self, kind: &'static str, id: &str, now: u64) -> Option<Tally> {
        let mut shard = lock(&self.shards[self.hasher.hash_one((kind, id)) as usize % SHARDS]);
        let Shard { kinds, dirty, len } = &mut *shard;
        let slots = slots_of(kinds, kind);
        if let Some(slot) = slots.get_mut(id) {
            return Some(slot.count(kind, now, dirty));
        }
        if *len >= self.capacity {
            return None;
        }
        *len += 1;
        let id: Arc<str> = Arc::from(id);
        Some(slots.entry(id.clone()).or_insert_with(|| Slot::new(id, now)).count(kind, now, dirty))
    }

    /// Takes every delta counted since the last flush (of windows still running), moving it
    /// from `unsent` to `sending`.
    fn take_dirty(&self, now: u64) -> Vec<Sending> {
        let mut out = Vec::new();
        for (at, shard) in self.shards.iter().enumerate() {
            let mut shard = lock(shard);
            let Shard { kinds, dirty, .. } = &mut *shard;
            for (kind, id) in dirty.drain(..) {
                let Some(slot) = slot_in(kinds, kind, &id) else { continue };
                slot.queued = false;
                if slot.end <= now || slot.unsent == 0 {
                    continue;
                }
                let delta = std::mem::take(&mut slot.unsent);
                slot.sending += delta;
                out.push(Sending { shard: at, kind, id, started: slot.started, delta });
            }
        }
        out
    }

    /// Takes Redis's answers to a flush sent at `sent_at`: each window's new shared total (our
    /// delta included) and its end. A bucket whose counter refused the increment keeps its delta
    /// for the next flush.
    fn settle(&self, sent: Vec<Sending>, answers: &[(i64, i64)], sent_at: u64) {
        let mut refused = Vec::new();
        for (s, &(total, left)) in sent.into_iter().zip(answers) {
            let (Ok(total), Ok(left)) = (u64::try_from(total), u64::try_from(left)) else {
                refused.push(s);
                continue;
            };
            let mut shard = lock(&self.shards[s.shard]);
            if let Some(slot) = slot_in(&mut shard.kinds, s.kind, &s.id).filter(|slot| slot.started == s.started) {
                slot.shared = total;
                slot.sending = slot.sending.saturating_sub(s.delta);
                slot.end = sent_at + left;
            }
        }
        if !refused.is_empty() {
            tracing::debug!(buckets = refused.len(), "rate limiter: Redis refused some counters' increments; kept locally");
            self.restore(refused);
        }
    }

    /// Puts back deltas Redis did not take, to be sent with the next flush.
    fn restore(&self, sent: Vec<Sending>) {
        for s in sent {
            let mut shard = lock(&self.shards[s.shard]);
            let Shard { kinds, dirty, .. } = &mut *shard;
            if let Some(slot) = slot_in(kinds, s.kind, &s.id).filter(|slot| slot.started == s.started) {
                slot.sending = slot.sending.saturating_sub(s.delta);
                slot.unsent += s.delta;
                if !slot.queued {
                    slot.queued = true;
                    dirty.push((s.kind, s.id));
                }
            }
        }
    }

    /// Drops the slots whose window has ended.
    fn evict(&self, now: u64) {
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let mut len = 0;
            for (_, slots) in &mut shard.kinds {
                slots.retain(|_, slot| slot.end > now);
                len += slots.len();
            }
            shard.len = len;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len).sum()
    }
}

/// The counts stay consistent even if a thread panicked holding a lock (nothing in a critical
/// section can leave a slot half-written), so a poisoned lock is simply taken.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The machine's Redis (tests use a namespace of their own and delete it afterwards).
    const REDIS_URL: &str = "redis://127.0.0.1:6379";

    fn bucket(kind: &'static str, id: &str, limit: u32) -> Bucket {
        Bucket { kind, id: id.to_owned(), limit }
    }

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

    #[test]
    fn the_refusing_or_emptiest_bucket_describes_the_request() {
        let roomy = Verdict { allowed: true, limit: 100, remaining: 50, reset: 30 };
        let tight = Verdict { allowed: true, limit: 10, remaining: 2, reset: 40 };
        let refused = Verdict { allowed: false, limit: 100, remaining: 0, reset: 5 };
        assert_eq!(Verdict::tightest(Verdict::tightest(None, roomy), tight), Some(tight));
        assert_eq!(Verdict::tightest(Some(tight), refused), Some(refused));
        assert_eq!(Verdict::tightest(Some(refused), tight), Some(refused));
    }

    // The local counts, with Redis's answers written by hand.

    #[test]
    fn the_total_is_the_shared_one_plus_what_was_counted_since() {
        let counts = Counts::new(10);
        let totals: Vec<u64> = (0..3).map(|_| counts.count("ip", "a", 0).unwrap().total).collect();
        assert_eq!(totals, [1, 2, 3]);
        let sent = counts.take_dirty(10);
        assert_eq!(sent.iter().map(|s| s.delta).collect::<Vec<_>>(), [3]);
        // Counted while the flush is in flight: its 3 are still in the total.
        assert_eq!(counts.count("ip", "a", 20).unwrap().total, 4);
        // Redis answers 10: 3 from here, 7 from other replicas; the window ends 55 s after sending.
        counts.settle(sent, &[(10, 55_000)], 10);
        assert_eq!(counts.count("ip", "a", 30).unwrap(), Tally { total: 12, end: 55_010 });
        assert_eq!(counts.take_dirty(40).iter().map(|s| s.delta).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn a_window_ends_and_its_slot_is_swept() {
        let counts = Counts::new(10);
        counts.count("ip", "a", 0);
        counts.count("ip", "a", 1);
        assert_eq!(counts.count("ip", "a", WINDOW_MS).unwrap(), Tally { total: 1, end: 2 * WINDOW_MS }, "a new window");
        counts.count("ip", "b", 10);
        counts.evict(WINDOW_MS + 10);
        assert_eq!(counts.len(), 1, "b's window has ended");
        counts.evict(2 * WINDOW_MS);
        assert_eq!(counts.len(), 0);
        assert!(counts.take_dirty(2 * WINDOW_MS).is_empty(), "nothing left to send");
    }

    #[test]
    fn an_answer_about_an_ended_window_is_ignored() {
        let counts = Counts::new(10);
        counts.count("ip", "a", 0);
        let sent = counts.take_dirty(1);
        counts.count("ip", "a", WINDOW_MS);
        counts.settle(sent, &[(100, 1_000)], 1);
        assert_eq!(counts.count("ip", "a", WINDOW_MS + 1).unwrap(), Tally { total: 2, end: 2 * WINDOW_MS });
    }

    #[test]
    fn deltas_redis_did_not_take_are_sent_again() {
        let counts = Counts::new(10);
        counts.count("ip", "a", 0);
        counts.count("ip", "a", 0);
        counts.count("ip", "b", 0);
        // The call failed.
        let sent = counts.take_dirty(1);
        counts.restore(sent);
        counts.count("ip", "a", 2);
        // Then `b`'s counter refused the increment.
        let mut sent = counts.take_dirty(3);
        sent.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(sent.iter().map(|s| (&*s.id, s.delta)).collect::<Vec<_>>(), [("a", 3), ("b", 1)]);
        counts.settle(sent, &[(3, 59_000), (-1, -1)], 3);
        assert_eq!(counts.count("ip", "b", 4).unwrap().total, 2, "b's first request is still counted");
        let sent = counts.take_dirty(5);
        assert_eq!(sent.iter().map(|s| (&*s.id, s.delta)).collect::<Vec<_>>(), [("b", 2)]);
    }

    #[test]
    fn a_full_shard_takes_no_new_bucket() {
        let counts = Counts::new(0);
        assert_eq!(counts.count("ip", "a", 0), None);
        let counts = Counts::new(1);
        assert!(counts.count("ip", "a", 0).is_some());
        assert_eq!(counts.count("ip", "a", 0).unwrap().total, 2, "a bucket it holds is still counted");
    }

    // Against the real Redis.

    struct TestRedis {
        client: fred::clients::Client,
        namespace: String,
    }

    impl TestRedis {
        async fn new() -> TestRedis {
            let client = cls_readmodel::connect_redis(REDIS_URL).await.expect("redis client");
            client.wait_for_connect().await.expect("the local Redis answers");
            TestRedis { client, namespace: format!("rltest{}", uuid::Uuid::new_v4().simple()) }
        }

        fn limiter(&self, max_slots: usize) -> Limiter {
            Limiter::idle(self.client.clone(), &self.namespace, max_slots)
        }

        async fn counter(&self, kind: &str, id: &str) -> Option<u64> {
            self.client.get(format!("{}:rl:{kind}:{id}", self.namespace)).await.expect("GET")
        }

        async fn cleanup(self) {
            let keys: Vec<String> = self
                .client
                .custom(fred::types::CustomCommand::new_static("KEYS", fred::types::ClusterHash::FirstKey, false), vec![format!("{}:*", self.namespace)])
                .await
                .expect("KEYS");
            if !keys.is_empty() {
                let _: i64 = self.client.del(keys).await.expect("DEL");
            }
            let _ = self.client.quit().await;
        }
    }

    /// Sends one request through `limiter` and returns its verdict (which must exist).
    async fn hit(limiter: &Limiter, buckets: &[Bucket], now: u64) -> Verdict {
        limiter.decide(buckets, now).await.expect("a limit applies")
    }

    #[tokio::test]
    async fn one_gateway_is_exact_whenever_it_flushes() {
        let redis = TestRedis::new().await;
        let limiter = redis.limiter(MAX_SLOTS);
        let key = [bucket("license_key", "k1", 5)];
        let mut remaining = Vec::new();
        for n in 0..6u64 {
            let v = hit(&limiter, &key, n).await;
            assert!((1..=60).contains(&v.reset), "reset {}", v.reset);
            remaining.push((v.allowed, v.remaining));
            if n % 2 == 1 {
                limiter.flush(n).await;
            }
        }
        assert_eq!(remaining, [(true, 4), (true, 3), (true, 2), (true, 1), (true, 0), (false, 0)]);
        assert_eq!(redis.counter("license_key", "k1").await, Some(6));
        assert_eq!(limiter.fail_opens.get(), 0);
        redis.cleanup().await;
    }

    #[tokio::test]
    async fn replicas_share_a_bucket_within_one_flush() {
        let redis = TestRedis::new().await;
        let (a, b) = (redis.limiter(MAX_SLOTS), redis.limiter(MAX_SLOTS));
        let key = [bucket("api_key", "shared", 10)];
        for _ in 0..6 {
            assert!(hit(&a, &key, 0).await.allowed);
        }
        a.flush(0).await;
        // B's first request in this window is decided before B has read the shared total.
        assert_eq!(hit(&b, &key, 0).await.remaining, 9);
        b.flush(0).await;
        // Now B knows A's 6: three more pass, the fourth is refused.
        let answers: Vec<(bool, u32)> = hits(&b, &key, 4).await;
        assert_eq!(answers, [(true, 2), (true, 1), (true, 0), (false, 0)]);
        b.flush(0).await;
        assert_eq!(redis.counter("api_key", "shared").await, Some(11));
        // A still decides on the 6 it last read: one request over the limit passes there (the
        // overshoot the module doc bounds) until A's next flush reads the shared total back.
        assert_eq!(hit(&a, &key, 0).await.remaining, 3);
        a.flush(0).await;
        assert!(!hit(&a, &key, 0).await.allowed);
        a.flush(0).await;
        assert_eq!(redis.counter("api_key", "shared").await, Some(13), "every request is counted once");
        redis.cleanup().await;
    }

    async fn hits(limiter: &Limiter, buckets: &[Bucket], n: usize) -> Vec<(bool, u32)> {
        let mut out = Vec::new();
        for _ in 0..n {
            let v = hit(limiter, buckets, 0).await;
            out.push((v.allowed, v.remaining));
        }
        out
    }

    #[tokio::test]
    async fn during_an_outage_requests_pass_and_are_counted_for_later() {
        let redis = TestRedis::new().await;
        let limiter = redis.limiter(MAX_SLOTS);
        let key = [bucket("ip", "10.0.0.1", 2)];
        assert!(hit(&limiter, &key, 0).await.allowed);
        redis.client.quit().await.expect("QUIT");
        limiter.flush(1).await;
        for n in 0..3 {
            assert_eq!(limiter.decide(&key, 2 + n).await, None, "fails open, without headers");
        }
        assert_eq!(limiter.fail_opens.get(), 3);
        // Redis is back: the outage's requests reach it, and the limit applies again.
        redis.client.init().await.expect("reconnect");
        limiter.flush(10).await;
        assert_eq!(redis.counter("ip", "10.0.0.1").await, Some(4));
        let v = hit(&limiter, &key, 11).await;
        assert!(!v.allowed);
        assert_eq!(limiter.fail_opens.get(), 3);
        redis.cleanup().await;
    }

    #[tokio::test]
    async fn a_counter_redis_refuses_keeps_its_delta_without_counting_twice() {
        let redis = TestRedis::new().await;
        let limiter = redis.limiter(MAX_SLOTS);
        let broken = format!("{}:rl:ip:broken", redis.namespace);
        let _: () = redis.client.set(&broken, "not a number", None, None, false).await.expect("SET");
        for _ in 0..2 {
            hit(&limiter, &[bucket("ip", "broken", 100), bucket("license_key", "fine", 100)], 0).await;
        }
        limiter.flush(0).await;
        assert_eq!(redis.counter("license_key", "fine").await, Some(2), "the other buckets of the call are counted");
        let _: i64 = redis.client.del(&broken).await.expect("DEL");
        hit(&limiter, &[bucket("ip", "broken", 100)], 1).await;
        limiter.flush(1).await;
        assert_eq!(redis.counter("ip", "broken").await, Some(3));
        assert_eq!(redis.counter("license_key", "fine").await, Some(2), "sent once");
        redis.cleanup().await;
    }

    #[tokio::test]
    async fn without_room_a_new_bucket_is_counted_in_redis_at_once() {
        let redis = TestRedis::new().await;
        let limiter = redis.limiter(0);
        let key = [bucket("license_key", "k", 2)];
        let answers: Vec<bool> = vec![hit(&limiter, &key, 0).await.allowed, hit(&limiter, &key, 0).await.allowed, hit(&limiter, &key, 0).await.allowed];
        assert_eq!(answers, [true, true, false]);
        assert_eq!(redis.counter("license_key", "k").await, Some(3), "no flush needed");
        redis.cleanup().await;
    }

    #[tokio::test]
    async fn the_flusher_sends_the_counts_and_quit_sends_the_last_ones() {
        let redis = TestRedis::new().await;
        let own_client = cls_readmodel::connect_redis(REDIS_URL).await.expect("redis client");
        let limiter = Limiter::new(own_client, &redis.namespace);
        let key = [bucket("api_key", "bg", 100)];
        limiter.check(&key).await;
        limiter.check(&key).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.counter("api_key", "bg").await != Some(2) {
            assert!(Instant::now() < deadline, "the flusher did not send the counts");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        limiter.check(&key).await;
        limiter.quit().await;
        assert_eq!(redis.counter("api_key", "bg").await, Some(3));
        redis.cleanup().await;
    }
}
