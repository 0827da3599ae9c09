//! Privacy end to end: the raw file name never stored or logged, one inference-log line
//! per prediction under concurrency, export and erasure of one prediction, and the audit
//! log of both.
use std::collections::HashSet;
use std::path::Path;

use catsdogs_server::api::predict::PredictResponse;
use catsdogs_server::api::predictions::ErasureReport;
use catsdogs_store::inference_log::LogFiles;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TOKEN, TestApp, captured_logs};

pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn occurrences(haystack: &[u8], needle: &str) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle.as_bytes()).count()
}

/// Every byte the service wrote under `dir` (database files, inference log, secrets).
pub fn all_bytes_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.push((p.display().to_string(), b));
            }
        }
    }
    out
}

/// The inference log's lines (without headers).
fn log_lines(app: &TestApp) -> Vec<String> {
    let files = LogFiles::new(app.data_dir.join("logs"));
    let mut out = Vec::new();
    for (_, path) in files.files().expect("log files") {
        let text = std::fs::read_to_string(path).expect("read log");
        out.extend(text.lines().skip(1).map(str::to_string));
    }
    out
}

/// A distinctive raw file name: it is echoed to the caller and stored nowhere.
const RAW: &str = "holiday-photo-of-Jane-Doe-1987.png";

/// An app with one prediction of a file named [`RAW`], labelled `dog` by feedback, and
/// sixteen others made concurrently; its id and the others' answers.
async fn app_with_predictions() -> (TestApp, String, Vec<PredictResponse>) {
    let app = TestApp::spawn().await;
    let p = app.predict(RAW).await;
    assert_eq!(p.filename, RAW);
    app.feedback(&json!({"prediction_id": p.id, "label": "dog"})).await;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let api = app.api();
            tokio::spawn(async move {
                let png = crate::helpers::image_bytes(image::ImageFormat::Png);
                let r = api.try_post_predict(&format!("batch-{i}.png"), png, "image/png").await.expect("send");
                crate::helpers::ok_json::<PredictResponse>(r).await
            })
        })
        .collect();
    let mut many = Vec::new();
    for t in tasks {
        many.push(t.await.expect("prediction task"));
    }
    app.state.inference_log.flush().await;
    (app, p.id, many)
}

pub async fn concurrent_predictions_write_one_log_line_each_with_its_own_latency() {
    let (app, _, many) = app_with_predictions().await;
    let lines = log_lines(&app);
    assert_eq!(lines.len(), 17, "one line per prediction: {lines:#?}");
    for p in &many {
        let mine: Vec<&String> = lines.iter().filter(|l| l.contains(&p.id)).collect();
        assert_eq!(mine.len(), 1, "{}", p.id);
        let latency = format!(",{:.3},", p.latency_ms);
        assert!(mine[0].contains(&latency), "{} should carry its own latency {latency}", mine[0]);
    }
    app.stop().await;
}

pub async fn the_raw_file_name_is_echoed_but_stored_and_logged_nowhere() {
    let logs = captured_logs();
    let (app, _, _) = app_with_predictions().await;
    for (path, bytes) in all_bytes_under(&app.data_dir) {
        assert!(!contains(&bytes, RAW) && !contains(&bytes, "Jane-Doe"), "raw file name found in {path}");
    }
    let logged = logs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    assert!(!logged.is_empty(), "logs were captured");
    assert!(!contains(&logged, "Jane-Doe"), "raw file name found in the logs");
    app.stop().await;
}

pub async fn export_is_for_operators() {
    let app = TestApp::spawn().await;
    let id = app.predict("a.png").await.id;
    let r = app.get_anonymous(&format!("/api/predictions/{id}")).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "export is for operators");
    app.stop().await;
}

/// The export (`PredictionExport` holds the store's `FeedbackRecord`, not `Deserialize`:
/// read as JSON).
pub async fn export_returns_the_row_its_feedback_and_its_log_line() {
    let (app, id, _) = app_with_predictions().await;
    let export: Value = app.get_json(&format!("/api/predictions/{id}")).await;
    assert_eq!(export["prediction"]["id"], id.as_str());
    assert_eq!(export["feedback"]["true_label"], "dog");
    assert_eq!(export["inference_log"].as_array().map(Vec::len), Some(1));
    assert!(export["prediction"]["file_ref"].as_str().is_some_and(|f| f.starts_with("upload-") && f.ends_with(".png")));
    app.stop().await;
}

pub async fn erasure_removes_every_trace_of_the_id_and_keeps_the_others() {
    let (app, id, _) = app_with_predictions().await;
    let data = app.data_dir.clone();
    // Exported first, so that its audit row holds the id as the scan below expects.
    let _: Value = app.get_json(&format!("/api/predictions/{id}")).await;
    // The raw bytes of the data directory hold the id before the erasure (so the scan
    // after it can see one): the rows in the database files, the line in the log.
    let audit_target = format!("prediction {id}");
    let held: Vec<String> = all_bytes_under(&data)
        .into_iter()
        .filter(|(_, bytes)| occurrences(bytes, &id) > occurrences(bytes, &audit_target))
        .map(|(path, _)| path)
        .collect();
    assert!(held.iter().any(|p| p.contains("catsdogs.db")), "the id is not in the database files: {held:?}");
    assert!(held.iter().any(|p| p.ends_with(".csv")), "the id is not in the inference log: {held:?}");

    let report: ErasureReport = app.get_json_with(reqwest::Method::DELETE, &format!("/api/predictions/{id}")).await;
    assert_eq!(
        (report.id.as_str(), report.predictions, report.feedback, report.inference_log_lines, report.images),
        (id.as_str(), 1, 1, 1, 0)
    );
    assert_eq!(app.get(&format!("/api/predictions/{id}")).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.delete(&format!("/api/predictions/{id}")).await.status(), StatusCode::NOT_FOUND);
    assert!(app.state.store.get_prediction(&id).await.expect("get").is_none());
    assert!(app.state.store.feedback_for(&id).await.expect("get").is_none());
    assert_eq!(app.state.store.count_rows("predictions").await.expect("count"), 16);
    assert_eq!(log_lines(&app).len(), 16);
    // Nor in the raw bytes of any file under the data directory (database and its -wal
    // and -shm files, inference log, secrets): SQLite zeroes what it deletes
    // (secure_delete) and the erasure empties its write-ahead log. The id stays only as the
    // target of the audit rows recording the export and the erasure themselves.
    for (path, bytes) in all_bytes_under(&data) {
        let audited = if path.contains("catsdogs.db") { occurrences(&bytes, &audit_target) } else { 0 };
        assert_eq!(occurrences(&bytes, &id), audited, "erased id still in {path}");
    }
    app.stop().await;
}

/// The first start's token set, the export and the erasure, with the caller's fingerprint
/// and never the token.
pub async fn token_set_export_and_erasure_are_audited_without_the_token() {
    let app = TestApp::spawn().await;
    let id = app.predict("a.png").await.id;
    let _: Value = app.get_json(&format!("/api/predictions/{id}")).await;
    let _: ErasureReport = app.get_json_with(reqwest::Method::DELETE, &format!("/api/predictions/{id}")).await;
    let audit = app.state.store.audit_entries(100).await.expect("audit");
    let actions: HashSet<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    for action in ["token_rotation", "export", "erase"] {
        assert!(actions.contains(action), "{action} not audited: {audit:#?}");
    }
    assert!(audit.iter().all(|a| !a.actor.contains(TOKEN) && !a.detail.clone().unwrap_or_default().contains(TOKEN)));
    app.stop().await;
}
