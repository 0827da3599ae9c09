//! Two `catsdogs serve` processes on one throw-away PostgreSQL, as replicas behind a load
//! balancer: concurrent migrations, a prediction on A judged through B, identical metrics
//! from both, and `kill -9` of A under load losing no acknowledged write while B serves on.
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

    // A prediction made on A is judged through B; both report the same metrics.
    let id = predict(&c, &a.base, png(0)).await.expect("predict on A");
    feedback(&c, &b.base, &id, true).await.expect("feedback on B");
    let (sa, ma) = get(&c, &a.base, "/api/metrics/daily").await;
    let (sb, mb) = get(&c, &b.base, "/api/metrics/daily").await;
    assert_eq!((sa, sb), (reqwest::StatusCode::OK, reqwest::StatusCode::OK));
    assert_eq!(ma, mb, "replicas disagree on metrics");
    assert_eq!(ma[0]["inf_count"], 1);
    assert_eq!(ma[0]["feedback_pos"], 1);
    let (_, export) = get(&c, &b.base, &format!("/api/predictions/{id}")).await;
    assert!(export["prediction"]["file_ref"].as_str().is_some_and(|f| f.starts_with("upload-")));

    // Load on A, then kill -9 it: every write it acknowledged is in the database.
    let stop = Arc::new(AtomicBool::new(false));
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
        "replicas: {} predictions and {} feedback acknowledged by A before kill -9, all found",
        predictions.len(),
        feedbacks.len()
    );
}
