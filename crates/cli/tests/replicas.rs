//! Two `catsdogs serve` processes on one throw-away PostgreSQL, as replicas behind a load
//! balancer: concurrent migrations (both succeed, each applied once), a prediction on A
//! judged through B, identical daily and 7-day metrics from both, and `kill -9` of A under
//! load losing no acknowledged write while B keeps answering 200 throughout.
#[allow(dead_code)] // shared with the server tests; this test uses part of it
#[path = "../../server/tests/support/pg.rs"]
mod pg;

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::{client, feedback, get, png, predict, wait_ready};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_postgres() {
    let Some(pg) = pg::PgCluster::start_or_skip("the replica test") else { return };
    let url = pg.create_db("replicas").expect("createdb");
    let dir = tempfile::tempdir().expect("tempdir");
    // Replicas share the token and the keys (pseudonyms and sessions must agree).
    let secrets = support::shared_secrets(dir.path());

    // Both start at once: their migrations race and must both succeed.
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let (url_a, url_b) = (url.clone(), url.clone());
    let (sa, sb) = (secrets.clone(), secrets.clone());
    let ta = std::thread::spawn(move || support::start(Some(&url_a), &a_dir, &sa));
    let tb = std::thread::spawn(move || support::start(Some(&url_b), &b_dir, &sb));
    let (a, b) = (ta.join().expect("start a"), tb.join().expect("start b"));
    let c = client();
    wait_ready(&c, &a.base).await;
    wait_ready(&c, &b.base).await;

    // Neither lost the migration race: a replica whose migrations fail logs this (in
    // `catsdogs_server::build`) and starts without a usable database.
    for (name, server) in [("A", &a), ("B", &b)] {
        let log = server.stderr();
        assert!(
            !log.contains("retrying in the background"),
            "replica {name} could not migrate at start; its log:\n{log}"
        );
    }
    // Every migration was applied exactly once, successfully: one row per file of
    // migrations/ (the one schema sqlx::migrate! embeds for SQLite and PostgreSQL alike).
    let expected = std::fs::read_dir(support::repo().join("migrations"))
        .expect("read migrations/")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".sql") && !n.ends_with(".down.sql")))
        .count();
    assert!(expected > 0, "no migrations found");
    let db = sqlx::PgPool::connect(&url).await.expect("connect to the test database");
    let applied: Vec<(i64, bool)> = sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&db)
        .await
        .expect("read _sqlx_migrations");
    db.close().await;
    assert_eq!(applied.len(), expected, "migrations applied: {applied:?}");
    assert!(applied.iter().all(|(_, success)| *success), "a migration did not succeed: {applied:?}");

    // A prediction made on A is judged through B; both report the same metrics.
    let id = predict(&c, &a.base, png(0)).await.expect("predict on A");
    feedback(&c, &b.base, &id, true).await.expect("feedback on B");
    let (sa, ma) = get(&c, &a.base, "/api/metrics/daily").await;
    let (sb, mb) = get(&c, &b.base, "/api/metrics/daily").await;
    assert_eq!((sa, sb), (reqwest::StatusCode::OK, reqwest::StatusCode::OK));
    assert_eq!(ma, mb, "replicas disagree on metrics");
    assert_eq!(ma[0]["inf_count"], 1);
    assert_eq!(ma[0]["feedback_pos"], 1);
    let (sa, wa) = get(&c, &a.base, "/api/metrics/7d").await;
    let (sb, wb) = get(&c, &b.base, "/api/metrics/7d").await;
    assert_eq!((sa, sb), (reqwest::StatusCode::OK, reqwest::StatusCode::OK));
    assert_eq!(wa, wb, "replicas disagree on the 7-day metrics");
    assert_eq!(wa["inf_7d"], 1);
    assert_eq!(wa["fb_pos_7d"], 1);
    let (_, export) = get(&c, &b.base, &format!("/api/predictions/{id}")).await;
    assert!(export["prediction"]["file_ref"].as_str().is_some_and(|f| f.starts_with("upload-")));

    // Load on A, then kill -9 it: every write it acknowledged is in the database. A client
    // of B runs all along, from before the kill until after it: every answer must be 200.
    let stop = Arc::new(AtomicBool::new(false));
    let stop_b = Arc::new(AtomicBool::new(false));
    let on_b = {
        let (c, base, stop_b) = (c.clone(), b.base.clone(), stop_b.clone());
        tokio::spawn(async move {
            let (mut answered, mut refused) = (0usize, Vec::new());
            let mut n = 0u32;
            while !stop_b.load(Ordering::Relaxed) {
                n += 1;
                match predict(&c, &base, png(3 + n % 50)).await {
                    Ok(id) => match feedback(&c, &base, &id, n.is_multiple_of(2)).await {
                        Ok(()) => answered += 2,
                        Err(e) => refused.push(format!("feedback on {id}: {e:?}")),
                    },
                    Err(e) => refused.push(format!("predict: {e:?}")),
                }
            }
            (answered, refused)
        })
    };
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (c, base, stop) = (c.clone(), a.base.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut acked_predictions = Vec::new();
            let mut acked_feedback = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let Ok(id) = predict(&c, &base, png(1)).await else { break };
                acked_predictions.push(id.clone());
                if feedback(&c, &base, &id, true).await.is_err() {
                    break;
                }
                acked_feedback.push(id);
            }
            (acked_predictions, acked_feedback)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut a = a;
    a.child.kill().expect("kill -9 A");
    let _ = a.child.wait();
    stop.store(true, Ordering::Relaxed);
    let (mut predictions, mut feedbacks) = (Vec::new(), Vec::new());
    for w in workers {
        let (p, f) = w.await.expect("worker");
        predictions.extend(p);
        feedbacks.extend(f);
    }
    // B's client keeps going a moment after A is gone, then must have had only 200s.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_b.store(true, Ordering::Relaxed);
    let (answered_b, refused_b) = on_b.await.expect("client of B");
    assert!(refused_b.is_empty(), "B failed requests while A was killed: {refused_b:?}");
    assert!(answered_b >= 2, "B answered nothing while A was killed");
    assert!(feedbacks.len() >= 4, "too little load before the kill: {} feedback", feedbacks.len());
    for id in &predictions {
        let (status, export) = get(&c, &b.base, &format!("/api/predictions/{id}")).await;
        assert_eq!(status, reqwest::StatusCode::OK, "acknowledged prediction {id} lost");
        if feedbacks.contains(id) {
            assert_eq!(export["feedback"]["positive"], true, "acknowledged feedback on {id} lost");
        }
    }
    // B keeps serving.
    let id = predict(&c, &b.base, png(2)).await.expect("B still predicts");
    feedback(&c, &b.base, &id, true).await.expect("B still takes feedback");
    eprintln!(
        "replicas: {} predictions and {} feedback acknowledged by A before kill -9, all found; \
         B answered {answered_b} requests during the kill, all 200",
        predictions.len(),
        feedbacks.len()
    );
}
