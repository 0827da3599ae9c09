//! Browser sessions: how the web page calls the API without ever seeing the API token.
//!
//! - Every page visit gets a signed session cookie (`HttpOnly`, `SameSite=Lax`, `Path=/`;
//!   `Secure` and the `__Host-` name prefix when configured for HTTPS). It carries a random id, its issue time and a role, and is
//!   signed with HMAC-SHA256 under a key generated at first start (`data/session-key`), so
//!   no session table is needed and replicas sharing the key accept each other's cookies.
//! - Requests that change state carry a CSRF token derived from the session id
//!   (HMAC again): in the `X-CSRF-Token` header for `fetch`, in a hidden `csrf` field for
//!   plain forms. A cross-site page cannot read the token, and browsers leave a
//!   `SameSite=Lax` cookie out of cross-site POSTs and cross-site `fetch`/subresource
//!   requests, so both checks must be defeated at once. Lax rather than Strict: a Strict
//!   cookie is also left out of top-level navigations from another site, so an operator
//!   following a link to `/dashboard` from elsewhere (a chat, an alert e-mail, a wiki)
//!   would land signed out. Lax only adds those top-level GETs, which cannot do harm: no
//!   page answers a GET by changing anything (what does is a POST with the CSRF field), and
//!   the API wants the `X-CSRF-Token` header on every request a session makes, GETs too.
//! - A visitor session may classify and send feedback (what the page is for). The
//!   dashboard and the metrics need an operator session, obtained by typing an API token
//!   into `/login`; the cookie then records the token's fingerprint (never the token) and
//!   stops working when that token is removed from the configuration.
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::state::AppState;

/// Name of the session cookie over plain HTTP.
pub const COOKIE: &str = "catsdogs_session";
/// Name over HTTPS: the `__Host-` prefix makes browsers refuse it from sibling subdomains.
pub const SECURE_COOKIE: &str = "__Host-catsdogs_session";
/// How far in the future a cookie's issue time may be (clock skew between replicas).
pub const CLOCK_SKEW_S: i64 = 60;
/// Header carrying the CSRF token on `fetch` calls.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Lifetime of a visitor session, in seconds.
pub const VISITOR_TTL_S: i64 = 7 * 24 * 3600;
/// Lifetime of an operator session, in seconds.
pub const OPERATOR_TTL_S: i64 = 8 * 3600;

type HmacSha256 = Hmac<Sha256>;

/// What a session may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Classify and send feedback.
    Visitor,
    /// Also the dashboard and metrics; holds the fingerprint of the token used to log in.
    Operator { fingerprint: String },
}

/// A verified session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub issued: i64,
    pub role: Role,
}

/// Signs and verifies session cookies and CSRF tokens.
#[derive(Clone)]
pub struct SessionKeys {
    key: [u8; 32],
    secure: bool,
}

impl SessionKeys {
    pub fn new(key: [u8; 32], secure: bool) -> Self {
        Self { key, secure }
    }

    fn mac(&self, parts: &[&str]) -> HmacSha256 {
        // HMAC accepts keys of any length: this cannot fail.
        let mut m = <HmacSha256 as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        for p in parts {
            m.update(p.as_bytes());
            m.update(b"|");
        }
        m
    }

    /// A new session of `role`, issued at `now`.
    pub fn issue(&self, role: Role, now: DateTime<Utc>) -> Session {
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        Session { id: hex::encode(id), issued: now.timestamp(), role }
    }

    /// The cookie value: `v1.<id>.<issued>.<role>.<mac>`.
    pub fn encode(&self, s: &Session) -> String {
        let role = role_str(&s.role);
        let issued = s.issued.to_string();
        let mac = self.mac(&["v1", &s.id, &issued, &role]).finalize().into_bytes();
        format!("v1.{}.{issued}.{role}.{}", s.id, hex::encode(mac))
    }

    /// Verifies a cookie value; `None` when forged, malformed or expired.
    pub fn decode(&self, value: &str, now: DateTime<Utc>) -> Option<Session> {
        let mut it = value.split('.');
        let (v, id, issued, role, mac) = (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
        if v != "v1" || it.next().is_some() || id.len() != 32 {
            return None;
        }
        let mac = hex::decode(mac).ok()?;
        self.mac(&["v1", id, issued, role]).verify_slice(&mac).ok()?;
        let issued_at: i64 = issued.parse().ok()?;
        let role = parse_role(role)?;
        let ttl = if role == Role::Visitor { VISITOR_TTL_S } else { OPERATOR_TTL_S };
        let age = now.timestamp() - issued_at;
        (-CLOCK_SKEW_S..ttl).contains(&age).then(|| Session { id: id.to_string(), issued: issued_at, role })
    }

    /// The CSRF token of a session.
    pub fn csrf(&self, s: &Session) -> String {
        hex::encode(self.mac(&["csrf", &s.id]).finalize().into_bytes())
    }

    /// Constant-time check of a presented CSRF token.
    pub fn csrf_ok(&self, s: &Session, presented: &str) -> bool {
        bool::from(self.csrf(s).as_bytes().ct_eq(presented.trim().as_bytes()))
    }

    fn cookie_name(&self) -> &'static str {
        if self.secure { SECURE_COOKIE } else { COOKIE }
    }

    /// `Set-Cookie` value for a session.
    pub fn set_cookie(&self, s: &Session) -> String {
        let ttl = if s.role == Role::Visitor { VISITOR_TTL_S } else { OPERATOR_TTL_S };
        let secure = if self.secure { "; Secure" } else { "" };
        format!("{}={}; Path=/; Max-Age={ttl}; HttpOnly; SameSite=Lax{secure}", self.cookie_name(), self.encode(s))
    }

    /// The session named by the request's cookie, if valid.
    pub fn from_headers(&self, headers: &HeaderMap, now: DateTime<Utc>) -> Option<Session> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .filter(|(k, _)| *k == self.cookie_name())
            .find_map(|(_, v)| self.decode(v, now))
    }
}

fn role_str(r: &Role) -> String {
    match r {
        Role::Visitor => "v".into(),
        Role::Operator { fingerprint } => format!("op-{fingerprint}"),
    }
}

fn parse_role(s: &str) -> Option<Role> {
    if s == "v" {
        return Some(Role::Visitor);
    }
    let fp = s.strip_prefix("op-")?;
    (!fp.is_empty() && fp.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| Role::Operator { fingerprint: fp.to_string() })
}

impl Session {
    /// The operator's token fingerprint, if this is an operator session.
    pub fn operator(&self) -> Option<&str> {
        match &self.role {
            Role::Operator { fingerprint } => Some(fingerprint),
            Role::Visitor => None,
        }
    }
}

/// Middleware for pages: makes sure the request has a valid session (issuing a visitor
/// session when it has none), exposes it to the handler and sets the cookie when new.
/// An operator session whose token was removed from the configuration is demoted.
pub async fn ensure_session(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let now = (state.cfg.clock)();
    let found = state.sessions.from_headers(req.headers(), now).filter(|s| match s.operator() {
        Some(fp) => state.tokens.has_fingerprint(fp),
        None => true,
    });
    let (session, fresh) = match found {
        Some(s) => (s, false),
        None => (state.sessions.issue(Role::Visitor, now), true),
    };
    if fresh {
        // New sessions are limited per client address: each one is a fresh allowance of
        // visitor calls, so unlimited sessions would undo the per-session limits.
        let peer = req.extensions().get::<crate::limits::PeerAddr>().copied();
        let client = state.limits.client_ip(peer, req.headers());
        if let Err(refusal) = state.limits.new_session(client) {
            return crate::pages::too_many_sessions(&state, &session, refusal);
        }
    }
    req.extensions_mut().insert(session.clone());
    let mut resp = next.run(req).await;
    // A handler that issued its own session (login, logout) has already set the cookie.
    if fresh
        && !resp.headers().contains_key(header::SET_COOKIE)
        && let Ok(v) = HeaderValue::from_str(&state.sessions.set_cookie(&session))
    {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> SessionKeys {
        SessionKeys::new([7; 32], false)
    }

    #[test]
    fn round_trips_and_rejects_tampering() {
        let k = keys();
        let now = Utc::now();
        let s = k.issue(Role::Operator { fingerprint: "abcd1234".into() }, now);
        let v = k.encode(&s);
        assert_eq!(k.decode(&v, now), Some(s.clone()));
        // Promote a visitor cookie to operator by editing the role: the MAC no longer matches.
        let visitor = k.encode(&k.issue(Role::Visitor, now));
        let forged = visitor.replace(".v.", ".op-abcd1234.");
        assert_ne!(forged, visitor);
        assert_eq!(k.decode(&forged, now), None);
        // Another key does not accept it.
        assert_eq!(SessionKeys::new([8; 32], false).decode(&v, now), None);
        for bad in ["", "v1", "v1.x.1.v.00", &format!("{v}.extra"), &v.replacen("v1", "v2", 1)] {
            assert_eq!(k.decode(bad, now), None, "{bad}");
        }
    }

    #[test]
    fn sessions_expire() {
        let k = keys();
        let now = Utc::now();
        let op = k.issue(Role::Operator { fingerprint: "ab".into() }, now);
        let later = now + chrono::Duration::seconds(OPERATOR_TTL_S);
        assert_eq!(k.decode(&k.encode(&op), later), None);
        let visitor = k.issue(Role::Visitor, now);
        assert!(k.decode(&k.encode(&visitor), later).is_some());
        // Issued slightly in the future (another replica's clock): accepted; far ahead: refused.
        assert!(k.decode(&k.encode(&visitor), now - chrono::Duration::seconds(5)).is_some());
        assert_eq!(k.decode(&k.encode(&visitor), now - chrono::Duration::seconds(CLOCK_SKEW_S + 1)), None);
    }

    #[test]
    fn csrf_is_bound_to_the_session() {
        let k = keys();
        let now = Utc::now();
        let (a, b) = (k.issue(Role::Visitor, now), k.issue(Role::Visitor, now));
        assert!(k.csrf_ok(&a, &k.csrf(&a)));
        assert!(!k.csrf_ok(&a, &k.csrf(&b)));
        assert!(!k.csrf_ok(&a, ""));
    }

    #[test]
    fn cookie_attributes() {
        let k = SessionKeys::new([1; 32], true);
        let c = k.set_cookie(&k.issue(Role::Visitor, Utc::now()));
        for attr in ["__Host-catsdogs_session=", "HttpOnly", "SameSite=Lax", "Path=/", "Secure", "Max-Age=604800"] {
            assert!(c.contains(attr), "{c}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(&format!("a=b; {}", &c[..c.find(';').unwrap_or(0)])).unwrap());
        assert!(k.from_headers(&h, Utc::now()).is_some());
    }
}
