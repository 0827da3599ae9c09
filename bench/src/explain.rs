//! Section 8: what explanations cost.
//! (a) The model forward of each shipped graph against the same graph without its
//!     `logit_map` and `embedding` outputs (ONNX Runtime prunes the nodes no output needs:
//!     the graph as it was before they were added), batch 1 and batch 8, interleaved.
//! (b) `POST /api/predict` with `explain=true` against without, on one `catsdogs serve`,
//!     alternating, one client, on small, 1 MP and 12 MP photos.
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use catsdogs_core::LoadedModel;

use crate::forward::{load, random_images};
use crate::serve::{Photo, Server, TOKEN, median, second_side};
use crate::sizes::{SizeClass, photos_of};

/// How much section 8 measures.
#[derive(Clone, Copy)]
pub struct Counts {
    /// Requests of (b) per photo size and mode (0 skips the section).
    pub requests: usize,
    /// Rounds of (a): each times one forward of each graph, in turn.
    pub rounds: usize,
}

/// The model in `dir` with its optional outputs removed, in a temporary directory.
fn without_outputs(dir: &Path, threads: usize) -> Result<(LoadedModel, tempfile::TempDir)> {
    let model = load(dir, threads)?;
    let tmp = tempfile::tempdir()?;
    let graph = std::fs::read(dir.join(model.card.onnx.as_deref().context("no ONNX graph")?))?;
    std::fs::write(
        tmp.path().join("model.onnx"),
        catsdogs_model::onnx::keep_outputs(&graph, &["p_dog", "imagenet_logits"])?,
    )?;
    let mut card = model.card.clone();
    card.outputs.clear();
    card.onnx = Some("model.onnx".into());
    card.save(&tmp.path().join("model.json"))?;
    Ok((load(tmp.path(), threads)?, tmp))
}

/// Median ms of a batch-`n` forward: (with the outputs, without them).
fn forward_pair(with: &LoadedModel, without: &LoadedModel, n: usize, rounds: usize) -> Result<(f64, f64)> {
    let images = random_images(n, with.preprocess_config().size, 7);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        with.predict_images(&images)?;
        without.predict_images(&images)?;
    }
    for round in 0..rounds.max(1) {
        // Alternate which goes first, so drift in the machine's speed hits both alike.
        for first in [round % 2 == 0, round % 2 == 1] {
            let (model, out) = if first { (with, &mut a) } else { (without, &mut b) };
            let t = Instant::now();
            model.predict_images(&images)?;
            out.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok((median(&mut a), median(&mut b)))
}

/// One request; returns (ms, response bytes).
async fn timed(c: &reqwest::Client, base: &str, photo: &Photo, explain: bool) -> Result<(f64, usize)> {
    let part = reqwest::multipart::Part::bytes(photo.bytes.clone()).file_name("photo.jpg").mime_str("image/jpeg")?;
    let mut form = reqwest::multipart::Form::new().part("file", part);
    if explain {
        form = form.text("explain", "true");
    }
    let t = Instant::now();
    let r = c.post(format!("{base}/api/predict")).bearer_auth(TOKEN).multipart(form).send().await?;
    if !r.status().is_success() {
        bail!("status {}", r.status());
    }
    let body = r.bytes().await?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    if explain != v.get("explanation").is_some() {
        bail!("explain={explain} but the answer {} an explanation", if explain { "has no" } else { "has" });
    }
    Ok((ms, body.len()))
}

/// Appends section 8 to `report`.
pub async fn section(
    exe: &Path,
    models: &[std::path::PathBuf],
    size_model: &Path,
    threads: usize,
    Counts { requests, rounds }: Counts,
    small: &[Photo],
    report: &mut String,
) -> Result<()> {
    if requests == 0 || small.is_empty() {
        return Ok(());
    }
    writeln!(
        report,
        "## 8. What explanations cost\n\nForward: each shipped graph against the same graph with its `logit_map` \
         and `embedding` outputs removed (ONNX Runtime prunes what no output needs: the graph before issue 29), \
         {threads} threads, seeded random images, {rounds} interleaved rounds, medians.\n\n| model | batch | \
         with outputs ms | without ms | cost |\n|---|---|---|---|---|"
    )?;
    for dir in models {
        let with = load(dir, threads)?;
        let (without, _tmp) = without_outputs(dir, threads)?;
        for n in [1, 8] {
            let (a, b) = forward_pair(&with, &without, n, rounds)?;
            let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("model");
            writeln!(report, "| {name} | {n} | {a:.2} | {b:.2} | {:+.1} % |", (a / b - 1.0) * 100.0)?;
            eprintln!("explain forward {name} batch {n}: {a:.2} ms with outputs, {b:.2} without");
        }
    }
    let server = Server::catsdogs_ready(exe, size_model, 8).await?;
    let c = reqwest::Client::new();
    writeln!(
        report,
        "\n`POST /api/predict` on {} (one server, one client, requests in pairs on the same photo, \
         with and without `explain=true` in alternating order, {requests} of each per size, medians):\n\n| photos | without ms | with explain ms | cost | \
         answer bytes without / with |\n|---|---|---|---|---|",
        size_model.display()
    )?;
    for class in [SizeClass::Small, SizeClass::OneMp, SizeClass::TwelveMp] {
        let photos = photos_of(&small[..small.len().min(4)], class)?;
        let (mut on, mut off, mut bytes) = (Vec::new(), Vec::new(), (0, 0));
        for i in 0..requests * 2 + 2 {
            let photo = &photos[(i / 2) % photos.len()];
            let explain = second_side(i);
            let (ms, len) = timed(&c, &server.base, photo, explain).await?;
            if i < 2 {
                continue; // one warm-up pair per size
            }
            if explain {
                on.push(ms);
                bytes.1 = len;
            } else {
                off.push(ms);
                bytes.0 = len;
            }
        }
        let (a, b) = (median(&mut off), median(&mut on));
        writeln!(
            report,
            "| {} | {a:.1} | {b:.1} | {:+.1} % | {} / {} |",
            class.name(),
            (b / a - 1.0) * 100.0,
            bytes.0,
            bytes.1
        )?;
        eprintln!("explain e2e {}: {a:.1} ms without, {b:.1} ms with", class.name());
    }
    writeln!(report)?;
    Ok(())
}
