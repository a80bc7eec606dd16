//! Typed settings, read from the environment once in `main` (SPEC §7 lists the variables).
//! Nothing below `main` reads the environment; tests build [`Settings`] directly.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

/// A secret value (token, key): printed as `***` so it never lands in a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A network of addresses, `10.0.0.0/8` or a single address (`127.0.0.1`, `::1`): what
/// `CLS_TRUSTED_PROXIES` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// `addr` or `addr/prefix`; the address may have host bits set (`10.1.2.3/8` is `10.0.0.0/8`).
    pub fn parse(text: &str) -> Option<IpRange> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr.parse::<IpAddr>().ok()?, Some(prefix.parse::<u8>().ok()?)),
            None => (text.trim().parse::<IpAddr>().ok()?, None),
        };
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(bits);
        (prefix <= bits).then_some(IpRange { network: addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client seen through an IPv6 socket arrives as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => same_prefix(u32::from(net).into(), u32::from(ip).into(), 32, self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => same_prefix(u128::from(net), u128::from(ip), 128, self.prefix),
            _ => false,
        }
    }
}

/// Whether the first `prefix` of `bits` bits of `a` and `b` are equal.
fn same_prefix(a: u128, b: u128, bits: u8, prefix: u8) -> bool {
    prefix == 0 || (a ^ b) >> (bits - prefix) == 0
}

/// The longest path a Unix socket can be bound to: `sun_path` holds 108 bytes, the terminating
/// NUL included.
pub const MAX_SOCKET_PATH: usize = 107;

/// Which CLS process this is; picks defaults such as the ops port and names connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    Gateway,
    Query,
    BrandsWorker,
    LicensesWorker,
    ActivationsWorker,
}

impl ServiceKind {
    pub fn name(self) -> &'static str {
        match self {
            ServiceKind::Gateway => "gateway",
            ServiceKind::Query => "query",
            ServiceKind::BrandsWorker => "brands-worker",
            ServiceKind::LicensesWorker => "licenses-worker",
            ServiceKind::ActivationsWorker => "activations-worker",
        }
    }

    /// Whether this process seals or opens the secrets in stored outcomes (`CLS_SECRET_KEY`).
    pub fn seals_outcomes(self) -> bool {
        !matches!(self, ServiceKind::Gateway)
    }

    /// Whether this process is on either end of the gateway → query service hop
    /// (`CLS_INTERNAL_TOKEN`).
    pub fn speaks_to_query(self) -> bool {
        matches!(self, ServiceKind::Gateway | ServiceKind::Query)
    }

    fn default_ops_port(self) -> u16 {
        match self {
            ServiceKind::Gateway => 9100,
            ServiceKind::Query => 9101,
            ServiceKind::BrandsWorker => 9102,
            ServiceKind::LicensesWorker => 9103,
            ServiceKind::ActivationsWorker => 9104,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything a CLS process can be configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `CLS_DATABASE_URL`.
    pub database_url: String,
    /// `CLS_REDIS_URL`.
    pub redis_url: String,
    /// `CLS_AMQP_URL`.
    pub amqp_url: String,
    /// `CLS_NAMESPACE`: prefix of every AMQP name and Redis key.
    pub namespace: String,
    /// `CLS_HTTP_ADDR`: the gateway's public address.
    pub http_addr: SocketAddr,
    /// `CLS_QUERY_ADDR`: the query service's internal address.
    pub query_addr: SocketAddr,
    /// `CLS_QUERY_URL`: where the gateway finds the query service (default `http://<query_addr>`).
    pub query_url: String,
    /// `CLS_QUERY_SOCKET`: a Unix socket the query service also listens on and the gateway then
    /// uses instead of `query_url`, when both run on one host (`cls up` sets it): the hop every
    /// read takes skips the TCP stack.
    pub query_socket: Option<PathBuf>,
    /// `CLS_OPS_ADDR`: this process's ops listener (health, readiness, metrics).
    pub ops_addr: SocketAddr,
    /// `CLS_ADMIN_TOKEN`: none means every admin call answers 401.
    pub admin_token: Option<Secret>,
    /// `CLS_SECRET_KEY`: seals secrets inside stored command outcomes. Required by the processes
    /// that seal or open them (workers, query service); the gateway runs without it.
    pub secret_key: Option<Secret>,
    /// `CLS_SECRET_KEY_PREVIOUS`: the key `CLS_SECRET_KEY` replaced, still used to open the
    /// outcomes sealed before the rotation (never to seal).
    pub secret_key_previous: Option<Secret>,
    /// `CLS_INTERNAL_TOKEN`: the credential the gateway presents to the query service. Required
    /// by those two; the workers run without it.
    pub internal_token: Option<Secret>,
    /// `CLS_REPLY_TIMEOUT_MS`: how long the gateway waits for a worker's reply before 202.
    pub reply_timeout: Duration,
    /// `CLS_SHUTDOWN_TIMEOUT_MS`: the bound on draining in-flight work at shutdown.
    pub shutdown_timeout: Duration,
    /// `CLS_DB_POOL_SIZE`: Postgres connections per process.
    pub db_pool_size: u32,
    /// `CLS_WORKER_CONCURRENCY`: commands a worker handles at once (also its prefetch).
    pub worker_concurrency: u16,
    /// `CLS_LOG_FORMAT`: `text` (default) or `json`.
    pub log_format: LogFormat,
    /// `CLS_SWEEP_INTERVAL_MS`: how often the licenses worker's expiry sweeper runs.
    pub sweep_interval: Duration,
    /// `CLS_RELAY_LINGER_MS`: how long a worker's outbox relay waits, once woken by a commit,
    /// before it publishes, so events that commit meanwhile go out in the same batch (0 = at
    /// once).
    pub relay_linger: Duration,
    /// `CLS_READ_FALLBACK_LIMIT`: hot reads (cache misses, or all of them while Redis is down)
    /// the query service sends to Postgres at once; more wait briefly, then get 503.
    pub read_fallback_limit: u32,
    /// `CLS_RATE_API_KEY`: requests per minute per API key on brand routes (0 = off).
    pub rate_api_key: u32,
    /// `CLS_RATE_IP`: requests per minute per client IP on product routes (0 = off).
    pub rate_ip: u32,
    /// `CLS_RATE_LICENSE_KEY`: requests per minute per license key on product routes (0 = off).
    pub rate_license_key: u32,
    /// `CLS_TRUSTED_PROXIES`: the proxies (addresses or networks, comma-separated) whose
    /// `X-Forwarded-For` the gateway believes when it limits by client IP; none by default.
    pub trusted_proxies: Vec<IpRange>,
}

impl Settings {
    /// Local defaults for `kind`, with the two secrets given (tests and `cls up` use this).
    pub fn local(kind: ServiceKind, secret_key: Secret, internal_token: Secret) -> Self {
        Settings { secret_key: Some(secret_key), internal_token: Some(internal_token), ..Settings::defaults(kind) }
    }

    /// Local defaults for `kind`, without secrets.
    fn defaults(kind: ServiceKind) -> Self {
        let query_addr: SocketAddr = "127.0.0.1:8081".parse().expect("literal address");
        Settings {
            database_url: "postgres://postgres@127.0.0.1:5432/cls".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            namespace: "cls".into(),
            http_addr: "127.0.0.1:8080".parse().expect("literal address"),
            query_addr,
            query_url: format!("http://{query_addr}"),
            query_socket: None,
            ops_addr: SocketAddr::from(([127, 0, 0, 1], kind.default_ops_port())),
            admin_token: None,
            secret_key: None,
            secret_key_previous: None,
            internal_token: None,
            reply_timeout: Duration::from_millis(5000),
            shutdown_timeout: Duration::from_secs(10),
            // Above the default concurrency (16 commands + 16 events) minus what waits on locks,
            // plus the relay's LISTEN connection.
            db_pool_size: 20,
            worker_concurrency: 16,
            log_format: LogFormat::Text,
            sweep_interval: Duration::from_secs(60),
            // One relay batch (and its broker writes) every 50 ms at most instead of one per
            // command: measured in docs/benchmarks.md, proposal 17.
            relay_linger: Duration::from_millis(50),
            read_fallback_limit: 8,
            rate_api_key: 6000,
            rate_ip: 1200,
            rate_license_key: 120,
            trusted_proxies: Vec::new(),
        }
    }

    /// Reads the environment (see the field docs for the variables). Fails with a clear message on
    /// a malformed value or a missing required secret.
    pub fn from_env(kind: ServiceKind) -> anyhow::Result<Self> {
        Self::from_lookup(kind, |name| std::env::var(name).ok())
    }

    /// [`Settings::from_env`] over any lookup, so the parsing is testable.
    pub fn from_lookup(kind: ServiceKind, get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        // A secret of 16+ characters, if set.
        let secret = |name: &str| match get(name) {
            Some(v) if v.len() >= 16 => Ok(Some(Secret::new(v))),
            Some(_) => bail!("{name} must be at least 16 characters"),
            None => Ok(None),
        };
        let required = |name: &str| {
            secret(name)?.with_context(|| format!("{name} is not set (`cls up` generates one for local use)"))
        };
        // Each secret goes only to the processes that use it; one that is set is checked anyway.
        let mut s = Settings::defaults(kind);
        s.secret_key = if kind.seals_outcomes() { Some(required("CLS_SECRET_KEY")?) } else { secret("CLS_SECRET_KEY")? };
        s.internal_token =
            if kind.speaks_to_query() { Some(required("CLS_INTERNAL_TOKEN")?) } else { secret("CLS_INTERNAL_TOKEN")? };
        s.secret_key_previous = secret("CLS_SECRET_KEY_PREVIOUS")?;
        if let Some(v) = get("CLS_DATABASE_URL") {
            s.database_url = v;
        }
        if let Some(v) = get("CLS_REDIS_URL") {
            s.redis_url = v;
        }
        if let Some(v) = get("CLS_AMQP_URL") {
            s.amqp_url = v;
        }
        if let Some(v) = get("CLS_NAMESPACE") {
            if !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') || v.len() > 64 {
                bail!("CLS_NAMESPACE must be 1-64 characters of a-z, A-Z, 0-9, '-' and '_'");
            }
            s.namespace = v;
        }
        if let Some(v) = get("CLS_HTTP_ADDR") {
            s.http_addr = v.parse().with_context(|| format!("CLS_HTTP_ADDR {v:?} is not host:port"))?;
        }
        if let Some(v) = get("CLS_QUERY_ADDR") {
            s.query_addr = v.parse().with_context(|| format!("CLS_QUERY_ADDR {v:?} is not host:port"))?;
            s.query_url = format!("http://{}", s.query_addr);
        }
        if let Some(v) = get("CLS_QUERY_URL") {
            s.query_url = v.trim_end_matches('/').to_owned();
        }
        if let Some(v) = get("CLS_QUERY_SOCKET") {
            if v.len() > MAX_SOCKET_PATH {
                bail!("CLS_QUERY_SOCKET must be a path of at most {MAX_SOCKET_PATH} bytes");
            }
            s.query_socket = Some(PathBuf::from(v));
        }
        if let Some(v) = get("CLS_OPS_ADDR") {
            s.ops_addr = v.parse().with_context(|| format!("CLS_OPS_ADDR {v:?} is not host:port"))?;
        }
        s.admin_token = get("CLS_ADMIN_TOKEN").map(Secret::new);
        if let Some(v) = get("CLS_REPLY_TIMEOUT_MS") {
            s.reply_timeout = Duration::from_millis(parse_num(&v, "CLS_REPLY_TIMEOUT_MS", 1, 120_000)?);
        }
        if let Some(v) = get("CLS_SHUTDOWN_TIMEOUT_MS") {
            s.shutdown_timeout = Duration::from_millis(parse_num(&v, "CLS_SHUTDOWN_TIMEOUT_MS", 1, 600_000)?);
        }
        if let Some(v) = get("CLS_DB_POOL_SIZE") {
            s.db_pool_size = parse_num(&v, "CLS_DB_POOL_SIZE", 1, 500)? as u32;
        }
        if let Some(v) = get("CLS_WORKER_CONCURRENCY") {
            s.worker_concurrency = parse_num(&v, "CLS_WORKER_CONCURRENCY", 1, 1000)? as u16;
        }
        if let Some(v) = get("CLS_SWEEP_INTERVAL_MS") {
            s.sweep_interval = Duration::from_millis(parse_num(&v, "CLS_SWEEP_INTERVAL_MS", 10, 86_400_000)?);
        }
        if let Some(v) = get("CLS_RELAY_LINGER_MS") {
            s.relay_linger = Duration::from_millis(parse_num(&v, "CLS_RELAY_LINGER_MS", 0, 10_000)?);
        }
        for (name, field) in [
            ("CLS_RATE_API_KEY", &mut s.rate_api_key),
            ("CLS_RATE_IP", &mut s.rate_ip),
            ("CLS_RATE_LICENSE_KEY", &mut s.rate_license_key),
        ] {
            if let Some(v) = get(name) {
                *field = parse_num(&v, name, 0, 10_000_000)? as u32;
            }
        }
        if let Some(v) = get("CLS_TRUSTED_PROXIES") {
            s.trusted_proxies = v
                .split(',')
                .filter(|part| !part.trim().is_empty())
                .map(|part| IpRange::parse(part).with_context(|| format!("CLS_TRUSTED_PROXIES: {part:?} is not an address or a network (a.b.c.d/n)")))
                .collect::<anyhow::Result<_>>()?;
        }
        if let Some(v) = get("CLS_READ_FALLBACK_LIMIT") {
            s.read_fallback_limit = parse_num(&v, "CLS_READ_FALLBACK_LIMIT", 1, 500)? as u32;
        }
        if let Some(v) = get("CLS_LOG_FORMAT") {
            s.log_format = match v.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => bail!("CLS_LOG_FORMAT must be text or json"),
            };
        }
        Ok(s)
    }
}

fn parse_num(v: &str, name: &str, min: u64, max: u64) -> anyhow::Result<u64> {
    match v.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => bail!("{name} must be a whole number from {min} to {max}, got {v:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    const SECRETS: [(&str, &str); 2] =
        [("CLS_SECRET_KEY", "0123456789abcdef0123"), ("CLS_INTERNAL_TOKEN", "internal-token-123456")];

    #[test]
    fn defaults_match_the_spec() {
        let s = Settings::from_lookup(ServiceKind::Gateway, env(&SECRETS)).unwrap();
        assert_eq!(s.database_url, "postgres://postgres@127.0.0.1:5432/cls");
        assert_eq!(s.namespace, "cls");
        assert_eq!(s.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(s.reply_timeout, Duration::from_millis(5000));
        assert!(s.admin_token.is_none());
    }

    #[test]
    fn missing_secret_key_is_refused() {
        let err = Settings::from_lookup(ServiceKind::Query, env(&SECRETS[1..])).unwrap_err();
        assert!(err.to_string().contains("CLS_SECRET_KEY"));
    }

    #[test]
    fn each_process_needs_only_the_secrets_it_uses() {
        let (key, token) = (&SECRETS[..1], &SECRETS[1..]);
        // The gateway never sees sealed outcomes; the workers never call the query service.
        let gateway = Settings::from_lookup(ServiceKind::Gateway, env(token)).unwrap();
        assert_eq!((gateway.secret_key.is_some(), gateway.internal_token.is_some()), (false, true));
        for worker in [ServiceKind::BrandsWorker, ServiceKind::LicensesWorker, ServiceKind::ActivationsWorker] {
            let s = Settings::from_lookup(worker, env(key)).unwrap();
            assert_eq!((s.secret_key.is_some(), s.internal_token.is_some()), (true, false), "{worker:?}");
            assert!(Settings::from_lookup(worker, env(token)).unwrap_err().to_string().contains("CLS_SECRET_KEY"));
        }
        assert!(Settings::from_lookup(ServiceKind::Gateway, env(key)).unwrap_err().to_string().contains("CLS_INTERNAL_TOKEN"));
        assert!(Settings::from_lookup(ServiceKind::Query, env(key)).unwrap_err().to_string().contains("CLS_INTERNAL_TOKEN"));
        // One that is set where it is not needed is still checked.
        let short = [SECRETS[1], ("CLS_SECRET_KEY", "short")];
        assert!(Settings::from_lookup(ServiceKind::Gateway, env(&short)).unwrap_err().to_string().contains("CLS_SECRET_KEY"));
    }

    #[test]
    fn the_previous_secret_key_is_optional_and_as_long_as_a_key() {
        assert_eq!(Settings::from_lookup(ServiceKind::Query, env(&SECRETS)).unwrap().secret_key_previous, None);
        let with = |v: &'static str| [SECRETS[0], SECRETS[1], ("CLS_SECRET_KEY_PREVIOUS", v)];
        let s = Settings::from_lookup(ServiceKind::Query, env(&with("the-old-secret-key"))).unwrap();
        assert_eq!(s.secret_key_previous, Some(Secret::new("the-old-secret-key")));
        let err = Settings::from_lookup(ServiceKind::Query, env(&with("short"))).unwrap_err();
        assert!(err.to_string().contains("CLS_SECRET_KEY_PREVIOUS"), "{err}");
    }

    #[test]
    fn malformed_values_are_refused_with_the_variable_name() {
        let mut pairs = SECRETS.to_vec();
        pairs.push(("CLS_REPLY_TIMEOUT_MS", "soon"));
        let err = Settings::from_lookup(ServiceKind::Gateway, env(&pairs)).unwrap_err();
        assert!(err.to_string().contains("CLS_REPLY_TIMEOUT_MS"));
    }

    #[test]
    fn relay_linger_is_bounded_and_may_be_zero() {
        let with = |v: &str| {
            let mut pairs = SECRETS.to_vec();
            pairs.push(("CLS_RELAY_LINGER_MS", v));
            Settings::from_lookup(ServiceKind::LicensesWorker, env(&pairs))
        };
        assert_eq!(Settings::from_lookup(ServiceKind::LicensesWorker, env(&SECRETS)).unwrap().relay_linger, Duration::from_millis(50));
        assert_eq!(with("0").unwrap().relay_linger, Duration::ZERO);
        assert!(with("10001").unwrap_err().to_string().contains("CLS_RELAY_LINGER_MS"));
    }

    #[test]
    fn the_query_socket_is_optional_and_fits_a_socket_address() {
        let with = |v: String| Settings::from_lookup(ServiceKind::Gateway, env(&[SECRETS[0], SECRETS[1], ("CLS_QUERY_SOCKET", &v)]));
        assert_eq!(Settings::from_lookup(ServiceKind::Gateway, env(&SECRETS)).unwrap().query_socket, None);
        assert_eq!(with("/run/cls/query.sock".into()).unwrap().query_socket, Some(PathBuf::from("/run/cls/query.sock")));
        assert!(with(format!("/{}", "x".repeat(MAX_SOCKET_PATH))).unwrap_err().to_string().contains("CLS_QUERY_SOCKET"));
    }

    #[test]
    fn trusted_proxies_are_addresses_or_networks() {
        let mut pairs = SECRETS.to_vec();
        pairs.push(("CLS_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.7,::1"));
        let s = Settings::from_lookup(ServiceKind::Gateway, env(&pairs)).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let trusted = |addr: &str| s.trusted_proxies.iter().any(|r| r.contains(ip(addr)));
        assert!(trusted("10.200.3.4") && trusted("192.168.1.7") && trusted("::1") && trusted("::ffff:10.0.0.1"));
        assert!(!trusted("11.0.0.1") && !trusted("192.168.1.8") && !trusted("::2"));
        assert!(IpRange::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(IpRange::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        for bad in ["10.0.0.0/33", "proxy", "10.0.0/8", "::1/129"] {
            assert!(IpRange::parse(bad).is_none(), "{bad}");
        }
        let mut pairs = SECRETS.to_vec();
        pairs.push(("CLS_TRUSTED_PROXIES", "10.0.0.0/8,haproxy"));
        assert!(Settings::from_lookup(ServiceKind::Gateway, env(&pairs)).unwrap_err().to_string().contains("CLS_TRUSTED_PROXIES"));
        assert!(Settings::from_lookup(ServiceKind::Gateway, env(&SECRETS)).unwrap().trusted_proxies.is_empty());
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Settings::from_lookup(ServiceKind::Gateway, env(&SECRETS)).unwrap();
        let printed = format!("{s:?}");
        assert!(!printed.contains("0123456789abcdef0123"));
        assert!(!printed.contains("internal-token-123456"));
    }
}
