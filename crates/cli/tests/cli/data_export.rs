//! The retraining data path from the command line: consented uploads with feedback come
//! out of `catsdogs data export` as a labelled folder, and `catsdogs db erase` takes the
//! image with the prediction. `catsdogs db purge` and `db erase --before` remove what is
//! older than the retention or the date, and nothing younger.
use std::path::{Path, PathBuf};

use catsdogs_model::Label;
use catsdogs_store::inference_log::{LogFiles, LogRow};
use catsdogs_store::{FeedbackRecord, FeedbackSource, PredictionRecord, PredictionStatus, Store};
use chrono::{DateTime, Duration, Utc};
use serde_json::Value;

use crate::helpers::{Prediction, Server, arg, catsdogs_json, count_files, png, shared_secrets};

/// Four uploads through a server that was then killed (SIGKILL: what was acknowledged is
/// in the database): consented + confirmed (`a`), consented + corrected to dog (`b`),
/// consented without feedback, and labelled without consent. Only `a` and `b` are
/// training examples.
struct Judged {
    dir: tempfile::TempDir,
    data: PathBuf,
    a: (Prediction, Vec<u8>),
    b: (Prediction, Vec<u8>),
}

async fn judged_uploads() -> Judged {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Server::start(None, &data, &shared_secrets(dir.path()));
    let api = server.api();
    let (a, b) = (png(1), png(2));
    let pa = api.predict_consenting(a.clone(), true).await;
    let pb = api.predict_consenting(b.clone(), true).await;
    let _pc = api.predict_consenting(png(3), true).await;
    let pd = api.predict_consenting(png(4), false).await;
    api.feedback(&pa.id, true).await.expect("feedback on a");
    api.label(&pb.id, Label::Dog).await;
    api.label(&pd.id, Label::Cat).await;
    drop(server);
    Judged { dir, data, a: (pa, a), b: (pb, b) }
}

/// `catsdogs data export --out DIR/export`: the summary and the folder.
fn export(j: &Judged) -> (Value, PathBuf) {
    let out = j.dir.path().join("export");
    (catsdogs_json("data", &["export", "--out", arg(&out)], &j.data), out)
}

pub async fn data_export_writes_consented_judged_uploads_into_label_folders() {
    let j = judged_uploads().await;
    let (summary, out) = export(&j);
    let ((pa, a), (pb, b)) = (&j.a, &j.b);
    let expected_cat = usize::from(pa.label == Label::Cat);
    assert_eq!(summary["cat"], expected_cat, "{summary}");
    assert_eq!(summary["dog"], 2 - expected_cat, "{summary}");
    assert_eq!(summary["missing_files"], 0);
    let exported = |label: Label, id: &str| out.join(label.as_str()).join(format!("{id}.png"));
    assert_eq!(&std::fs::read(exported(pa.label, &pa.id)).expect("confirmed example"), a);
    assert_eq!(&std::fs::read(exported(Label::Dog, &pb.id)).expect("corrected example"), b);
}

/// The manifest dates each example (oldest first) so retraining can hold out the newest.
pub async fn data_export_manifest_dates_each_example_oldest_first() {
    let j = judged_uploads().await;
    let (_, out) = export(&j);
    let (pa, pb) = (&j.a.0, &j.b.0);
    let manifest = std::fs::read_to_string(out.join("manifest.csv")).expect("manifest");
    let lines: Vec<&str> = manifest.lines().collect();
    assert_eq!(lines[0], "file,label,created_at,prediction_id");
    assert_eq!(lines.len(), 3, "{manifest}");
    let (label_a, id_a) = (pa.label.as_str(), pa.id.as_str());
    assert!(
        lines[1].starts_with(&format!("{label_a}/{id_a}.png,{label_a},")) && lines[1].ends_with(id_a),
        "{manifest}"
    );
    assert!(lines[2].ends_with(pb.id.as_str()), "{manifest}");
}

/// Erasure from the command line removes the kept file too.
pub async fn db_erase_by_id_removes_the_kept_image() {
    let j = judged_uploads().await;
    assert_eq!(count_files(&j.data.join("images")), 3, "three consented uploads, three files");
    // The server's key makes the tombstone: the command line reads it from its secrets.
    let secrets = j.data.parent().expect("parent").join("secrets");
    let erased = catsdogs_json("db", &["--secrets-dir", arg(&secrets), "erase", "--id", &j.b.0.id], &j.data);
    assert_eq!(erased["removed"]["images"], 1, "{erased}");
    assert_eq!(count_files(&j.data.join("images")), 2);
}

/// A prediction row as the server writes it, made `days_ago` days before `now`.
fn past_prediction(now: DateTime<Utc>, days_ago: i64) -> PredictionRecord {
    PredictionRecord {
        id: uuid::Uuid::new_v4().to_string(),
        created_at: now - Duration::days(days_ago),
        model_version: "seed-cnn".into(),
        status: PredictionStatus::Ok,
        label: Some(Label::Cat),
        p_dog: Some(0.2),
        latency_ms: 3.0,
        error_code: None,
        file_ref: None,
        image_ref: None,
        owner: None,
        signals: None,
    }
}

fn log_row(p: &PredictionRecord) -> LogRow {
    LogRow {
        time: p.created_at,
        prediction_id: p.id.clone(),
        model_version: p.model_version.clone(),
        label: p.label,
        p_dog: p.p_dog,
        latency_ms: p.latency_ms,
        status: "ok",
        error_code: None,
    }
}

/// The command line has no clock to move: rows from the past are written to the database
/// (and the inference log) directly, next to a fresh consented and confirmed upload made
/// through the server (then killed).
struct History {
    _dir: tempfile::TempDir,
    data: PathBuf,
    store: Store,
    log: LogFiles,
    now: DateTime<Utc>,
    fresh_id: String,
}

impl History {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let server = Server::start(None, &data, &shared_secrets(dir.path()));
        let api = server.api();
        let fresh = api.predict_consenting(png(5), true).await;
        api.feedback(&fresh.id, true).await.expect("feedback");
        drop(server);
        let url = format!("sqlite://{}?mode=rwc", data.join("catsdogs.db").display());
        let store = Store::open(&url, &Default::default()).expect("open");
        store.migrate().await.expect("migrate");
        let log = LogFiles::new(data.join("logs"));
        Self { _dir: dir, data, store, log, now: Utc::now(), fresh_id: fresh.id }
    }

    /// A prediction `days_ago` days old, with its inference log line.
    async fn past(&self, days_ago: i64) -> PredictionRecord {
        let p = past_prediction(self.now, days_ago);
        self.store.insert_prediction(&p).await.expect("insert");
        self.log.append(&log_row(&p)).expect("log line");
        p
    }

    /// Negative feedback (the true label: dog) on `p`, as old as `p`.
    async fn feedback_on(&self, p: &PredictionRecord) {
        let feedback = FeedbackRecord {
            id: uuid::Uuid::new_v4().to_string(),
            prediction_id: Some(p.id.clone()),
            created_at: p.created_at,
            positive: false,
            true_label: Some(Label::Dog),
            p_dog: p.p_dog,
            comment: None,
            source: FeedbackSource::V2,
        };
        self.store.upsert_feedback(&feedback).await.expect("feedback");
    }

    fn images(&self) -> usize {
        count_files(&self.data.join("images"))
    }

    fn data(&self) -> &Path {
        &self.data
    }
}

/// Purge with the default retention (180 days): the 200-day-old row and its log line go;
/// a 10-day-old one (with feedback) and today's stay; the purge is audited.
pub async fn db_purge_removes_rows_past_the_retention_and_keeps_younger_ones() {
    let h = History::new().await;
    let (ancient, last_week) = (h.past(200).await, h.past(10).await);
    h.feedback_on(&last_week).await;
    assert_eq!(h.images(), 1, "the fresh consented upload");

    let purged = catsdogs_json("db", &["purge"], h.data());
    assert_eq!(purged["predictions"], 1, "{purged}");
    assert_eq!(purged["feedback"], 0, "{purged}");
    assert_eq!(purged["inference_log_lines"], 1, "{purged}");
    assert_eq!(purged["images"], 0, "{purged}");
    assert!(h.store.get_prediction(&ancient.id).await.expect("get").is_none(), "200 days: purged");
    assert!(h.store.get_prediction(&last_week.id).await.expect("get").is_some(), "10 days: kept");
    assert!(h.store.get_prediction(&h.fresh_id).await.expect("get").is_some(), "fresh: kept");
    assert!(h.log.lines_for(&ancient.id).expect("log").is_empty());
    assert_eq!(h.log.lines_for(&last_week.id).expect("log").len(), 1);
    let audit = h.store.audit_entries(100).await.expect("audit");
    assert!(audit.iter().any(|a| a.action == "purge" && a.actor.starts_with("cli:")), "purge not audited: {audit:?}");
    h.store.close().await;
}

/// Erase everything before yesterday (UTC): last week's row, feedback and log line go;
/// today's prediction, its feedback and its consented image stay; the erasure is audited.
pub async fn db_erase_before_a_date_removes_older_rows_and_keeps_younger_ones() {
    let h = History::new().await;
    let last_week = h.past(10).await;
    h.feedback_on(&last_week).await;
    assert_eq!(h.images(), 1, "the fresh consented upload");

    // Rows a stopped server spilled during an outage: the old one goes, the young one stays.
    let (spilled_old, spilled_young) = (past_prediction(h.now, 9), past_prediction(h.now, 0));
    let spill = h.data().join("pending-predictions.jsonl");
    let lines: Vec<String> =
        [&spilled_old, &spilled_young].iter().map(|r| serde_json::to_string(r).expect("json")).collect();
    std::fs::write(&spill, lines.join("\n") + "\n").expect("spill file");

    let before = (h.now - Duration::days(1)).date_naive().to_string();
    let erased = catsdogs_json("db", &["erase", "--before", &before], h.data());
    assert_eq!(erased["before"], before.as_str(), "{erased}");
    assert_eq!(erased["removed"]["predictions"], 2, "the stored row and the spilled one: {erased}");
    let spilled = std::fs::read_to_string(&spill).expect("spill file kept for the young row");
    assert!(!spilled.contains(&spilled_old.id) && spilled.contains(&spilled_young.id), "{spilled}");
    assert_eq!(erased["removed"]["feedback"], 1, "{erased}");
    assert_eq!(erased["removed"]["inference_log_lines"], 1, "{erased}");
    assert_eq!(erased["removed"]["images"], 0, "{erased}");
    assert!(h.store.get_prediction(&last_week.id).await.expect("get").is_none(), "before the date: erased");
    assert!(h.store.feedback_for(&last_week.id).await.expect("get").is_none(), "its feedback too");
    assert!(h.log.lines_for(&last_week.id).expect("log").is_empty());
    assert!(h.store.get_prediction(&h.fresh_id).await.expect("get").is_some(), "after the date: kept");
    assert!(h.store.feedback_for(&h.fresh_id).await.expect("get").is_some(), "its feedback too");
    assert_eq!(h.images(), 1, "its image too");
    let audit = h.store.audit_entries(100).await.expect("audit");
    assert!(
        audit.iter().any(|a| a.action == "erase"
            && a.actor.starts_with("cli:")
            && a.detail.as_deref().is_some_and(|d| d.starts_with("everything before "))),
        "erasure not audited: {audit:?}"
    );
    h.store.close().await;
}

/// A row spilled at shutdown while PostgreSQL was down, erased from the command line
/// before the server comes back: the erasure takes it out of the spill file with its image
/// and log line, and the next start does not bring it back.
pub async fn db_erase_removes_a_row_spilled_during_an_outage_for_good() {
    let pg = catsdogs_testkit::pg::PgCluster::start_for_test();
    let url = pg.create_db("spilled").expect("createdb");
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets = shared_secrets(dir.path());
    let data = dir.path().join("data");
    let mut server = Server::start(Some(&url), &data, &secrets);
    server.api().wait_ready().await;
    pg.stop_server().expect("stop postgres");
    let p = server.api().predict_consenting(png(21), true).await;
    assert!(p.image_kept);
    server.stop();
    let spill = data.join("pending-predictions.jsonl");
    assert!(std::fs::read_to_string(&spill).is_ok_and(|t| t.contains(&p.id)), "the row was not spilled");

    pg.start_server().expect("restart postgres");
    let args = ["--database-url", &url, "--secrets-dir", arg(&secrets), "erase", "--id", &p.id];
    let erased = catsdogs_json("db", &args, &data);
    let removed = &erased["removed"];
    assert_eq!(
        (&removed["predictions"], &removed["images"], &removed["inference_log_lines"]),
        (&1.into(), &1.into(), &1.into()),
        "{erased}"
    );
    assert!(!std::fs::read_to_string(&spill).unwrap_or_default().contains(&p.id), "the spilled row is still there");

    let server = Server::start(Some(&url), &data, &secrets);
    server.api().wait_ready().await;
    assert_eq!(server.api().get(&format!("/api/predictions/{}", p.id)).await.0, reqwest::StatusCode::NOT_FOUND);
    assert_eq!(count_files(&data.join("images")), 0);
}
