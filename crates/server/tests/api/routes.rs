//! The API documentation and routing: Swagger UI, the OpenAPI document, unknown routes and
//! wrong methods answered with the API's JSON errors.
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{TestApp, error_code};

pub async fn the_swagger_ui_is_served() {
    let app = TestApp::spawn().await;
    let docs = app.get_anonymous("/docs/").await;
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.unwrap_or_default().to_lowercase().contains("swagger"));
    app.stop().await;
}

pub async fn the_openapi_document_lists_every_api_route() {
    let app = TestApp::spawn().await;
    let spec: Value = app.get_anonymous("/openapi.json").await.json().await.expect("json");
    for path in
        ["/api/predict", "/api/predict/batch", "/api/feedback", "/api/metrics/daily", "/api/metrics/7d", "/api/health"]
    {
        assert!(spec["paths"][path].is_object(), "{path} missing from the OpenAPI document");
    }
    app.stop().await;
}

pub async fn an_unknown_api_route_is_a_json_404() {
    let app = TestApp::spawn().await;
    let r = app.get("/api/nope").await;
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    app.stop().await;
}

pub async fn a_wrong_method_is_a_json_405() {
    let app = TestApp::spawn().await;
    let r = app.authed(Method::GET, "/api/predict").send().await.expect("send");
    assert_eq!(error_code(r, StatusCode::METHOD_NOT_ALLOWED).await, "method_not_allowed");
    app.stop().await;
}
