//! Authentication: the bearer tokens on every protected route, the challenge header, and
//! the routes that stay public. These tests write the Authorization header by hand: the
//! header is what they check.
use image::ImageFormat;
use reqwest::{Method, StatusCode};

use crate::helpers::{ROTATED_TOKEN, TOKEN, TestApp, error_code, file_form, image_bytes};

pub async fn a_request_without_a_token_is_401_with_a_bearer_challenge() {
    let app = TestApp::spawn().await;
    let r = app
        .client
        .post(app.url("/api/predict"))
        .multipart(file_form("a.png", image_bytes(ImageFormat::Png), "image/png"))
        .send()
        .await
        .expect("send");
    assert!(r.headers().get("www-authenticate").is_some_and(|v| v.to_str().unwrap_or_default().starts_with("Bearer")));
    assert_eq!(error_code(r, StatusCode::UNAUTHORIZED).await, "unauthorized");
    app.stop().await;
}

pub async fn a_wrong_scheme_or_token_is_401_unauthorized() {
    let app = TestApp::spawn().await;
    for value in ["Basic dXNlcjpwYXNz", "Bearer wrong-token", "Bearer "] {
        let r = app.client.get(app.url("/api/metrics/7d")).header("Authorization", value).send().await.expect("send");
        assert_eq!(error_code(r, StatusCode::UNAUTHORIZED).await, "unauthorized");
    }
    app.stop().await;
}

pub async fn operator_routes_are_closed_without_a_token() {
    let app = TestApp::spawn().await;
    for path in ["/api/metrics/daily", "/api/metrics/7d"] {
        let r = app.get_anonymous(path).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path} is open");
    }
    app.stop().await;
}

pub async fn both_rotated_tokens_are_accepted() {
    let app = TestApp::spawn().await;
    for token in [TOKEN, ROTATED_TOKEN] {
        let r =
            app.client.get(app.url("/api/metrics/7d")).header("Authorization", format!("Bearer {token}")).send().await;
        assert_eq!(r.expect("send").status(), StatusCode::OK);
    }
    app.stop().await;
}

pub async fn every_protected_route_refuses_bad_credentials() {
    let app = TestApp::spawn().await;
    let mut last_byte = TOKEN.to_string();
    let last = last_byte.pop().map_or('x', |c| if c == '0' { '1' } else { '0' });
    last_byte.push(last);
    let headers = [
        None,
        Some(format!("Bearer {}", "wrong")),
        Some(format!("Bearer {last_byte}")),
        Some(TOKEN.to_string()),
        Some(format!("Basic {TOKEN}")),
        Some("Bearer ".to_string()),
    ];
    let id = "00000000-0000-0000-0000-000000000001";
    let routes: Vec<(Method, String)> = vec![
        (Method::POST, "/api/predict".into()),
        (Method::POST, "/api/predict/batch".into()),
        (Method::POST, "/api/feedback".into()),
        (Method::GET, "/api/metrics/daily".into()),
        (Method::GET, "/api/metrics/7d".into()),
        (Method::GET, format!("/api/predictions/{id}")),
        (Method::DELETE, format!("/api/predictions/{id}")),
        (Method::GET, "/metrics".into()),
        (Method::GET, "/v2".into()),
        (Method::GET, "/v2/models/catsdogs".into()),
        (Method::POST, "/v2/models/catsdogs/infer".into()),
    ];
    for (method, path) in &routes {
        for h in &headers {
            let mut req = app.client.request(method.clone(), app.url(path));
            if let Some(h) = h {
                req = req.header("Authorization", h);
            }
            let r = req.send().await.expect("send");
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{method} {path} with {h:?}");
            assert!(r.headers().get("www-authenticate").is_some(), "{method} {path}: WWW-Authenticate");
        }
    }
    app.stop().await;
}

pub async fn the_public_routes_stay_public() {
    let app = TestApp::spawn().await;
    for path in ["/api/health", "/api/info", "/health", "/v2/health/live", "/v2/health/ready", "/", "/docs/"] {
        assert_eq!(app.get_anonymous(path).await.status(), StatusCode::OK, "{path}");
    }
    app.stop().await;
}
