//! Bearer-token authentication: constant-time comparison, several tokens for rotation,
//! tokens never logged (only a short fingerprint of their hash).
use std::io::Write;
use std::path::{Path, PathBuf};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::session;
use crate::state::AppState;

/// The accepted tokens, kept as SHA-256 digests.
#[derive(Clone)]
pub struct Tokens {
    digests: Vec<[u8; 32]>,
}

/// Who made an authenticated request: `fingerprint` is what logs and the audit log write.
#[derive(Debug, Clone)]
pub struct Caller {
    pub fingerprint: String,
    pub kind: CallerKind,
}

/// What kind of client a caller is: limits and ownership rules differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerKind {
    /// A bearer token (a service or an operator's script).
    Token,
    /// An operator's browser session (signed in with a token).
    Operator,
    /// The web page of anyone: smaller uploads, rate limited, sees only its own predictions.
    Visitor { session_id: String },
}

impl Caller {
    /// The visitor session behind the call, if it is one.
    pub fn visitor_session(&self) -> Option<&str> {
        match &self.kind {
            CallerKind::Visitor { session_id } => Some(session_id),
            _ => None,
        }
    }
}

/// A short, non-secret name for a token: the first 4 bytes of its SHA-256, in hex.
fn fingerprint(digest: &[u8; 32]) -> String {
    hex::encode(&digest[..4])
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    pub fn new<S: AsRef<str>>(tokens: &[S]) -> Self {
        Self { digests: tokens.iter().map(|t| t.as_ref().trim()).filter(|t| !t.is_empty()).map(digest).collect() }
    }

    /// Checks a presented token against every accepted one, without early exit.
    pub fn check(&self, presented: &str) -> Option<Caller> {
        let d = digest(presented);
        let mut ok = subtle::Choice::from(0);
        for known in &self.digests {
            ok |= known.ct_eq(&d);
        }
        bool::from(ok).then(|| Caller { fingerprint: fingerprint(&d), kind: CallerKind::Token })
    }

    /// Fingerprints of the accepted tokens, sorted.
    pub fn fingerprints(&self) -> Vec<String> {
        let mut f: Vec<String> = self.digests.iter().map(fingerprint).collect();
        f.sort();
        f
    }

    /// Whether a token with this fingerprint is still accepted (operator sessions end
    /// when their token is rotated out).
    pub fn has_fingerprint(&self, fp: &str) -> bool {
        self.digests.iter().any(|d| fingerprint(d) == fp)
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }
}

/// Errors of setting up the token file.
#[derive(Debug, thiserror::Error)]
#[error("cannot use token file {path}: {source}")]
pub struct TokenFileError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Shortest secret accepted from a file (the generated ones have 64 hex characters).
pub const MIN_SECRET_CHARS: usize = 32;

/// Reads the secret `name` stored in `data_dir`, creating a random one (mode 0600) on first
/// start. Returns the secret, its path and whether it was just created. A file holding a
/// short or empty secret is refused: it would make cookies and pseudonyms guessable.
pub fn load_or_create_secret(data_dir: &Path, name: &str) -> Result<(String, PathBuf, bool), TokenFileError> {
    let path = data_dir.join(name);
    let err = |source| TokenFileError { path: path.clone(), source };
    if path.is_file() {
        let t = std::fs::read_to_string(&path).map_err(err)?.trim().to_string();
        if t.chars().count() < MIN_SECRET_CHARS {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("secret shorter than {MIN_SECRET_CHARS} characters; delete the file to generate a new one"),
            )));
        }
        return Ok((t, path, false));
    }
    std::fs::create_dir_all(data_dir).map_err(err)?;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    // Written to a temporary file, synced, then renamed: a crash never leaves an empty secret.
    let tmp = data_dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).map_err(err)?;
    writeln!(f, "{token}").map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)?;
    Ok((token, path, true))
}

/// Which browser sessions a route accepts in place of a bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAccess {
    /// Any page session (classify, feedback).
    Visitor,
    /// Only an operator session (metrics, model info).
    Operator,
}

/// Checks a request: a valid `Authorization: Bearer`, or else (without that header) a
/// session cookie plus the matching `X-CSRF-Token` header, with the role `access` needs.
pub fn authorize(state: &AppState, headers: &HeaderMap, access: SessionAccess) -> Result<Caller, ApiError> {
    if let Some(header) = headers.get(header::AUTHORIZATION) {
        let value = header.to_str().map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| ApiError::unauthorized("Authorization must use the Bearer scheme"))?;
        let caller = state.tokens.check(token.trim()).ok_or_else(|| ApiError::unauthorized("invalid token"))?;
        state.limits.token_call(&caller.fingerprint)?;
        return Ok(caller);
    }
    let missing = "missing Authorization header; send `Authorization: Bearer <token>`";
    let session =
        state.sessions.from_headers(headers, (state.cfg.clock)()).ok_or_else(|| ApiError::unauthorized(missing))?;
    let csrf = headers.get(session::CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !state.sessions.csrf_ok(&session, csrf) {
        return Err(ApiError::unauthorized("browser session without a valid X-CSRF-Token header"));
    }
    match (session.operator(), access) {
        (Some(fp), _) if state.tokens.has_fingerprint(fp) => {
            Ok(Caller { fingerprint: format!("session-{fp}"), kind: CallerKind::Operator })
        }
        (_, SessionAccess::Visitor) => {
            state.limits.visitor_call(&session.id)?;
            Ok(Caller { fingerprint: "page-visitor".into(), kind: CallerKind::Visitor { session_id: session.id } })
        }
        _ => Err(ApiError::unauthorized(missing)),
    }
}

/// Middleware for API routes an operator session (or a token) may call.
pub async fn require_token(State(state): State<AppState>, mut req: Request, next: Next) -> Result<Response, ApiError> {
    let caller = authorize(&state, req.headers(), SessionAccess::Operator)?;
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

/// Middleware for API routes the web page calls (classify, feedback).
pub async fn require_token_or_page(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let caller = authorize(&state, req.headers(), SessionAccess::Visitor)?;
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_any_rotated_token_only() {
        let t = Tokens::new(&["old", "new"]);
        assert!(t.check("old").is_some());
        assert!(t.check("new").is_some());
        assert!(t.check("other").is_none());
        assert!(t.check("").is_none());
        assert!(Tokens::new(&["", "  "]).is_empty());
    }

    #[test]
    fn token_file_is_private_and_stable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, path, created) = load_or_create_secret(dir.path(), "api-token").expect("create");
        assert!(created);
        assert_eq!(a.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (b, _, created) = load_or_create_secret(dir.path(), "api-token").expect("reload");
        assert!(!created);
        assert_eq!(a, b);
        std::fs::write(dir.path().join("weak"), "\n").expect("write");
        assert!(load_or_create_secret(dir.path(), "weak").is_err(), "an empty secret is refused");
    }
}
