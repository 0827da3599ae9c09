//! Section 6: does the server's memory settle? A long loopback run whose client count
//! (1-64) and photo size (small, 1 MP, 12 MP) change at random every phase, sampling the
//! server's resident memory after each phase.
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::serve::{self, Photo, Server};
use crate::sizes::{self, SizeClass};

/// Seconds of one phase (one client count, one photo size), its 1 s warm-up included.
const PHASE_SECS: f64 = 9.0;
/// The "after the first minute" reference point.
const FIRST_MINUTE_SECS: f64 = 60.0;

/// What the run found.
struct Run {
    /// (seconds since the start, resident MiB) after each phase.
    samples: Vec<(f64, f64)>,
    rate_64_small: f64,
    rate_64_12mp: f64,
}

impl Server {
    /// Resident memory of the server now (VmRSS), in MiB.
    fn rss_mib(&self) -> f64 {
        self.status_kib("VmRSS:") / 1024.0
    }
}

/// Runs `secs` of random phases against a fresh `catsdogs serve` on `model`, then one
/// phase of 64 clients on small and on 12 MP photos for the throughput.
pub async fn section(
    exe: &Path,
    model: &Path,
    max_batch: usize,
    small: &[Photo],
    secs: f64,
    report: &mut String,
) -> Result<()> {
    if secs <= 0.0 || small.is_empty() {
        return Ok(());
    }
    let classes = [SizeClass::Small, SizeClass::OneMp, SizeClass::TwelveMp];
    let mut photos = Vec::new();
    for class in classes {
        photos.push(Arc::new(sizes::photos_of(small, class)?));
    }
    let server = Server::catsdogs(exe, model, max_batch, &photos[0][0]).await?;
    let run = drive(&server, &photos, secs).await;
    let first_minute = run.samples.iter().find(|(t, _)| *t >= FIRST_MINUTE_SECS).or(run.samples.first()).map(|s| s.1);
    let end = run.samples.last().map(|s| s.1);
    let peak = run.samples.iter().map(|s| s.1).fold(f64::NAN, f64::max);
    let (Some(first_minute), Some(end)) = (first_minute, end) else { return Ok(()) };
    writeln!(
        report,
        "## 6. Steady memory\n\n{secs:.0} s against one `catsdogs serve` on {} (`--max-batch {max_batch}`): phases of \
         {PHASE_SECS:.0} s, each with a random client count (1-64) and photo size (small, 1 MP, 12 MP; seeded), \
         the server's resident memory (VmRSS) read after each phase; then 64 clients on small and on 12 MP \
         photos for the throughput.\n\n| phases | RSS after the first minute MiB | RSS at the end MiB | end / first \
         minute | highest RSS MiB | peak (VmHWM) MiB | 64 clients small req/s | 64 clients 12 MP req/s |\n\
         |---|---|---|---|---|---|---|---|\n| {} | {first_minute:.0} | {end:.0} | {:.2}x | {peak:.0} | {:.0} | \
         {:.1} | {:.1} |\n\nRSS after each phase (s: MiB): {}\n",
        model.display(),
        run.samples.len(),
        end / first_minute,
        server.peak_rss_mib(),
        run.rate_64_small,
        run.rate_64_12mp,
        run.samples.iter().map(|(t, m)| format!("{t:.0}: {m:.0}")).collect::<Vec<_>>().join(", "),
    )?;
    eprintln!("steady memory: first minute {first_minute:.0} MiB, end {end:.0} MiB, highest {peak:.0} MiB");
    Ok(())
}

async fn drive(server: &Server, photos: &[Arc<Vec<Photo>>], secs: f64) -> Run {
    let mut rng = StdRng::seed_from_u64(24);
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed().as_secs_f64() < secs {
        let clients = rng.random_range(1..=64);
        let class = rng.random_range(0..photos.len());
        serve::measure(server, &photos[class], clients, PHASE_SECS - 1.0).await;
        samples.push((started.elapsed().as_secs_f64(), server.rss_mib()));
    }
    let rate_64_small = serve::measure(server, &photos[0], 64, PHASE_SECS - 1.0).await.rate();
    let rate_64_12mp = serve::measure(server, &photos[photos.len() - 1], 64, PHASE_SECS - 1.0).await.rate();
    Run { samples, rate_64_small, rate_64_12mp }
}
