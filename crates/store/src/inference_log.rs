//! The inference log: one CSV line per prediction (the seed's
//! `monitoring_inference.csv`, done properly).
//!
//! - One file per UTC day and replica (`inference-YYYY-MM-DD.<replica>.csv`, with a header),
//!   so daily rotation and retention are file operations and replicas sharing the folder
//!   never write the same file.
//! - One writer thread owns the files: handlers send it rows over a channel, so lines never
//!   interleave and each carries its own latency (the seed read the latency back from the
//!   last line of the file, a race).
//! - Erasure and retention rewrite files atomically (temporary file + rename) under an
//!   exclusive lock on `.lock`, which `catsdogs db` also takes: the server and the command
//!   line never rewrite a file at the same time.
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use catsdogs_model::Label;
use chrono::{DateTime, NaiveDate, Utc};
use tokio::sync::oneshot;

/// First line of every file.
pub const HEADER: &str = "time,prediction_id,model_version,label,p_dog,latency_ms,status,error_code";

/// One prediction, as logged. No file name (not even its pseudonym) and no image content.
#[derive(Debug, Clone)]
pub struct LogRow {
    pub time: DateTime<Utc>,
    pub prediction_id: String,
    pub model_version: String,
    pub label: Option<Label>,
    pub p_dog: Option<f64>,
    pub latency_ms: f64,
    pub status: &'static str,
    pub error_code: Option<String>,
}

/// Quotes a CSV field when needed (RFC 4180).
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

impl LogRow {
    fn line(&self) -> String {
        format!(
            "{},{},{},{},{},{:.3},{},{}\n",
            self.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            field(&self.prediction_id),
            field(&self.model_version),
            self.label.map(|l| field(l.as_str())).unwrap_or_default(),
            self.p_dog.map(|p| format!("{p:.6}")).unwrap_or_default(),
            self.latency_ms,
            self.status,
            self.error_code.as_deref().map(field).unwrap_or_default(),
        )
    }
}

/// The log's files, usable from the writer thread and from the command line. Several
/// replicas may share the folder: each writes its own files
/// (`inference-YYYY-MM-DD.<replica>.csv`), and reading, erasure and retention cover every
/// replica's files (and those of versions before replica names, `inference-YYYY-MM-DD.csv`).
#[derive(Debug, Clone)]
pub struct LogFiles {
    dir: PathBuf,
    /// Whose files this process writes (`None`: the unnamed files).
    replica: Option<String>,
}

/// The day a file covers, from its name (with or without a replica name).
fn file_day(path: &Path) -> Option<NaiveDate> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix("inference-")?.strip_suffix(".csv")?;
    let (day, replica) = rest.split_at_checked(10)?;
    if !(replica.is_empty() || replica.strip_prefix('.').is_some_and(valid_replica_id)) {
        return None;
    }
    NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()
}

/// A replica name fit for a file name: 1-64 characters of `[A-Za-z0-9_-]`.
pub fn valid_replica_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
}

/// `raw` (a host name, a configured id) made fit for a file name: other characters become
/// `-`, cut to 64; `replica` when nothing is left.
pub fn replica_id(raw: &str) -> String {
    let id: String = raw
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '-') { c } else { '-' })
        .take(64)
        .collect();
    if valid_replica_id(&id) { id } else { "replica".into() }
}

/// The prediction id and time of a data line.
fn id_and_time(line: &str) -> Option<(&str, DateTime<Utc>)> {
    let mut it = line.splitn(3, ',');
    let time = DateTime::parse_from_rfc3339(it.next()?).ok()?.with_timezone(&Utc);
    Some((it.next()?, time))
}

impl LogFiles {
    /// The files of `dir`, for reading, erasure and retention (and writing unnamed files).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), replica: None }
    }

    /// The files of `dir`, writing this replica's own (`replica` as from [`replica_id`]).
    pub fn for_replica(dir: impl Into<PathBuf>, replica: &str) -> Self {
        Self { dir: dir.into(), replica: Some(replica_id(replica)) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs file work on tokio's blocking pool, so reading and rewriting day files never
    /// stalls the async workers.
    pub async fn off_thread<T: Send + 'static>(
        &self,
        f: impl FnOnce(&LogFiles) -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let files = self.clone();
        tokio::task::spawn_blocking(move || f(&files)).await.map_err(std::io::Error::other)?
    }

    /// Runs `f` holding the exclusive lock shared with other processes.
    fn locked<T>(&self, f: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
        crate::private::create_dir_all(&self.dir)?;
        let lock = crate::private::options().create(true).truncate(false).write(true).open(self.dir.join(".lock"))?;
        lock.lock()?;
        let r = f();
        let _ = lock.unlock();
        r
    }

    /// Day files, oldest first.
    pub fn files(&self) -> std::io::Result<Vec<(NaiveDate, PathBuf)>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let path = entry?.path();
            if let Some(day) = file_day(&path) {
                out.push((day, path));
            }
        }
        out.sort();
        Ok(out)
    }

    fn path_for(&self, day: NaiveDate) -> PathBuf {
        let day = day.format("%Y-%m-%d");
        match &self.replica {
            Some(r) => self.dir.join(format!("inference-{day}.{r}.csv")),
            None => self.dir.join(format!("inference-{day}.csv")),
        }
    }

    /// Appends one line (the header first when the file is new) with a single write.
    pub fn append(&self, row: &LogRow) -> std::io::Result<()> {
        self.locked(|| {
            let path = self.path_for(row.time.date_naive());
            let mut f = crate::private::append(&path)?;
            let mut text = String::new();
            if f.metadata()?.len() == 0 {
                text.push_str(HEADER);
                text.push('\n');
            }
            text.push_str(&row.line());
            f.write_all(text.as_bytes())
        })
    }

    /// Keeps only the data lines of `path` for which `keep` holds; returns how many went.
    /// A file left with no data line is removed.
    fn retain(path: &Path, keep: &dyn Fn(&str) -> bool) -> std::io::Result<u64> {
        let reader = BufReader::new(File::open(path)?);
        let mut kept = String::new();
        let (mut removed, mut data_lines) = (0u64, 0u64);
        for line in reader.lines() {
            let line = line?;
            if line == HEADER {
                continue;
            }
            if keep(&line) {
                kept.push_str(&line);
                kept.push('\n');
                data_lines += 1;
            } else {
                removed += 1;
            }
        }
        if removed == 0 {
            return Ok(0);
        }
        if data_lines == 0 {
            std::fs::remove_file(path)?;
            return Ok(removed);
        }
        let tmp = path.with_extension("csv.tmp");
        crate::private::write(&tmp, format!("{HEADER}\n{kept}"))?;
        std::fs::rename(&tmp, path)?;
        Ok(removed)
    }

    /// Removes every line of these predictions; returns how many lines went.
    pub fn erase_ids(&self, ids: &HashSet<String>) -> std::io::Result<u64> {
        self.erase_where(&|id| ids.contains(id))
    }

    /// Removes every line whose prediction id `matches`; returns how many lines went.
    pub fn erase_where(&self, matches: &dyn Fn(&str) -> bool) -> std::io::Result<u64> {
        self.locked(|| {
            let mut n = 0;
            for (_, path) in self.files()? {
                n += Self::retain(&path, &|l| id_and_time(l).is_none_or(|(id, _)| !matches(id)))?;
            }
            Ok(n)
        })
    }

    /// Removes every line older than `cutoff` (whole files for days before it).
    pub fn remove_before(&self, cutoff: DateTime<Utc>) -> std::io::Result<u64> {
        self.locked(|| {
            let mut n = 0;
            let cutoff_day = cutoff.date_naive();
            for (day, path) in self.files()? {
                if day > cutoff_day {
                    continue;
                }
                n += Self::retain(&path, &|l| id_and_time(l).is_none_or(|(_, t)| t >= cutoff))?;
            }
            Ok(n)
        })
    }

    /// Every line about one prediction (for the data export).
    pub fn lines_for(&self, id: &str) -> std::io::Result<Vec<String>> {
        self.locked(|| {
            let mut out = Vec::new();
            for (_, path) in self.files()? {
                for line in BufReader::new(File::open(&path)?).lines() {
                    let line = line?;
                    if id_and_time(&line).is_some_and(|(i, _)| i == id) {
                        out.push(line);
                    }
                }
            }
            Ok(out)
        })
    }
}

enum Command {
    Append(LogRow),
    Flush(oneshot::Sender<()>),
}

/// Handle to the writer thread; `None` inside when the log is switched off.
#[derive(Clone)]
pub struct InferenceLog {
    files: Option<LogFiles>,
    tx: Option<mpsc::Sender<Command>>,
}

impl InferenceLog {
    /// Starts the writer thread of `replica`'s files (or a disabled log when `dir` is `None`).
    pub fn start(dir: Option<PathBuf>, replica: &str) -> Self {
        let Some(dir) = dir else { return Self { files: None, tx: None } };
        let files = LogFiles::for_replica(dir, replica);
        let (tx, rx) = mpsc::channel::<Command>();
        let writer = files.clone();
        let spawned = std::thread::Builder::new().name("inference-log".into()).spawn(move || {
            for cmd in rx {
                match cmd {
                    Command::Append(row) => {
                        if let Err(e) = writer.append(&row) {
                            metrics::counter!("catsdogs_inference_log_errors_total").increment(1);
                            tracing::error!(error = %e, dir = %writer.dir().display(), "cannot write the inference log");
                        }
                    }
                    Command::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        match spawned {
            Ok(_) => Self { files: Some(files), tx: Some(tx) },
            Err(e) => {
                tracing::error!(error = %e, "cannot start the inference log writer; the log is off");
                Self { files: None, tx: None }
            }
        }
    }

    /// Queues one line (never blocks the request).
    pub fn log(&self, row: LogRow) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Command::Append(row));
        }
    }

    /// Waits until every line queued so far is written.
    pub async fn flush(&self) {
        if let Some(tx) = &self.tx {
            let (done, wait) = oneshot::channel();
            if tx.send(Command::Flush(done)).is_ok() {
                let _ = wait.await;
            }
        }
    }

    /// The files, for erasure, retention and export (`None` when the log is off).
    pub fn files(&self) -> Option<&LogFiles> {
        self.files.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn row(id: &str, t: DateTime<Utc>) -> LogRow {
        LogRow {
            time: t,
            prediction_id: id.into(),
            model_version: "m,1".into(),
            label: Some(Label::Cat),
            p_dog: Some(0.25),
            latency_ms: 3.5,
            status: "ok",
            error_code: None,
        }
    }

    #[test]
    fn daily_files_erasure_and_retention() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LogFiles::new(dir.path());
        let d1 = Utc.with_ymd_and_hms(2030, 1, 1, 10, 0, 0).single().expect("t");
        let d2 = Utc.with_ymd_and_hms(2030, 1, 2, 10, 0, 0).single().expect("t");
        for (id, t) in [("a", d1), ("b", d1), ("c", d2), ("d", d2 + chrono::Duration::hours(5))] {
            log.append(&row(id, t)).expect("append");
        }
        let files = log.files().expect("files");
        assert_eq!(files.len(), 2);
        let text = std::fs::read_to_string(&files[0].1).expect("read");
        assert!(text.starts_with(HEADER));
        assert!(text.contains(",\"m,1\",cat,0.250000,3.500,ok,\n"), "{text}");
        assert_eq!(log.lines_for("c").expect("export").len(), 1);

        assert_eq!(log.erase_ids(&HashSet::from(["b".to_string()])).expect("erase"), 1);
        assert!(log.lines_for("b").expect("export").is_empty());
        assert_eq!(log.lines_for("a").expect("export").len(), 1);
        // Retention: everything before d2 + 1 h goes; the day-1 file disappears.
        assert_eq!(log.remove_before(d2 + chrono::Duration::hours(1)).expect("purge"), 2);
        let files = log.files().expect("files");
        assert_eq!(files.len(), 1);
        assert_eq!(log.lines_for("d").expect("export").len(), 1);
    }

    #[test]
    fn every_replica_file_is_read_erased_and_purged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (LogFiles::for_replica(dir.path(), "app-1"), LogFiles::for_replica(dir.path(), "pod/xyz 2"));
        let t = Utc.with_ymd_and_hms(2030, 1, 1, 10, 0, 0).single().expect("t");
        a.append(&row("p1", t)).expect("append");
        b.append(&row("p2", t)).expect("append");
        // A file of a version before replica names is still read.
        LogFiles::new(dir.path()).append(&row("p3", t)).expect("append");
        let names: Vec<String> = a
            .files()
            .expect("files")
            .iter()
            .map(|(_, p)| p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names.contains(&"inference-2030-01-01.app-1.csv".to_string()), "{names:?}");
        assert!(names.contains(&"inference-2030-01-01.pod-xyz-2.csv".to_string()), "{names:?}");
        // Replica A reads and erases replica B's lines.
        assert_eq!(a.lines_for("p2").expect("export").len(), 1);
        assert_eq!(a.erase_ids(&HashSet::from(["p2".to_string(), "p3".to_string()])).expect("erase"), 2);
        assert!(b.lines_for("p2").expect("export").is_empty());
        assert_eq!(b.remove_before(t + chrono::Duration::hours(1)).expect("purge"), 1);
        assert!(a.files().expect("files").is_empty());
        // Names that are not log files are left alone.
        assert!(file_day(Path::new("inference-2030-01-01.a.b.csv")).is_none());
        assert!(file_day(Path::new("inference-2030-01-01.csv.tmp")).is_none());
        assert_eq!(replica_id("  "), "replica");
    }
}
