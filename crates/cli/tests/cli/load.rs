//! Load and faults on one `catsdogs serve` process, with exact row accounting.
//!
//! Clients predict and send feedback for `CATSDOGS_LOAD_SECS` seconds (10 by default,
//! 60 in `.ci/run`); afterwards the database must hold exactly one prediction row per
//! 200 answer and one feedback row per accepted feedback, and nothing may answer 5xx
//! (apart from feedback's documented 503 while PostgreSQL is down). Then the faults:
//! `kill -9` of an SQLite-backed server under load, and PostgreSQL stopped and
//! restarted under load without restarting catsdogs (its outage lasts at least three of
//! the store's acquire timeouts, 27 s of load in all). The clients target the server on
//! loopback and stop by themselves (at their deadline, or when the server is gone).
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use catsdogs_store::StoreOptions;
use catsdogs_testkit::pg::PgCluster;
use sqlx::Row;

use crate::helpers::{Api, Refused, Server, png, shared_secrets};

/// How long each steady load runs: `CATSDOGS_LOAD_SECS` (10 by default, 3 at least).
fn load_secs() -> u64 {
    std::env::var("CATSDOGS_LOAD_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(10).max(3)
}

/// What the clients saw.
#[derive(Default, Debug)]
struct Tally {
    /// Ids of predictions answered 200.
    predictions: BTreeSet<String>,
    /// Prediction ids whose feedback was answered 200, with the verdict sent.
    feedback: BTreeMap<String, bool>,
    /// Answers by (route, status); transport failures count as status 0.
    statuses: BTreeMap<(&'static str, u16), usize>,
    /// Instants of feedback answers: (when, status).
    feedback_log: Vec<(Instant, u16)>,
}

impl Tally {
    fn count(&mut self, route: &'static str, status: u16) {
        *self.statuses.entry((route, status)).or_default() += 1;
    }

    fn server_errors(&self, allowed: &[(&str, u16)]) -> Vec<((&'static str, u16), usize)> {
        self.statuses
            .iter()
            .filter(|((route, s), _)| *s >= 500 && !allowed.contains(&(route, *s)))
            .map(|(k, n)| (*k, *n))
            .collect()
    }
}

/// `clients` loops of predict-then-feedback (every second prediction gets one) against
/// `base` until `until`, or until the server stops answering.
async fn run_load(base: &str, clients: usize, until: Instant) -> Tally {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut workers = Vec::new();
    for w in 0..clients {
        let (api, tally) = (Api::new(base), tally.clone());
        workers.push(tokio::spawn(async move {
            let mut n: u32 = 0;
            while Instant::now() < until {
                n += 1;
                let outcome = api.predict(png(w as u32 * 1000 + n % 50)).await;
                let status = outcome.as_ref().map_or_else(Refused::status, |_| 200);
                tally.lock().expect("tally").count("predict", status);
                let id = match outcome {
                    Ok(p) => p.id,
                    Err(Refused::Transport(_)) => break,
                    Err(Refused::Status(_)) => continue,
                };
                tally.lock().expect("tally").predictions.insert(id.clone());
                if n.is_multiple_of(2) {
                    continue;
                }
                let correct = !n.is_multiple_of(3);
                let outcome = api.feedback(&id, correct).await;
                let status = outcome.as_ref().map_or_else(Refused::status, |()| 200);
                let mut t = tally.lock().expect("tally");
                t.count("feedback", status);
                t.feedback_log.push((Instant::now(), status));
                if outcome.is_ok() {
                    t.feedback.insert(id, correct);
                }
                if status == 0 {
                    break;
                }
            }
        }));
    }
    for w in workers {
        w.await.expect("load worker");
    }
    Arc::try_unwrap(tally).expect("workers done").into_inner().expect("tally")
}

/// What the database holds: ok prediction ids, error rows, feedback verdicts by prediction.
struct Rows {
    ok: BTreeSet<String>,
    errors: usize,
    feedback: BTreeMap<String, bool>,
}

async fn read_rows(url: &str) -> Rows {
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(url).await.expect("open the database");
    let mut ok = BTreeSet::new();
    let mut errors = 0;
    for row in sqlx::query("SELECT id, status FROM predictions").fetch_all(&pool).await.expect("read predictions") {
        let (id, status): (String, String) = (row.get(0), row.get(1));
        if status == "ok" {
            ok.insert(id);
        } else {
            errors += 1;
        }
    }
    let mut feedback = BTreeMap::new();
    // Booleans as integers: sqlx's Any driver cannot decode SQLite's BOOLEAN.
    let sql = "SELECT prediction_id, CAST(CASE WHEN positive THEN 1 ELSE 0 END AS BIGINT) FROM feedback";
    for row in sqlx::query(sql).fetch_all(&pool).await.expect("read feedback") {
        let (id, positive): (Option<String>, i64) = (row.get(0), row.get(1));
        feedback.insert(id.unwrap_or_default(), positive == 1);
    }
    pool.close().await;
    Rows { ok, errors, feedback }
}

fn sqlite_url(data: &Path) -> String {
    format!("sqlite://{}", data.join("catsdogs.db").display())
}

fn report(name: &str, t: &Tally, secs: f64) {
    let total: usize = t.statuses.values().sum();
    eprintln!(
        "{name}: {total} requests in {secs:.0} s ({:.0} req/s), {} predictions and {} feedback acknowledged, statuses {:?}",
        total as f64 / secs,
        t.predictions.len(),
        t.feedback.len(),
        t.statuses
    );
}

/// A fresh SQLite-backed server, ready.
async fn sqlite_server(dir: &Path) -> (Server, std::path::PathBuf) {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let server = Server::start(None, &data, &shared_secrets(dir));
    server.api().wait_ready().await;
    (server, data)
}

/// Steady load: every answer accounted for, row by row.
pub async fn sqlite_rows_match_every_answer_under_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, data) = sqlite_server(dir.path()).await;
    let secs = load_secs();
    let tally = run_load(&server.base, 8, Instant::now() + Duration::from_secs(secs)).await;
    report("sqlite load", &tally, secs as f64);
    assert!(tally.server_errors(&[]).is_empty(), "5xx under load: {:?}", tally.statuses);
    assert_eq!(
        tally.statuses.keys().filter(|(_, s)| *s != 200).count(),
        0,
        "refusals under load: {:?}",
        tally.statuses
    );
    assert!(tally.predictions.len() >= 20, "too little load: {:?}", tally.statuses);
    let rows = read_rows(&sqlite_url(&data)).await;
    assert_eq!(rows.ok, tally.predictions, "prediction rows differ from the 200 answers");
    assert_eq!(rows.errors, 0);
    assert_eq!(rows.feedback, tally.feedback, "feedback rows differ from the accepted feedback");
}

/// kill -9 under load: every acknowledged write survives (SQLite in WAL mode), and the
/// restarted server works.
pub async fn sqlite_kill_9_under_load_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, data) = sqlite_server(dir.path()).await;
    let until = Instant::now() + Duration::from_secs(30);
    let base = server.base.clone();
    let load = tokio::spawn(async move { run_load(&base, 4, until).await });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    server.kill_9();
    let killed = load.await.expect("load during kill");
    report("sqlite kill -9", &killed, 2.5);
    assert!(killed.predictions.len() >= 4, "too little load before the kill: {:?}", killed.statuses);
    assert!(killed.server_errors(&[]).is_empty(), "5xx before the kill: {:?}", killed.statuses);

    let restarted = Server::start(None, &data, &shared_secrets(dir.path()));
    let api = restarted.api();
    api.wait_ready().await;
    let rows = read_rows(&sqlite_url(&data)).await;
    let missing: Vec<_> = killed.predictions.difference(&rows.ok).collect();
    assert!(missing.is_empty(), "acknowledged predictions lost by kill -9: {missing:?}");
    for (id, verdict) in &killed.feedback {
        assert_eq!(rows.feedback.get(id), Some(verdict), "acknowledged feedback on {id} lost by kill -9");
    }
    let p = api.predict(png(7)).await.expect("predict after restart");
    api.feedback(&p.id, true).await.expect("feedback after restart");
}

/// PostgreSQL is stopped for the middle third of the load and restarted, catsdogs is not:
/// predictions never fail, feedback answers 503 during the outage only and recovers, the
/// rows are queued meanwhile, and once the queue is written the database matches the
/// answers exactly. One scenario: each check needs the whole outage (60 s in CI).
pub async fn postgres_outage_under_load_queues_rows_and_loses_none() {
    let pg = PgCluster::start_for_test();
    let url = pg.create_db("outage").expect("createdb");
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(Some(&url), &dir.path().join("data"), &shared_secrets(dir.path()));
    let api = server.api();
    api.wait_ready().await;

    // Load for `secs`; PostgreSQL is down for its middle third. A request waits up to the
    // store's acquire timeout for a connection before it is refused: an outage shorter than
    // a few of those may end before any feedback is refused (503), so it lasts 3 at least.
    let acquire = StoreOptions::default().acquire_timeout;
    let third = Duration::from_secs(load_secs()).div_f64(3.0).max(acquire * 3);
    let secs = (third * 3).as_secs_f64();
    let start = Instant::now();
    let base = server.base.clone();
    let load = tokio::spawn(async move { run_load(&base, 4, start + third * 3).await });
    tokio::time::sleep(third).await;
    // Taken before the stop: connections drop while pg_ctl waits for the shutdown.
    let down_at = Instant::now();
    pg.stop_server().expect("stop PostgreSQL");
    tokio::time::sleep(third).await;
    let health = api.health().await;
    pg.start_server().expect("start PostgreSQL");
    let up_at = Instant::now();
    let tally = load.await.expect("load");
    report("postgres outage", &tally, secs);

    // Predictions never failed; feedback got 503 during the outage only, then recovered.
    assert!(tally.server_errors(&[("feedback", 503)]).is_empty(), "unexpected 5xx: {:?}", tally.statuses);
    assert_eq!(tally.statuses.keys().filter(|(r, s)| *r == "predict" && *s != 200).count(), 0, "{:?}", tally.statuses);
    assert!(
        tally.statuses.get(&("feedback", 503)).is_some_and(|n| *n > 0),
        "no 503 during the outage: {:?}",
        tally.statuses
    );
    assert!(
        health["store"]["pending_rows"].as_u64().is_some_and(|n| n > 0),
        "no rows queued during the outage: {health}"
    );
    for (at, status) in &tally.feedback_log {
        if *status == 503 {
            assert!(*at >= down_at, "feedback 503 before the outage");
        }
    }
    let last_ok = tally.feedback_log.iter().filter(|(_, s)| *s == 200).map(|(at, _)| *at).max();
    assert!(last_ok.is_some_and(|at| at > up_at), "feedback did not recover after the restart: {:?}", tally.statuses);

    // Once the queue is written, the database matches the answers exactly.
    let mut pending = u64::MAX;
    for _ in 0..100 {
        pending = api.health().await["store"]["pending_rows"].as_u64().unwrap_or(u64::MAX);
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(pending, 0, "queued rows never written");
    let rows = read_rows(&url).await;
    assert_eq!(rows.ok.len(), tally.predictions.len());
    assert_eq!(rows.ok, tally.predictions, "prediction rows differ from the 200 answers");
    assert_eq!(rows.errors, 0);
    assert_eq!(rows.feedback, tally.feedback, "feedback rows differ from the accepted feedback");
    drop(server);
}
