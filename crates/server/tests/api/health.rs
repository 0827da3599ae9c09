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
