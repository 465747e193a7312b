//! Helpers shared by the integration tests: a real feed simulator on
//! 127.0.0.1:0 and a real HTTP client.
#![allow(dead_code)]

use ironlake::feedsim::{self, SimOptions};
use std::net::SocketAddr;

/// How many aggregates the bundled project publishes
/// (`pipelines/aggregates/*.sql`): the tests that list, meter or draw
/// every one of them expect this many.
pub const PUBLISHED_AGGREGATES: usize = 16;

/// A simulator serving on a free loopback port until dropped.
pub struct SimServer {
    /// Address it listens on.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl SimServer {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Starts the simulator in this process on 127.0.0.1:0.
pub async fn start_sim(opts: SimOptions) -> SimServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(feedsim::serve(opts, listener, async move {
        let _ = rx.await;
    }));
    SimServer {
        addr,
        stop: Some(tx),
    }
}

/// A plain HTTP client for tests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .unwrap()
}

/// The Python interpreter with DuckDB and pyarrow (installed by `ops/test.sh`).
pub fn python() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("IRONLAKE_TEST_PYTHON") {
        return p.into();
    }
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python");
    assert!(
        venv.exists(),
        "the interop tests need DuckDB and pyarrow: run ./ops/test.sh (it creates {}), or set IRONLAKE_TEST_PYTHON",
        venv.display()
    );
    venv
}

/// Runs a helper script from `tests/py/` and parses its JSON output.
pub fn py_json(script: &str, args: &[&str]) -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script);
    let out = std::process::Command::new(python())
        .arg(path)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The repository root.
pub fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A command running the real `ironlake` binary on the bundled config, a
/// given warehouse and a given feed.
pub fn ironlake(warehouse: &std::path::Path, feed_url: &str, token: &str) -> std::process::Command {
    ironlake_with(&repo(), warehouse, feed_url, token)
}

/// [`ironlake`] on the project in `project` (its `ironlake.toml`), such as
/// an edited [`project_copy`].
pub fn ironlake_with(
    project: &std::path::Path,
    warehouse: &std::path::Path,
    feed_url: &str,
    token: &str,
) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_ironlake"));
    c.arg("--config")
        .arg(project.join("ironlake.toml"))
        .arg("--warehouse")
        .arg(warehouse)
        .env("IRONLAKE_FEED_URL", feed_url)
        .env("IRONLAKE_FEED_TOKEN", token)
        .env("IRONLAKE_LOG", "warn")
        .env_remove("IRONLAKE_FAILPOINT");
    c
}

/// Output of a finished command as text.
pub fn run_ok(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "command failed ({:?}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A copy of the bundled project (config, schemas, reference data, pipelines,
/// aggregates) in a temp dir; `edit(relative_path, text)` may change any file.
pub fn project_copy(edit: impl Fn(&str, String) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let cfg = std::fs::read_to_string(repo().join("ironlake.toml")).unwrap();
    std::fs::write(dir.path().join("ironlake.toml"), edit("ironlake.toml", cfg)).unwrap();
    for sub in [
        "schemas",
        "schemas/reference",
        "pipelines",
        "pipelines/aggregates",
    ] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        for e in std::fs::read_dir(repo().join(sub)).unwrap() {
            let p = e.unwrap().path();
            if !p.is_file() {
                continue;
            }
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&p).unwrap();
            let text = edit(&format!("{sub}/{name}"), text);
            std::fs::write(dir.path().join(sub).join(&name), text).unwrap();
        }
    }
    dir
}

/// Spawns `cmd` (an `ironlake run` or `demo`, with `--pg-listen
/// 127.0.0.1:0` added) and waits for its first two lines, `api listening on
/// http://HOST:PORT` and `postgres listening on HOST:PORT`; returns the
/// child, the API's base URL and the PostgreSQL address.
pub fn spawn_daemon_pg(cmd: &mut std::process::Command) -> (std::process::Child, String, String) {
    use std::io::BufRead as _;
    // IRONLAKE_TEST_DAEMON_STDERR=FILE keeps the daemons' logs, to debug a failure.
    let stderr = match std::env::var_os("IRONLAKE_TEST_DAEMON_STDERR") {
        Some(path) => std::fs::File::options()
            .append(true)
            .create(true)
            .open(path)
            .unwrap()
            .into(),
        None => std::process::Stdio::null(),
    };
    let mut child = cmd
        .args(["--pg-listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let (mut api, mut pg) = (String::new(), String::new());
    out.read_line(&mut api).unwrap();
    out.read_line(&mut pg).unwrap();
    let base = api
        .trim()
        .strip_prefix("api listening on ")
        .unwrap_or_else(|| panic!("first line: {api:?}"))
        .to_string();
    let pg = pg
        .trim()
        .strip_prefix("postgres listening on ")
        .unwrap_or_else(|| panic!("second line: {pg:?}"))
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    assert!(!base.ends_with(":0") && !pg.ends_with(":0"), "{base} {pg}");
    (child, base, pg)
}

/// [`spawn_daemon_pg`] without the PostgreSQL address.
pub fn spawn_daemon(cmd: &mut std::process::Command) -> (std::process::Child, String) {
    let (child, base, _) = spawn_daemon_pg(cmd);
    (child, base)
}

/// A daemon (`ironlake run`) started with [`spawn_daemon`], killed when dropped.
#[allow(dead_code)]
pub struct Daemon {
    /// The process.
    pub child: std::process::Child,
    /// Its API's base URL.
    pub base: String,
    /// Its PostgreSQL address, HOST:PORT.
    pub pg: String,
}

#[allow(dead_code)]
impl Daemon {
    /// Spawns `cmd` (an `ironlake run`) and waits until it listens.
    pub fn spawn(cmd: &mut std::process::Command) -> Daemon {
        let (child, base, pg) = spawn_daemon_pg(cmd);
        Daemon { child, base, pg }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET `url` with a bearer token; the JSON body.
#[allow(dead_code)]
pub async fn get_json(url: &str, token: &str) -> serde_json::Value {
    client()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
