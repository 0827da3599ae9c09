//! GDPR behaviour end to end: retention purge with a controlled clock (SQLite and real
//! PostgreSQL), erasure and export of one prediction, the raw file name never stored or
//! logged, one inference-log line per prediction under concurrency, and the audit log.
mod support;

use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use catsdogs_store::inference_log::{LogFiles, LogRow};
use catsdogs_store::{FeedbackRecord, FeedbackSource, PredictionRecord, PredictionStatus};
use chrono::{DateTime, Duration, TimeZone, Utc};
use image::ImageFormat;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::pg::PgCluster;
use support::{TOKEN, TestApp, client, file_form, image_bytes};

/// Every log line any test in this binary produced (DEBUG and up).
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_writer(move || Capture(sink.clone()))
            .with_ansi(false)
            .try_init();
        buf
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn occurrences(haystack: &[u8], needle: &str) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle.as_bytes()).count()
}

/// Every byte the service wrote under `dir` (database files, inference log, secrets).
fn all_bytes_under(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
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

async fn predict(app: &TestApp, name: &str) -> Value {
    predict_at(app.url("/api/predict"), name.to_string()).await
}

async fn predict_at(url: String, name: String) -> Value {
    let r = client()
        .post(url)
        .header("Authorization", bearer())
        .multipart(file_form(&name, image_bytes(ImageFormat::Png), "image/png"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.expect("json")
}

fn log_lines(app: &TestApp) -> Vec<String> {
    let files = LogFiles::new(app.data_dir.join("logs"));
    let mut out = Vec::new();
    for (_, path) in files.files().expect("log files") {
        let text = std::fs::read_to_string(path).expect("read log");
        out.extend(text.lines().skip(1).map(str::to_string));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_export_pseudonyms_and_the_inference_log() {
    let logs = captured_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let db = format!("sqlite://{}?mode=rwc", data.join("catsdogs.db").display());
    std::fs::create_dir_all(&data).expect("data dir");
    let app = TestApp::spawn(&db, data.clone(), None).await;
    let c = client();

    // A distinctive raw file name: it is echoed to the caller and stored nowhere.
    let raw = "holiday-photo-of-Jane-Doe-1987.png";
    let p = predict(&app, raw).await;
    assert_eq!(p["filename"], raw);
    let id = p["id"].as_str().expect("id").to_string();
    let r = c
        .post(app.url("/api/feedback"))
        .header("Authorization", bearer())
        .json(&json!({"prediction_id": id, "label": "dog"}))
        .send()
        .await
        .expect("feedback");
    assert_eq!(r.status(), StatusCode::OK);

    // Concurrent predictions: exactly one log line each, with its own latency.
    let tasks: Vec<_> =
        (0..16).map(|i| tokio::spawn(predict_at(app.url("/api/predict"), format!("batch-{i}.png")))).collect();
    let mut many = Vec::new();
    for t in tasks {
        many.push(t.await.expect("prediction task"));
    }
    app.state.inference_log.flush().await;
    let lines = log_lines(&app);
    assert_eq!(lines.len(), 17, "one line per prediction: {lines:#?}");
    for p in &many {
        let pid = p["id"].as_str().expect("id");
        let mine: Vec<&String> = lines.iter().filter(|l| l.contains(pid)).collect();
        assert_eq!(mine.len(), 1, "{pid}");
        let latency = format!(",{:.3},", p["latency_ms"].as_f64().expect("latency"));
        assert!(mine[0].contains(&latency), "{} should carry its own latency {latency}", mine[0]);
    }

    // Export: the row, the feedback and the log line; audited.
    let r = c.get(app.url(&format!("/api/predictions/{id}"))).send().await.expect("export");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "export is for operators");
    let r = c.get(app.url(&format!("/api/predictions/{id}"))).header("Authorization", bearer()).send().await;
    let export: Value = r.expect("export").json().await.expect("json");
    assert_eq!(export["prediction"]["id"], id.as_str());
    assert_eq!(export["feedback"]["true_label"], "dog");
    assert_eq!(export["inference_log"].as_array().map(Vec::len), Some(1));
    assert!(export["prediction"]["file_ref"].as_str().is_some_and(|f| f.starts_with("upload-") && f.ends_with(".png")));

    // The raw name is nowhere: database files, inference log, logs.
    app.state.inference_log.flush().await;
    for (path, bytes) in all_bytes_under(&data) {
        assert!(!contains(&bytes, raw) && !contains(&bytes, "Jane-Doe"), "raw file name found in {path}");
    }
    let logged = logs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    assert!(!logged.is_empty(), "logs were captured");
    assert!(!contains(&logged, "Jane-Doe"), "raw file name found in the logs");

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

    // Erasure: every trace of the id goes; the other predictions stay.
    let r = c.delete(app.url(&format!("/api/predictions/{id}"))).header("Authorization", bearer()).send().await;
    let report: Value = r.expect("erase").json().await.expect("json");
    assert_eq!(report, json!({"id": id, "predictions": 1, "feedback": 1, "inference_log_lines": 1, "images": 0}));
    let r = c.get(app.url(&format!("/api/predictions/{id}"))).header("Authorization", bearer()).send().await;
    assert_eq!(r.expect("export").status(), StatusCode::NOT_FOUND);
    let r = c.delete(app.url(&format!("/api/predictions/{id}"))).header("Authorization", bearer()).send().await;
    assert_eq!(r.expect("erase").status(), StatusCode::NOT_FOUND);
    assert!(app.state.store.get_prediction(&id).await.expect("get").is_none());
    assert!(app.state.store.feedback_for(&id).await.expect("get").is_none());
    assert_eq!(app.state.store.count_rows("predictions").await.expect("count"), 16);
    let lines = log_lines(&app);
    assert_eq!(lines.len(), 16);
    // Nor in the raw bytes of any file under the data directory (database and its -wal
    // and -shm files, inference log, secrets): SQLite zeroes what it deletes
    // (secure_delete) and the erasure empties its write-ahead log. The id stays only as the
    // target of the audit rows recording the export and the erasure themselves.
    for (path, bytes) in all_bytes_under(&data) {
        let audited = if path.contains("catsdogs.db") { occurrences(&bytes, &audit_target) } else { 0 };
        assert_eq!(occurrences(&bytes, &id), audited, "erased id still in {path}");
    }

    // Audit: the first start's token set, the export and the erasure, with the caller's
    // fingerprint and never the token.
    let audit = app.state.store.audit_entries(100).await.expect("audit");
    let actions: HashSet<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    for action in ["token_rotation", "export", "erase"] {
        assert!(actions.contains(action), "{action} not audited: {audit:#?}");
    }
    assert!(audit.iter().all(|a| !a.actor.contains(TOKEN) && !a.detail.clone().unwrap_or_default().contains(TOKEN)));
    app.stop().await;
}

fn at(days_ago: i64, now: DateTime<Utc>) -> DateTime<Utc> {
    now - Duration::days(days_ago)
}

/// Rows older than the retention go, younger stay; feedback outlives its prediction.
async fn retention(db_url: &str) {
    captured_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let now = Utc.with_ymd_and_hms(2031, 3, 10, 12, 0, 0).single().expect("now");
    // The rows exist before the server starts (its first purge runs at start).
    let store = &catsdogs_store::Store::open(db_url, &Default::default()).expect("open");
    store.migrate().await.expect("migrate");
    let pred = |id: u32, days_ago: i64| PredictionRecord {
        id: format!("00000000-0000-0000-0000-{id:012}"),
        created_at: at(days_ago, now),
        model_version: "test".into(),
        status: PredictionStatus::Ok,
        label: Some(catsdogs_model::Label::Cat),
        p_dog: Some(0.2),
        latency_ms: 1.0,
        error_code: None,
        file_ref: None,
        image_ref: None,
    };
    let old = pred(1, 181);
    let young = pred(2, 179);
    let older_with_feedback = pred(3, 200);
    for p in [&old, &young, &older_with_feedback] {
        store.insert_prediction(p).await.expect("insert");
    }
    let fb = |id: &str, pid: &PredictionRecord, days_ago: i64| FeedbackRecord {
        id: id.into(),
        prediction_id: Some(pid.id.clone()),
        created_at: at(days_ago, now),
        positive: true,
        true_label: Some(catsdogs_model::Label::Cat),
        p_dog: Some(0.2),
        comment: None,
        source: FeedbackSource::V2,
    };
    // Feedback 200 days old on a purged prediction stays (365 days), detached.
    store.upsert_feedback(&fb("f-kept", &older_with_feedback, 200)).await.expect("feedback");
    // Feedback older than 365 days goes (its prediction is inserted for the foreign key).
    let ancient = pred(4, 400);
    store.insert_prediction(&ancient).await.expect("insert");
    store.upsert_feedback(&fb("f-gone", &ancient, 366)).await.expect("feedback");
    store.audit(at(366, now), "t", "old", "x").await.expect("audit");
    store.audit(at(364, now), "t", "recent", "x").await.expect("audit");
    let log = LogFiles::new(dir.path().join("logs"));
    for p in [&old, &young] {
        log.append(&LogRow {
            time: p.created_at,
            prediction_id: p.id.clone(),
            model_version: "test".into(),
            label: p.label.clone(),
            p_dog: p.p_dog,
            latency_ms: 1.0,
            status: "ok",
            error_code: None,
        })
        .expect("log");
    }

    let app = TestApp::spawn_with(db_url, dir.path().to_path_buf(), Some(now), |cfg| {
        cfg.purge_interval = std::time::Duration::from_secs(3600);
    })
    .await;
    // The server purges at start; on PostgreSQL an explicit run meanwhile finds the purge
    // lock taken and skips. Run until a completed purge is in the audit log.
    let mut purged = false;
    for _ in 0..100 {
        catsdogs_server::scheduled_purge(&app.state).await;
        if store.audit_entries(100).await.expect("audit").iter().any(|a| a.action == "purge") {
            purged = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(purged, "no purge completed");

    assert!(store.get_prediction(&old.id).await.expect("get").is_none(), "181 days: purged");
    assert!(store.get_prediction(&young.id).await.expect("get").is_some(), "179 days: kept");
    assert!(store.get_prediction(&older_with_feedback.id).await.expect("get").is_none());
    assert!(store.get_prediction(&ancient.id).await.expect("get").is_none());
    assert_eq!(store.count_rows("feedback").await.expect("count"), 1, "only the 200-day feedback stays");
    assert_eq!(store.count_rows("feedback_user").await.expect("seed view"), 1, "the seed view survives detaching");
    let audit = store.audit_entries(100).await.expect("audit");
    assert!(audit.iter().all(|a| a.action != "old"), "audit rows older than 365 days go");
    assert!(audit.iter().any(|a| a.action == "recent"));
    let purge = audit.iter().find(|a| a.action == "purge" && a.actor == "scheduler").expect("purge audited");
    assert!(purge.detail.as_deref().is_some_and(|d| d.contains("180/365/365 days")), "{purge:?}");
    let lines: Vec<String> = log
        .files()
        .expect("files")
        .iter()
        .flat_map(|(_, p)| {
            std::fs::read_to_string(p).expect("read").lines().skip(1).map(str::to_string).collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(lines.len(), 1, "only the young prediction's log line stays: {lines:?}");
    assert!(lines[0].contains(&young.id));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purge_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    retention(&format!("sqlite://{}?mode=rwc", dir.path().join("purge.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purge_postgres() {
    let Some(pg) = PgCluster::start_or_skip("the PostgreSQL retention test") else { return };
    let url = pg.create_db("purge").expect("createdb");
    retention(&url).await;
    // One purge at a time across replicas: a second session cannot take the lock.
    let a = catsdogs_store::Store::open(&url, &Default::default()).expect("open");
    let b = catsdogs_store::Store::open(&url, &Default::default()).expect("open");
    let held = a.try_purge_lock().await.expect("lock").expect("free at first");
    assert!(b.try_purge_lock().await.expect("lock").is_none(), "held by the other replica");
    held.release().await;
    let again = b.try_purge_lock().await.expect("lock").expect("free after release");
    again.release().await;
}

async fn predict_with_consent(app: &TestApp, bytes: Vec<u8>, consent: Option<&str>) -> Value {
    let mut form = file_form("pet.png", bytes, "image/png");
    if let Some(c) = consent {
        form = form.text("consent", c.to_string());
    }
    let r = client().post(app.url("/api/predict")).header("Authorization", bearer()).multipart(form).send().await;
    let r = r.expect("predict");
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.expect("json")
}

/// Opt-in image retention: nothing is kept without consent; a consented image is one
/// content-addressed file outside the database, becomes a training example once it has
/// feedback, and goes with its prediction (erasure, then the retention purge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consented_images_are_kept_exported_and_erased() {
    // Whichever test of this binary starts first installs the capturing subscriber that
    // the erasure test reads (a later `try_init` is a no-op).
    captured_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let db = format!("sqlite://{}?mode=rwc", data.join("catsdogs.db").display());
    let app = TestApp::spawn(&db, data.clone(), None).await;
    let images = &app.state.images;
    let png = image_bytes(ImageFormat::Png);

    for consent in [None, Some("false"), Some("no")] {
        let p = predict_with_consent(&app, png.clone(), consent).await;
        assert_eq!(p["image_kept"], false);
    }
    assert_eq!(images.count(), 0, "no consent, no file");
    assert!(!images.dir().exists() || all_bytes_under(images.dir()).is_empty());

    let first = predict_with_consent(&app, png.clone(), Some("true")).await;
    assert_eq!(first["image_kept"], true);
    let second = predict_with_consent(&app, png.clone(), Some("on")).await;
    assert_eq!(images.count(), 1, "the same photo twice is one file");
    let (id1, id2) = (first["id"].as_str().expect("id").to_string(), second["id"].as_str().expect("id").to_string());
    app.state.outbox.flush(&app.state.store).await.expect("flush");
    let row = app.state.store.get_prediction(&id1).await.expect("get").expect("row");
    let image_ref = row.image_ref.expect("image_ref stored");
    let path = images.path(&image_ref).expect("valid ref");
    assert_eq!(std::fs::read(&path).expect("read"), png, "the file holds the upload, byte for byte");
    let mid = &png[png.len() / 2..png.len() / 2 + 32];
    for (name, bytes) in all_bytes_under(&data).iter().filter(|(p, _)| p.contains("catsdogs.db")) {
        assert!(!bytes.windows(mid.len()).any(|w| w == mid), "image bytes in {name}");
    }

    // Feedback turns it into a training example with the user's label.
    let r = client()
        .post(app.url("/api/feedback"))
        .header("Authorization", bearer())
        .json(&json!({"prediction_id": id1, "label": "dog"}))
        .send()
        .await
        .expect("feedback");
    assert_eq!(r.status(), StatusCode::OK);
    let examples = app.state.store.labelled_images().await.expect("labelled");
    assert_eq!(examples.len(), 1);
    assert_eq!((examples[0].label.as_str(), examples[0].image_ref.as_str()), ("dog", image_ref.as_str()));

    // Erasure: the file stays while the other prediction holds it, then goes.
    let erase = |id: String| {
        let url = app.url(&format!("/api/predictions/{id}"));
        async move {
            let r = client().delete(url).header("Authorization", bearer()).send().await.expect("erase");
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.expect("json")
        }
    };
    assert_eq!(erase(id1).await["images"], 0);
    assert!(path.is_file());
    assert_eq!(erase(id2).await["images"], 1);
    assert!(!path.exists());
    assert_eq!(images.count(), 0);

    // The purge removes images whose prediction it deleted (past the grace period).
    let old = predict_with_consent(&app, image_bytes(ImageFormat::Jpeg), Some("1")).await;
    app.state.outbox.flush(&app.state.store).await.expect("flush");
    let old_ref = app.state.store.get_prediction(old["id"].as_str().expect("id")).await.expect("get").expect("row");
    let old_path = images.path(&old_ref.image_ref.expect("ref")).expect("path");
    let f = std::fs::File::options().write(true).open(&old_path).expect("open");
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 3600)).expect("mtime");
    let holdings = app.state.holdings();
    let far = Utc::now() + Duration::days(400);
    let removed = catsdogs_store::retention::purge(holdings, Default::default(), far, "test").await.expect("purge");
    assert_eq!(removed.images, 1, "{removed:?}");
    assert!(removed.rows.predictions >= 1);
    assert!(!old_path.exists());
    app.stop().await;
}
