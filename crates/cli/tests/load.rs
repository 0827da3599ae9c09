//! Load and faults on one `catsdogs serve` process, with exact row accounting.
//!
//! Clients predict and send feedback for `CATSDOGS_LOAD_SECS` seconds (10 by default,
//! 60 in `.ci/run`); afterwards the database must hold exactly one prediction row per
//! 200 answer and one feedback row per accepted feedback, and nothing may answer 5xx
//! (apart from feedback's documented 503 while PostgreSQL is down). Then the faults:
//! `kill -9` of an SQLite-backed server under load, and PostgreSQL stopped and
//! restarted under load without restarting catsdogs.
#[allow(dead_code)] // shared with the server tests; this test uses part of it
#[path = "../../server/tests/support/pg.rs"]
mod pg;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::Row;
use support::{Refused, feedback, predict};

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
    fn count(&mut self, route: &'static str, outcome: &Result<(), Refused>) {
        let status = match outcome {
            Ok(()) => 200,
            Err(Refused::Status(s)) => *s,
            Err(Refused::Transport(_)) => 0,
        };
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
        let (c, base, tally) = (support::client(), base.to_string(), tally.clone());
        workers.push(tokio::spawn(async move {
            let mut n: u32 = 0;
            while Instant::now() < until {
                n += 1;
                let outcome = predict(&c, &base, support::png(w as u32 * 1000 + n % 50)).await;
                let dead = matches!(outcome, Err(Refused::Transport(_)));
                let id = {
                    let mut t = tally.lock().expect("tally");
                    t.count("predict", &outcome.as_ref().map(|_| ()).map_err(Clone::clone));
                    outcome.ok()
                };
                if dead {
                    break;
                }
                let Some(id) = id else { continue };
                tally.lock().expect("tally").predictions.insert(id.clone());
                if n.is_multiple_of(2) {
                    continue;
                }
                let correct = !n.is_multiple_of(3);
                let outcome = feedback(&c, &base, &id, correct).await;
                let mut t = tally.lock().expect("tally");
                t.count("feedback", &outcome);
                let status = match &outcome {
                    Ok(()) => 200,
                    Err(Refused::Status(s)) => *s,
                    Err(Refused::Transport(_)) => 0,
                };
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_load_then_kill_9_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets = support::shared_secrets(dir.path());
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let url = sqlite_url(&data);
    let server = support::start(None, &data, &secrets);
    let c = support::client();
    support::wait_ready(&c, &server.base).await;

    // Steady load: every answer accounted for, row by row.
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
    let rows = read_rows(&url).await;
    assert_eq!(rows.ok, tally.predictions, "prediction rows differ from the 200 answers");
    assert_eq!(rows.errors, 0);
    assert_eq!(rows.feedback, tally.feedback, "feedback rows differ from the accepted feedback");

    // kill -9 under load: every acknowledged write survives (SQLite in WAL mode).
    let until = Instant::now() + Duration::from_secs(30);
    let base = server.base.clone();
    let load = tokio::spawn(async move { run_load(&base, 4, until).await });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    server.kill_9();
    let killed = load.await.expect("load during kill");
    report("sqlite kill -9", &killed, 2.5);
    assert!(killed.predictions.len() >= 4, "too little load before the kill: {:?}", killed.statuses);
    assert!(killed.server_errors(&[]).is_empty(), "5xx before the kill: {:?}", killed.statuses);
    let server = support::start(None, &data, &secrets);
    support::wait_ready(&c, &server.base).await;
    let rows = read_rows(&url).await;
    let missing: Vec<_> = killed.predictions.difference(&rows.ok).collect();
    assert!(missing.is_empty(), "acknowledged predictions lost by kill -9: {missing:?}");
    for (id, verdict) in &killed.feedback {
        assert_eq!(rows.feedback.get(id), Some(verdict), "acknowledged feedback on {id} lost by kill -9");
    }
    // And the restarted server works.
    let id = predict(&c, &server.base, support::png(7)).await.expect("predict after restart");
    feedback(&c, &server.base, &id, true).await.expect("feedback after restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_under_load() {
    let Some(pg) = pg::PgCluster::start_or_skip("the PostgreSQL outage test") else { return };
    let url = pg.create_db("outage").expect("createdb");
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets = support::shared_secrets(dir.path());
    let server = support::start(Some(&url), &dir.path().join("data"), &secrets);
    let c = support::client();
    support::wait_ready(&c, &server.base).await;

    // Load for `secs`; PostgreSQL is down for its middle third.
    let secs = load_secs().max(9);
    let start = Instant::now();
    let base = server.base.clone();
    let load = tokio::spawn(async move { run_load(&base, 4, start + Duration::from_secs(secs)).await });
    let third = Duration::from_secs(secs) / 3;
    tokio::time::sleep(third).await;
    // Taken before the stop: connections drop while pg_ctl waits for the shutdown.
    let down_at = Instant::now();
    pg.stop_server().expect("stop PostgreSQL");
    tokio::time::sleep(third).await;
    let (_, health) = support::get(&c, &server.base, "/api/health").await;
    pg.start_server().expect("start PostgreSQL");
    let up_at = Instant::now();
    let tally = load.await.expect("load");
    report("postgres outage", &tally, secs as f64);

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
        let (_, h) = support::get(&c, &server.base, "/api/health").await;
        pending = h["store"]["pending_rows"].as_u64().unwrap_or(u64::MAX);
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
