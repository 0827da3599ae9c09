//! Health, readiness and model information.
use catsdogs_server::api::health::{InfoResponse, SeedHealth};
use reqwest::StatusCode;

use crate::helpers::{Db, TestApp, on_both_databases};

on_both_databases!(readiness_reports_the_model_and_a_reachable_store);

async fn readiness_reports_the_model_and_a_reachable_store(db: &Db) {
    let app = TestApp::spawn_on(db).await;
    let (status, h) = app.health().await;
    assert_eq!(status, StatusCode::OK);
    assert!(h.ready, "{h:?}");
    assert!(h.store.reachable);
    assert_eq!(h.store.dropped_rows, 0);
    app.stop().await;
}

pub async fn the_seed_health_route_says_healthy_with_the_model_loaded() {
    let app = TestApp::spawn().await;
    let r = app.get_anonymous("/health").await;
    let seed: SeedHealth = r.json().await.expect("json");
    assert_eq!(seed.status, "healthy");
    assert!(seed.model_loaded);
    app.stop().await;
}

pub async fn info_describes_the_loaded_model() {
    let app = TestApp::spawn().await;
    let info: InfoResponse = app.get_json("/api/info").await;
    assert!(info.model_loaded);
    assert!(info.parameters > 10_000);
    // Strings by type; not empty.
    assert!(!info.version.is_empty() && !info.model_path.is_empty());
    app.stop().await;
}

/// The seed's clients call `/api/info` without a token to check the model is loaded: it
/// answers them with the seed's fields and the versions, and no filesystem path.
pub async fn info_is_public_with_the_seed_fields_and_no_path() {
    let app = TestApp::spawn().await;
    let r = app.get_anonymous("/api/info").await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: serde_json::Value = r.json().await.expect("json");
    let mut keys: Vec<&str> = body.as_object().expect("object").keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["model_loaded", "model_path", "model_version", "parameters", "service_version", "version"]);
    assert_eq!(body["version"], "1.0.0", "the seed API version");
    assert_eq!(body["service_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["model_loaded"], true);
    let model_path = body["model_path"].as_str().expect("model_path");
    assert!(!model_path.contains('/') && !model_path.is_empty(), "{model_path}");
    let card = app.state.loaded_model().expect("loaded");
    assert_eq!(body["model_version"].as_str(), Some(card.card.version.as_str()));
    let model_dir = app.state.cfg.model_dir.canonicalize().expect("model dir");
    for dir in [&model_dir, &app.data_dir] {
        assert!(!body.to_string().contains(dir.to_string_lossy().as_ref()), "{body} shows {}", dir.display());
    }
    app.stop().await;
}

/// The README's `DATABASE_URL=sqlite:///some/new.db` (no `mode=rwc`) on a fresh machine:
/// the file and its folder are created and the service becomes ready.
pub async fn a_sqlite_url_to_a_new_file_becomes_ready() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("fresh/folder/new.db");
    let app = TestApp::spawn_at(&format!("sqlite://{}", db.display()), &dir.path().join("data"), |_| {}).await;
    let report = app.wait_ready(true).await;
    assert!(report.ready);
    assert!(db.is_file(), "{} was not created", db.display());
    app.stop().await;
}

/// A database URL that can never work stops the start with a message naming the problem.
pub async fn a_database_url_that_can_never_work_fails_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"not a folder").expect("write");
    for (url, says) in [
        (format!("sqlite://{}/x.db", blocker.display()), "cannot be created or opened for writing"),
        ("mysql://localhost/db".to_string(), "unsupported DATABASE_URL"),
    ] {
        let mut cfg = catsdogs_server::ServerConfig::new(catsdogs_testkit::seed_cnn_dir(), dir.path().join("data"));
        cfg.database_url = Some(url.clone());
        cfg.tokens = vec![crate::helpers::TOKEN.into()];
        let err = catsdogs_server::build(cfg).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(says), "{url}: {err:?}");
    }
}

/// `API_TOKEN=abc` (or a short token in the secrets file) stops the start with the rule,
/// never echoing the token.
pub async fn a_token_shorter_than_16_characters_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = |data: &str| {
        let mut cfg = catsdogs_server::ServerConfig::new(catsdogs_testkit::seed_cnn_dir(), dir.path().join(data));
        cfg.database_url = Some(format!("sqlite://{}", dir.path().join(data).join("db.sqlite").display()));
        cfg
    };
    let mut cfg = config("flag");
    cfg.tokens = vec!["abc".into()];
    let err = catsdogs_server::build(cfg).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("at least 16") && err.contains("API_TOKEN") && !err.contains("abc"), "{err:?}");

    let data = dir.path().join("file");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::write(data.join("api-token"), "short-secret").expect("write");
    let err = catsdogs_server::build(config("file")).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("api-token") && err.contains("shorter than") && !err.contains("short-secret"), "{err:?}");

    let mut cfg = config("ok");
    cfg.tokens = vec!["0123456789abcdef".into()];
    assert!(catsdogs_server::build(cfg).await.is_ok(), "16 characters are enough");
}

/// Without a model, the public readiness report and a client's 503 say why without
/// revealing where the service is installed.
pub async fn a_missing_model_is_explained_without_any_absolute_path() {
    let empty = tempfile::tempdir().expect("tempdir");
    let model_dir = empty.path().join("no-model-here");
    std::fs::create_dir_all(&model_dir).expect("mkdir");
    let dir = model_dir.clone();
    let app = TestApp::spawn_with(move |cfg| cfg.model_dir = dir).await;
    let (status, report) = app.health().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let why = report.model.error.clone().expect("the report says why");
    assert!(why.contains("model.json"), "{why}");
    let r = app.post_predict("x.png", crate::helpers::image_bytes(image::ImageFormat::Png), "image/png").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = r.text().await.expect("body");
    for shown in [why.as_str(), body.as_str()] {
        assert!(!shown.contains(empty.path().to_string_lossy().as_ref()), "{shown}");
        assert!(!shown.contains("/tmp"), "{shown}");
    }
    app.stop().await;
}
