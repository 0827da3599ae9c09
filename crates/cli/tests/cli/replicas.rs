//! Two `catsdogs serve` processes on one throw-away PostgreSQL, as replicas behind a load
//! balancer: concurrent migrations (both succeed, each applied once), a prediction on A
//! judged through B, identical daily and 7-day metrics from both, and `kill -9` of A under
//! load losing no acknowledged write while B keeps answering 200 throughout.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use catsdogs_testkit::pg::PgCluster;
use catsdogs_testkit::repo;
use reqwest::StatusCode;

use crate::helpers::{Server, png, shared_secrets};

/// Replicas A and B of one database, started at once (their migrations race), both ready.
/// Fields drop in order: the servers before the cluster.
struct Replicas {
    a: Server,
    b: Server,
    url: String,
    _pg: PgCluster,
    _dir: tempfile::TempDir,
}

async fn replicas(db: &str) -> Replicas {
    let pg = PgCluster::start_for_test();
    let url = pg.create_db(db).expect("createdb");
    let dir = tempfile::tempdir().expect("tempdir");
    // Replicas share the token and the keys (pseudonyms and sessions must agree).
    let secrets = shared_secrets(dir.path());
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let (url_a, url_b) = (url.clone(), url.clone());
    let (sa, sb) = (secrets.clone(), secrets);
    let ta = std::thread::spawn(move || Server::start(Some(&url_a), &a_dir, &sa));
    let tb = std::thread::spawn(move || Server::start(Some(&url_b), &b_dir, &sb));
    let (a, b) = (ta.join().expect("start a"), tb.join().expect("start b"));
    a.api().wait_ready().await;
    b.api().wait_ready().await;
    Replicas { a, b, url, _pg: pg, _dir: dir }
}

/// Both replicas start at once: their migrations race and must both succeed, each
/// migration applied exactly once.
pub async fn replicas_starting_together_apply_each_migration_once() {
    let r = replicas("migrations").await;
    // Neither lost the migration race: a replica whose migrations fail logs this (in
    // `catsdogs_server::build`) and starts without a usable database.
    for (name, server) in [("A", &r.a), ("B", &r.b)] {
        let log = server.stderr();
        assert!(
            !log.contains("retrying in the background"),
            "replica {name} could not migrate at start; its log:\n{log}"
        );
    }
    // One row per file of migrations/ (the one schema sqlx::migrate! embeds for SQLite
    // and PostgreSQL alike), each successful.
    let expected = std::fs::read_dir(repo().join("migrations"))
        .expect("read migrations/")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".sql") && !n.ends_with(".down.sql")))
        .count();
    assert!(expected > 0, "no migrations found");
    let db = sqlx::PgPool::connect(&r.url).await.expect("connect to the test database");
    let applied: Vec<(i64, bool)> = sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&db)
        .await
        .expect("read _sqlx_migrations");
    db.close().await;
    assert_eq!(applied.len(), expected, "migrations applied: {applied:?}");
    assert!(applied.iter().all(|(_, success)| *success), "a migration did not succeed: {applied:?}");
}

/// A prediction made on A is judged through B, and B exports it.
pub async fn a_prediction_on_one_replica_is_judged_through_the_other() {
    let r = replicas("judged").await;
    let (a, b) = (r.a.api(), r.b.api());
    let p = a.predict(png(0)).await.expect("predict on A");
    b.feedback(&p.id, true).await.expect("feedback on B");
    let export = b.get_ok(&format!("/api/predictions/{}", p.id)).await;
    assert!(export["prediction"]["file_ref"].as_str().is_some_and(|f| f.starts_with("upload-")));
    assert_eq!(export["feedback"]["positive"], true, "{export}");
}

/// After a prediction on A judged through B, both report the same daily and 7-day metrics.
pub async fn replicas_report_identical_daily_and_7_day_metrics() {
    let r = replicas("metrics").await;
    let (a, b) = (r.a.api(), r.b.api());
    let p = a.predict(png(0)).await.expect("predict on A");
    b.feedback(&p.id, true).await.expect("feedback on B");
    let (sa, ma) = a.get("/api/metrics/daily").await;
    let (sb, mb) = b.get("/api/metrics/daily").await;
    assert_eq!((sa, sb), (StatusCode::OK, StatusCode::OK));
    assert_eq!(ma, mb, "replicas disagree on metrics");
    assert_eq!(ma[0]["inf_count"], 1);
    assert_eq!(ma[0]["feedback_pos"], 1);
    let (sa, wa) = a.get("/api/metrics/7d").await;
    let (sb, wb) = b.get("/api/metrics/7d").await;
    assert_eq!((sa, sb), (StatusCode::OK, StatusCode::OK));
    assert_eq!(wa, wb, "replicas disagree on the 7-day metrics");
    assert_eq!(wa["inf_7d"], 1);
    assert_eq!(wa["fb_pos_7d"], 1);
}

/// What happened around `kill -9` of A under load, with a client of B running from before
/// the kill until after it.
struct KillOfA {
    r: Replicas,
    /// Predictions and feedback A acknowledged before it died.
    predictions: Vec<String>,
    feedback: Vec<String>,
    /// Requests B answered 200 meanwhile, and what it refused.
    answered_b: usize,
    refused_b: Vec<String>,
}

async fn kill_a_under_load(db: &str) -> KillOfA {
    let mut r = replicas(db).await;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_b = Arc::new(AtomicBool::new(false));
    let on_b = {
        let (b, stop_b) = (r.b.api(), stop_b.clone());
        tokio::spawn(async move {
            let (mut answered, mut refused) = (0usize, Vec::new());
            let mut n = 0u32;
            while !stop_b.load(Ordering::Relaxed) {
                n += 1;
                match b.predict(png(3 + n % 50)).await {
                    Ok(p) => match b.feedback(&p.id, n.is_multiple_of(2)).await {
                        Ok(()) => answered += 2,
                        Err(e) => refused.push(format!("feedback on {}: {e:?}", p.id)),
                    },
                    Err(e) => refused.push(format!("predict: {e:?}")),
                }
            }
            (answered, refused)
        })
    };
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (a, stop) = (r.a.api(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut acked_predictions = Vec::new();
            let mut acked_feedback = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let Ok(p) = a.predict(png(1)).await else { break };
                acked_predictions.push(p.id.clone());
                if a.feedback(&p.id, true).await.is_err() {
                    break;
                }
                acked_feedback.push(p.id);
            }
            (acked_predictions, acked_feedback)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    r.a.kill_9();
    stop.store(true, Ordering::Relaxed);
    let (mut predictions, mut feedback) = (Vec::new(), Vec::new());
    for w in workers {
        let (p, f) = w.await.expect("worker");
        predictions.extend(p);
        feedback.extend(f);
    }
    // B's client keeps going a moment after A is gone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_b.store(true, Ordering::Relaxed);
    let (answered_b, refused_b) = on_b.await.expect("client of B");
    eprintln!(
        "replicas: {} predictions and {} feedback acknowledged by A before kill -9; \
         B answered {answered_b} requests during the kill, refused {}",
        predictions.len(),
        feedback.len(),
        refused_b.len()
    );
    KillOfA { r, predictions, feedback, answered_b, refused_b }
}

/// Every write A acknowledged before `kill -9` under load is in the database (read
/// through B).
pub async fn killing_a_replica_under_load_loses_none_of_its_acknowledged_writes() {
    let k = kill_a_under_load("kill_writes").await;
    let b = k.r.b.api();
    assert!(k.feedback.len() >= 4, "too little load before the kill: {} feedback", k.feedback.len());
    for id in &k.predictions {
        let (status, export) = b.get(&format!("/api/predictions/{id}")).await;
        assert_eq!(status, StatusCode::OK, "acknowledged prediction {id} lost");
        if k.feedback.contains(id) {
            assert_eq!(export["feedback"]["positive"], true, "acknowledged feedback on {id} lost");
        }
    }
}

/// While A is killed under load, B answers every request 200, and keeps serving after.
pub async fn the_other_replica_answers_every_request_while_one_is_killed() {
    let k = kill_a_under_load("kill_other").await;
    assert!(k.refused_b.is_empty(), "B failed requests while A was killed: {:?}", k.refused_b);
    assert!(k.answered_b >= 2, "B answered nothing while A was killed");
    let b = k.r.b.api();
    let p = b.predict(png(2)).await.expect("B still predicts");
    b.feedback(&p.id, true).await.expect("B still takes feedback");
}
