//! Section 9: the drift report at its largest window. A SQLite database with N successful
//! predictions of today (10,000 by default, the most `?last=` accepts) whose drift signals
//! are drawn from the served model's own reference (embeddings jittered), then `catsdogs
//! serve` on it: the time of `GET /api/metrics/drift?last=1000`, `?last=N` and today's
//! report (the hourly check's work). Target: under 1 s. Then the dashboard, whose drift
//! table covers 30 days: the 29 days before today get 2,000 predictions each (the most a
//! day's row compares), and the first view (every day computed) is timed against later
//! ones (closed days reused).
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use catsdogs_model::drift::{InputProperties, REFERENCE_FILE, ReferenceStats};
use catsdogs_store::{DriftSignals, PredictionRecord, PredictionStatus, Store, StoreOptions};
use rand::{Rng, SeedableRng};

use crate::scale::time_route;
use crate::serve::Server;

/// Predictions of each day before today, for the dashboard's 30-day drift table.
const PAST_DAY_ROWS: usize = 2_000;
const PAST_DAYS: usize = 29;

/// Fills `url` with `rows` predictions of today and [`PAST_DAY_ROWS`] of each of the
/// [`PAST_DAYS`] days before, shaped like the reference's photos.
async fn fill(url: &str, reference: &ReferenceStats, rows: usize) -> Result<()> {
    let store = Store::open(url, &StoreOptions::default())?;
    store.migrate().await.context("migrate")?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let now = chrono::Utc::now();
    let days = (0..rows).map(|i| (0, i)).chain((1..=PAST_DAYS).flat_map(|d| (0..PAST_DAY_ROWS).map(move |i| (d, i))));
    for (day, i) in days {
        let created_at = now - chrono::Duration::days(day as i64) - chrono::Duration::milliseconds(i as i64);
        let k = rng.random_range(0..reference.p_dog.len());
        let e = &reference.embeddings[i % reference.embeddings.len()];
        let column = |c: usize| reference.properties[c][k % reference.properties[c].len()];
        let p_dog = f64::from(reference.p_dog[k]);
        let record = PredictionRecord {
            id: catsdogs_store::PredictionId::new().to_string(),
            created_at,
            model_version: reference.model_version.clone(),
            status: PredictionStatus::Ok,
            label: Some(catsdogs_model::Label::from_p_dog(p_dog as f32)),
            p_dog: Some(p_dog),
            latency_ms: 10.0,
            error_code: None,
            file_ref: None,
            image_ref: None,
            owner: None,
            signals: Some(DriftSignals {
                embedding: Some(e.iter().map(|v| v + rng.random_range(-0.01..0.01)).collect()),
                properties: InputProperties {
                    brightness: column(0),
                    contrast: column(1),
                    saturation: column(2),
                    width: column(3) as u32,
                    height: column(4) as u32,
                },
                is_cat_or_dog: Some(rng.random_range(0.0..1.0) > 0.01),
            }),
        };
        store.insert_prediction(&record).await?;
    }
    store.close().await;
    Ok(())
}

/// Appends section 9 to `report`.
pub async fn section(exe: &Path, model: &Path, rows: usize, report: &mut String) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let text = std::fs::read_to_string(model.join(REFERENCE_FILE)).context("the model has no reference.json")?;
    let reference: ReferenceStats = serde_json::from_str(&text)?;
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("drift.db").display());
    fill(&url, &reference, rows).await?;
    let server = Server::catsdogs_on_database(exe, model, dir.path(), &url).await?;
    let client = reqwest::Client::new();
    writeln!(
        report,
        "## 9. The drift report\n\nSQLite with {rows} predictions of today carrying drift signals shaped like the \
         reference of {} (embeddings jittered); `catsdogs serve` on it; median of 5 requests after one untimed. \
         Each report compares at most 500 embeddings (1,000 permutations) and every P(dog) and property.\n\n\
         | request | ms |\n|---|---|",
        model.display()
    )?;
    let small = rows.min(1000);
    for (label, path) in [
        (format!("`?last={small}`"), format!("/api/metrics/drift?last={small}")),
        (format!("`?last={rows}`"), format!("/api/metrics/drift?last={rows}")),
        ("today (the hourly check)".to_string(), "/api/metrics/drift".to_string()),
    ] {
        let ms = time_route(&client, &server.base, &path, true).await?;
        writeln!(report, "| {label} | {ms:.0} |")?;
        eprintln!("drift {label}: {ms:.0} ms");
    }
    let operator = crate::scale::operator(&server.base).await?;
    let started = std::time::Instant::now();
    let first = operator.get(format!("{}/dashboard?days=30", server.base)).send().await?;
    let ok = first.status().is_success();
    let _ = first.bytes().await?;
    let first_ms = started.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(ok, "the dashboard did not answer 200");
    let later_ms = time_route(&operator, &server.base, "/dashboard?days=30", false).await?;
    writeln!(
        report,
        "| dashboard, 30 days (first view: every day's drift computed) | {first_ms:.0} |\n\
         | dashboard, 30 days (later views: closed days reused) | {later_ms:.0} |\n\n\
         The dashboard rows: today's {rows} predictions and {PAST_DAY_ROWS} on each of the {PAST_DAYS} days \
         before (a day's drift compares its newest 2,000, 300 embeddings, 400 permutations)."
    )?;
    eprintln!("dashboard: first {first_ms:.0} ms, later {later_ms:.0} ms");
    writeln!(report)?;
    Ok(())
}
