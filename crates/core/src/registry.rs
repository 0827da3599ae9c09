//! A registry of model versions on disk, and which one is served. Shared by the
//! `catsdogs models` / `catsdogs retrain` commands and the server's admin API.
//!
//! ```text
//! REGISTRY/<version>/       a model directory (model.json, model.onnx, weights, plots, reports)
//! REGISTRY/current          symbolic link to the served version (moved atomically)
//! REGISTRY/promotions.jsonl one line per promotion or rollback: time, version, previous, actor
//! ```
use std::io::Write;
use std::path::{Path, PathBuf};

use catsdogs_model::card::{Architecture, CardError, Lineage, ModelCard};
use catsdogs_model::metrics::Metrics;
use serde::{Deserialize, Serialize};

/// Errors of reading or changing a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0:?} is not a usable version name (letters, digits, '.', '_', '-')")]
    BadVersion(String),
    #[error("version {0} is not in the registry")]
    Unknown(String),
    #[error("version {0} is already in the registry; give the new model another version")]
    Exists(String),
    #[error("{0} holds no readable model.json")]
    NotAModel(String),
    #[error("nothing was promoted in this registry")]
    NothingPromoted,
    #[error("the last promotion had no previous version to roll back to")]
    NoPrevious,
    #[error("bad line in {path}: {source}")]
    BadLog { path: String, source: serde_json::Error },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: String, source: std::io::Error },
    #[error(transparent)]
    Card(#[from] CardError),
    #[error("{0} has no ONNX graph yet (the server runs ONNX Runtime); export it first")]
    NoGraph(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RegistryError + 'a {
    move |source| RegistryError::Io { what, path: path.display().to_string(), source }
}

/// One line of `promotions.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Promotion {
    pub at: String,
    pub version: String,
    pub previous: Option<String>,
    /// Who did it (`cli:<user>` or `token:<name>`), never a secret.
    pub actor: String,
    pub rollback: bool,
    /// Whether an evaluation gate ran and passed (absent: no gate was asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_passed: Option<bool>,
}

/// What the registry says about one version: enough to choose between versions.
#[derive(Debug, Clone, Serialize)]
pub struct VersionSummary {
    pub version: String,
    pub architecture: Architecture,
    pub created_at: String,
    /// Whether `current` points at it.
    pub served: bool,
    /// Metrics on its own validation split.
    pub validation: Option<Metrics>,
    /// Digest of the training folder it was trained on.
    pub data_digest: Option<String>,
    /// Parent version and feedback used, for a retrained model.
    pub lineage: Option<Lineage>,
    /// Outcome of its evaluation gate, when one ran (`gate.json`).
    pub gate_passed: Option<bool>,
}

/// A registry directory.
#[derive(Debug, Clone)]
pub struct Registry {
    dir: PathBuf,
}

impl Registry {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of a version.
    pub fn path(&self, version: &str) -> PathBuf {
        self.dir.join(version)
    }

    /// A version name is one path component of letters, digits, `.`, `_`, `-`.
    pub fn check_version(v: &str) -> Result<(), RegistryError> {
        let ok = !v.is_empty()
            && v != "."
            && v != ".."
            && v != "current"
            && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if ok { Ok(()) } else { Err(RegistryError::BadVersion(v.to_string())) }
    }

    /// The version `current` points at.
    pub fn current(&self) -> Option<String> {
        let target = std::fs::read_link(self.dir.join("current")).ok()?;
        target.file_name().map(|n| n.to_string_lossy().into_owned())
    }

    /// Every version's card, oldest first.
    pub fn cards(&self) -> Result<Vec<ModelCard>, RegistryError> {
        let mut cards = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(cards),
            Err(e) => return Err(io("cannot list", &self.dir)(e)),
        };
        for e in entries.flatten() {
            // `current` is a link to one of the versions, listed under its own name.
            if e.file_name() == "current" {
                continue;
            }
            if let Ok(card) = ModelCard::load(&e.path().join("model.json")) {
                cards.push(card);
            }
        }
        cards.sort_by(|x, y| x.created_at.cmp(&y.created_at).then_with(|| x.version.cmp(&y.version)));
        Ok(cards)
    }

    /// Every version with its metrics and lineage, oldest first.
    pub fn versions(&self) -> Result<Vec<VersionSummary>, RegistryError> {
        let served = self.current();
        Ok(self
            .cards()?
            .into_iter()
            .map(|c| {
                let gate_passed = std::fs::read_to_string(self.path(&c.version).join("gate.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .and_then(|v| v["passed"].as_bool());
                VersionSummary {
                    served: served.as_deref() == Some(c.version.as_str()),
                    data_digest: c.data.as_ref().map(|d| d.digest.clone()),
                    version: c.version,
                    architecture: c.architecture,
                    created_at: c.created_at,
                    validation: c.validation,
                    lineage: c.lineage,
                    gate_passed,
                }
            })
            .collect())
    }

    /// Copies a trained model directory in under its card's version (leaving out training
    /// checkpoints). The model must have its ONNX graph
    /// (`catsdogs_train::export::register` writes it first). Returns the version.
    pub fn add(&self, from: &Path) -> Result<String, RegistryError> {
        let card = ModelCard::load(&from.join("model.json"))
            .map_err(|_| RegistryError::NotAModel(from.display().to_string()))?;
        Self::check_version(&card.version)?;
        if card.onnx.as_ref().is_none_or(|f| !from.join(f).is_file()) {
            return Err(RegistryError::NoGraph(from.display().to_string()));
        }
        let dst = self.path(&card.version);
        if dst.exists() {
            return Err(RegistryError::Exists(card.version));
        }
        copy_dir(from, &dst)?;
        Ok(card.version)
    }

    /// Runs `f` holding the registry's exclusive lock (`.lock`, shared with every process
    /// using the registry): promotions and rollbacks never interleave.
    fn locked<T>(&self, f: impl FnOnce() -> Result<T, RegistryError>) -> Result<T, RegistryError> {
        let path = self.dir.join(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("cannot open", &path))?;
        lock.lock().map_err(io("cannot lock", &path))?;
        let out = f();
        let _ = lock.unlock();
        out
    }

    /// Serves `version` from now on: `current` moves atomically and the promotion is
    /// recorded with the version served at that moment as `previous` (under the lock, so
    /// concurrent promotions form one chain). Returns the recorded line.
    pub fn promote(&self, version: &str, mut record: Promotion) -> Result<Promotion, RegistryError> {
        self.locked(|| {
            record.version = version.to_string();
            record.previous = self.current();
            record.rollback = false;
            self.point_current(version, &record)?;
            Ok(record)
        })
    }

    /// Serves again the version the last promotion replaced; `record` gives the time and
    /// the actor. Returns the recorded line.
    pub fn rollback(&self, mut record: Promotion) -> Result<Promotion, RegistryError> {
        self.locked(|| {
            let (target, from) = self.rollback_target()?;
            record.version = target.clone();
            record.previous = Some(from);
            record.rollback = true;
            record.gate_passed = None;
            self.point_current(&target, &record)?;
            Ok(record)
        })
    }

    /// Points `current` at `version` atomically (a new link renamed over the old one) and
    /// appends the record in one write. Callers hold the lock.
    fn point_current(&self, version: &str, record: &Promotion) -> Result<(), RegistryError> {
        Self::check_version(version)?;
        if ModelCard::load(&self.path(version).join("model.json")).is_err() {
            return Err(RegistryError::Unknown(version.to_string()));
        }
        let tmp = self.dir.join(".current.tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(version, &tmp).map_err(io("cannot create", &tmp))?;
        let link = self.dir.join("current");
        std::fs::rename(&tmp, &link).map_err(io("cannot move", &link))?;
        let path = self.dir.join("promotions.jsonl");
        let mut f =
            std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io("cannot open", &path))?;
        let mut line = serde_json::to_string(record)
            .map_err(|source| RegistryError::BadLog { path: path.display().to_string(), source })?;
        line.push('\n');
        f.write_all(line.as_bytes()).and_then(|()| f.sync_all()).map_err(io("cannot write", &path))
    }

    /// Every promotion and rollback, oldest first.
    pub fn promotions(&self) -> Result<Vec<Promotion>, RegistryError> {
        let path = self.dir.join("promotions.jsonl");
        let Ok(text) = std::fs::read_to_string(&path) else { return Ok(Vec::new()) };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .map_err(|source| RegistryError::BadLog { path: path.display().to_string(), source })
            })
            .collect()
    }

    /// The version served before the last promotion.
    pub fn rollback_target(&self) -> Result<(String, String), RegistryError> {
        let last = self.promotions()?.pop().ok_or(RegistryError::NothingPromoted)?;
        let previous = last.previous.ok_or(RegistryError::NoPrevious)?;
        Ok((previous, last.version))
    }
}

/// Copies a model directory, leaving out training checkpoints (optimiser state).
fn copy_dir(from: &Path, to: &Path) -> Result<(), RegistryError> {
    std::fs::create_dir_all(to).map_err(io("cannot create", to))?;
    for e in std::fs::read_dir(from).map_err(io("cannot list", from))? {
        let e = e.map_err(io("cannot list", from))?;
        if e.file_name() == "checkpoint" {
            continue;
        }
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type().map_err(io("cannot stat", &src))?.is_dir() {
            copy_dir(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(io("cannot copy", &src))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_are_single_safe_path_components() {
        for ok in ["seed-cnn-2", "effnet_lite0.3", "v1"] {
            assert!(Registry::check_version(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "current", "../x", "a/b", "a b", "é"] {
            assert!(Registry::check_version(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_empty_or_missing_registry_lists_nothing() -> Result<(), RegistryError> {
        let dir = tempfile::tempdir().map_err(io("tempdir", Path::new("/tmp")))?;
        assert!(Registry::new(dir.path().join("none")).versions()?.is_empty());
        assert!(Registry::new(dir.path()).versions()?.is_empty());
        assert!(matches!(Registry::new(dir.path()).rollback_target(), Err(RegistryError::NothingPromoted)));
        Ok(())
    }

    #[test]
    fn concurrent_promotions_form_one_chain_of_whole_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let card = catsdogs_testkit::seed_cnn_dir().join("model.json");
        let versions: Vec<String> = (0..8).map(|i| format!("v{i}")).collect();
        for v in &versions {
            std::fs::create_dir_all(dir.path().join(v)).expect("version dir");
            std::fs::copy(&card, dir.path().join(v).join("model.json")).expect("card");
        }
        let record = |actor: &str| Promotion {
            at: "2026-12-07T00:00:00Z".into(),
            version: String::new(),
            previous: None,
            actor: actor.into(),
            rollback: false,
            gate_passed: None,
        };
        std::thread::scope(|s| {
            for v in &versions {
                let reg = Registry::new(dir.path());
                s.spawn(move || {
                    for _ in 0..5 {
                        reg.promote(v, record(v)).expect("promote");
                    }
                });
            }
        });
        let reg = Registry::new(dir.path());
        let lines = reg.promotions().expect("every line parses whole");
        assert_eq!(lines.len(), 40);
        // Each promotion names as previous the version the one before it served.
        for pair in lines.windows(2) {
            assert_eq!(pair[1].previous.as_deref(), Some(pair[0].version.as_str()), "{pair:?}");
        }
        assert_eq!(reg.current().as_deref(), lines.last().map(|p| p.version.as_str()));
        let back = reg.rollback(record("cli:test")).expect("rollback");
        assert_eq!(Some(back.version), lines.last().and_then(|p| p.previous.clone()));
    }
}
