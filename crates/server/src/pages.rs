//! The web page: classifier (`/`), plain-form fallbacks (`/classify`, `/feedback`),
//! operator dashboard (`/dashboard`, `/login`, `/logout`), model card (`/info`) and the
//! embedded assets. The API token never reaches the browser: see [`crate::session`].
use std::sync::LazyLock;

use axum::Form;
use axum::Router;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{DefaultBodyLimit, Extension, Multipart, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::NaiveDate;
use minijinja::{Environment, Value, context};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::api::feedback::{PredictionFeedback, check_prediction_feedback, save_checked_feedback};
use crate::api::predict::{FormError, UploadRules, classify_uploads, read_uploads};
use crate::charts::{self, Series, Unit};
use crate::error::ApiError;
use crate::limits::{PeerAddr, Refusal};
use crate::session::{self, OPERATOR_TTL_S, Role, Session};
use crate::state::AppState;
use crate::telemetry::{Stage, StageSpans};

/// The page's policy: scripts, styles and images from this origin only (plus `blob:`
/// previews of the user's own files); no inline script or style; no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' blob: data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// Swagger UI (same origin as the page) loads only its own files; it sets inline styles.
pub const DOCS_CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; frame-ancestors 'none'";

const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");
const FAVICON: &str = include_str!("../assets/favicon.svg");

/// Changes whenever an asset changes, so assets can be cached for a long time.
static ASSET_VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut h = Sha256::new();
    for a in [APP_JS, APP_CSS, FAVICON] {
        h.update(a.as_bytes());
    }
    hex::encode(&h.finalize()[..6])
});

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    for (name, src) in [
        ("base.html", include_str!("../templates/base.html")),
        ("home.html", include_str!("../templates/home.html")),
        ("results.html", include_str!("../templates/results.html")),
        ("message.html", include_str!("../templates/message.html")),
        ("login.html", include_str!("../templates/login.html")),
        ("dashboard.html", include_str!("../templates/dashboard.html")),
        ("info.html", include_str!("../templates/info.html")),
        ("why.html", include_str!("../templates/why.html")),
    ] {
        if let Err(e) = env.add_template(name, src) {
            tracing::error!(error = %e, template = name, "bad template");
        }
    }
    env.add_function("pct", |v: Option<f64>| v.map_or_else(|| "—".to_string(), |v| format!("{:.1}\u{a0}%", v * 100.0)));
    env.add_function("pct0", |v: Option<f64>| {
        v.map_or_else(|| "—".to_string(), |v| format!("{:.0}\u{a0}%", v * 100.0))
    });
    env.add_function("fixed4", |v: Option<f64>| v.map_or_else(|| "—".to_string(), |v| format!("{v:.4}")));
    env.add_function("ms", |v: Option<f64>| v.map_or_else(|| "—".to_string(), |v| format!("{v:.1} ms")));
    env
});

/// Page routes, wrapped in the session middleware and the security headers.
pub fn routes(state: AppState) -> Router<AppState> {
    let upload_limit = state.cfg.max_upload_bytes.saturating_mul(state.cfg.max_batch_files) + 64 * 1024;
    let header = |name: &'static str, value: &'static str| {
        SetResponseHeaderLayer::overriding(header::HeaderName::from_static(name), HeaderValue::from_static(value))
    };
    Router::new()
        .route("/", get(home))
        .route("/inference", get(home))
        .route("/classify", post(classify_form).layer(DefaultBodyLimit::max(upload_limit)))
        .route("/feedback", post(feedback_form))
        .route("/dashboard", get(dashboard))
        .route("/dashboard/why/{id}", get(why_page))
        .route("/dashboard/why/{id}/image", get(why_image))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/info", get(info))
        .layer(from_fn_with_state(state, session::ensure_session))
        .layer(header("content-security-policy", CONTENT_SECURITY_POLICY))
        .layer(header("x-frame-options", "DENY"))
        .layer(header("referrer-policy", "same-origin"))
        // Pages embed the session's CSRF token: never cache them in shared caches.
        .layer(header("cache-control", "no-store"))
        .route("/static/app.js", get(|| asset(APP_JS, "text/javascript; charset=utf-8")))
        .route("/static/app.css", get(|| asset(APP_CSS, "text/css; charset=utf-8")))
        .route("/static/favicon.svg", get(|| asset(FAVICON, "image/svg+xml")))
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=86400"),
            (header::HeaderName::from_static("x-content-type-options"), "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// Renders a template with the values every page needs (CSRF token, role, model version).
fn render(state: &AppState, session: &Session, status: StatusCode, name: &str, page: &str, ctx: Value) -> Response {
    let common = context! {
        csrf => state.sessions.csrf(session),
        operator => session.operator().is_some(),
        model_version => state.model_version(),
        asset_version => ASSET_VERSION.as_str(),
        page => page,
    };
    // In `context!` the first spread wins: the common values cannot be overridden.
    let merged = context! { ..common, ..ctx };
    match TEMPLATES.get_template(name).and_then(|t| t.render(merged)) {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, template = name, "page rendering failed");
            (StatusCode::INTERNAL_SERVER_ERROR, Html("<h1>Internal error</h1>".to_string())).into_response()
        }
    }
}

/// A page with one message (errors, confirmations).
fn message(state: &AppState, session: &Session, status: StatusCode, heading: &str, text: &str) -> Response {
    let kind = if status.is_success() { "ok" } else { "error" };
    render(state, session, status, "message.html", "", context! { heading, message => text, kind })
}

/// A message page for a refused request, with `Retry-After` when the error carries one
/// (429 over a rate limit, 503 over the upload budget).
fn refused(state: &AppState, session: &Session, heading: &str, e: ApiError) -> Response {
    let mut resp = message(state, session, e.status, heading, &e.message);
    if let Some(secs) = e.retry_after {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// The answer to a client address that opens sessions faster than allowed (no cookie is set).
pub(crate) fn too_many_sessions(state: &AppState, session: &Session, refusal: Refusal) -> Response {
    refused(state, session, "Too many requests", refusal.into())
}

fn csrf_failure(state: &AppState, session: &Session) -> Response {
    message(
        state,
        session,
        StatusCode::FORBIDDEN,
        "Session expired",
        "This form came without a valid session. Cookies must be enabled; reload the page and try again.",
    )
}

async fn home(State(state): State<AppState>, Extension(session): Extension<Session>) -> Response {
    let cfg = &state.cfg;
    // The page states the limits of this session (visitors have smaller ones).
    let (max_files, max_bytes) = cfg.upload_limits(session.operator().is_none());
    let ctx = context! {
        model_loaded => state.loaded_model().is_some(),
        max_upload_bytes => max_bytes,
        max_upload_mib => format!("{:.0}", max_bytes as f64 / 1048576.0),
        max_files,
        retention_days => cfg.retention.predictions_days,
    };
    render(&state, &session, StatusCode::OK, "home.html", "home", ctx)
}

/// The upload form without JavaScript: classifies every file and renders the results.
async fn classify_form(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    mp: Result<Multipart, MultipartRejection>,
) -> Response {
    let failed = |e: ApiError| refused(&state, &session, "Could not classify", e);
    let visitor = session.operator().is_none().then_some(session.id.as_str());
    if let Some(id) = visitor
        && let Err(r) = state.limits.visitor_call(id)
    {
        return failed(r.into());
    }
    let Ok(mp) = mp else {
        return failed(ApiError::bad_request("invalid_multipart", "the form was not sent as multipart/form-data"));
    };
    let check = |t: &str| state.sessions.csrf_ok(&session, t);
    let rules = UploadRules::for_caller(&state, visitor.is_some(), usize::MAX);
    let stages = StageSpans::of_current_request(state.cfg.trace_export);
    let form = match stages.time(Stage::Read, read_uploads(mp, rules, &state.limits, Some(&check))).await {
        Ok(f) => f,
        Err(FormError::Csrf) => return csrf_failure(&state, &session),
        Err(FormError::Api(e)) => return failed(e),
    };
    if form.csrf.is_none() {
        return csrf_failure(&state, &session);
    }
    if form.uploads.is_empty() {
        return failed(ApiError::bad_request("missing_file", "choose at least one photo first"));
    }
    if let Err(e) = state.model() {
        return failed(e);
    }
    match classify_uploads(&state, &stages, form.uploads, (form.consent, form.explain), visitor).await {
        Ok((items, _)) => render(&state, &session, StatusCode::OK, "results.html", "home", context! { items }),
        Err(e) => failed(e),
    }
}

#[derive(Deserialize)]
struct FeedbackForm {
    csrf: String,
    prediction_id: String,
    /// `correct`, `cat` or `dog`.
    verdict: String,
}

/// Feedback buttons without JavaScript.
async fn feedback_form(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    form: Result<Form<FeedbackForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return message(&state, &session, StatusCode::BAD_REQUEST, "Feedback not saved", "The form was incomplete.");
    };
    if !state.sessions.csrf_ok(&session, &form.csrf) {
        return csrf_failure(&state, &session);
    }
    let visitor = session.operator().is_none().then_some(session.id.as_str());
    if let Some(id) = visitor
        && let Err(r) = state.limits.visitor_call(id)
    {
        return refused(&state, &session, "Feedback not saved", r.into());
    }
    let (correct, label) = match form.verdict.as_str() {
        "correct" => (Some(true), None),
        other => (None, Some(other.to_string())),
    };
    let body = PredictionFeedback { prediction_id: form.prediction_id, correct, label, comment: None };
    let saved = match check_prediction_feedback(body) {
        Ok(checked) => save_checked_feedback(&state, checked, visitor).await,
        Err(e) => Err(e),
    };
    match saved {
        Ok(r) => {
            let text = if r.positive {
                "Thanks! You confirmed the prediction.".to_string()
            } else {
                format!("Thanks! Noted: it is a {}.", r.label.map_or("?", |l| l.as_str()))
            };
            message(&state, &session, StatusCode::OK, "Feedback saved", &text)
        }
        Err(e) => refused(&state, &session, "Feedback not saved", e),
    }
}

#[derive(Deserialize)]
struct DashboardQuery {
    days: Option<u32>,
}

/// One row of the "latest predictions" table.
#[derive(serde::Serialize)]
struct RecentRow {
    time: String,
    file_ref: Option<String>,
    status: &'static str,
    label: Option<catsdogs_model::Label>,
    error_code: Option<String>,
    p_dog: Option<f64>,
    latency_ms: Option<f64>,
    feedback_positive: Option<bool>,
    /// The prediction id, for a wrong answer on a consented image: its explanation page.
    why: Option<String>,
}

#[derive(serde::Serialize)]
struct Chart {
    title: &'static str,
    svg: String,
    legend: Vec<LegendEntry>,
}

#[derive(serde::Serialize)]
struct LegendEntry {
    label: &'static str,
    class: &'static str,
}

fn chart(
    title: &'static str,
    id: &str,
    days: &[String],
    series: Vec<Series<'static>>,
    unit: Unit,
    stacked: bool,
) -> Chart {
    let legend = series.iter().map(|s| LegendEntry { label: s.label, class: s.class }).collect();
    let svg = if stacked {
        charts::stacked_bars(id, title, days, &series, unit)
    } else {
        charts::lines(id, title, days, &series, unit)
    };
    Chart { title, svg, legend }
}

/// Volume, latency, error and satisfaction rates, class shares and drift, per day.
fn dashboard_charts(first: NaiveDate, n: u32, daily: &[catsdogs_store::DayMetrics]) -> Vec<Chart> {
    let days: Vec<String> =
        (0..n).map(|i| (first + chrono::Days::new(u64::from(i))).format("%Y-%m-%d").to_string()).collect();
    let by_day: Vec<Option<&catsdogs_store::DayMetrics>> =
        days.iter().map(|d| daily.iter().find(|m| &m.day == d)).collect();
    let col = |f: &dyn Fn(&catsdogs_store::DayMetrics) -> Option<f64>| -> Vec<Option<f64>> {
        by_day.iter().map(|m| m.and_then(f)).collect()
    };
    let count = |f: fn(&catsdogs_store::DayMetrics) -> u64| col(&|m| Some(f(m) as f64));
    let s = |label, class, values| Series { label, class, values };
    vec![
        chart(
            "Predictions per day",
            "volume",
            &days,
            vec![s("succeeded", "s-ok", count(|m| m.inf_success)), s("failed", "s-err", count(|m| m.inf_errors))],
            Unit::Count,
            true,
        ),
        chart(
            "Latency per day",
            "latency",
            &days,
            vec![s("p50", "s-p50", col(&|m| m.inf_latency_p50_ms)), s("p95", "s-p95", col(&|m| m.inf_latency_p95_ms))],
            Unit::Millis,
            false,
        ),
        chart(
            "Error and satisfaction rates",
            "rates",
            &days,
            vec![
                s("error rate", "s-err", col(&|m| m.error_rate)),
                s("satisfaction", "s-sat", col(&|m| m.satisfaction_rate)),
            ],
            Unit::Ratio,
            false,
        ),
        chart(
            "Cats and dogs",
            "shares",
            &days,
            vec![s("cats", "s-cat", col(&|m| m.cat_share)), s("dogs", "s-dog", col(&|m| m.dog_share))],
            Unit::Ratio,
            true,
        ),
        chart(
            "Drift: mean P(dog) and low-confidence share",
            "drift",
            &days,
            vec![
                s("mean P(dog)", "s-dog", col(&|m| m.p_dog_mean)),
                s("low confidence", "s-low", col(&|m| m.low_confidence_share)),
            ],
            Unit::Ratio,
            false,
        ),
    ]
}

/// Most recent predictions listed on the dashboard.
const RECENT_ROWS: u32 = 20;

async fn dashboard(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Query(q): Query<DashboardQuery>,
) -> Response {
    if session.operator().is_none() {
        return Redirect::to("/login?next=/dashboard").into_response();
    }
    let days = if q.days == Some(30) { 30 } else { 7 };
    let today = (state.cfg.clock)().date_naive();
    let first = today - chrono::Days::new(u64::from(days - 1));
    let loaded = async {
        let (daily, window) = state.store.period_metrics(today, days).await?;
        let recent = state.store.recent_predictions(RECENT_ROWS).await?;
        Ok::<_, catsdogs_store::StoreError>((daily, window, recent))
    }
    .await;
    let (daily, window, recent) = match loaded {
        Ok(v) => v,
        Err(e) => {
            let ctx = context! { days, store_error => e.to_string(), window => context!{} };
            return render(&state, &session, StatusCode::SERVICE_UNAVAILABLE, "dashboard.html", "dashboard", ctx);
        }
    };
    let charts = dashboard_charts(first, days, &daily);
    let recent: Vec<RecentRow> = recent
        .into_iter()
        .map(|r| {
            let ok = r.record.status == catsdogs_store::PredictionStatus::Ok;
            RecentRow {
                time: r.record.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                file_ref: r.record.file_ref,
                status: if ok { "ok" } else { "error" },
                label: r.record.label,
                error_code: r.record.error_code,
                p_dog: r.record.p_dog,
                latency_ms: ok.then_some(r.record.latency_ms),
                why: (r.feedback_positive == Some(false) && r.record.image_ref.is_some()).then_some(r.record.id),
                feedback_positive: r.feedback_positive,
            }
        })
        .collect();
    // The registry section is informative: a registry that cannot be read says so there.
    let (models, models_error) = match crate::api::admin::models_report(&state).await {
        Ok(m) => (Some(m), None),
        Err(e) => (None, Some(e.message)),
    };
    // Drift per day (docs/drift.md); a failure is shown in its section, not for the page.
    let (drift, drift_error) = match crate::api::drift::per_day(&state, today, days).await {
        Ok(d) => (d, None),
        Err(e) => (Vec::new(), Some(e.message)),
    };
    let has_reference = state.loaded_model().is_some_and(|m| m.reference.is_some());
    let ctx = context! { days, window, daily, charts, recent, models, models_error, drift, drift_error, has_reference };
    render(&state, &session, StatusCode::OK, "dashboard.html", "dashboard", ctx)
}

/// The consented image of prediction `id` and its record, for an operator, when its answer
/// was reported wrong; the read is audited (`what` says which view). Otherwise the response
/// to send (sign-in, not found, store down).
async fn consented_image(
    state: &AppState,
    session: &Session,
    id: &str,
    what: &str,
) -> Result<(catsdogs_store::PredictionRecord, Vec<u8>), Response> {
    if session.operator().is_none() {
        return Err(Redirect::to("/login?next=/dashboard").into_response());
    }
    let not_found = || {
        message(state, session, StatusCode::NOT_FOUND, "No image", "No consented image is kept for this prediction.")
    };
    let record = match state.store.get_prediction(id).await {
        Ok(Some(r)) => r,
        Ok(None) => return Err(not_found()),
        Err(e) => return Err(refused(state, session, "Database unavailable", ApiError::from(e))),
    };
    // Only answers reported wrong are opened this way (the triage the page is for).
    match state.store.feedback_for(id).await {
        Ok(Some(f)) if !f.positive => {}
        Ok(_) => return Err(not_found()),
        Err(e) => return Err(refused(state, session, "Database unavailable", ApiError::from(e))),
    }
    let Some(path) = record.image_ref.as_deref().and_then(|r| state.images.path(r)) else {
        return Err(not_found());
    };
    let Ok(bytes) = tokio::fs::read(&path).await else { return Err(not_found()) };
    // Every read of a user's photo is audited, the page and the image alike.
    let actor = session.operator().unwrap_or_default();
    let detail = format!("prediction {id}: {what}");
    if let Err(e) = state.store.audit((state.cfg.clock)(), actor, "explain", &detail).await {
        return Err(refused(state, session, "Database unavailable", ApiError::from(e)));
    }
    Ok((record, bytes))
}

/// An operator's view of why the served model answers what it does on a consented image
/// (linked from the dashboard for answers reported wrong). The model being served now
/// computes it, labelled with its version; the access is audited like other reads of
/// users' data.
async fn why_page(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let (record, bytes) = match consented_image(&state, &session, &id, "explanation page").await {
        Ok(found) => found,
        Err(resp) => return resp,
    };
    let answer = match state.engine.classify(catsdogs_core::ImageInput::Encoded(bytes)).await {
        Ok(a) => a,
        Err(e) => return refused(&state, &session, "Cannot classify this image", ApiError::from(e)),
    };
    let Some(explanation) = crate::api::predict::ExplanationBody::of(&answer) else {
        return message(
            &state,
            &session,
            StatusCode::CONFLICT,
            "No explanation",
            "The served model cannot explain its answers (its graph has no logit map).",
        );
    };
    let ctx = context! {
        id,
        file_ref => record.file_ref,
        stored_label => record.label,
        stored_version => record.model_version,
        answer => answer.label(),
        answer_title => answer.label().title(),
        p_dog => answer.p_dog,
        version => answer.model_version.to_string(),
        explanation => serde_json::to_string(&explanation).unwrap_or_default(),
    };
    render(&state, &session, StatusCode::OK, "why.html", "dashboard", ctx)
}

/// The consented image of a prediction, for an operator (never cached).
async fn why_image(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    match consented_image(&state, &session, &id, "photo").await {
        Ok((_, bytes)) => {
            let content_type = match catsdogs_store::images::extension(&bytes) {
                "png" => "image/png",
                "gif" => "image/gif",
                "webp" => "image/webp",
                "bmp" => "image/bmp",
                _ => "image/jpeg",
            };
            (
                [
                    (header::CONTENT_TYPE, content_type),
                    (header::CACHE_CONTROL, "no-store"),
                    (header::HeaderName::from_static("x-content-type-options"), "nosniff"),
                ],
                bytes,
            )
                .into_response()
        }
        Err(resp) => resp,
    }
}

#[derive(Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

/// Only same-site paths: never redirect a signed-in operator to another site. Browsers drop
/// tabs and newlines from URLs (`/\t/evil` becomes `//evil`), so only printable ASCII
/// without spaces or backslashes passes, and the second character may not be a slash.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.len() <= 200
                && n.starts_with('/')
                && !n[1..].starts_with('/')
                && n.chars().all(|c| c.is_ascii_graphic() && c != '\\') =>
        {
            n.to_string()
        }
        _ => "/dashboard".to_string(),
    }
}

async fn login_page(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Query(q): Query<LoginQuery>,
) -> Response {
    let ctx =
        context! { next => safe_next(q.next.as_deref()), hours => OPERATOR_TTL_S / 3600, error => None::<String> };
    render(&state, &session, StatusCode::OK, "login.html", "dashboard", ctx)
}

#[derive(Deserialize)]
struct LoginForm {
    csrf: String,
    token: String,
    next: Option<String>,
}

/// Signs an operator in. Guessing is bounded per client address: after
/// `login_max_failures` wrong tokens within the window, the address gets 429 with
/// `Retry-After` for the lockout (doubling with each lockout, up to the maximum), whatever
/// token it sends, a correct one included; nothing sleeps on the server.
async fn login(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    peer: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return message(&state, &session, StatusCode::BAD_REQUEST, "Sign-in failed", "The form was incomplete.");
    };
    if !state.sessions.csrf_ok(&session, &form.csrf) {
        return csrf_failure(&state, &session);
    }
    let next = safe_next(form.next.as_deref());
    let client = state.limits.client_ip(peer.map(|Extension(p)| p), &headers);
    let now = std::time::Instant::now();
    let locked = |retry_after: std::time::Duration| {
        let secs = crate::limits::retry_after_secs(retry_after);
        let error = format!("Too many failed sign-ins from your address; try again in {secs} s.");
        let ctx = context! { next => next.clone(), hours => OPERATOR_TTL_S / 3600, error };
        let mut resp = render(&state, &session, StatusCode::TOO_MANY_REQUESTS, "login.html", "dashboard", ctx);
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        resp
    };
    if let Err(Refusal::RateLimited { retry_after }) = state.limits.login_allowed(client, now) {
        return locked(retry_after);
    }
    let Some(caller) = state.tokens.check(form.token.trim()) else {
        tracing::warn!(client = %client, "operator sign-in with an invalid token");
        if let Some(lockout) = state.limits.login_failed(client, now) {
            tracing::warn!(client = %client, seconds = lockout.as_secs(), "sign-in locked out for this address");
            return locked(lockout);
        }
        let ctx = context! { next, hours => OPERATOR_TTL_S / 3600, error => "That token is not valid." };
        return render(&state, &session, StatusCode::UNAUTHORIZED, "login.html", "dashboard", ctx);
    };
    state.limits.login_succeeded(client);
    let now = (state.cfg.clock)();
    // A fresh session id on every privilege change (no session fixation).
    let op = state.sessions.issue(Role::Operator { fingerprint: caller.fingerprint.clone() }, now);
    if let Err(e) =
        state.store.audit(now, &caller.fingerprint, "login", "operator session opened on the web page").await
    {
        tracing::error!(error = %e, "could not write the audit row for an operator sign-in");
    }
    tracing::info!(actor = %caller.fingerprint, "operator signed in");
    with_cookie(Redirect::to(&next).into_response(), &state.sessions.set_cookie(&op))
}

#[derive(Deserialize)]
struct LogoutForm {
    csrf: String,
}

async fn logout(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    form: Result<Form<LogoutForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if !form.is_ok_and(|Form(f)| state.sessions.csrf_ok(&session, &f.csrf)) {
        return csrf_failure(&state, &session);
    }
    let visitor = state.sessions.issue(Role::Visitor, (state.cfg.clock)());
    with_cookie(Redirect::to("/").into_response(), &state.sessions.set_cookie(&visitor))
}

fn with_cookie(mut resp: Response, cookie: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

async fn info(State(state): State<AppState>, Extension(session): Extension<Session>) -> Response {
    let card = state.loaded_model().map(|m| Value::from_serialize(&m.card));
    // The load error may name server paths: operators see it, visitors a generic message.
    let model_error = match session.operator() {
        Some(_) => state.model_error(),
        None => state.model_error().map(|_| "the model could not be loaded".to_string()),
    };
    let ctx = context! { card, model_error };
    render(&state, &session, StatusCode::OK, "info.html", "info", ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_stay_on_this_site() {
        assert_eq!(safe_next(Some("/dashboard?days=30")), "/dashboard?days=30");
        for bad in [
            "https://evil.example",
            "//evil.example",
            "/\\evil.example",
            "/\t/evil.example",
            "/\n/x",
            "/ /x",
            "dashboard",
            "",
        ] {
            assert_eq!(safe_next(Some(bad)), "/dashboard", "{bad}");
        }
        assert_eq!(safe_next(None), "/dashboard");
    }

    #[test]
    fn common_page_values_win_the_context_merge() {
        let common = context! { csrf => "real" };
        let page = context! { csrf => "from-page", other => 1 };
        let merged = context! { ..common, ..page };
        assert_eq!(merged.get_attr("csrf").ok(), Some(Value::from("real")));
        assert_eq!(merged.get_attr("other").ok(), Some(Value::from(1)));
    }

    #[test]
    fn every_chart_covers_every_day() {
        let first = NaiveDate::from_ymd_opt(2026, 11, 1).expect("date");
        let charts = dashboard_charts(first, 7, &[]);
        assert_eq!(charts.len(), 5);
        for c in &charts {
            assert!(c.svg.contains("11-01") && c.svg.contains("11-07"), "{}", c.title);
        }
    }

    #[test]
    fn templates_parse() {
        for name in ["home.html", "results.html", "message.html", "login.html", "dashboard.html", "info.html"] {
            assert!(TEMPLATES.get_template(name).is_ok(), "{name}");
        }
    }
}
