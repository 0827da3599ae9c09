//! A throw-away PostgreSQL cluster: `initdb` + `pg_ctl` in a temp dir, on a free loopback
//! port, run as the `postgres` user when the tests run as root (the server refuses root).
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct PgCluster {
    _dir: tempfile::TempDir,
    data: PathBuf,
    log: PathBuf,
    sock: PathBuf,
    bin: PathBuf,
    pub port: u16,
    as_postgres: bool,
}

/// Newest `/usr/lib/postgresql/N/bin`, else the directory of `initdb` on PATH.
pub(crate) fn find_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p): &(u32, PathBuf)| p.join("initdb").is_file() && p.join("pg_ctl").is_file())
        .collect();
    versions.sort();
    if let Some((_, p)) = versions.pop() {
        return Some(p);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl PgCluster {
    /// Starts a cluster, or returns why it cannot (PostgreSQL not installed).
    pub fn start() -> Result<Self, String> {
        let bin = find_bin().ok_or("PostgreSQL server binaries (initdb, pg_ctl) not found")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let as_postgres = is_root();
        let root = dir.path().to_path_buf();
        let data = root.join("data");
        let sock = root.join("sock");
        std::fs::create_dir_all(&sock).map_err(|e| e.to_string())?;
        if as_postgres {
            let out =
                Command::new("chown").arg("-R").arg("postgres:").arg(&root).output().map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!("chown failed: {}", String::from_utf8_lossy(&out.stderr)));
            }
            let _ = Command::new("chmod").arg("755").arg(&root).status();
        }
        let c = Self { log: root.join("pg.log"), _dir: dir, data, sock, bin, port: crate::free_port(), as_postgres };
        c.run("initdb", &["-D", path(&c.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])?;
        c.start_server()?;
        Ok(c)
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.arg("-u").arg("postgres").arg("--").arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd.args(args).output().map_err(|e| format!("{tool}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            Err(format!(
                "{tool} failed: {}{}\n{log}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// A cluster for a test that declared [`crate::Need::Postgres`]: a failure to start is
    /// the test's failure.
    pub fn start_for_test() -> Self {
        Self::start().unwrap_or_else(|e| panic!("cannot start a PostgreSQL cluster: {e}"))
    }

    /// Starts (or restarts) the server and waits until it accepts connections.
    pub fn start_server(&self) -> Result<(), String> {
        let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, path(&self.sock));
        self.run("pg_ctl", &["-D", path(&self.data), "-l", path(&self.log), "-w", "-t", "60", "-o", &opts, "start"])
    }

    /// Stops the server now (as a crash or an outage would look to clients).
    pub fn stop_server(&self) -> Result<(), String> {
        self.run("pg_ctl", &["-D", path(&self.data), "-m", "fast", "-w", "stop"])
    }

    /// Creates a database and returns its URL.
    pub fn create_db(&self, name: &str) -> Result<String, String> {
        let port = self.port.to_string();
        self.run("createdb", &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", name])?;
        Ok(format!("postgres://postgres@127.0.0.1:{}/{name}", self.port))
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self.run("pg_ctl", &["-D", path(&self.data), "-m", "immediate", "stop"]);
    }
}
