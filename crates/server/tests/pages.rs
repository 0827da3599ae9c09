//! The web page's server side over plain HTTP: session cookie and CSRF rules, what a
//! visitor and an operator may do, the no-JavaScript form flow, escaping and headers.
mod support;

use image::ImageFormat;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_SECURITY_POLICY, LOCATION, SET_COOKIE};
use serde_json::json;
use support::{TOKEN, TestApp, image_bytes};

/// A browser-like client: keeps cookies, does not follow redirects (so they can be checked).
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("client")
}

/// The attribute value that follows `prefix` (which ends with the opening quote).
fn attr_after(html: &str, prefix: &str) -> String {
    let start = html.find(prefix).unwrap_or_else(|| panic!("{prefix} not in page")) + prefix.len();
    html[start..].split('"').next().unwrap_or_default().to_string()
}

fn csrf_of(html: &str) -> String {
    attr_after(html, r#"name="csrf-token" content=""#)
}

async fn page(c: &reqwest::Client, url: &str) -> (StatusCode, String) {
    let r = c.get(url).send().await.expect("get");
    (r.status(), r.text().await.expect("body"))
}

fn image_part(name: &str) -> reqwest::multipart::Part {
    reqwest::multipart::Part::bytes(image_bytes(ImageFormat::Png)).file_name(name.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_csrf_and_roles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("pages.db").display());
    let app = TestApp::spawn(&db, dir.path().join("data"), None).await;
    let c = browser();

    // The first page view issues a hardened session cookie and strict headers.
    let r = c.get(app.url("/")).send().await.expect("home");
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
    let csrf = csrf_of(&html);
    // The session is stable: a second view sets no new cookie and keeps the token.
    let r = c.get(app.url("/")).send().await.expect("home again");
    assert!(r.headers().get(SET_COOKIE).is_none());
    assert_eq!(csrf_of(&r.text().await.expect("html")), csrf);
    for asset in ["/static/app.js", "/static/app.css", "/static/favicon.svg"] {
        let r = c.get(app.url(asset)).send().await.expect("asset");
        assert_eq!(r.status(), StatusCode::OK, "{asset}");
    }

    // The API with the session: only together with the CSRF header.
    let predict = |csrf: Option<&str>| {
        let mut req = c
            .post(app.url("/api/predict"))
            .multipart(reqwest::multipart::Form::new().part("file", image_part("a.png")));
        if let Some(t) = csrf {
            req = req.header("X-CSRF-Token", t);
        }
        req.send()
    };
    assert_eq!(predict(None).await.expect("send").status(), StatusCode::UNAUTHORIZED);
    assert_eq!(predict(Some("forged")).await.expect("send").status(), StatusCode::UNAUTHORIZED);
    let other_session = browser();
    let (_, other_html) = page(&other_session, &app.url("/")).await;
    assert_eq!(predict(Some(&csrf_of(&other_html))).await.expect("send").status(), StatusCode::UNAUTHORIZED);
    let r = predict(Some(&csrf)).await.expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let pred: serde_json::Value = r.json().await.expect("json");
    let send_feedback = |client: &reqwest::Client| {
        client
            .post(app.url("/api/feedback"))
            .header("X-CSRF-Token", &csrf)
            .json(&json!({"prediction_id": pred["id"], "correct": true}))
            .send()
    };
    assert_eq!(send_feedback(&c).await.expect("feedback").status(), StatusCode::OK);
    // Without the cookie the CSRF token alone is worthless.
    let no_cookies = reqwest::Client::new();
    assert_eq!(send_feedback(&no_cookies).await.expect("feedback").status(), StatusCode::UNAUTHORIZED);
    // A visitor session does not open the metrics.
    let r = c.get(app.url("/api/metrics/7d")).header("X-CSRF-Token", &csrf).send().await.expect("metrics");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // The plain form (no JavaScript): CSRF required, each file gets its own result, names escaped.
    let hostile = "<img src=x onerror=alert(1)>.png";
    let form = |csrf: &str| {
        reqwest::multipart::Form::new()
            .text("csrf", csrf.to_string())
            .part("file", image_part(hostile))
            .part("file", reqwest::multipart::Part::bytes(b"plain text".to_vec()).file_name("notes.txt"))
    };
    let r = c.post(app.url("/classify")).multipart(form("nope")).send().await.expect("classify");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = c.post(app.url("/classify")).multipart(form(&csrf)).send().await.expect("classify");
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.expect("html");
    assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;.png") && !html.contains(hostile), "escaped name");
    assert_eq!(html.matches("class=\"card failed\"").count(), 1, "only the text file fails");
    assert!(html.contains("notes.txt"));
    let pid = attr_after(&html, r#"name="prediction_id" value=""#);
    // Shown, so that a user can quote it to ask for access or erasure (docs/privacy.md §6).
    assert!(html.contains(&format!("Prediction id <code>{pid}</code>")), "prediction id not shown");
    let r = c
        .post(app.url("/feedback"))
        .form(&[("csrf", csrf.as_str()), ("prediction_id", &pid), ("verdict", "dog")])
        .send()
        .await
        .expect("form feedback");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.expect("html").contains("Feedback saved"));
    assert_eq!(app.state.store.count_rows("feedback").await.expect("count"), 2);
    let r = c
        .post(app.url("/feedback"))
        .form(&[("csrf", "x"), ("prediction_id", &pid), ("verdict", "dog")])
        .send()
        .await
        .expect("form feedback");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Dashboard: visitors are sent to sign in; a wrong token is refused.
    let r = c.get(app.url("/dashboard")).send().await.expect("dashboard");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers().get(LOCATION).and_then(|v| v.to_str().ok()), Some("/login?next=/dashboard"));
    let login = |token: &str, csrf: &str| {
        c.post(app.url("/login")).form(&[("csrf", csrf), ("token", token), ("next", "https://evil.example/")]).send()
    };
    assert_eq!(login("wrong", &csrf).await.expect("login").status(), StatusCode::UNAUTHORIZED);
    assert_eq!(login(TOKEN, "forged").await.expect("login").status(), StatusCode::FORBIDDEN);
    let audits = app.state.store.count_rows("audit_log").await.expect("count");
    let r = login(TOKEN, &csrf).await.expect("login");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers().get(LOCATION).and_then(|v| v.to_str().ok()), Some("/dashboard"), "no open redirect");
    assert_eq!(app.state.store.count_rows("audit_log").await.expect("count"), audits + 1, "sign-in audited");
    let (status, html) = page(&c, &app.url("/dashboard?days=30")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Latest predictions") && html.matches("<svg class=\"chart\"").count() == 5);
    assert!(!html.contains(hostile) && !html.contains("notes.txt"), "only pseudonyms on the dashboard");
    let op_csrf = csrf_of(&html);
    assert_ne!(op_csrf, csrf, "a new session (and CSRF token) after sign-in");
    let r = c.get(app.url("/api/metrics/7d")).header("X-CSRF-Token", &op_csrf).send().await.expect("metrics");
    assert_eq!(r.status(), StatusCode::OK, "an operator session may read the metrics");
    let w: serde_json::Value = r.json().await.expect("json");
    assert_eq!(w["inf_7d"], 3);
    assert_eq!(w["feedback_count_7d"], 2);

    // Signing out returns to a visitor session.
    let r = c.post(app.url("/logout")).form(&[("csrf", op_csrf.as_str())]).send().await.expect("logout");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(c.get(app.url("/dashboard")).send().await.expect("dashboard").status(), StatusCode::SEE_OTHER);
    app.stop().await;
}
