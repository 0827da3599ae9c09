//! Two `catsdogs serve` processes on one throw-away PostgreSQL, as replicas behind a load
//! balancer: concurrent migrations, a prediction on A judged through B, identical metrics
//! from both, and `kill -9` of A under load losing no acknowledged write while B serves on.
#[allow(dead_code)] // shared with the server tests; this test uses part of it
#[path = "../../server/tests/support/pg.rs"]
mod pg;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

const TOKEN: &str = "replica-test-token-0123456789abcdef0123456789abcdef";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A running replica; killed (SIGKILL) on drop.
struct Replica {
    child: Child,
    base: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `catsdogs serve` on an ephemeral port; returns once it prints its address.
fn start(db_url: &str, data: &Path, secrets: &Path) -> Replica {
    let mut child = Command::new(env!("CARGO_BIN_EXE_catsdogs"))
        .current_dir(repo())
        .args(["serve", "--addr", "127.0.0.1:0", "--threads", "1", "--model"])
        .arg(repo().join("models/seed-cnn"))
        .arg("--data-dir")
        .arg(data)
        .arg("--secrets-dir")
        .arg(secrets)
        .env("DATABASE_URL", db_url)
        .env("LOG_LEVEL", "warn")
        .env_remove("API_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start catsdogs serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on ").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
            }
        }
    });
    let base = rx.recv_timeout(Duration::from_secs(60)).expect("replica did not start");
    Replica { child, base }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("client")
}

fn png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([(x * 4) as u8, (y * 5) as u8, 120]));
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img).write_to(&mut out, image::ImageFormat::Png).expect("encode");
    out.into_inner()
}

async fn predict(c: &reqwest::Client, base: &str) -> Result<String, String> {
    let part = reqwest::multipart::Part::bytes(png()).file_name("x.png");
    let r = c
        .post(format!("{base}/api/predict"))
        .bearer_auth(TOKEN)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != reqwest::StatusCode::OK {
        return Err(format!("status {}", r.status()));
    }
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    v["id"].as_str().map(str::to_string).ok_or_else(|| "no id".into())
}

async fn feedback(c: &reqwest::Client, base: &str, id: &str) -> Result<(), String> {
    let r = c
        .post(format!("{base}/api/feedback"))
        .bearer_auth(TOKEN)
        .json(&json!({"prediction_id": id, "correct": true}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() == reqwest::StatusCode::OK { Ok(()) } else { Err(format!("status {}", r.status())) }
}

async fn get(c: &reqwest::Client, base: &str, path: &str) -> (reqwest::StatusCode, Value) {
    let r = c.get(format!("{base}{path}")).bearer_auth(TOKEN).send().await.expect("get");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn wait_ready(c: &reqwest::Client, base: &str) {
    for _ in 0..100 {
        if let Ok(r) = c.get(format!("{base}/api/health")).send().await
            && r.status() == reqwest::StatusCode::OK
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{base} never became ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_postgres() {
    let pg = match pg::PgCluster::start() {
        Ok(c) => c,
        Err(e) if std::env::var("CATSDOGS_REQUIRE_POSTGRES").as_deref() == Ok("1") => {
            panic!("PostgreSQL required but unavailable: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: replica test needs PostgreSQL ({e})");
            return;
        }
    };
    let url = pg.create_db("replicas").expect("createdb");
    let dir = tempfile::tempdir().expect("tempdir");
    // Replicas share the token and the keys (pseudonyms and sessions must agree).
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(&secrets).expect("secrets dir");
    std::fs::write(secrets.join("api-token"), TOKEN).expect("token");
    std::fs::write(secrets.join("pseudonym-key"), "a".repeat(64)).expect("key");
    std::fs::write(secrets.join("session-key"), "b".repeat(64)).expect("key");

    // Both start at once: their migrations race and must both succeed.
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let (url_a, url_b) = (url.clone(), url.clone());
    let (sa, sb) = (secrets.clone(), secrets.clone());
    let ta = std::thread::spawn(move || start(&url_a, &a_dir, &sa));
    let tb = std::thread::spawn(move || start(&url_b, &b_dir, &sb));
    let (a, b) = (ta.join().expect("start a"), tb.join().expect("start b"));
    let c = client();
    wait_ready(&c, &a.base).await;
    wait_ready(&c, &b.base).await;

    // A prediction made on A is judged through B; both report the same metrics.
    let id = predict(&c, &a.base).await.expect("predict on A");
    feedback(&c, &b.base, &id).await.expect("feedback on B");
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
                let Ok(id) = predict(&c, &base).await else { break };
                acked_predictions.push(id.clone());
                if feedback(&c, &base, &id).await.is_err() {
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
    let id = predict(&c, &b.base).await.expect("B still predicts");
    feedback(&c, &b.base, &id).await.expect("B still takes feedback");
    eprintln!(
        "replicas: {} predictions and {} feedback acknowledged by A before kill -9, all found",
        predictions.len(),
        feedbacks.len()
    );
}
