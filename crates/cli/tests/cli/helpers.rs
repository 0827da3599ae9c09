//! Helpers shared by the CLI tests: the `catsdogs` binary (its commands, and `catsdogs serve`
//! as a real process on an ephemeral loopback port), the HTTP API with the test token,
//! generated images, and fixtures built once per run.
use std::any::Any;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use catsdogs_model::Label;
use catsdogs_testkit::{repo, seed_cnn_dir};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

/// The API token every test server accepts (see [`shared_secrets`]).
pub const TOKEN: &str = "replica-test-token-0123456789abcdef0123456789abcdef";

// ---------------------------------------------------------------------------------------
// The binary's commands

/// `catsdogs`, inheriting none of the service's settings (`CATSDOGS_*`, `DATABASE_URL`,
/// `API_TOKEN`) from the environment the tests run in.
pub fn catsdogs() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_catsdogs"));
    for (key, _) in std::env::vars_os() {
        if let Some(key) = key.to_str()
            && (key.starts_with("CATSDOGS_") || key.starts_with("OTEL_") || key == "DATABASE_URL" || key == "API_TOKEN")
        {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Runs `cmd` to the end.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

/// What a finished command wrote to stderr.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `cmd`, which must succeed (else the test fails with its stderr); its stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(out.status.success(), "{cmd:?} failed: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `catsdogs GROUP --data-dir DATA ARGS...` (SQLite in DATA), which must succeed; its last
/// stdout line as JSON.
pub fn catsdogs_json(group: &str, args: &[&str], data: &Path) -> Value {
    let text = ok(catsdogs().arg(group).arg("--data-dir").arg(data).args(args));
    serde_json::from_str(text.lines().last().expect("a JSON line")).expect("JSON")
}

/// `catsdogs models --registry REGISTRY ARGS...`, whatever its outcome.
pub fn models(registry: &Path, args: &[&str]) -> Output {
    output(catsdogs().arg("models").arg("--registry").arg(registry).args(args))
}

/// `path` as a `&str` argument.
pub fn arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

// ---------------------------------------------------------------------------------------
// Files

/// A JSON file's content.
pub fn json_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// How many files are under `dir` (0 when it does not exist).
pub fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| if e.path().is_dir() { count_files(&e.path()) } else { 1 })
        .sum()
}

/// `a` equals `b` within `rel` of the larger magnitude.
pub fn assert_close(a: f64, b: f64, rel: f64, what: &str) {
    let scale = a.abs().max(b.abs()).max(f64::MIN_POSITIVE);
    assert!((a - b).abs() <= rel * scale, "{what}: {a} is not {b} within {rel} (relative)");
}

// ---------------------------------------------------------------------------------------
// Generated images

/// A small generated PNG; `seed` varies its pixels.
pub fn png(seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 4 + seed) as u8, (y * 5 + seed * 7) as u8, (120 + seed * 13) as u8])
    });
    encode_png(img)
}

/// A PNG whose colour says the class (cats warm, dogs cool) under per-image noise that
/// `seed` fixes.
pub fn coloured(label: Label, seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(96, 96, |x, y| {
        let n = (x.wrapping_mul(7919) ^ y.wrapping_mul(104_729) ^ seed.wrapping_mul(2_654_435_761)) % 60;
        let (warm, cool) = (170 + n as u8, 40 + n as u8);
        match label {
            Label::Dog => image::Rgb([cool, 90, warm]),
            Label::Cat => image::Rgb([warm, 90, cool]),
        }
    });
    encode_png(img)
}

fn encode_png(img: image::RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img).write_to(&mut out, image::ImageFormat::Png).expect("encode");
    out.into_inner()
}

/// A labelled folder (`cat/`, `dog/`) of `per_class` [`coloured`] PNGs per class.
pub fn coloured_set(dir: &Path, per_class: u32) {
    for label in Label::ALL {
        let d = dir.join(label.as_str());
        std::fs::create_dir_all(&d).expect("mkdir");
        for i in 0..per_class {
            std::fs::write(d.join(format!("{i}.png")), coloured(label, i)).expect("write");
        }
    }
}

// ---------------------------------------------------------------------------------------
// `catsdogs serve`

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
    child: Child,
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
    /// Starts `catsdogs serve` with the seed CNN on an ephemeral loopback port and returns
    /// once it prints its address. `db_url` is `DATABASE_URL` (the default SQLite file in
    /// `data` when `None`).
    pub fn start(db_url: Option<&str>, data: &Path, secrets: &Path) -> Self {
        Self::start_model(db_url, data, secrets, &seed_cnn_dir())
    }

    /// As [`Server::start`], serving the model directory `model`.
    pub fn start_model(db_url: Option<&str>, data: &Path, secrets: &Path, model: &Path) -> Self {
        Self::start_with_env(db_url, data, secrets, model, &[])
    }

    /// As [`Server::start_model`], with these environment variables set.
    pub fn start_with_env(
        db_url: Option<&str>,
        data: &Path,
        secrets: &Path,
        model: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        let mut cmd = catsdogs();
        cmd.current_dir(repo())
            .args(["serve", "--addr", "127.0.0.1:0", "--threads", "1", "--model"])
            .arg(model)
            .arg("--data-dir")
            .arg(data)
            .arg("--secrets-dir")
            .arg(secrets)
            .env("LOG_LEVEL", "warn")
            .envs(env.iter().copied())
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
        Self { child, base, log }
    }

    /// A client of this server's API.
    pub fn api(&self) -> Api {
        Api::new(&self.base)
    }

    /// The process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process has written to stderr so far: every line up to its
    /// `listening on` line once started, later lines as they come.
    pub fn stderr(&self) -> String {
        self.log.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// SIGTERM, then waits (60 s at most) for the graceful shutdown to end.
    pub fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().is_ok_and(|s| s.success());
        assert!(sent, "could not signal the server");
        for _ in 0..600 {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the server did not stop within 60 s of SIGTERM");
    }

    /// `kill -9`, now: no shutdown hook runs.
    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// The HTTP API

/// Why a call was not acknowledged: an HTTP status, or no answer at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Status(u16),
    Transport(String),
}

impl Refused {
    /// The status a tally counts: the HTTP status, 0 for no answer.
    pub fn status(&self) -> u16 {
        match self {
            Refused::Status(s) => *s,
            Refused::Transport(_) => 0,
        }
    }
}

/// `POST /api/predict`'s answer, the fields the tests read.
#[derive(Debug, Clone, Deserialize)]
pub struct Prediction {
    pub id: String,
    pub label: Label,
    /// Whether the upload was kept for retraining (consent).
    pub image_kept: bool,
}

/// A client of one server's API; every call carries [`TOKEN`].
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    pub base: String,
}

impl Api {
    pub fn new(base: &str) -> Self {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("client");
        Self { client, base: base.to_string() }
    }

    /// `POST /api/predict` with one image (and the consent field when given).
    async fn predict_form(&self, image: Vec<u8>, consent: Option<bool>) -> Result<Prediction, Refused> {
        let part = reqwest::multipart::Part::bytes(image).file_name("pet.png");
        let mut form = reqwest::multipart::Form::new().part("file", part);
        if let Some(consent) = consent {
            form = form.text("consent", consent.to_string());
        }
        let r = self
            .client
            .post(format!("{}/api/predict", self.base))
            .bearer_auth(TOKEN)
            .multipart(form)
            .send()
            .await
            .map_err(|e| Refused::Transport(e.to_string()))?;
        if r.status() != StatusCode::OK {
            return Err(Refused::Status(r.status().as_u16()));
        }
        r.json().await.map_err(|e| Refused::Transport(e.to_string()))
    }

    /// `POST /api/predict`; the answer when it is 200.
    pub async fn predict(&self, image: Vec<u8>) -> Result<Prediction, Refused> {
        self.predict_form(image, None).await
    }

    /// `POST /api/predict` with the consent flag; the answer, which must be 200.
    pub async fn predict_consenting(&self, image: Vec<u8>, consent: bool) -> Prediction {
        self.predict_form(image, Some(consent)).await.unwrap_or_else(|e| panic!("predict: {e:?}"))
    }

    async fn post_feedback(&self, body: Value) -> Result<(), Refused> {
        let r = self
            .client
            .post(format!("{}/api/feedback", self.base))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .map_err(|e| Refused::Transport(e.to_string()))?;
        if r.status() == StatusCode::OK { Ok(()) } else { Err(Refused::Status(r.status().as_u16())) }
    }

    /// `POST /api/feedback`: the prediction was right or wrong; `Ok` when answered 200.
    pub async fn feedback(&self, id: &str, correct: bool) -> Result<(), Refused> {
        self.post_feedback(json!({"prediction_id": id, "correct": correct})).await
    }

    /// `POST /api/feedback` with the true label, which must be answered 200.
    pub async fn label(&self, id: &str, label: Label) {
        let outcome = self.post_feedback(json!({"prediction_id": id, "label": label})).await;
        outcome.unwrap_or_else(|e| panic!("feedback on {id}: {e:?}"));
    }

    /// `GET path`: the status and the JSON body (`Null` when there is none).
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self.client.get(format!("{}{path}", self.base)).bearer_auth(TOKEN).send().await.expect("get");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `GET path`, which must answer 200; the body.
    pub async fn get_ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    /// `GET /api/health` (whatever its status).
    pub async fn health(&self) -> Value {
        self.get("/api/health").await.1
    }

    /// The version `/api/health` says is served.
    pub async fn served_version(&self) -> String {
        self.health().await["model"]["version"].as_str().unwrap_or_default().to_string()
    }

    /// Waits (5 s at most) until the server serves `want`.
    pub async fn wait_for_version(&self, want: &str) {
        for _ in 0..100 {
            if self.served_version().await == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server never served {want}");
    }

    /// `POST /api/admin/model/reload`: its status.
    pub async fn reload_model(&self) -> StatusCode {
        let url = format!("{}/api/admin/model/reload", self.base);
        self.client.post(url).bearer_auth(TOKEN).send().await.expect("reload").status()
    }

    /// Waits (10 s at most) until `/api/health` answers 200.
    pub async fn wait_ready(&self) {
        for _ in 0..100 {
            if let Ok(r) = self.client.get(format!("{}/api/health", self.base)).send().await
                && r.status() == StatusCode::OK
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{} never became ready", self.base);
    }
}

// ---------------------------------------------------------------------------------------
// Fixtures built once per run

/// Folders of the [`Shared`] fixtures, removed by [`remove_shared_fixtures`].
static FIXTURE_DIRS: Mutex<Vec<tempfile::TempDir>> = Mutex::new(Vec::new());

/// An expensive setup (training runs) that several tests inspect: built once, by the first
/// test that asks, in a folder of its own, on a thread of its own (so that async tests may
/// ask too). When the build fails every test that uses it fails with the build's message.
pub struct Shared<T> {
    cell: OnceLock<Result<T, String>>,
    build: fn(&Path) -> T,
}

impl<T: Send + Sync + 'static> Shared<T> {
    pub const fn new(build: fn(&Path) -> T) -> Self {
        Self { cell: OnceLock::new(), build }
    }

    pub fn get(&'static self) -> &'static T {
        let built = self.cell.get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().to_path_buf();
            FIXTURE_DIRS.lock().unwrap_or_else(PoisonError::into_inner).push(dir);
            let build = self.build;
            std::thread::spawn(move || build(&path)).join().map_err(panic_message)
        });
        match built {
            Ok(fixture) => fixture,
            Err(why) => panic!("the shared fixture failed to build: {why}"),
        }
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload.downcast_ref::<&str>().map_or("(no message)".into(), |s| (*s).to_string()),
    }
}

/// Removes the [`Shared`] fixtures' folders (once every test has run).
pub fn remove_shared_fixtures() {
    FIXTURE_DIRS.lock().unwrap_or_else(PoisonError::into_inner).clear();
}

/// Runs `f` on a runtime of its own (for a [`Shared`] build, which runs outside any).
pub fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}
