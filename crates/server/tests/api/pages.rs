//! The web page's server side over plain HTTP: session cookie and CSRF rules, what a
//! visitor and an operator may do, the no-JavaScript form flow, escaping and headers.
use reqwest::StatusCode;
use reqwest::header::{CONTENT_SECURITY_POLICY, LOCATION, SET_COOKIE};
use reqwest::multipart::{Form, Part};
use serde_json::json;

use crate::helpers::{Session, TOKEN, TestApp, attr_after, browser_client, csrf_of, image_part};

/// A file name that is HTML.
const HOSTILE: &str = "<img src=x onerror=alert(1)>.png";

/// The no-JavaScript form: a generated PNG under [`HOSTILE`]'s name and a text file.
fn classify_form(csrf: &str) -> Form {
    Form::new()
        .text("csrf", csrf.to_string())
        .part("file", image_part(HOSTILE))
        .part("file", Part::bytes(b"plain text".to_vec()).file_name("notes.txt"))
}

fn location(r: &reqwest::Response) -> Option<&str> {
    r.headers().get(LOCATION).and_then(|v| v.to_str().ok())
}

pub async fn every_page_renders_without_the_token() {
    let app = TestApp::spawn().await;
    for page in ["/", "/info", "/inference"] {
        let r = app.get_anonymous(page).await;
        assert_eq!(r.status(), StatusCode::OK, "{page}");
        let html = r.text().await.unwrap_or_default();
        assert!(html.contains("<html") && !html.contains(TOKEN), "{page}");
    }
    app.stop().await;
}

/// The first page view issues a hardened session cookie and strict headers.
pub async fn the_first_view_issues_a_hardened_session_cookie_under_a_strict_csp() {
    let app = TestApp::spawn().await;
    let r = browser_client().get(app.url("/")).send().await.expect("home");
    assert_eq!(r.status(), StatusCode::OK);
    let cookie = r.headers().get(SET_COOKIE).and_then(|v| v.to_str().ok()).expect("session cookie").to_string();
    for attr in ["catsdogs_session=", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attr), "{attr} missing from {cookie}");
    }
    let csp = r.headers().get(CONTENT_SECURITY_POLICY).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    let html = r.text().await.expect("html");
    assert!(!html.contains(TOKEN));
    assert!(!html.contains("<script>") && !html.contains("style=\""), "no inline script or style");
    app.stop().await;
}

/// A second view sets no new cookie and keeps the token.
pub async fn the_session_and_its_csrf_token_are_stable() {
    let app = TestApp::spawn().await;
    let visitor = app.visitor().await;
    let r = visitor.client.get(visitor.url("/")).send().await.expect("home again");
    assert!(r.headers().get(SET_COOKIE).is_none());
    assert_eq!(csrf_of(&r.text().await.expect("html")), visitor.csrf);
    app.stop().await;
}

pub async fn the_static_assets_are_served() {
    let app = TestApp::spawn().await;
    for asset in ["/static/app.js", "/static/app.css", "/static/favicon.svg"] {
        assert_eq!(app.get_anonymous(asset).await.status(), StatusCode::OK, "{asset}");
    }
    app.stop().await;
}

/// The API with the session: only together with its own CSRF header.
pub async fn the_api_accepts_a_session_only_with_its_csrf_token() {
    let app = TestApp::spawn().await;
    let visitor = app.visitor().await;
    assert_eq!(visitor.post_predict(None).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(visitor.post_predict(Some("forged")).await.status(), StatusCode::UNAUTHORIZED);
    let other_session = app.visitor().await;
    assert_eq!(visitor.post_predict(Some(&other_session.csrf)).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(visitor.post_predict(Some(&visitor.csrf)).await.status(), StatusCode::OK);
    app.stop().await;
}

/// Without the cookie the CSRF token alone is worthless.
pub async fn a_csrf_token_without_its_session_cookie_is_refused() {
    let app = TestApp::spawn().await;
    let visitor = app.visitor().await;
    let id = visitor.predict().await.id;
    let body = json!({"prediction_id": id, "correct": true});
    assert_eq!(visitor.post_feedback(&body).await.status(), StatusCode::OK);
    let no_cookies = Session { client: reqwest::Client::new(), ..visitor };
    assert_eq!(no_cookies.post_feedback(&body).await.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

pub async fn a_visitor_session_does_not_open_the_metrics() {
    let app = TestApp::spawn().await;
    let visitor = app.visitor().await;
    assert_eq!(visitor.get_api("/api/metrics/7d").await.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

pub async fn the_plain_form_needs_the_csrf_token() {
    let app = TestApp::spawn().await;
    let visitor = app.visitor().await;
    assert_eq!(visitor.classify(classify_form("nope")).await.status(), StatusCode::FORBIDDEN);
    app.stop().await;
}

/// Each file gets its own result, names escaped, the prediction id shown.
pub async fn the_plain_form_shows_each_file_with_its_name_escaped() {
    let app = TestApp::spawn().await;
    let visitor = app.visitor().await;
    let r = visitor.classify(classify_form(&visitor.csrf)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.expect("html");
    assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;.png") && !html.contains(HOSTILE), "escaped name");
    assert_eq!(html.matches("class=\"card failed\"").count(), 1, "only the text file fails");
    assert!(html.contains("notes.txt"));
    let pid = attr_after(&html, r#"name="prediction_id" value=""#);
    // Shown, so that a user can quote it to ask for access or erasure (docs/privacy.md §6).
    assert!(html.contains(&format!("Prediction id <code>{pid}</code>")), "prediction id not shown");
    app.stop().await;
}

/// The plain feedback form: saved with the CSRF token, refused without.
pub async fn the_plain_feedback_form_saves_with_the_csrf_token_only() {
    let app = TestApp::spawn().await;
    let visitor = app.visitor().await;
    let html = visitor.classify(classify_form(&visitor.csrf)).await.text().await.expect("html");
    let pid = attr_after(&html, r#"name="prediction_id" value=""#);
    let r =
        visitor.post_form("/feedback", &[("csrf", &visitor.csrf), ("prediction_id", &pid), ("verdict", "dog")]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.expect("html").contains("Feedback saved"));
    assert_eq!(app.state.store.count_rows("feedback").await.expect("count"), 1);
    let r = visitor.post_form("/feedback", &[("csrf", "x"), ("prediction_id", &pid), ("verdict", "dog")]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    app.stop().await;
}

/// Visitors are sent to sign in.
pub async fn the_dashboard_sends_visitors_to_sign_in() {
    let app = TestApp::spawn().await;
    let visitor = app.visitor().await;
    let r = visitor.client.get(visitor.url("/dashboard")).send().await.expect("dashboard");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), Some("/login?next=/dashboard"));
    app.stop().await;
}

pub async fn sign_in_refuses_a_wrong_token_or_a_forged_csrf_token() {
    let app = TestApp::spawn().await;
    let visitor = app.visitor().await;
    let next = "https://evil.example/";
    assert_eq!(visitor.sign_in("wrong", &visitor.csrf, next).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(visitor.sign_in(TOKEN, "forged", next).await.status(), StatusCode::FORBIDDEN);
    app.stop().await;
}

pub async fn sign_in_is_audited_and_never_redirects_off_site() {
    let app = TestApp::spawn().await;
    let visitor = app.visitor().await;
    // The purge run at start writes its own audit row, asynchronously: count after it.
    app.wait_for_the_startup_purge().await;
    let audits = app.state.store.count_rows("audit_log").await.expect("count");
    let r = visitor.sign_in(TOKEN, &visitor.csrf, "https://evil.example/").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), Some("/dashboard"), "no open redirect");
    assert_eq!(app.state.store.count_rows("audit_log").await.expect("count"), audits + 1, "sign-in audited");
    app.stop().await;
}

pub async fn the_dashboard_shows_its_charts_and_pseudonyms_only() {
    let app = TestApp::spawn().await;
    let visitor = app.visitor().await;
    assert_eq!(visitor.classify(classify_form(&visitor.csrf)).await.status(), StatusCode::OK);
    let operator = app.login(TOKEN).await;
    let (status, html) = operator.page("/dashboard?days=30").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Latest predictions") && html.matches("<svg class=\"chart\"").count() == 5);
    assert!(!html.contains(HOSTILE) && !html.contains("notes.txt"), "only pseudonyms on the dashboard");
    app.stop().await;
}

/// After sign-in: a new session (and CSRF token), which may read the metrics.
pub async fn an_operator_session_has_a_new_csrf_token_and_reads_the_metrics() {
    let app = TestApp::spawn().await;
    let visitor = app.visitor().await;
    let visitor_csrf = visitor.csrf.clone();
    // Three predictions (a page upload and the form's two files), two feedback.
    let r = visitor.post_predict(Some(&visitor.csrf)).await;
    let pred: catsdogs_server::api::predict::PredictResponse = crate::helpers::ok_json(r).await;
    assert_eq!(
        visitor.post_feedback(&json!({"prediction_id": pred.id, "correct": true})).await.status(),
        StatusCode::OK
    );
    let html = visitor.classify(classify_form(&visitor.csrf)).await.text().await.expect("html");
    let pid = attr_after(&html, r#"name="prediction_id" value=""#);
    let r =
        visitor.post_form("/feedback", &[("csrf", &visitor.csrf), ("prediction_id", &pid), ("verdict", "dog")]).await;
    assert_eq!(r.status(), StatusCode::OK);

    let operator = app.login(TOKEN).await;
    assert_ne!(operator.csrf, visitor_csrf, "a new session (and CSRF token) after sign-in");
    let r = operator.get_api("/api/metrics/7d").await;
    assert_eq!(r.status(), StatusCode::OK, "an operator session may read the metrics");
    let w: serde_json::Value = r.json().await.expect("json");
    assert_eq!(w["inf_7d"], 3);
    assert_eq!(w["feedback_count_7d"], 2);
    app.stop().await;
}

/// Signing out returns to a visitor session.
pub async fn signing_out_returns_to_a_visitor_session() {
    let app = TestApp::spawn().await;
    let operator = app.login(TOKEN).await;
    let r = operator.post_form("/logout", &[("csrf", &operator.csrf)]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = operator.client.get(operator.url("/dashboard")).send().await.expect("dashboard");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    app.stop().await;
}
