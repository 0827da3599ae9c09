//! Two `catsdogs serve` processes on one throw-away PostgreSQL, as replicas behind a load
//! balancer: concurrent migrations (both succeed, each applied once), a prediction on A
//! judged through B, identical daily and 7-day metrics from both, and `kill -9` of A under
//! load losing no acknowledged write while B keeps answering 200 throughout; with one
//! shared folder, an export and an erasure through B reach what A holds.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use catsdogs_testkit::pg::PgCluster;
use catsdogs_testkit::{repo, seed_cnn_dir};
use reqwest::StatusCode;

use crate::helpers::{Server, png, shared_secrets};

/// Replicas A and B of one database, started at once (their migrations race), both ready.
/// Fields drop in order: the servers before the cluster.
struct Replicas {
    a: Server,
    b: Server,
    url: String,
    _pg: PgCluster,
    dir: tempfile::TempDir,
}

async fn replicas(db: &str) -> Replicas {
    replicas_with(db, &[]).await
}

/// [`replicas`], each started with these extra environment variables.
async fn replicas_with(db: &str, env: &[(&str, &str)]) -> Replicas {
    let pg = PgCluster::start_for_test();
    let url = pg.create_db(db).expect("createdb");
    let dir = tempfile::tempdir().expect("tempdir");
    // Replicas share the token and the keys (pseudonyms and sessions must agree).
    let secrets = shared_secrets(dir.path());
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let start = |data: std::path::PathBuf, name: &str| {
        let (url, secrets) = (url.clone(), secrets.clone());
        let mut env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect();
        env.push(("CATSDOGS_REPLICA_ID".into(), name.into()));
        std::thread::spawn(move || {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            Server::start_with_env(Some(&url), &data, &secrets, &seed_cnn_dir(), &env)
        })
    };
    let (ta, tb) = (start(a_dir, "app-a"), start(b_dir, "app-b"));
    let (a, b) = (ta.join().expect("start a"), tb.join().expect("start b"));
    a.api().wait_ready().await;
    b.api().wait_ready().await;
    Replicas { a, b, url, _pg: pg, dir }
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

/// Every file under `dir` whose bytes contain `needle`.
fn files_holding(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

/// Replicas with their own data folders and one shared folder: a consented prediction on
/// A is exported through B with its log line, then erased through B; afterwards no file
/// under either data folder or the shared folder holds its id or its image, and neither
/// process log names it.
pub async fn an_erasure_through_one_replica_reaches_what_the_other_holds() {
    let shared = tempfile::tempdir().expect("tempdir");
    let shared_dir = shared.path().join("shared");
    let shared_arg = shared_dir.to_str().expect("utf-8 path").to_string();
    let r = replicas_with("erasure", &[("CATSDOGS_SHARED_DIR", &shared_arg), ("LOG_LEVEL", "info")]).await;
    let (a, b) = (r.a.api(), r.b.api());
    let photo = png(11);
    let p = a.predict_consenting(photo.clone(), true).await;
    assert!(p.image_kept);

    // A's log writer is asynchronous: B's export finds the line once it is written.
    let path = format!("/api/predictions/{}", p.id);
    let mut export = b.get_ok(&path).await;
    for _ in 0..50 {
        if export["inference_log"].as_array().is_some_and(|l| l.len() == 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        export = b.get_ok(&path).await;
    }
    assert_eq!(export["inference_log"].as_array().map(Vec::len), Some(1), "{export}");

    let erased = reqwest::Client::new()
        .delete(format!("{}{path}", b.base))
        .bearer_auth(crate::helpers::TOKEN)
        .send()
        .await
        .expect("erase through B");
    assert_eq!(erased.status(), StatusCode::OK);
    let report: serde_json::Value = erased.json().await.expect("json");
    assert_eq!(
        (&report["predictions"], &report["inference_log_lines"], &report["images"]),
        (&serde_json::json!(1), &serde_json::json!(1), &serde_json::json!(1)),
        "{report}"
    );
    assert_eq!(b.get(&path).await.0, StatusCode::NOT_FOUND);
    for root in [r.dir.path(), shared.path()] {
        assert!(
            files_holding(root, p.id.as_bytes()).is_empty(),
            "the id is still in {:?}",
            files_holding(root, p.id.as_bytes())
        );
        assert!(files_holding(root, &photo).is_empty(), "the image is still in {:?}", files_holding(root, &photo));
    }
    for (name, server) in [("A", &r.a), ("B", &r.b)] {
        assert!(!server.stderr().contains(&p.id), "replica {name}'s log names the erased id");
    }
}
