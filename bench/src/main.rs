//! `catsdogs-bench`: starts `catsdogs serve` as a real process per configuration, drives
//! `POST /api/predict` on loopback with N concurrent clients sending real photos, and prints
//! one table: requests/s, p50/p99 latency, errors, accuracy against the photos' folders,
//! the server's peak RSS and its cold start (exec to first successful prediction). Each
//! model is measured with dynamic batching on and off (`--max-batch 1`), in the same run,
//! so the ratio between them is what the batcher buys on this machine.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;

const TOKEN: &str = "bench-token-0123456789abcdef0123456789abcdef";

#[derive(Parser)]
#[command(about = "End-to-end benchmark of catsdogs serve on loopback")]
struct Args {
    /// The `catsdogs` binary to measure (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/catsdogs")]
    catsdogs: PathBuf,
    /// Labelled photos: DIR/cat/* and DIR/dog/*.
    #[arg(long, env = "CATSDOGS_DATA_DIR", default_value = "../shared/data/train")]
    photos: PathBuf,
    /// Photos loaded per class (sent round-robin).
    #[arg(long, default_value_t = 100)]
    per_class: usize,
    /// Model directories to serve.
    #[arg(long, value_delimiter = ',', default_value = "models/seed-cnn,models/effnet-lite0")]
    models: Vec<PathBuf>,
    /// Concurrent clients for each measurement.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    clients: Vec<usize>,
    /// Seconds per measurement (after a 1 s warm-up).
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// Markdown table written here too.
    #[arg(long, default_value = "bench/results/latest.md")]
    out: PathBuf,
}

/// A photo and its true label.
struct Photo {
    bytes: Vec<u8>,
    label: &'static str,
}

fn load_photos(dir: &Path, per_class: usize) -> Result<Vec<Photo>> {
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
    // Interleave the classes so every client sees both.
    photos.sort_by_key(|p| p.bytes.len() % 7);
    Ok(photos)
}

struct Server {
    child: Child,
    base: String,
    cold_start: Duration,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Peak resident memory of the server process so far (VmHWM), in MiB.
    fn peak_rss_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
            .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
            .map_or(f64::NAN, |kib| kib / 1024.0)
    }
}

async fn start(exe: &Path, model: &Path, max_batch: usize, probe: &Photo) -> Result<Server> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let started = Instant::now();
    let child = Command::new(exe)
        .args(["serve", "--addr", &format!("127.0.0.1:{port}"), "--no-inference-log"])
        .arg("--model")
        .arg(model)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--max-batch", &max_batch.to_string()])
        .env("API_TOKEN", TOKEN)
        .env("LOG_LEVEL", "warn")
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let base = format!("http://127.0.0.1:{port}");
    let mut server = Server { child, base, cold_start: Duration::ZERO, _dir: dir };
    let client = reqwest::Client::new();
    while started.elapsed() < Duration::from_secs(60) {
        if predict(&client, &server.base, probe).await.is_ok() {
            server.cold_start = started.elapsed();
            return Ok(server);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bail!("{} did not answer a prediction within 60 s", exe.display())
}

/// One prediction; the label answered.
async fn predict(c: &reqwest::Client, base: &str, photo: &Photo) -> Result<String> {
    let part = reqwest::multipart::Part::bytes(photo.bytes.clone()).file_name("photo.jpg");
    let r = c
        .post(format!("{base}/api/predict"))
        .bearer_auth(TOKEN)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("status {}", r.status());
    }
    let v: serde_json::Value = r.json().await?;
    Ok(v["label"].as_str().unwrap_or_default().to_string())
}

/// One measurement's figures.
struct Cell {
    requests: usize,
    errors: usize,
    correct: usize,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn measure(base: &str, photos: &Arc<Vec<Photo>>, clients: usize, secs: f64) -> Cell {
    let run = |window: Duration| {
        let mut tasks = Vec::new();
        let until = Instant::now() + window;
        for k in 0..clients {
            let (photos, base) = (photos.clone(), base.to_string());
            tasks.push(tokio::spawn(async move {
                let c = reqwest::Client::new();
                let (mut lat, mut errors, mut correct) = (Vec::new(), 0usize, 0usize);
                let mut i = k * 7919;
                while Instant::now() < until {
                    let photo = &photos[i % photos.len()];
                    i += 1;
                    let t = Instant::now();
                    match predict(&c, &base, photo).await {
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

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores")
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let photos = Arc::new(load_photos(&args.photos, args.per_class)?);
    let mut table = String::from(
        "| model | batching | clients | req/s | p50 ms | p99 ms | errors | accuracy | peak RSS MiB | cold start ms | req/s batching on / off |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for model in &args.models {
        let name = model.file_name().and_then(|n| n.to_str()).unwrap_or("model").to_string();
        let mut off_rates = Vec::new();
        for (mode, max_batch) in [("off", 1), ("on", 16)] {
            let server = start(&args.catsdogs, model, max_batch, &photos[0]).await?;
            for (i, &clients) in args.clients.iter().enumerate() {
                let cell = measure(&server.base, &photos, clients, args.secs).await;
                let rate = (cell.requests - cell.errors) as f64 / cell.secs;
                let ratio = if mode == "on" {
                    off_rates.get(i).map_or("".into(), |off: &f64| format!("{:.2}x", rate / off))
                } else {
                    off_rates.push(rate);
                    String::new()
                };
                let ok = cell.requests - cell.errors;
                let line = format!(
                    "| {name} | {mode} | {clients} | {rate:.1} | {:.1} | {:.1} | {} | {:.1} % | {:.0} | {:.0} | {ratio} |\n",
                    cell.p50_ms,
                    cell.p99_ms,
                    cell.errors,
                    100.0 * cell.correct as f64 / ok.max(1) as f64,
                    server.peak_rss_mib(),
                    server.cold_start.as_secs_f64() * 1e3,
                );
                eprint!("{line}");
                table.push_str(&line);
            }
        }
    }
    let report = format!(
        "# catsdogs end-to-end benchmark\n\nMachine: {}. `POST /api/predict` on loopback, {} photos \
         from {} sent round-robin, {} s per row after 1 s of warm-up; SQLite store, inference log off. \
         Batching off = `--max-batch 1`. Accuracy is a correctness check on these photos (the \
         first files of each folder, which may belong to the training split), not a validation \
         figure; peak RSS is the server's VmHWM after the row.\n\n{table}",
        machine(),
        photos.len(),
        args.photos.display(),
        args.secs
    );
    println!("{report}");
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, &report).with_context(|| format!("cannot write {}", args.out.display()))?;
    Ok(())
}
