//! `catsdogs-bench`: one table of how fast catsdogs is, next to the Python stack it
//! replaces, on this machine in this run:
//! 1. model forward (batch-1 latency, batch-32 throughput) for each shipped model: the
//!    catsdogs backend, a bare ONNX Runtime session, PyTorch eager, ONNX Runtime (Python);
//!    FLOP/s against a measured matrix-product peak;
//! 2. end to end `POST /api/predict` on real photos at 1/8/64 clients: `catsdogs serve`
//!    per model with dynamic batching on and off, and the seed's FastAPI + Keras service;
//!    peak RSS and cold start of each server;
//! 3. seed-CNN training images/s: candle vs Keras vs PyTorch;
//! 4. phone-size photos (small, 1 MP, 12 MP JPEGs) at 1/16/64 clients: catsdogs, the
//!    LitServe + ONNX Runtime peer serving the same graph, and the seed service; decode
//!    times and the ceiling they imply;
//! 5. warm-up: the first request after a start and after a reload, over fresh servers;
//! 6. steady memory: resident memory over a long run of random client counts and sizes;
//! 7. the monitoring routes and the purge on a million prediction rows (SQLite, PostgreSQL);
//! 8. what explanations cost: the graphs' extra outputs, and `explain=true` end to end;
//! 9. the drift report over its largest window;
//! 10. what OpenTelemetry tracing costs: one server exporting every span against one without.
//!
//! The Python side (bench/reference/) runs in a venv the harness creates; `--no-reference`
//! skips it.
mod drift;
mod explain;
mod forward;
mod reference;
mod scale;
mod serve;
mod sizes;
mod steady;
mod tracing_cost;
mod warmup;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;

use forward::ForwardRow;
use serve::{Cell, Server};

#[derive(Parser)]
#[command(about = "Benchmark of catsdogs against the Python references, on loopback")]
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
    /// Model directories to measure.
    #[arg(long, value_delimiter = ',', default_value = "models/seed-cnn,models/effnet-lite0")]
    models: Vec<PathBuf>,
    /// Concurrent clients for each end-to-end measurement.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    clients: Vec<usize>,
    /// Seconds per end-to-end measurement (after a 1 s warm-up).
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// Seconds per model-forward measurement.
    #[arg(long, default_value_t = 3.0)]
    forward_secs: f64,
    /// Seconds per training-speed measurement.
    #[arg(long, default_value_t = 20.0)]
    train_secs: f64,
    /// Threads for every engine (ONNX Runtime intra-op, torch, TensorFlow).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// The EfficientNet-Lite0 checkpoint the PyTorch reference loads.
    #[arg(long, default_value = ".cache/efficientnet/efficientnet-lite0-57934424.pth")]
    pth: PathBuf,
    /// `--max-batch` of the servers with batching on.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Skip the Python references (no venv needed).
    #[arg(long)]
    no_reference: bool,
    /// Photo-size classes of section 4 (small, 1mp, 12mp).
    #[arg(long, value_delimiter = ',', default_value = "small,1mp,12mp")]
    sizes: Vec<sizes::SizeClass>,
    /// Concurrent clients of section 4.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    size_clients: Vec<usize>,
    /// The model catsdogs and the LitServe peer serve in section 4.
    #[arg(long, default_value = "models/effnet-lite0")]
    size_model: PathBuf,
    /// Photos per class in section 4 (upscaled copies are generated from them).
    #[arg(long, default_value_t = 12)]
    size_per_class: usize,
    /// Only section 4 (phone-size photos).
    #[arg(long, conflicts_with_all = ["only_warmup", "only_steady", "only_scale", "only_explain", "only_drift", "only_tracing"])]
    only_sizes: bool,
    /// Only section 5 (warm-up).
    #[arg(long, conflicts_with_all = ["only_steady", "only_scale", "only_explain", "only_drift", "only_tracing"])]
    only_warmup: bool,
    /// Only section 6 (steady memory).
    #[arg(long, conflicts_with_all = ["only_scale", "only_explain", "only_drift", "only_tracing"])]
    only_steady: bool,
    /// Only section 7 (monitoring routes at scale).
    #[arg(long, conflicts_with_all = ["only_explain", "only_drift", "only_tracing"])]
    only_scale: bool,
    /// Only section 8 (what explanations cost).
    #[arg(long, conflicts_with_all = ["only_drift", "only_tracing"])]
    only_explain: bool,
    /// Only section 9 (the drift report).
    #[arg(long, conflicts_with = "only_tracing")]
    only_drift: bool,
    /// Only section 10 (what tracing costs).
    #[arg(long)]
    only_tracing: bool,
    /// One-client requests per server and photo size in section 10 (0 skips it).
    #[arg(long, default_value_t = 100)]
    tracing_requests: usize,
    /// Concurrent clients of section 10's throughput rows (runs of `--secs`).
    #[arg(long, default_value_t = 8)]
    tracing_clients: usize,
    /// Prediction rows of section 9 (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    drift_rows: usize,
    /// Prediction rows of section 7 (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    scale_rows: u64,
    /// Seconds of section 6 (0 skips it).
    #[arg(long, default_value_t = 600.0)]
    steady_secs: f64,
    /// Fresh servers section 5 starts (0 skips it).
    #[arg(long, default_value_t = 20)]
    warmup_restarts: usize,
    /// Requests of each kind per photo size in section 8 (0 skips it).
    #[arg(long, default_value_t = 60)]
    explain_requests: usize,
    /// Interleaved forward rounds per model and batch size in section 8.
    #[arg(long, default_value_t = 200)]
    explain_rounds: usize,
    /// Markdown report written here too.
    #[arg(long, default_value = "bench/results/latest.md")]
    out: PathBuf,
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
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let simd = if flags.contains("avx512f") {
        "AVX-512"
    } else if flags.contains("avx2") {
        "AVX2"
    } else {
        "no AVX2"
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores, {simd}")
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 { format!("{:.2}x", a / b) } else { "n/a".into() }
}

/// Section 1: the model forward table.
fn forward_section(args: &Args, python: Option<&PathBuf>, report: &mut String) -> Result<()> {
    let peak = forward::matmul_peak_gflops(args.threads, args.forward_secs.max(0.5))?;
    let mut rows: Vec<(ForwardRow, f64)> = Vec::new();
    let mut seed_dir = None;
    let mut effnet_dir = None;
    for dir in &args.models {
        let model = forward::load(dir, args.threads)?;
        let gflop = forward::gflop_per_image(&model);
        match model.card.architecture {
            catsdogs_model::Architecture::EfficientNetLite0 => effnet_dir = Some(dir.clone()),
            catsdogs_model::Architecture::SeedCnn => seed_dir = Some(dir.clone()),
        }
        rows.push((forward::catsdogs_backend(&model, args.forward_secs)?, gflop));
        rows.push((forward::bare_ort(&model, args.threads, args.forward_secs)?, gflop));
        eprintln!("forward: {} done", dir.display());
    }
    let mut agreement = Vec::new();
    let mut versions = String::new();
    if let (Some(py), Some(seed)) = (python, &seed_dir) {
        let effnet = effnet_dir.as_deref().filter(|_| args.pth.is_file()).map(|d| (d, args.pth.as_path()));
        let py = reference::model_rows(py, seed, effnet, args.threads, args.forward_secs)?;
        for r in py.rows {
            let gflop = rows.iter().find(|(x, _)| x.model == r.model).map_or(f64::NAN, |(_, g)| *g);
            rows.push((r, gflop));
        }
        agreement = py.agreement;
        versions = py.versions;
    }
    writeln!(
        report,
        "## 1. Model forward\n\nSame machine, {} threads per engine, seeded random images; batch-1 latency over {} s, \
         batch-{} throughput over {} s. FLOP/s = model GFLOP per image x images/s at batch {}; matrix-product \
         peak measured now: {peak:.0} GFLOP/s (2048x2048 f32 MatMul in ONNX Runtime, same threads). Ratios: catsdogs / that \
         engine (above 1 = catsdogs faster).\n",
        args.threads,
        args.forward_secs,
        forward::THROUGHPUT_BATCH,
        args.forward_secs,
        forward::THROUGHPUT_BATCH
    )?;
    report.push_str(
        "| model | engine | batch-1 median ms | batch-1 p99 ms | batch-32 img/s | GFLOP/s | % of peak | throughput catsdogs / engine | batch-1 latency engine / catsdogs |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for (r, gflop) in &rows {
        let ours = rows.iter().find(|(x, _)| x.model == r.model && x.engine.starts_with("catsdogs")).map(|(x, _)| x);
        let flops = gflop * r.batch32_img_s;
        writeln!(
            report,
            "| {} | {} | {:.2} | {:.2} | {:.1} | {:.1} | {:.0} % | {} | {} |",
            r.model,
            r.engine,
            r.batch1_median_ms,
            r.batch1_p99_ms,
            r.batch32_img_s,
            flops,
            100.0 * flops / peak,
            ours.map_or("".into(), |o| ratio(o.batch32_img_s, r.batch32_img_s)),
            ours.map_or("".into(), |o| ratio(r.batch1_median_ms, o.batch1_median_ms)),
        )?;
    }
    if !agreement.is_empty() {
        let list: Vec<String> = agreement.iter().map(|(k, d)| format!("{k}: {d:.1e}")).collect();
        writeln!(
            report,
            "\nSame weights in every engine: largest |p_dog - p_dog(ONNX Runtime)| {}. Versions: {versions}.",
            list.join(", ")
        )?;
    }
    report.push('\n');
    Ok(())
}

fn e2e_row(report: &mut String, name: &str, mode: &str, clients: usize, cell: &Cell, server: &Server, extra: &str) {
    let line = format!(
        "| {name} | {mode} | {clients} | {:.1} | {:.1} | {:.1} | {} | {:.1} % | {:.0} | {:.0} | {extra} |\n",
        cell.rate(),
        cell.p50_ms,
        cell.p99_ms,
        cell.errors,
        100.0 * cell.accuracy(),
        server.peak_rss_mib(),
        server.cold_start.as_secs_f64() * 1e3,
    );
    eprint!("{line}");
    report.push_str(&line);
}

/// Section 2: end to end, catsdogs per model with batching off/on, and the seed service.
async fn e2e_section(args: &Args, python: Option<&PathBuf>, report: &mut String) -> Result<()> {
    let photos = Arc::new(serve::load_photos(&args.photos, args.per_class)?);
    writeln!(
        report,
        "## 2. End to end: `POST /api/predict`\n\nLoopback, {} photos from {} sent round-robin by closed-loop \
         clients, {} s per row after 1 s of warm-up. catsdogs: SQLite store, inference log off; batching off = \
         `--max-batch 1`. The seed service is bench/reference/seed_service.py (FastAPI + uvicorn + Keras 3 \
         `model.predict` per request, our seed-CNN weights). Accuracy checks the labels answered against the \
         photos' folders (the first files of each folder, partly training photos: a correctness check, not a \
         validation figure). Peak RSS: the server's VmHWM after the row; cold start: exec to first successful \
         prediction.\n",
        photos.len(),
        args.photos.display(),
        args.secs
    )?;
    report.push_str(
        "| model | batching | clients | req/s | p50 ms | p99 ms | errors | accuracy | peak RSS MiB | cold start ms | req/s batching on / off |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    // (model, clients) -> (cell, rss, cold start) of catsdogs with batching on, for the ratios.
    let mut ours: Vec<(String, usize, Cell, f64, f64)> = Vec::new();
    for model in &args.models {
        let name = model.file_name().and_then(|n| n.to_str()).unwrap_or("model").to_string();
        let mut off_rates = Vec::new();
        for (mode, max_batch) in [("off", 1), ("on", args.max_batch)] {
            let server = Server::catsdogs(&args.catsdogs, model, max_batch, &photos[0]).await?;
            for (i, &clients) in args.clients.iter().enumerate() {
                let cell = serve::measure(&server, &photos, clients, args.secs).await;
                let extra = if mode == "on" {
                    off_rates.get(i).map_or(String::new(), |off: &f64| ratio(cell.rate(), *off))
                } else {
                    off_rates.push(cell.rate());
                    String::new()
                };
                e2e_row(report, &name, mode, clients, &cell, &server, &extra);
                if mode == "on" {
                    ours.push((name.clone(), clients, cell, server.peak_rss_mib(), server.cold_start.as_secs_f64()));
                }
            }
        }
    }
    let Some(py) = python else {
        report.push('\n');
        return Ok(());
    };
    let seed_model =
        args.models.iter().find(|m| m.ends_with("seed-cnn")).context("the seed service needs models/seed-cnn")?;
    let server = Server::seed_reference(py, seed_model, &photos[0]).await?;
    let mut seed_cells = Vec::new();
    for &clients in &args.clients {
        let cell = serve::measure(&server, &photos, clients, args.secs).await;
        e2e_row(report, "seed service (FastAPI + Keras)", "-", clients, &cell, &server, "");
        seed_cells.push((clients, cell));
    }
    let (seed_rss, seed_cold) = (server.peak_rss_mib(), server.cold_start.as_secs_f64());
    drop(server);
    report.push_str(
        "\nRatios, catsdogs (batching on) / seed service at the same concurrency:\n\n| catsdogs model | clients | req/s | p50 latency (seed / ours) | p99 latency (seed / ours) | peak RSS (ours / seed) | cold start (seed / ours) |\n|---|---|---|---|---|---|---|\n",
    );
    for (name, clients, cell, rss, cold) in &ours {
        if let Some((_, s)) = seed_cells.iter().find(|(c, _)| c == clients) {
            writeln!(
                report,
                "| {name} | {clients} | {} | {} | {} | {} | {} |",
                ratio(cell.rate(), s.rate()),
                ratio(s.p50_ms, cell.p50_ms),
                ratio(s.p99_ms, cell.p99_ms),
                ratio(*rss, seed_rss),
                ratio(seed_cold, *cold),
            )?;
        }
    }
    report.push('\n');
    Ok(())
}

/// Section 3: seed-CNN training speed.
fn training_section(args: &Args, python: Option<&PathBuf>, report: &mut String) -> Result<()> {
    let cfg = catsdogs_model::seed_cnn::Config { batch_norm: true, ..Default::default() };
    let ours = catsdogs_train::seed_cnn::training_speed(&cfg, 32, args.train_secs)?;
    eprintln!("training: candle {ours:.1} img/s");
    writeln!(
        report,
        "## 3. Training the seed architecture\n\nFull training steps (forward with dropout, loss, backward, \
         optimiser) at batch 32 on random 128x128 images for {} s, {} threads. catsdogs trains with batch \
         normalisation after each convolution (folded away when saved); Keras and PyTorch run the seed's plain \
         network.\n\n| engine | img/s | catsdogs / engine |\n|---|---|---|\n| catsdogs (candle) | {ours:.1} | 1.00x |",
        args.train_secs, args.threads
    )?;
    if let Some(py) = python {
        for engine in ["keras", "pytorch"] {
            let (img_s, version) = reference::training(py, engine, args.threads, args.train_secs)?;
            writeln!(report, "| {version} | {img_s:.1} | {} |", ratio(ours, img_s))?;
        }
    }
    report.push('\n');
    Ok(())
}

/// Section 4: phone-size photos.
async fn sizes_section(args: &Args, python: Option<&PathBuf>, report: &mut String) -> Result<()> {
    if args.sizes.is_empty() {
        return Ok(());
    }
    let small = serve::load_photos(&args.photos, args.size_per_class)?;
    let model = forward::load(&args.size_model, args.threads)?;
    let forward = forward::catsdogs_backend(&model, args.forward_secs)?;
    drop(model);
    let seed_model = args.models.iter().find(|m| m.ends_with("seed-cnn")).map(PathBuf::as_path);
    let a = sizes::SizesArgs {
        catsdogs: &args.catsdogs,
        model: &args.size_model,
        seed_model,
        python,
        classes: &args.sizes,
        clients: &args.size_clients,
        secs: args.secs,
        max_batch: args.max_batch,
        model_img_s: forward.batch32_img_s,
        model_batch1_ms: forward.batch1_median_ms,
    };
    sizes::section(&a, &small, report).await
}

#[tokio::main]
async fn main() -> Result<()> {
    // The same allocator settings as the `catsdogs` binary, so the training row measures
    // what `catsdogs train` runs at.
    catsdogs_core::tune_allocator();
    let args = Args::parse();
    let python = if args.no_reference { None } else { Some(reference::python()?) };
    let mut report = format!(
        "# catsdogs benchmark\n\nMachine: {}. One run of `catsdogs-bench`; every ratio compares measurements \
         taken in this run on this machine.\n\n",
        machine()
    );
    let only = [
        args.only_sizes,
        args.only_warmup,
        args.only_steady,
        args.only_scale,
        args.only_explain,
        args.only_drift,
        args.only_tracing,
    ];
    let all = !only.contains(&true);
    if all {
        forward_section(&args, python.as_ref(), &mut report)?;
        e2e_section(&args, python.as_ref(), &mut report).await?;
        training_section(&args, python.as_ref(), &mut report)?;
    }
    if all || args.only_sizes {
        sizes_section(&args, python.as_ref(), &mut report).await?;
    }
    let (exe, model, max_batch) = (&args.catsdogs, &args.size_model, args.max_batch);
    if all || args.only_warmup {
        let photos = serve::load_photos(&args.photos, 5)?;
        warmup::section(exe, model, max_batch, &photos, args.warmup_restarts, &mut report).await?;
    }
    if all || args.only_steady {
        let photos = serve::load_photos(&args.photos, args.size_per_class)?;
        steady::section(exe, model, max_batch, &photos, args.steady_secs, &mut report).await?;
    }
    if all || args.only_scale {
        scale::section(exe, model, args.scale_rows, &mut report).await?;
    }
    if all || args.only_explain {
        let photos = serve::load_photos(&args.photos, 2)?;
        let counts = explain::Counts { requests: args.explain_requests, rounds: args.explain_rounds };
        explain::section(exe, &args.models, model, args.threads, counts, &photos, &mut report).await?;
    }
    if all || args.only_drift {
        drift::section(exe, model, args.drift_rows, &mut report).await?;
    }
    if all || args.only_tracing {
        let photos = serve::load_photos(&args.photos, args.size_per_class)?;
        let counts =
            tracing_cost::Counts { requests: args.tracing_requests, clients: args.tracing_clients, secs: args.secs };
        tracing_cost::section(exe, model, max_batch, counts, &photos, &mut report).await?;
    }
    println!("{report}");
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, &report).with_context(|| format!("cannot write {}", args.out.display()))?;
    Ok(())
}
