//! Section 5: the first request after a start and after a model reload, against the
//! requests that follow, over fresh server processes.
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::serve::{self, Api, Photo, Server, TOKEN, median};

/// Requests timed after the first one, for the steady-state median.
const FOLLOWING: usize = 9;

/// Milliseconds of one prediction on `server`.
async fn timed_predict(c: &reqwest::Client, server: &Server, photo: &Photo) -> Result<f64> {
    let t = Instant::now();
    serve::predict(c, &server.base, Api::Catsdogs, photo).await?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// The first request's time and the median of the [`FOLLOWING`] ones (ms).
async fn first_and_steady(c: &reqwest::Client, server: &Server, photos: &[Photo]) -> Result<(f64, f64)> {
    let first = timed_predict(c, server, &photos[0]).await?;
    let mut rest = Vec::with_capacity(FOLLOWING);
    for photo in photos.iter().cycle().skip(1).take(FOLLOWING) {
        rest.push(timed_predict(c, server, photo).await?);
    }
    Ok((first, median(&mut rest)))
}

/// Runs `restarts` fresh servers of `model`: each is ready (`GET /api/health` = 200) before
/// its first request is timed; then `POST /api/admin/model/reload` and the first request
/// after it. Appends the table to `report`.
pub async fn section(
    exe: &Path,
    model: &Path,
    max_batch: usize,
    photos: &[Photo],
    restarts: usize,
    report: &mut String,
) -> Result<()> {
    if photos.is_empty() || restarts == 0 {
        return Ok(());
    }
    let c = reqwest::Client::new();
    let (mut start_first, mut start_steady, mut reload_first, mut reload_steady, mut ready_ms) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..restarts {
        let t = Instant::now();
        let server = Server::catsdogs_ready(exe, model, max_batch).await?;
        ready_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let (first, steady) = first_and_steady(&c, &server, photos).await?;
        start_first.push(first);
        start_steady.push(steady);
        let reload = c.post(format!("{}/api/admin/model/reload", server.base)).bearer_auth(TOKEN).send().await?;
        if !reload.status().is_success() {
            bail!("reload answered {}", reload.status());
        }
        let (first, steady) = first_and_steady(&c, &server, photos).await?;
        reload_first.push(first);
        reload_steady.push(steady);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writeln!(
        report,
        "## 5. Warm-up\n\n{restarts} fresh `catsdogs serve` processes on {} (`--max-batch {max_batch}`), each timed \
         from exec to ready (`GET /api/health` answers 200), then one client: the first request, the median of \
         the {FOLLOWING} after it; then `POST /api/admin/model/reload` and the same again. Medians over the \
         restarts, small photos from the shared folder.\n\n| moment | ready after ms | first request ms | \
         following requests ms | first / following |\n|---|---|---|---|---|",
        model.display()
    )?;
    let (sf, ss, rf, rs) =
        (median(&mut start_first), median(&mut start_steady), median(&mut reload_first), median(&mut reload_steady));
    writeln!(report, "| after start | {:.0} | {sf:.1} | {ss:.1} | {:.2}x |", median(&mut ready_ms), sf / ss)?;
    writeln!(report, "| after reload | | {rf:.1} | {rs:.1} | {:.2}x |\n", rf / rs)?;
    eprintln!("warm-up: start first {sf:.1} ms / steady {ss:.1} ms; reload first {rf:.1} ms / steady {rs:.1} ms");
    Ok(())
}
