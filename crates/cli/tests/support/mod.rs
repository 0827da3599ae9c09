//! Helpers shared by the tests that run `catsdogs serve` as a real process: start it on an
//! ephemeral loopback port, call the API, check readiness.
#![allow(dead_code)] // each test binary uses part of it

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};

pub const TOKEN: &str = "replica-test-token-0123456789abcdef0123456789abcdef";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A secrets directory with a fixed token and keys: processes sharing it agree on
/// pseudonyms and sessions, as replicas must.
pub fn shared_secrets(dir: &Path) -> PathBuf {
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).expect("secrets dir");
    std::fs::write(secrets.join("api-token"), TOKEN).expect("token");
    std::fs::write(secrets.join("pseudonym-key"), "a".repeat(64)).expect("key");
    std::fs::write(secrets.join("session-key"), "b".repeat(64)).expect("key");
    secrets
}

/// A running `catsdogs serve`; killed (SIGKILL) on drop.
pub struct Server {
    pub child: Child,
    pub base: String,
    /// Everything the process has written to stderr so far (its log), line by line.
    log: Arc<Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// What the process has written to stderr so far: every line up to its
    /// `listening on` line once `start` has returned, later lines as they come.
    pub fn stderr(&self) -> String {
        self.log.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// `kill -9`: no shutdown hook runs.
    pub fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `catsdogs serve` with the seed CNN on an ephemeral port and returns once it
/// prints its address. `db_url` is `DATABASE_URL` (the default SQLite file in `data`
/// when `None`).
pub fn start(db_url: Option<&str>, data: &Path, secrets: &Path) -> Server {
    start_model(db_url, data, secrets, &repo().join("models/seed-cnn"))
}

/// As `start`, serving the model directory `model`.
pub fn start_model(db_url: Option<&str>, data: &Path, secrets: &Path, model: &Path) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_catsdogs"));
    cmd.current_dir(repo())
        .args(["serve", "--addr", "127.0.0.1:0", "--threads", "1", "--model"])
        .arg(model)
        .arg("--data-dir")
        .arg(data)
        .arg("--secrets-dir")
        .arg(secrets)
        .env("LOG_LEVEL", "warn")
        .env_remove("API_TOKEN")
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(url) = db_url {
        cmd.env("DATABASE_URL", url);
    }
    let mut child = cmd.spawn().expect("start catsdogs serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // Kept before the address is sent: the log holds every line up to it.
            {
                let mut log = sink.lock().unwrap_or_else(PoisonError::into_inner);
                log.push_str(&line);
                log.push('\n');
            }
            if let Some(rest) = line.split("listening on ").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
            }
        }
    });
    let base = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(base) => base,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            let log = log.lock().unwrap_or_else(PoisonError::into_inner).clone();
            panic!("server did not start ({e}); its stderr:\n{log}")
        }
    };
    Server { child, base, log }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("client")
}

/// A small generated PNG; `seed` varies its pixels.
pub fn png(seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 4 + seed) as u8, (y * 5 + seed * 7) as u8, (120 + seed * 13) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img).write_to(&mut out, image::ImageFormat::Png).expect("encode");
    out.into_inner()
}

/// Why a call was not acknowledged: an HTTP status, or no answer at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Status(u16),
    Transport(String),
}

/// `POST /api/predict`; the prediction id when the answer is 200.
pub async fn predict(c: &reqwest::Client, base: &str, image: Vec<u8>) -> Result<String, Refused> {
    let part = reqwest::multipart::Part::bytes(image).file_name("x.png");
    let r = c
        .post(format!("{base}/api/predict"))
        .bearer_auth(TOKEN)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .map_err(|e| Refused::Transport(e.to_string()))?;
    if r.status() != reqwest::StatusCode::OK {
        return Err(Refused::Status(r.status().as_u16()));
    }
    let v: Value = r.json().await.map_err(|e| Refused::Transport(e.to_string()))?;
    v["id"].as_str().map(str::to_string).ok_or_else(|| Refused::Transport("no id in the answer".into()))
}

/// `POST /api/feedback` on a prediction; `Ok` when the answer is 200.
pub async fn feedback(c: &reqwest::Client, base: &str, id: &str, correct: bool) -> Result<(), Refused> {
    let r = c
        .post(format!("{base}/api/feedback"))
        .bearer_auth(TOKEN)
        .json(&json!({"prediction_id": id, "correct": correct}))
        .send()
        .await
        .map_err(|e| Refused::Transport(e.to_string()))?;
    if r.status() == reqwest::StatusCode::OK { Ok(()) } else { Err(Refused::Status(r.status().as_u16())) }
}

pub async fn get(c: &reqwest::Client, base: &str, path: &str) -> (reqwest::StatusCode, Value) {
    let r = c.get(format!("{base}{path}")).bearer_auth(TOKEN).send().await.expect("get");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub async fn wait_ready(c: &reqwest::Client, base: &str) {
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

/// `POST /api/predict` with the consent flag; the answer's JSON (must be 200).
pub async fn predict_consenting(c: &reqwest::Client, base: &str, image: Vec<u8>, consent: bool) -> Value {
    let part = reqwest::multipart::Part::bytes(image).file_name("pet.png");
    let form = reqwest::multipart::Form::new().part("file", part).text("consent", consent.to_string());
    let r = c.post(format!("{base}/api/predict")).bearer_auth(TOKEN).multipart(form).send().await.expect("predict");
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    r.json().await.expect("json")
}

/// `POST /api/feedback` for prediction `id` with `body` (must be 200).
pub async fn judge(c: &reqwest::Client, base: &str, id: &str, body: Value) {
    let mut body = body;
    body["prediction_id"] = json!(id);
    let r = c.post(format!("{base}/api/feedback")).bearer_auth(TOKEN).json(&body).send().await.expect("feedback");
    assert_eq!(r.status(), reqwest::StatusCode::OK);
}

/// `catsdogs GROUP --data-dir DATA ARGS...` (SQLite in DATA), its last stdout line as JSON.
pub fn catsdogs_json(group: &str, args: &[&str], data: &std::path::Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_catsdogs"))
        .arg(group)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run catsdogs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().expect("a JSON line")).expect("JSON")
}
