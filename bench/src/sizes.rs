//! Phone-size photos: the shared photos as they are (small), upscaled to ~1 MP and to 12 MP
//! JPEGs with a little noise (so the files have a phone photo's size), each posted by 1, 16
//! and 64 clients to catsdogs, to the LitServe + ONNX Runtime peer serving the same graph,
//! and to the seed service; with the decode time of each class and the ceiling it implies.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use catsdogs_model::preprocess;

use crate::ratio;
use crate::serve::{self, Cell, Photo, Server};

/// A photo-size class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeClass {
    /// The shared photos as they are (~180 px, ~6 KB).
    Small,
    /// 1152 x 864 (1 megapixel).
    OneMp,
    /// 4032 x 3024 (a 12-megapixel phone photo).
    TwelveMp,
}

impl std::str::FromStr for SizeClass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "small" => Ok(Self::Small),
            "1mp" => Ok(Self::OneMp),
            "12mp" => Ok(Self::TwelveMp),
            other => Err(format!("unknown size class {other:?}: small, 1mp or 12mp")),
        }
    }
}

impl SizeClass {
    pub fn name(self) -> &'static str {
        match self {
            Self::Small => "small (shared photos)",
            Self::OneMp => "1 MP JPEG",
            Self::TwelveMp => "12 MP JPEG",
        }
    }

    fn size(self) -> Option<(u32, u32)> {
        match self {
            Self::Small => None,
            Self::OneMp => Some((1152, 864)),
            Self::TwelveMp => Some((4032, 3024)),
        }
    }
}

/// The photos of a class.
pub fn photos_of(small: &[Photo], class: SizeClass) -> Result<Vec<Photo>> {
    let Some(size) = class.size() else {
        return Ok(small.iter().map(|p| Photo { bytes: p.bytes.clone(), label: p.label }).collect());
    };
    small
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let rgb = preprocess::decode_rgb(&p.bytes, u64::MAX).context("a shared photo does not decode")?;
            let bytes = catsdogs_model::testing::upscaled_jpeg(&rgb, size, i as u32 + 1).map_err(anyhow::Error::msg)?;
            Ok(Photo { bytes, label: p.label })
        })
        .collect()
}

/// Median milliseconds of `f` over the photos (one thread).
fn median_ms(photos: &[Photo], f: impl Fn(&[u8])) -> f64 {
    let mut t: Vec<f64> = photos
        .iter()
        .map(|p| {
            let s = Instant::now();
            f(&p.bytes);
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// What decoding a class costs on one core: the decode catsdogs does (DCT-scaled for
/// JPEGs) and a full-size decode, in milliseconds.
fn decode_costs(photos: &[Photo], model: &Path) -> Result<(f64, f64)> {
    let cfg = crate::forward::load(model, 1)?.preprocess_config();
    let scaled = median_ms(photos, |b| {
        let _ = preprocess::preprocess(b, &cfg);
    });
    let full = median_ms(photos, |b| {
        let _ = preprocess::decode_rgb(b, cfg.max_pixels).and_then(|rgb| preprocess::preprocess_pixels(&rgb, &cfg));
    });
    Ok((scaled, full))
}

/// The servers compared on each class.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Peer {
    Catsdogs,
    LitServe,
    Seed,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Self::Catsdogs => "catsdogs",
            Self::LitServe => "LitServe + ONNX Runtime peer",
            Self::Seed => "seed service (FastAPI + Keras)",
        }
    }
}

/// Settings of the section.
pub struct SizesArgs<'a> {
    pub catsdogs: &'a Path,
    pub model: &'a Path,
    pub seed_model: Option<&'a Path>,
    pub python: Option<&'a PathBuf>,
    pub classes: &'a [SizeClass],
    pub clients: &'a [usize],
    pub secs: f64,
    pub max_batch: usize,
    /// Images/s of the model alone at batch 32 on all cores (section 1's figure).
    pub model_img_s: f64,
    /// Median batch-1 forward time of the model alone (ms), for the one-client budget.
    pub model_batch1_ms: f64,
}

/// What one lone request may cost beyond decoding and a batch-1 forward pass (issue 24's
/// target: HTTP, multipart, storage and the answer within 3 ms).
const LONE_REQUEST_OVERHEAD_MS: f64 = 3.0;

/// Section 4: phone-size photos.
pub async fn section(a: &SizesArgs<'_>, small: &[Photo], report: &mut String) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    let forward_core_ms = cores * 1000.0 / a.model_img_s;
    writeln!(
        report,
        "## 4. Phone-size photos\n\n{} shared photos as they are, upscaled to 1152x864 and to 4032x3024 (bilinear, \
         noise of +-8 so the JPEGs have a phone photo's size, quality 90). {} s per row after 1 s of warm-up; a \
         fresh server per class (peak RSS per class, LitServe's worker processes included). catsdogs serves {} \
         (`--max-batch {}`); the LitServe peer (bench/reference/litserve_peer.py) serves the same model.onnx with \
         2 workers of one ONNX Runtime thread, batches of 8 within 2 ms and PIL's `draft` (libjpeg-turbo DCT \
         scaling); the seed service serves the seed CNN. Decode: median ms on one core of the decode + resize \
         catsdogs does, and of a full-size decode. Ceiling = {cores:.0} cores x 1000 / (decode + model core-ms \
         per image); the model alone: {:.1} img/s at batch 32 = {forward_core_ms:.1} core-ms per image, batch-1 \
         median {:.1} ms. One-client budget = decode + batch-1 forward + {LONE_REQUEST_OVERHEAD_MS} ms: what a lone \
         request may take.\n",
        small.len(),
        a.secs,
        a.model.display(),
        a.max_batch,
        a.model_img_s,
        a.model_batch1_ms
    )?;
    report.push_str(
        "| photos | mean KiB | decode ms | full decode ms | ceiling req/s | one-client budget ms | server | clients | req/s | % of ceiling | p50 ms | p99 ms | errors | peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut cells: Vec<(SizeClass, Peer, usize, Cell)> = Vec::new();
    for &class in a.classes {
        let photos = Arc::new(photos_of(small, class)?);
        let kib = photos.iter().map(|p| p.bytes.len() as f64).sum::<f64>() / photos.len() as f64 / 1024.0;
        let (decode_ms, full_ms) = decode_costs(&photos, a.model)?;
        let ceiling = cores * 1000.0 / (decode_ms + forward_core_ms);
        let budget = decode_ms + a.model_batch1_ms + LONE_REQUEST_OVERHEAD_MS;
        let mut peers = vec![(Peer::Catsdogs, a.model)];
        if a.python.is_some() {
            peers.push((Peer::LitServe, a.model));
            if let Some(seed) = a.seed_model {
                peers.push((Peer::Seed, seed));
            }
        }
        for (peer, model) in peers {
            let server = match (peer, a.python) {
                (Peer::Catsdogs, _) => Server::catsdogs(a.catsdogs, model, a.max_batch, &photos[0]).await?,
                (Peer::LitServe, Some(py)) => Server::litserve_peer(py, model, &photos[0]).await?,
                (Peer::Seed, Some(py)) => Server::seed_reference(py, model, &photos[0]).await?,
                _ => continue,
            };
            for &clients in a.clients {
                let cell = serve::measure(&server, &photos, clients, a.secs).await;
                let of_ceiling =
                    if peer == Peer::Seed { String::new() } else { format!("{:.0} %", 100.0 * cell.rate() / ceiling) };
                let line = format!(
                    "| {} | {kib:.0} | {decode_ms:.1} | {full_ms:.1} | {ceiling:.0} | {budget:.1} | {} | {clients} | {:.1} | {of_ceiling} | {:.1} | {:.1} | {} | {:.0} |\n",
                    class.name(),
                    peer.name(),
                    cell.rate(),
                    cell.p50_ms,
                    cell.p99_ms,
                    cell.errors,
                    server.peak_rss_tree_mib(),
                );
                eprint!("{line}");
                report.push_str(&line);
                cells.push((class, peer, clients, cell));
            }
        }
    }
    report.push_str(
        "\nRatios at the same photos and concurrency (catsdogs / peer req/s; p50 latency peer / catsdogs):\n\n| photos | clients | req/s vs LitServe | p50 vs LitServe | req/s vs seed | p50 vs seed |\n|---|---|---|---|---|---|\n",
    );
    let find = |class, peer, clients| {
        cells.iter().find(|(c, p, n, _)| *c == class && *p == peer && *n == clients).map(|x| &x.3)
    };
    for &class in a.classes {
        for &clients in a.clients {
            let Some(ours) = find(class, Peer::Catsdogs, clients) else { continue };
            let lit = find(class, Peer::LitServe, clients);
            let seed = find(class, Peer::Seed, clients);
            writeln!(
                report,
                "| {} | {clients} | {} | {} | {} | {} |",
                class.name(),
                lit.map_or("n/a".into(), |l| ratio(ours.rate(), l.rate())),
                lit.map_or("n/a".into(), |l| ratio(l.p50_ms, ours.p50_ms)),
                seed.map_or("n/a".into(), |s| ratio(ours.rate(), s.rate())),
                seed.map_or("n/a".into(), |s| ratio(s.p50_ms, ours.p50_ms)),
            )?;
        }
    }
    report.push('\n');
    Ok(())
}
