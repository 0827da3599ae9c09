//! A real PostgreSQL stopped under the running service: predictions still answer, feedback
//! is 503, readiness says why, and everything recovers (queued rows written) when the
//! database returns. Rows still queued at shutdown are kept on disk and written by the
//! next start.
use catsdogs_testkit::pg::PgCluster;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Db, TestApp, error_code, postgres};

async fn app_on(pg_url: &str) -> TestApp {
    TestApp::spawn_on(&Db::Url(pg_url.to_string())).await
}

fn stop(pg: &PgCluster) {
    pg.stop_server().expect("stop postgres");
}

pub async fn predictions_answer_while_the_database_is_down_and_feedback_is_503() {
    let (pg, url) = postgres("outage");
    let app = app_on(&url).await;
    app.predict("a.png").await;
    stop(&pg);
    let r = app.post_predict("b.png", crate::helpers::image_bytes(image::ImageFormat::Png), "image/png").await;
    assert_eq!(r.status(), StatusCode::OK, "predictions must answer while the database is down");
    let during: catsdogs_server::api::predict::PredictResponse = r.json().await.expect("json");
    let r = app.post_feedback(&json!({"prediction_id": during.id, "correct": true})).await;
    assert_eq!(error_code(r, StatusCode::SERVICE_UNAVAILABLE).await, "store_unavailable");
    app.stop().await;
}

pub async fn readiness_reports_the_outage_and_the_queued_row_is_written_after_it() {
    let (pg, url) = postgres("outage");
    let app = app_on(&url).await;
    stop(&pg);
    let during = app.predict("b.png").await;
    let health = app.wait_ready(false).await;
    assert!(!health.store.reachable);
    assert!(health.store.pending_rows >= 1, "{health:?}");
    assert!(health.store.error.is_some());

    pg.start_server().expect("restart postgres");
    app.wait_ready(true).await;
    let r = app.post_feedback(&json!({"prediction_id": during.id, "correct": true})).await;
    assert_eq!(r.status(), StatusCode::OK, "the prediction made during the outage was written after it");
    app.stop().await;
}

pub async fn rows_queued_at_shutdown_are_written_by_the_next_start() {
    let (pg, url) = postgres("outage");
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn_at(&url, dir.path(), |_| {}).await;
    app.wait_ready(true).await;
    // Down, then a graceful shutdown: the queued row goes to disk, the next start writes it.
    stop(&pg);
    let late = app.predict("c.png").await;
    app.stop().await;
    assert!(dir.path().join("pending-predictions.jsonl").is_file(), "pending rows not saved at shutdown");
    pg.start_server().expect("restart postgres");
    let app = TestApp::spawn_at(&url, dir.path(), |_| {}).await;
    app.wait_ready(true).await;
    let r = app.post_feedback(&json!({"prediction_id": late.id, "correct": false})).await;
    assert_eq!(r.status(), StatusCode::OK, "row saved at shutdown was written at the next start");
    assert!(!dir.path().join("pending-predictions.jsonl").exists());
    app.stop().await;
}

/// How many inference-log lines name `id`.
fn log_lines_of(app: &TestApp, id: &str) -> usize {
    let files = catsdogs_store::LogFiles::new(app.data_dir.join("logs"));
    files.lines_for(id).expect("read the log").len()
}

/// `DELETE /api/predictions/{id}` while the database is down answers 503 with Retry-After
/// and removes nothing: not the queued row, not the log line, not the image. After the
/// database returns, the retry removes all of it, and the queued row never reaches the
/// database.
pub async fn erasure_during_an_outage_removes_nothing_and_a_retry_after_it_removes_everything() {
    let (pg, url) = postgres("outage");
    let app = app_on(&url).await;
    app.wait_ready(true).await;
    let png = crate::helpers::image_bytes(image::ImageFormat::Png);
    let stored = crate::images::predict_with_consent(&app, png.clone(), Some("true")).await;
    let r = app.post_feedback(&json!({"prediction_id": stored.id, "correct": true})).await;
    assert_eq!(r.status(), StatusCode::OK);
    stop(&pg);
    // Another photo, predicted while the database is down: its row waits in the queue.
    let mut other = png.clone();
    other.extend_from_slice(b"trailing bytes make another file");
    let queued = crate::images::predict_with_consent(&app, other, Some("true")).await;
    assert!(queued.image_kept);
    let images_before = app.state.images.count();
    assert_eq!(images_before, 2);
    for id in [&stored.id, &queued.id] {
        let r = app.delete(&format!("/api/predictions/{id}")).await;
        assert!(r.headers().contains_key("retry-after"), "a 503 says when to retry");
        assert_eq!(error_code(r, StatusCode::SERVICE_UNAVAILABLE).await, "store_unavailable");
    }
    assert_eq!(app.state.images.count(), images_before, "an image went during the outage");
    assert_eq!(app.state.outbox.len(), 1, "the queued row went during the outage");
    assert_eq!((log_lines_of(&app, &stored.id), log_lines_of(&app, &queued.id)), (1, 1));

    pg.start_server().expect("restart postgres");
    app.wait_ready(true).await;
    for (id, feedback) in [(&stored.id, 1), (&queued.id, 0)] {
        let report: catsdogs_server::api::predictions::ErasureReport =
            app.get_json_with(reqwest::Method::DELETE, &format!("/api/predictions/{id}")).await;
        assert_eq!(
            (report.predictions, report.feedback, report.inference_log_lines, report.images),
            (1, feedback, 1, 1),
            "{id}"
        );
        assert_eq!(log_lines_of(&app, id), 0);
        assert!(app.state.store.get_prediction(id).await.expect("get").is_none(), "{id} came back");
    }
    assert_eq!(app.state.images.count(), 0);
    assert_eq!(app.state.outbox.len(), 0);
    app.stop().await;
}
