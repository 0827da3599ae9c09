//! Limits against abusive clients: rate limits (per visitor session, per token, per client
//! address for new sessions and sign-in), the sign-in lockout, the process-wide budget of
//! upload bytes in flight, and the quotas of visitor feedback and consented images.
//!
//! Rate limits use GCRA (`governor`), keyed; the keyed tables are pruned by the maintenance
//! loop ([`Limits::prune`]), so their memory follows the clients seen recently. Nothing here
//! sleeps: an over-limit request is answered at once with 429 and `Retry-After`.
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// A sustained rate with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per minute, sustained.
    pub per_minute: u32,
    /// Requests that may arrive at once before the rate applies.
    pub burst: u32,
}

impl RateLimit {
    fn quota(self) -> Result<Quota, LimitsError> {
        let per_minute = NonZeroU32::new(self.per_minute).ok_or(LimitsError::ZeroRate)?;
        let burst = NonZeroU32::new(self.burst).ok_or(LimitsError::ZeroRate)?;
        Ok(Quota::per_minute(per_minute).allow_burst(burst))
    }
}

impl std::str::FromStr for RateLimit {
    type Err = String;

    /// `PER_MINUTE` or `PER_MINUTE:BURST` (the burst defaults to the per-minute rate).
    fn from_str(s: &str) -> Result<Self, String> {
        let (rate, burst) = s.split_once(':').unwrap_or((s, s));
        let parse = |v: &str, what: &str| {
            v.trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{what} must be a whole number above 0 in `PER_MINUTE[:BURST]`, got {v:?}"))
        };
        Ok(Self { per_minute: parse(rate, "the rate")?, burst: parse(burst, "the burst")? })
    }
}

/// A quota over a day (per-session counts such as kept images).
fn per_day(n: u32) -> Result<Quota, LimitsError> {
    let n = NonZeroU32::new(n).ok_or(LimitsError::ZeroRate)?;
    let period = Duration::from_secs(24 * 3600) / n.get();
    Ok(Quota::with_period(period).ok_or(LimitsError::ZeroRate)?.allow_burst(n))
}

/// What a configuration of limits may get wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitsError {
    #[error("a rate limit or quota must allow at least one request")]
    ZeroRate,
}

/// The limits, as configured (flags `--rate-limit-*`, `--upload-budget-mib`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// Upload bytes held in memory at once, across all requests.
    pub upload_budget_bytes: usize,
    /// Files in one visitor request (the web page's session); token clients have
    /// `max_batch_files`.
    pub visitor_max_files: usize,
    /// Bytes per file for visitors.
    pub visitor_max_upload_bytes: usize,
    /// API calls and form posts per visitor session.
    pub visitor_rate: RateLimit,
    /// API calls per token (off by default: token clients are trusted services).
    pub token_rate: Option<RateLimit>,
    /// New sessions per client address.
    pub session_rate: RateLimit,
    /// Failed sign-ins per client address within `login_window` before a lockout.
    pub login_max_failures: u32,
    pub login_window: Duration,
    /// First lockout; each further lockout doubles it, up to `login_lockout_max`.
    pub login_lockout: Duration,
    pub login_lockout_max: Duration,
    /// Proxies whose `X-Forwarded-For` is believed (`--trusted-proxy`); from anyone else
    /// the header is ignored, so a client cannot dodge its limit by writing it.
    pub trusted_proxies: Vec<IpNet>,
    /// Longest comment a visitor may send with feedback.
    pub visitor_comment_chars: usize,
    /// Seed-style feedback (not tied to a prediction) per visitor session and day.
    pub visitor_seed_feedback_per_day: u32,
    /// Consented images kept per visitor session and day.
    pub images_per_session_per_day: u32,
    /// Disk space all kept images may take.
    pub images_max_total_bytes: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            upload_budget_bytes: 256 * 1024 * 1024,
            visitor_max_files: 4,
            visitor_max_upload_bytes: 10 * 1024 * 1024,
            visitor_rate: RateLimit { per_minute: 30, burst: 20 },
            token_rate: None,
            session_rate: RateLimit { per_minute: 30, burst: 60 },
            login_max_failures: 5,
            login_window: Duration::from_secs(15 * 60),
            login_lockout: Duration::from_secs(60),
            login_lockout_max: Duration::from_secs(15 * 60),
            trusted_proxies: Vec::new(),
            visitor_comment_chars: 500,
            visitor_seed_feedback_per_day: 20,
            images_per_session_per_day: 20,
            images_max_total_bytes: 2 * 1024 * 1024 * 1024,
        }
    }
}

/// A refusal: over a rate limit (429) or over the upload budget (503), with when to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    RateLimited { retry_after: Duration },
    UploadBudget,
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::RateLimited { retry_after } => {
                let secs = retry_after_secs(retry_after);
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("too many requests; try again in {secs} s"),
                )
                .with_retry_after(secs)
            }
            Refusal::UploadBudget => ApiError::unavailable(
                "overloaded",
                "the server holds as many uploads as it may at once; try again shortly",
            )
            .with_retry_after(1),
        }
    }
}

/// Whole seconds, rounded up, at least 1 (what `Retry-After` carries).
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Failed sign-ins of one client address.
#[derive(Debug, Default)]
struct LoginRecord {
    failures: Vec<Instant>,
    locked_until: Option<Instant>,
    lockouts: u32,
}

/// The peer address of a connection (set by the accept loop on every request).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Bytes of uploads held by one request; released when dropped.
#[derive(Debug, Default)]
pub struct UploadLease {
    permit: Option<OwnedSemaphorePermit>,
}

impl UploadLease {
    pub fn bytes(&self) -> usize {
        self.permit.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }
}

type Keyed<K> = DefaultKeyedRateLimiter<K>;

/// The limits in force, shared by every request.
pub struct Limits {
    pub cfg: LimitsConfig,
    uploads: Arc<Semaphore>,
    visitor_calls: Keyed<String>,
    token_calls: Option<Keyed<String>>,
    new_sessions: Keyed<IpAddr>,
    seed_feedback: Keyed<String>,
    kept_images: Keyed<String>,
    logins: Mutex<HashMap<IpAddr, LoginRecord>>,
    /// Disk space of kept images: measured at start and after each purge, grown on save.
    pub images_bytes: AtomicU64,
}

impl Limits {
    pub fn new(cfg: LimitsConfig) -> Result<Self, LimitsError> {
        Ok(Self {
            uploads: Arc::new(Semaphore::new(cfg.upload_budget_bytes.min(Semaphore::MAX_PERMITS))),
            visitor_calls: RateLimiter::keyed(cfg.visitor_rate.quota()?),
            token_calls: cfg.token_rate.map(RateLimit::quota).transpose()?.map(RateLimiter::keyed),
            new_sessions: RateLimiter::keyed(cfg.session_rate.quota()?),
            seed_feedback: RateLimiter::keyed(per_day(cfg.visitor_seed_feedback_per_day)?),
            kept_images: RateLimiter::keyed(per_day(cfg.images_per_session_per_day)?),
            logins: Mutex::new(HashMap::new()),
            images_bytes: AtomicU64::new(0),
            cfg,
        })
    }

    fn check<K: std::hash::Hash + Eq + Clone>(limiter: &Keyed<K>, key: &K) -> Result<(), Refusal> {
        limiter.check_key(key).map_err(|not_until| Refusal::RateLimited {
            retry_after: not_until.wait_time_from(DefaultClock::default().now()),
        })
    }

    /// One API call or form post of a visitor session.
    pub fn visitor_call(&self, session_id: &str) -> Result<(), Refusal> {
        let r = Self::check(&self.visitor_calls, &session_id.to_string());
        count_refusal(&r, "visitor");
        r
    }

    /// One API call with a token (limited only when configured).
    pub fn token_call(&self, fingerprint: &str) -> Result<(), Refusal> {
        let Some(l) = &self.token_calls else { return Ok(()) };
        let r = Self::check(l, &fingerprint.to_string());
        count_refusal(&r, "token");
        r
    }

    /// A new session for a client address.
    pub fn new_session(&self, client: IpAddr) -> Result<(), Refusal> {
        let r = Self::check(&self.new_sessions, &client);
        count_refusal(&r, "session");
        r
    }

    /// One seed-style feedback of a visitor session.
    pub fn seed_feedback(&self, session_id: &str) -> Result<(), Refusal> {
        let r = Self::check(&self.seed_feedback, &session_id.to_string());
        count_refusal(&r, "feedback");
        r
    }

    /// Whether one more consented image of `bytes` may be kept for this session (`None`:
    /// a token client, bound only by the total).
    pub fn may_keep_image(&self, session_id: Option<&str>, bytes: usize) -> bool {
        let total = self.images_bytes.load(Ordering::Relaxed).saturating_add(bytes as u64);
        if total > self.cfg.images_max_total_bytes {
            metrics::counter!("catsdogs_images_refused_total", "quota" => "total").increment(1);
            return false;
        }
        if let Some(id) = session_id
            && Self::check(&self.kept_images, &id.to_string()).is_err()
        {
            metrics::counter!("catsdogs_images_refused_total", "quota" => "session").increment(1);
            return false;
        }
        true
    }

    /// Records the space of a newly kept image.
    pub fn image_kept(&self, bytes: usize) {
        let total = self.images_bytes.fetch_add(bytes as u64, Ordering::Relaxed) + bytes as u64;
        metrics::gauge!("catsdogs_images_bytes").set(total as f64);
    }

    /// Sets the measured space of kept images (at start, after a purge or an erasure).
    pub fn set_images_bytes(&self, total: u64) {
        self.images_bytes.store(total, Ordering::Relaxed);
        metrics::gauge!("catsdogs_images_bytes").set(total as f64);
        metrics::gauge!("catsdogs_images_quota_bytes").set(self.cfg.images_max_total_bytes as f64);
    }

    /// Whether this address may try to sign in now; `Err` while it is locked out.
    pub fn login_allowed(&self, client: IpAddr, now: Instant) -> Result<(), Refusal> {
        let logins = self.logins.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match logins.get(&client).and_then(|r| r.locked_until) {
            Some(until) if until > now => {
                metrics::counter!("catsdogs_rate_limited_total", "limit" => "login").increment(1);
                Err(Refusal::RateLimited { retry_after: until - now })
            }
            _ => Ok(()),
        }
    }

    /// Records a failed sign-in; the failure that reaches the limit starts a lockout, each
    /// lockout twice as long as the one before (up to the maximum). Returns the lockout.
    pub fn login_failed(&self, client: IpAddr, now: Instant) -> Option<Duration> {
        let mut logins = self.logins.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let record = logins.entry(client).or_default();
        let window = self.cfg.login_window;
        record.failures.retain(|t| now.saturating_duration_since(*t) < window);
        record.failures.push(now);
        if record.failures.len() < self.cfg.login_max_failures as usize {
            return None;
        }
        record.failures.clear();
        let doubling = 2u32.saturating_pow(record.lockouts.min(16));
        let lockout = self.cfg.login_lockout.saturating_mul(doubling).min(self.cfg.login_lockout_max);
        record.lockouts = record.lockouts.saturating_add(1);
        record.locked_until = Some(now + lockout);
        Some(lockout)
    }

    /// A successful sign-in clears the address's record.
    pub fn login_succeeded(&self, client: IpAddr) {
        self.logins.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&client);
    }

    /// Takes `bytes` more of the upload budget into `lease`, or refuses (nothing is taken).
    pub fn take_upload_bytes(&self, lease: &mut UploadLease, bytes: usize) -> Result<(), Refusal> {
        if bytes == 0 {
            return Ok(());
        }
        let n = u32::try_from(bytes).map_err(|_| Refusal::UploadBudget)?;
        match self.uploads.clone().try_acquire_many_owned(n) {
            Ok(p) => {
                match &mut lease.permit {
                    Some(held) => held.merge(p),
                    None => lease.permit = Some(p),
                }
                Ok(())
            }
            Err(_) => {
                metrics::counter!("catsdogs_rate_limited_total", "limit" => "upload_budget").increment(1);
                Err(Refusal::UploadBudget)
            }
        }
    }

    /// Upload bytes held right now, across requests.
    pub fn upload_bytes_in_flight(&self) -> usize {
        self.cfg.upload_budget_bytes.min(Semaphore::MAX_PERMITS).saturating_sub(self.uploads.available_permits())
    }

    /// Forgets clients not seen recently (called by the maintenance loop).
    pub fn prune(&self, now: Instant) {
        for l in [&self.visitor_calls, &self.seed_feedback, &self.kept_images].into_iter().chain(&self.token_calls) {
            l.retain_recent();
            l.shrink_to_fit();
        }
        self.new_sessions.retain_recent();
        self.new_sessions.shrink_to_fit();
        let window = self.cfg.login_window;
        self.logins.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|_, r| {
            r.locked_until.is_some_and(|u| u > now)
                || r.failures.iter().any(|t| now.saturating_duration_since(*t) < window)
                || r.lockouts > 0 && r.locked_until.is_some_and(|u| now.saturating_duration_since(u) < window)
        });
    }

    /// The client's address: the connection's peer, or, when the peer is a trusted proxy,
    /// the last address in `X-Forwarded-For` that is not itself a trusted proxy.
    pub fn client_ip(&self, peer: Option<PeerAddr>, headers: &HeaderMap) -> IpAddr {
        let peer = peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.0.ip());
        if !self.is_trusted(peer) {
            return peer;
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse::<IpAddr>().ok())
            .collect();
        forwarded.into_iter().rev().find(|ip| !self.is_trusted(*ip)).unwrap_or(peer)
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.cfg.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

fn count_refusal(r: &Result<(), Refusal>, limit: &'static str) {
    if r.is_err() {
        metrics::counter!("catsdogs_rate_limited_total", "limit" => limit).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(cfg: LimitsConfig) -> Limits {
        Limits::new(cfg).expect("valid limits")
    }

    #[test]
    fn a_burst_passes_then_the_rate_applies() {
        let l = limits(LimitsConfig { visitor_rate: RateLimit { per_minute: 60, burst: 3 }, ..Default::default() });
        for _ in 0..3 {
            assert_eq!(l.visitor_call("a"), Ok(()));
        }
        match l.visitor_call("a") {
            Err(Refusal::RateLimited { retry_after }) => assert!(retry_after <= Duration::from_secs(1)),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(l.visitor_call("b"), Ok(()), "another session has its own allowance");
    }

    #[test]
    fn sign_in_lockouts_double_up_to_the_maximum() {
        let l = limits(LimitsConfig {
            login_lockout: Duration::from_secs(60),
            login_lockout_max: Duration::from_secs(150),
            ..Default::default()
        });
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let mut now = Instant::now();
        let mut lockouts = Vec::new();
        for _ in 0..3 {
            for i in 0..5 {
                assert!(l.login_allowed(ip, now).is_ok());
                let out = l.login_failed(ip, now);
                assert_eq!(out.is_some(), i == 4);
                if let Some(d) = out {
                    lockouts.push(d);
                    assert!(l.login_allowed(ip, now + d / 2).is_err());
                    now += d;
                }
            }
        }
        assert_eq!(lockouts, [60, 120, 150].map(Duration::from_secs));
        l.login_succeeded(ip);
        assert_eq!(l.login_failed(ip, now), None, "a success clears the record");
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let cfg = LimitsConfig { trusted_proxies: vec!["10.0.0.0/8".parse().expect("net")], ..Default::default() };
        let l = limits(cfg);
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 198.51.100.7, 10.1.1.1".parse().expect("header"));
        let proxy = Some(PeerAddr("10.2.3.4:5000".parse().expect("addr")));
        let stranger = Some(PeerAddr("198.51.100.50:5000".parse().expect("addr")));
        assert_eq!(l.client_ip(proxy, &h), "198.51.100.7".parse::<IpAddr>().expect("ip"));
        assert_eq!(l.client_ip(stranger, &h), "198.51.100.50".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn the_upload_budget_is_shared_and_released() {
        let l = limits(LimitsConfig { upload_budget_bytes: 100, ..Default::default() });
        let mut a = UploadLease::default();
        assert!(l.take_upload_bytes(&mut a, 60).is_ok());
        let mut b = UploadLease::default();
        assert_eq!(l.take_upload_bytes(&mut b, 50), Err(Refusal::UploadBudget));
        assert!(l.take_upload_bytes(&mut b, 40).is_ok());
        assert_eq!(l.upload_bytes_in_flight(), 100);
        drop(a);
        assert_eq!(l.upload_bytes_in_flight(), 40);
        assert!(l.take_upload_bytes(&mut b, 50).is_ok());
        assert_eq!(b.bytes(), 90);
    }
}
