//! Section 7: the monitoring routes at scale. A database filled with N prediction rows
//! (1,000,000 by default) spread evenly over 180 days, a tenth of them with feedback, on
//! SQLite and on PostgreSQL (a throw-away cluster, when its binaries are installed); then
//! `catsdogs serve` on it: the time of `/api/metrics/daily` (30 days), `/api/metrics/7d`
//! and the operator dashboard, the server's resident memory against the same server on an
//! empty database, and the time of one purge (`catsdogs db purge` taking one day of rows).
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use catsdogs_store::{Store, StoreOptions};
use sqlx::Executor;

use crate::serve::{Server, TOKEN};

/// Days the rows are spread over (the default retention of predictions).
const DAYS: i64 = 180;
/// Timed requests per route (after one untimed).
const REPEATS: usize = 5;

/// The two databases.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Db {
    Sqlite,
    Postgres,
}

impl Db {
    fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "SQLite",
            Self::Postgres => "PostgreSQL",
        }
    }
}

/// Fills `url` with `rows` predictions ending now, generated inside the database (no
/// per-row round trip), and feedback on a tenth of them.
async fn fill(db: Db, url: &str, rows: u64) -> Result<Duration> {
    let store = Store::open(url, &StoreOptions::default())?;
    store.migrate().await.context("migrate")?;
    store.close().await;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await?;
    let started = Instant::now();
    let now = chrono::Utc::now().timestamp_millis();
    let step = DAYS * 86_400_000 / i64::try_from(rows.max(1))?;
    // Every 50th row is an error; latencies 5-205 ms; P(dog) in thousandths.
    let columns = "id, created_at_ms, day, model_version, status, label, p_dog, latency_ms, error_code, file_ref";
    let sql = match db {
        Db::Sqlite => format!(
            "WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i + 1 < {rows}) \
             INSERT INTO predictions ({columns}) SELECT printf('00000000-0000-4000-8000-%012d', i), \
             {now} - i * {step}, strftime('%Y-%m-%d', ({now} - i * {step}) / 1000, 'unixepoch'), 'bench', \
             CASE WHEN i % 50 = 0 THEN 'error' ELSE 'ok' END, \
             CASE WHEN i % 50 = 0 THEN NULL WHEN i % 2 = 0 THEN 'cat' ELSE 'dog' END, \
             CASE WHEN i % 50 = 0 THEN NULL ELSE (abs(random()) % 1001) / 1000.0 END, \
             5 + (abs(random()) % 20000) / 100.0, CASE WHEN i % 50 = 0 THEN 'corrupt_image' END, \
             printf('upload-%016x.jpg', i) FROM seq"
        ),
        Db::Postgres => format!(
            "INSERT INTO predictions ({columns}) SELECT '00000000-0000-4000-8000-' || lpad(i::text, 12, '0'), \
             {now} - i * {step}::bigint, \
             to_char(to_timestamp(({now} - i * {step}::bigint) / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD'), 'bench', \
             CASE WHEN i % 50 = 0 THEN 'error' ELSE 'ok' END, \
             CASE WHEN i % 50 = 0 THEN NULL WHEN i % 2 = 0 THEN 'cat' ELSE 'dog' END, \
             CASE WHEN i % 50 = 0 THEN NULL ELSE floor(random() * 1001) / 1000.0 END, \
             5 + floor(random() * 20000) / 100.0, CASE WHEN i % 50 = 0 THEN 'corrupt_image' END, \
             'upload-' || lpad(to_hex(i), 16, '0') || '.jpg' FROM generate_series(0, {rows} - 1) AS i"
        ),
    };
    pool.execute(sql.as_str()).await.context("fill predictions")?;
    let positive = match db {
        Db::Sqlite => "(abs(random()) % 10) < 8",
        Db::Postgres => "random() < 0.8",
    };
    let feedback = format!(
        "INSERT INTO feedback (id, prediction_id, created_at_ms, day, positive, p_dog, source) \
         SELECT 'fb-' || id, id, created_at_ms, day, {positive}, p_dog, 'v2' FROM predictions \
         WHERE status = 'ok' AND CAST(substr(id, 25) AS BIGINT) % 10 = 1"
    );
    pool.execute(feedback.as_str()).await.context("fill feedback")?;
    let analyse = match db {
        Db::Sqlite => "ANALYZE",
        Db::Postgres => "VACUUM ANALYZE",
    };
    pool.execute(analyse).await?;
    pool.close().await;
    Ok(started.elapsed())
}

/// Median time of `REPEATS` requests of `path` (after one untimed), and the last status.
pub async fn time_route(client: &reqwest::Client, base: &str, path: &str, bearer: bool) -> Result<f64> {
    let mut times = Vec::with_capacity(REPEATS);
    for i in 0..=REPEATS {
        let mut req = client.get(format!("{base}{path}"));
        if bearer {
            req = req.bearer_auth(TOKEN);
        }
        let started = Instant::now();
        let r = req.send().await?;
        let status = r.status();
        let _ = r.bytes().await?;
        if !status.is_success() {
            bail!("GET {path}: {status}");
        }
        if i > 0 {
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// A client signed in as operator (session cookie), for the dashboard.
pub async fn operator(base: &str) -> Result<reqwest::Client> {
    let client = reqwest::Client::builder().cookie_store(true).build()?;
    let page = client.get(format!("{base}/login")).send().await?.text().await?;
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("no CSRF token on the sign-in page")?
        .to_string();
    let r = client
        .post(format!("{base}/login"))
        .form(&[("csrf", csrf.as_str()), ("token", TOKEN), ("next", "/dashboard")])
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("sign-in: {}", r.status());
    }
    Ok(client)
}

/// One database's row of the table.
struct Row {
    db: Db,
    fill_s: f64,
    daily_ms: f64,
    window_ms: f64,
    dashboard_ms: f64,
    purge_s: f64,
    purged: String,
    /// Resident memory of the server on the full database, a tenth of it, and an empty one.
    rss_mib: f64,
    tenth_rss_mib: f64,
    empty_rss_mib: f64,
}

/// The routes' times and the server's memory on `url` (already filled or empty).
async fn serve_and_time(exe: &Path, model: &Path, data: &Path, url: &str) -> Result<(f64, f64, f64, f64)> {
    let server = Server::catsdogs_on_database(exe, model, data, url).await?;
    let client = reqwest::Client::new();
    let daily = time_route(&client, &server.base, "/api/metrics/daily", true).await?;
    let window = time_route(&client, &server.base, "/api/metrics/7d", true).await?;
    let dashboard = time_route(&operator(&server.base).await?, &server.base, "/dashboard", false).await?;
    // The server hands free memory back every 5 s: what stays is what it holds.
    tokio::time::sleep(Duration::from_secs(6)).await;
    Ok((daily, window, dashboard, server.status_kib("VmRSS:") / 1024.0))
}

async fn measure(db: Db, exe: &Path, model: &Path, rows: u64) -> Result<Row> {
    let dir = tempfile::tempdir()?;
    let cluster = match db {
        Db::Sqlite => None,
        Db::Postgres => Some(catsdogs_testkit::pg::PgCluster::start().map_err(anyhow::Error::msg)?),
    };
    let url_of = |name: &str| -> Result<String> {
        match &cluster {
            None => Ok(format!("sqlite://{}?mode=rwc", dir.path().join(format!("{name}.db")).display())),
            Some(c) => c.create_db(name).map_err(anyhow::Error::msg),
        }
    };
    let (empty_url, tenth_url, full_url) = (url_of("empty")?, url_of("tenth")?, url_of("full")?);
    fill(db, &empty_url, 0).await?;
    let (_, _, _, empty_rss_mib) = serve_and_time(exe, model, &dir.path().join("empty"), &empty_url).await?;
    fill(db, &tenth_url, rows / 10).await?;
    let (_, _, _, tenth_rss_mib) = serve_and_time(exe, model, &dir.path().join("tenth"), &tenth_url).await?;
    let fill_s = fill(db, &full_url, rows).await?.as_secs_f64();
    let data = dir.path().join("full");
    let (daily_ms, window_ms, dashboard_ms, rss_mib) = serve_and_time(exe, model, &data, &full_url).await?;
    // One purge: the oldest day of rows is past a 179-day retention.
    let started = Instant::now();
    let out = std::process::Command::new(exe)
        .args(["db", "--data-dir"])
        .arg(&data)
        .args(["--database-url", &full_url, "purge", "--retention-predictions-days", "179"])
        .env("LOG_LEVEL", "warn")
        .output()?;
    let purge_s = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("purge failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let purged = format!("{} predictions, {} feedback", report["predictions"], report["feedback"]);
    Ok(Row { db, fill_s, daily_ms, window_ms, dashboard_ms, purge_s, purged, rss_mib, tenth_rss_mib, empty_rss_mib })
}

/// Section 7 for both databases (PostgreSQL when it can start a cluster).
pub async fn section(exe: &Path, model: &Path, rows: u64, report: &mut String) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    writeln!(
        report,
        "## 7. Monitoring routes at scale\n\n{rows} prediction rows spread evenly over {DAYS} days (every 50th an \
         error), feedback on a tenth of them; `catsdogs serve` ({}) on that database. Median of {REPEATS} requests \
         after one; `/api/metrics/daily` covers 30 days, `/api/metrics/7d` and the dashboard 7. Resident memory \
         6 s after the requests (the server returns free memory every 5 s), against the same server on a \
         database of a tenth of the rows and on an empty one. Purge: `catsdogs db purge \
         --retention-predictions-days 179` (the oldest day of rows), process included.\n\n\
         | database | fill s | daily ms | 7d ms | dashboard ms | RSS MiB: all rows / a tenth / none | purge s (removed) |\n\
         |---|---|---|---|---|---|---|",
        model.display()
    )?;
    for db in [Db::Sqlite, Db::Postgres] {
        match measure(db, exe, model, rows).await {
            Ok(r) => writeln!(
                report,
                "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} / {:.0} / {:.0} | {:.2} ({}) |",
                r.db.name(),
                r.fill_s,
                r.daily_ms,
                r.window_ms,
                r.dashboard_ms,
                r.rss_mib,
                r.tenth_rss_mib,
                r.empty_rss_mib,
                r.purge_s,
                r.purged
            )?,
            Err(e) => writeln!(report, "| {} | not measured: {e:#} | | | | | |", db.name())?,
        }
    }
    writeln!(report)?;
    Ok(())
}
