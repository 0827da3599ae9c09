//! End-to-end measurements: a real server process (catsdogs or the Python seed service),
//! N concurrent clients posting real photos to `POST /api/predict` on loopback.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub const TOKEN: &str = "bench-token-0123456789abcdef0123456789abcdef";

/// A photo and its true label.
pub struct Photo {
    pub bytes: Vec<u8>,
    pub label: &'static str,
}

/// The first `per_class` files of `dir/cat` and `dir/dog`, classes interleaved.
pub fn load_photos(dir: &Path, per_class: usize) -> Result<Vec<Photo>> {
    let mut photos = Vec::new();
    for label in ["cat", "dog"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(label))
            .with_context(|| format!("cannot list {}", dir.join(label).display()))?
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for f in files.into_iter().take(per_class) {
            photos.push(Photo { bytes: std::fs::read(&f)?, label });
        }
    }
    if photos.is_empty() {
        bail!("no photos under {}", dir.display());
    }
    photos.sort_by_key(|p| p.bytes.len() % 7);
    Ok(photos)
}

/// Which response shape the server speaks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// catsdogs: `{"label": "cat"|"dog", ...}`.
    Catsdogs,
    /// The seed: `{"prediction": "Cat"|"Dog", ...}`.
    Seed,
    /// The LitServe peer: `POST /predict`, no token, `{"label": "cat"|"dog", ...}`.
    LitServe,
}

/// A server process under test, killed on drop.
pub struct Server {
    child: Child,
    pub base: String,
    pub api: Api,
    /// Exec to first successful prediction.
    pub cold_start: Duration,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    /// Kills the server's whole process group: LitServe's and uvicorn's worker processes
    /// outlive a killed parent and kept polling, which slowed every later row.
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on the process group this harness created for the child.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Peak resident memory of the server process so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.status_kib("VmHWM:") / 1024.0
    }

    /// A KiB figure of the server's `/proc/PID/status` (`field` with its colon), NaN if absent.
    pub fn status_kib(&self, field: &str) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with(field)).map(str::to_string))
            .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
            .unwrap_or(f64::NAN)
    }

    /// `catsdogs serve` on `model` with SQLite in a temporary folder.
    pub async fn catsdogs(exe: &Path, model: &Path, max_batch: usize, probe: &Photo) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let cmd = catsdogs_command(exe, model, max_batch, dir.path(), port);
        Self::spawn(cmd, port, Api::Catsdogs, dir, Probe::Predict(probe)).await
    }

    /// `catsdogs serve` as [`Server::catsdogs`] starts it, returned as soon as it reports
    /// ready (`GET /api/health` = 200), before any prediction.
    pub async fn catsdogs_ready(exe: &Path, model: &Path, max_batch: usize) -> Result<Self> {
        Self::catsdogs_with_env(exe, model, max_batch, &[]).await
    }

    /// `catsdogs serve` as [`Server::catsdogs_ready`] starts it, with these extra
    /// environment variables (e.g. an OpenTelemetry exporter's).
    pub async fn catsdogs_with_env(exe: &Path, model: &Path, max_batch: usize, env: &[(&str, &str)]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let mut cmd = catsdogs_command(exe, model, max_batch, dir.path(), port);
        cmd.envs(env.iter().copied());
        Self::spawn(cmd, port, Api::Catsdogs, dir, Probe::Health).await
    }

    /// `catsdogs serve` on `model` keeping its files in `data` and its rows at `db_url`,
    /// returned once ready (no prediction made).
    pub async fn catsdogs_on_database(exe: &Path, model: &Path, data: &Path, db_url: &str) -> Result<Self> {
        let port = free_port()?;
        let mut cmd = catsdogs_command(exe, model, 8, data, port);
        cmd.env("DATABASE_URL", db_url).arg("--no-grpc");
        Self::spawn(cmd, port, Api::Catsdogs, tempfile::tempdir()?, Probe::Health).await
    }

    /// The Python seed service (`bench/reference/seed_service.py`) on `model` (seed CNN).
    pub async fn seed_reference(python: &Path, model: &Path, probe: &Photo) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let mut cmd = Command::new(python);
        cmd.arg("bench/reference/seed_service.py")
            .args(["--port", &port.to_string()])
            .arg("--model-dir")
            .arg(model)
            .env("CATSDOGS_REF_TOKEN", TOKEN)
            .env("TMPDIR", dir.path());
        Self::spawn(cmd, port, Api::Seed, dir, Probe::Predict(probe)).await
    }

    /// The LitServe + ONNX Runtime peer (`bench/reference/litserve_peer.py`) on `model`.
    pub async fn litserve_peer(python: &Path, model: &Path, probe: &Photo) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let mut cmd = Command::new(python);
        cmd.arg("bench/reference/litserve_peer.py")
            .args(["--port", &port.to_string()])
            .arg("--model-dir")
            .arg(model)
            .env("TMPDIR", dir.path());
        Self::spawn(cmd, port, Api::LitServe, dir, Probe::Predict(probe)).await
    }

    /// Peak resident memory of the server and its child processes (LitServe runs its
    /// workers in child processes), in MiB.
    pub fn peak_rss_tree_mib(&self) -> f64 {
        let own = self.peak_rss_mib();
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.child.id()))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .filter_map(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
            .filter_map(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
            .sum::<f64>();
        own + children / 1024.0
    }

    async fn spawn(mut cmd: Command, port: u16, api: Api, dir: tempfile::TempDir, probe: Probe<'_>) -> Result<Self> {
        let started = Instant::now();
        // Its own process group, so that dropping the server kills its workers too.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
        let mut server =
            Server { child, base: format!("http://127.0.0.1:{port}"), api, cold_start: Duration::ZERO, _dir: dir };
        let client = reqwest::Client::new();
        while started.elapsed() < Duration::from_secs(120) {
            let up = match probe {
                Probe::Predict(photo) => predict(&client, &server.base, api, photo).await.is_ok(),
                Probe::Health => client
                    .get(format!("{}/api/health", server.base))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success()),
            };
            if up {
                server.cold_start = started.elapsed();
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                bail!("{:?} exited with {status} before answering", cmd.get_program());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        bail!("{:?} did not answer a prediction within 120 s", cmd.get_program())
    }
}

/// How [`Server::spawn`] knows the server is up.
#[derive(Clone, Copy)]
enum Probe<'a> {
    /// A successful prediction of this photo (cold start = exec to first answer).
    Predict(&'a Photo),
    /// `GET /api/health` answers 200 (catsdogs: ready, model loaded), nothing predicted.
    Health,
}

/// The `catsdogs serve` command line the benchmark runs: SQLite in `dir`, no inference log.
fn catsdogs_command(exe: &Path, model: &Path, max_batch: usize, dir: &Path, port: u16) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(["serve", "--addr", &format!("127.0.0.1:{port}"), "--no-inference-log"])
        .arg("--model")
        .arg(model)
        .arg("--data-dir")
        .arg(dir)
        .args(["--max-batch", &max_batch.to_string()])
        .env("API_TOKEN", TOKEN)
        .env("LOG_LEVEL", "warn")
        .env_remove("DATABASE_URL")
        // Traced only where a section asks for it (section 10), whatever this shell exports.
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    cmd
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One prediction; the label answered, lower case.
pub async fn predict(c: &reqwest::Client, base: &str, api: Api, photo: &Photo) -> Result<String> {
    let part = reqwest::multipart::Part::bytes(photo.bytes.clone()).file_name("photo.jpg").mime_str("image/jpeg")?;
    let form = reqwest::multipart::Form::new().part("file", part);
    let r = match api {
        Api::LitServe => c.post(format!("{base}/predict")).multipart(form),
        Api::Catsdogs | Api::Seed => c.post(format!("{base}/api/predict")).bearer_auth(TOKEN).multipart(form),
    };
    let r = r.send().await?;
    if !r.status().is_success() {
        bail!("status {}", r.status());
    }
    let v: serde_json::Value = r.json().await?;
    let field = match api {
        Api::Catsdogs | Api::LitServe => "label",
        Api::Seed => "prediction",
    };
    Ok(v[field].as_str().unwrap_or_default().to_ascii_lowercase())
}

/// The median of `v` (sorted in place); NaN when empty.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Whether request `i` of an A/B comparison made of pairs on the same input goes to B: the
/// pairs alternate their order ((A, B), (B, A), ...) so a machine that speeds up or slows
/// down between the two halves of a pair hits both sides alike.
pub fn second_side(i: usize) -> bool {
    (i % 2 == 1) != ((i / 2) % 2 == 1)
}

/// One measurement's figures.
pub struct Cell {
    pub requests: usize,
    pub errors: usize,
    pub correct: usize,
    pub secs: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Cell {
    /// Successful requests per second.
    pub fn rate(&self) -> f64 {
        (self.requests - self.errors) as f64 / self.secs
    }

    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / (self.requests - self.errors).max(1) as f64
    }
}

/// `clients` closed-loop clients for 1 s of warm-up, then `secs` measured.
pub async fn measure(server: &Server, photos: &Arc<Vec<Photo>>, clients: usize, secs: f64) -> Cell {
    let run = |window: Duration| {
        let mut tasks = Vec::new();
        let until = Instant::now() + window;
        for k in 0..clients {
            let (photos, base, api) = (photos.clone(), server.base.clone(), server.api);
            tasks.push(tokio::spawn(async move {
                let c = reqwest::Client::new();
                let (mut lat, mut errors, mut correct) = (Vec::new(), 0usize, 0usize);
                let mut i = k * 7919;
                while Instant::now() < until {
                    let photo = &photos[i % photos.len()];
                    i += 1;
                    let t = Instant::now();
                    match predict(&c, &base, api, photo).await {
                        Ok(label) => {
                            lat.push(t.elapsed().as_secs_f64() * 1e3);
                            correct += usize::from(label == photo.label);
                        }
                        Err(_) => errors += 1,
                    }
                }
                (lat, errors, correct)
            }));
        }
        tasks
    };
    for t in run(Duration::from_secs(1)) {
        let _ = t.await;
    }
    let started = Instant::now();
    let (mut lat, mut errors, mut correct) = (Vec::new(), 0, 0);
    for t in run(Duration::from_secs_f64(secs)) {
        if let Ok((l, e, c)) = t.await {
            lat.extend(l);
            errors += e;
            correct += c;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let pct = |q: f64| lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1))).copied();
    Cell {
        requests: lat.len() + errors,
        errors,
        correct,
        secs,
        p50_ms: pct(0.5).unwrap_or(f64::NAN),
        p99_ms: pct(0.99).unwrap_or(f64::NAN),
    }
}
