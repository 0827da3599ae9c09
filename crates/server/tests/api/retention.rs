//! Retention with a controlled clock, on SQLite and a real PostgreSQL: rows older than the
//! retention go, younger stay, feedback outlives its prediction; one purge at a time
//! across replicas.
use std::sync::Arc;

use catsdogs_store::inference_log::{LogFiles, LogRow};
use catsdogs_store::{FeedbackRecord, FeedbackSource, PredictionRecord, PredictionStatus};
use chrono::{DateTime, Duration, TimeZone, Utc};

use crate::helpers::{TestApp, postgres};

fn at(days_ago: i64, now: DateTime<Utc>) -> DateTime<Utc> {
    now - Duration::days(days_ago)
}

/// Rows older than the retention go, younger stay; feedback outlives its prediction.
async fn retention(db_url: &str) {
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
        owner: None,
        signals: None,
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
            label: p.label,
            p_dog: p.p_dog,
            latency_ms: 1.0,
            status: "ok",
            error_code: None,
        })
        .expect("log");
    }

    let app = TestApp::spawn_at(db_url, dir.path(), |cfg| {
        cfg.clock = Arc::new(move || now);
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

pub async fn the_purge_keeps_exactly_what_is_younger_than_the_retention_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    retention(&format!("sqlite://{}?mode=rwc", dir.path().join("purge.db").display())).await;
}

pub async fn the_purge_keeps_exactly_what_is_younger_than_the_retention_on_postgres() {
    let (_pg, url) = postgres("purge");
    retention(&url).await;
}

/// One purge at a time across replicas: a second session cannot take the lock.
pub async fn one_replica_at_a_time_holds_the_purge_lock_on_postgres() {
    let (_pg, url) = postgres("purge");
    let a = catsdogs_store::Store::open(&url, &Default::default()).expect("open");
    a.migrate().await.expect("migrate");
    let b = catsdogs_store::Store::open(&url, &Default::default()).expect("open");
    let held = a.try_purge_lock().await.expect("lock").expect("free at first");
    assert!(b.try_purge_lock().await.expect("lock").is_none(), "held by the other replica");
    held.release().await;
    let again = b.try_purge_lock().await.expect("lock").expect("free after release");
    again.release().await;
}
