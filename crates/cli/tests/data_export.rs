//! The retraining data path from the command line: consented uploads with feedback come
//! out of `catsdogs data export` as a labelled folder, and `catsdogs db erase` takes the
//! image with the prediction. `catsdogs db purge` and `db erase --before` remove what is
//! older than the retention or the date, and nothing younger.
mod support;

use catsdogs_store::inference_log::{LogFiles, LogRow};
use catsdogs_store::{FeedbackRecord, FeedbackSource, PredictionRecord, PredictionStatus, Store};
use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};
use support::{catsdogs_json as catsdogs, client, judge, png, predict_consenting};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consented_feedback_becomes_a_labelled_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let secrets = support::shared_secrets(dir.path());
    let server = support::start(None, &data, &secrets);
    let c = client();
    let (a, b, c_img, d) = (png(1), png(2), png(3), png(4));
    // Consented + confirmed, consented + corrected, consented without feedback, and
    // feedback without consent: only the first two are training examples.
    let pa = predict_consenting(&c, &server.base, a.clone(), true).await;
    let pb = predict_consenting(&c, &server.base, b.clone(), true).await;
    let _pc = predict_consenting(&c, &server.base, c_img, true).await;
    let pd = predict_consenting(&c, &server.base, d, false).await;
    judge(&c, &server.base, pa["id"].as_str().expect("id"), json!({"correct": true})).await;
    judge(&c, &server.base, pb["id"].as_str().expect("id"), json!({"label": "dog"})).await;
    judge(&c, &server.base, pd["id"].as_str().expect("id"), json!({"label": "cat"})).await;
    drop(server); // SIGKILL: what was acknowledged is in the database

    let out = dir.path().join("export");
    let summary = catsdogs("data", &["export", "--out", out.to_str().expect("utf-8")], &data);
    let label_a = pa["label"].as_str().expect("label");
    let expected_cat = usize::from(label_a == "cat");
    assert_eq!(summary["cat"], expected_cat, "{summary}");
    assert_eq!(summary["dog"], 2 - expected_cat, "{summary}");
    assert_eq!(summary["missing_files"], 0);
    let exported = |label: &str, id: &Value| out.join(label).join(format!("{}.png", id.as_str().expect("id")));
    assert_eq!(std::fs::read(exported(label_a, &pa["id"])).expect("confirmed example"), a);
    assert_eq!(std::fs::read(exported("dog", &pb["id"])).expect("corrected example"), b);
    // The manifest dates each example (oldest first) so retraining can hold out the newest.
    let manifest = std::fs::read_to_string(out.join("manifest.csv")).expect("manifest");
    let lines: Vec<&str> = manifest.lines().collect();
    assert_eq!(lines[0], "file,label,created_at,prediction_id");
    assert_eq!(lines.len(), 3, "{manifest}");
    let id_a = pa["id"].as_str().expect("id");
    assert!(
        lines[1].starts_with(&format!("{label_a}/{id_a}.png,{label_a},")) && lines[1].ends_with(id_a),
        "{manifest}"
    );
    assert!(lines[2].ends_with(pb["id"].as_str().expect("id")), "{manifest}");

    // Erasure from the command line removes the kept file too.
    let images_before = walk_files(&data.join("images"));
    assert_eq!(images_before, 3, "three consented uploads, three files");
    let erased = catsdogs("db", &["erase", "--id", pb["id"].as_str().expect("id")], &data);
    assert_eq!(erased["removed"]["images"], 1, "{erased}");
    assert_eq!(walk_files(&data.join("images")), 2);
}

/// A prediction row as the server writes it, made `days_ago` days before `now`.
fn past_prediction(now: DateTime<Utc>, days_ago: i64) -> PredictionRecord {
    PredictionRecord {
        id: uuid::Uuid::new_v4().to_string(),
        created_at: now - Duration::days(days_ago),
        model_version: "seed-cnn".into(),
        status: PredictionStatus::Ok,
        label: Some(catsdogs_model::Label::Cat),
        p_dog: Some(0.2),
        latency_ms: 3.0,
        error_code: None,
        file_ref: None,
        image_ref: None,
    }
}

fn log_row(p: &PredictionRecord) -> LogRow {
    LogRow {
        time: p.created_at,
        prediction_id: p.id.clone(),
        model_version: p.model_version.clone(),
        label: p.label.clone(),
        p_dog: p.p_dog,
        latency_ms: p.latency_ms,
        status: "ok",
        error_code: None,
    }
}

/// The command line has no clock to move: rows from the past are written to the database
/// (and the inference log) directly, next to fresh ones made through the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_and_erase_before_a_date_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let secrets = support::shared_secrets(dir.path());
    let server = support::start(None, &data, &secrets);
    let c = client();
    let fresh = predict_consenting(&c, &server.base, png(5), true).await;
    let fresh_id = fresh["id"].as_str().expect("id").to_string();
    judge(&c, &server.base, &fresh_id, json!({"correct": true})).await;
    drop(server); // SIGKILL: what was acknowledged is in the database

    let url = format!("sqlite://{}?mode=rwc", data.join("catsdogs.db").display());
    let store = Store::open(&url, &Default::default()).expect("open");
    store.migrate().await.expect("migrate");
    let now = Utc::now();
    // Past the default 180-day retention, and within it (with feedback).
    let (ancient, last_week) = (past_prediction(now, 200), past_prediction(now, 10));
    let log = LogFiles::new(data.join("logs"));
    for p in [&ancient, &last_week] {
        store.insert_prediction(p).await.expect("insert");
        log.append(&log_row(p)).expect("log line");
    }
    let feedback = FeedbackRecord {
        id: uuid::Uuid::new_v4().to_string(),
        prediction_id: Some(last_week.id.clone()),
        created_at: last_week.created_at,
        positive: false,
        true_label: Some(catsdogs_model::Label::Dog),
        p_dog: last_week.p_dog,
        comment: None,
        source: FeedbackSource::V2,
    };
    store.upsert_feedback(&feedback).await.expect("feedback");
    assert_eq!(walk_files(&data.join("images")), 1, "the fresh consented upload");

    // Purge with the default retention: the 200-day-old row and its log line go.
    let purged = catsdogs("db", &["purge"], &data);
    assert_eq!(purged["predictions"], 1, "{purged}");
    assert_eq!(purged["feedback"], 0, "{purged}");
    assert_eq!(purged["inference_log_lines"], 1, "{purged}");
    assert_eq!(purged["images"], 0, "{purged}");
    assert!(store.get_prediction(&ancient.id).await.expect("get").is_none(), "200 days: purged");
    assert!(store.get_prediction(&last_week.id).await.expect("get").is_some(), "10 days: kept");
    assert!(store.get_prediction(&fresh_id).await.expect("get").is_some(), "fresh: kept");
    assert!(log.lines_for(&ancient.id).expect("log").is_empty());
    assert_eq!(log.lines_for(&last_week.id).expect("log").len(), 1);
    let audit = store.audit_entries(100).await.expect("audit");
    assert!(audit.iter().any(|a| a.action == "purge" && a.actor.starts_with("cli:")), "purge not audited: {audit:?}");

    // Erase everything before yesterday (UTC): last week's row, feedback and log line go;
    // today's prediction, its feedback and its consented image stay.
    let before = (now - Duration::days(1)).date_naive().to_string();
    let erased = catsdogs("db", &["erase", "--before", &before], &data);
    assert_eq!(erased["before"], before.as_str(), "{erased}");
    assert_eq!(erased["removed"]["predictions"], 1, "{erased}");
    assert_eq!(erased["removed"]["feedback"], 1, "{erased}");
    assert_eq!(erased["removed"]["inference_log_lines"], 1, "{erased}");
    assert_eq!(erased["removed"]["images"], 0, "{erased}");
    assert!(store.get_prediction(&last_week.id).await.expect("get").is_none(), "before the date: erased");
    assert!(store.feedback_for(&last_week.id).await.expect("get").is_none(), "its feedback too");
    assert!(log.lines_for(&last_week.id).expect("log").is_empty());
    assert!(store.get_prediction(&fresh_id).await.expect("get").is_some(), "after the date: kept");
    assert!(store.feedback_for(&fresh_id).await.expect("get").is_some(), "its feedback too");
    assert_eq!(walk_files(&data.join("images")), 1, "its image too");
    let audit = store.audit_entries(100).await.expect("audit");
    assert!(
        audit.iter().any(|a| a.action == "erase"
            && a.actor.starts_with("cli:")
            && a.detail.as_deref().is_some_and(|d| d.starts_with("everything before "))),
        "erasure not audited: {audit:?}"
    );
    store.close().await;
}

fn walk_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| if e.path().is_dir() { walk_files(&e.path()) } else { 1 })
        .sum()
}
