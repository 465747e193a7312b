//! `ironlake run`, `ironlake demo` and `ironlake status`: the binary's side
//! of the daemon (listeners, signals, printing); the daemon itself is
//! `ironlake::daemon`.

use anyhow::{Context as _, Result};
use ironlake::config::{LoadOptions, Project};
use ironlake::daemon::{Daemon, SystemClock};
use ironlake::domain::Quarter;
use ironlake::ingest::RunKind;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// How long in-flight runs get to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(30);

/// Signal handlers, installed before the daemon announces its addresses:
/// a SIGHUP or SIGTERM sent as soon as it is up is then handled, never
/// the default action that ends the process.
pub(crate) struct Signals {
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Installs the handlers (inside the runtime).
    pub(crate) fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Signals {
                hup: signal(SignalKind::hangup()).ok(),
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Resolves at SIGINT or SIGTERM.
    async fn shutdown(&mut self) {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = recv(&mut self.term) => {},
                _ = recv(&mut self.int) => {},
            }
        }
        #[cfg(not(unix))]
        crate::shutdown_signal().await;
    }
}

async fn serve_until_signal(
    daemon: Arc<Daemon>,
    listener: tokio::net::TcpListener,
    pg: PgListener,
    drain: Duration,
    mut signals: Signals,
) -> Result<ExitCode> {
    let token = daemon.shutdown_token();
    let server = tokio::spawn(ironlake::serve::serve(
        daemon.clone(),
        listener,
        token.clone(),
    ));
    let pg = tokio::spawn(pg.0.serve(pg.1, token));
    #[cfg(unix)]
    if let Some(mut hup) = signals.hup.take() {
        let d = daemon.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the configuration.");
                let _ = d.reload();
            }
        });
    }
    signals.shutdown().await;
    tracing::info!(
        drain_secs = drain.as_secs(),
        "Shutting down: no new runs; waiting for runs in flight."
    );
    daemon.shutdown(drain).await;
    server.await.context("server task")?.context("server")?;
    pg.await.context("PostgreSQL server task")?;
    tracing::info!("Stopped.");
    Ok(ExitCode::SUCCESS)
}

/// Addresses given on the command line (else the config's).
pub struct Listen {
    /// The HTTP API's (`--listen`).
    pub api: Option<String>,
    /// The PostgreSQL protocol's (`--pg-listen`).
    pub pg: Option<String>,
}

/// The PostgreSQL protocol server and its socket.
type PgListener = (ironlake::pg::PgServer, tokio::net::TcpListener);

/// Sets up the PostgreSQL server (bound before, so a busy port fails early).
fn pg_server(daemon: &Arc<Daemon>, listener: tokio::net::TcpListener) -> Result<PgListener> {
    let server = ironlake::pg::PgServer::new(daemon.clone())?;
    Ok((server, listener))
}

/// The two lines clients and scripts wait for, written at once.
fn announce(api: &std::net::SocketAddr, pg: &PgListener) -> Result<()> {
    let tls = if pg.0.tls() { " (TLS available)" } else { "" };
    print!(
        "api listening on http://{api}\npostgres listening on {}{tls}\n",
        pg.1.local_addr()?
    );
    std::io::stdout().flush()?;
    Ok(())
}

/// `ironlake run`.
pub async fn run(
    opts: LoadOptions,
    project: Project,
    listen: Listen,
    drain_secs: u64,
) -> Result<ExitCode> {
    let addr = listen
        .api
        .unwrap_or_else(|| project.settings.api.listen.to_string());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let pg_addr = listen
        .pg
        .unwrap_or_else(|| project.settings.pg.listen.to_string());
    let pg_listener = tokio::net::TcpListener::bind(&pg_addr)
        .await
        .with_context(|| {
            format!("cannot listen on {pg_addr} for PostgreSQL clients ([pg] listen, --pg-listen)")
        })?;
    // The warehouse is opened (and the daemon lock taken) before the address
    // is announced, so a second daemon on the same warehouse fails first.
    let daemon =
        tokio::task::spawn_blocking(move || Daemon::new(opts, project, Arc::new(SystemClock)))
            .await??;
    let pg = pg_server(&daemon, pg_listener)?;
    let signals = Signals::install();
    announce(&listener.local_addr()?, &pg)?;
    daemon.start_schedules();
    serve_until_signal(
        daemon,
        listener,
        pg,
        Duration::from_secs(drain_secs),
        signals,
    )
    .await
}

/// A random token suffix from the OS's generator.
fn random_hex(n: usize) -> Result<String> {
    ironlake::primitives::random_hex(n).context("cannot read /dev/urandom for the demo's tokens")
}

/// Writes the demo's environment (owner-readable only) beside the config:
/// `IRONLAKE_CONFIG`, `IRONLAKE_WAREHOUSE`, the feed URL and token, the API tokens.
fn write_demo_env(
    opts: &LoadOptions,
    sim_addr: &str,
    feed_token: &str,
    api_tokens: &[(&str, String)],
    warehouse: &std::path::Path,
) -> Result<std::path::PathBuf> {
    let config = opts
        .config
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("ironlake.toml"));
    let config = std::path::absolute(&config).unwrap_or(config);
    let dir = config
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let path = dir.join("ironlake-demo.env");
    let warehouse = std::path::absolute(warehouse).unwrap_or_else(|_| warehouse.to_path_buf());
    let mut text = format!(
        "# Written by `ironlake demo`: its simulator's feed and its API tokens.\n\
         IRONLAKE_CONFIG='{}'\nIRONLAKE_WAREHOUSE='{}'\n\
         IRONLAKE_FEED_URL='http://{sim_addr}'\nIRONLAKE_FEED_TOKEN='{feed_token}'\n",
        config.display(),
        warehouse.display()
    );
    for (role, token) in api_tokens {
        text.push_str(&format!(
            "IRONLAKE_TOKEN_{}='{token}'\n",
            role.to_ascii_uppercase()
        ));
    }
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(path)
}

/// The demo's secrets: a feed token for its simulator and API tokens for
/// the roles not already set. Sets the environment the pipelines read.
fn demo_environment(
    sim_addr: &std::net::SocketAddr,
) -> Result<(String, Vec<(&'static str, String)>)> {
    let feed_token = format!("demo-feed-{}", random_hex(32)?);
    let mut api_tokens = Vec::new();
    // SAFETY: called before any other thread exists.
    unsafe {
        std::env::set_var("IRONLAKE_FEED_URL", format!("http://{sim_addr}"));
        std::env::set_var("IRONLAKE_FEED_TOKEN", &feed_token);
        for (env, role) in [
            ("IRONLAKE_TOKEN_ADMIN", "admin"),
            ("IRONLAKE_TOKEN_ANALYST", "analyst"),
            ("IRONLAKE_TOKEN_VIEWER", "viewer"),
            ("IRONLAKE_TOKEN_PARTNER_PORTAL", "partner_portal"),
        ] {
            let v = match std::env::var(env) {
                Ok(v) if !v.is_empty() => v,
                _ => {
                    let v = format!("demo-{role}-{}", random_hex(24)?);
                    std::env::set_var(env, &v);
                    v
                }
            };
            api_tokens.push((role, v));
        }
    }
    Ok((feed_token, api_tokens))
}

/// Backfills every pipeline over the plan's period, a line per pipeline.
async fn demo_backfill(daemon: &Daemon) {
    let (from, to): (Quarter, Quarter) = (
        "2017Q1".parse().expect("valid"),
        "2019Q4".parse().expect("valid"),
    );
    use std::io::IsTerminal as _;
    let progress = crate::progress::reporter(std::io::stderr().is_terminal());
    let project = daemon.project();
    for p in &project.pipelines {
        let kind = RunKind::Backfill { from, to };
        let result = ironlake::ingest::run(
            &project,
            daemon.warehouse(),
            &p.name,
            kind,
            Some(progress.clone()),
        )
        .await;
        crate::progress::clear();
        match result {
            Ok(r) if r.unchanged_since.is_some() => println!(
                "  {:<18} unchanged since run {}: every page answered 304 ({} requests)",
                p.name,
                r.unchanged_since.as_deref().unwrap_or_default(),
                r.requests
            ),
            Ok(r) => println!(
                "  {:<18} {:>8} records in, {:>8} valid, {:>5} rejected, {:>8} rows new or changed ({} requests)",
                p.name, r.rows_in, r.rows_valid, r.rows_rejected, r.rows_changed, r.requests
            ),
            Err(e) => println!("  {:<18} failed: {e}", p.name),
        }
    }
}

/// Refreshes the indicators and prints rows per table and two of them.
async fn demo_indicators(daemon: &Daemon) -> Result<()> {
    println!();
    println!("Refreshing the programme's indicators:");
    if let Some(report) = daemon.refresh(&[], false).await {
        for r in report {
            println!(
                "  published.{:<28} {:>11}, {:>6} rows, version {}",
                r.name, r.mode, r.rows, r.version
            );
        }
        println!("  (a version is the number of the warehouse commit that published it: every run");
        println!(
            "   and refresh that changed something is one commit, so a new warehouse starts higher than 1)"
        );
    }
    let snapshot = daemon.catalog().snapshot().await?;
    for (title, sql) in [
        (
            "Rows per table:",
            "SELECT 'enterprises' AS table_name, count(*) AS rows FROM enterprises UNION ALL SELECT 'operations', count(*) FROM operations \
             UNION ALL SELECT 'bank_loans', count(*) FROM bank_loans UNION ALL SELECT 'financing_demands', count(*) FROM financing_demands \
             UNION ALL SELECT 'direct_financing', count(*) FROM direct_financing",
        ),
        (
            "loan_growth — industrial vs manufacturing loans (工业/制造业贷款增长):",
            "SELECT * FROM published.loan_growth ORDER BY quarter",
        ),
        (
            "bank_lending — all banks' industrial lending (银行业工业贷款监测, bank ALL):",
            "SELECT quarter, industry_balance, industry_yoy_pct, new_industry_loans, credit_share_pct, medium_long_share_pct, avg_rate_pct \
             FROM published.bank_lending WHERE bank_code = 'ALL' ORDER BY quarter",
        ),
        (
            "financing_cost — city-wide (融资成本, district ALL):",
            "SELECT quarter, fin_expense_ratio_pct, avg_loan_rate_pct, avg_comprehensive_cost_pct FROM published.financing_cost WHERE district_code = 'ALL' ORDER BY quarter",
        ),
    ] {
        println!();
        println!("{title}");
        match ironlake::query::sql(&snapshot, sql).await {
            Ok(df) => match df.collect().await {
                Ok(b) => println!(
                    "{}",
                    arrow::util::pretty::pretty_format_batches(&b)
                        .map(|t| t.to_string())
                        .unwrap_or_default()
                ),
                Err(e) => println!("  ({e})"),
            },
            Err(e) => println!("  ({e})"),
        }
    }
    Ok(())
}

/// Binds `addr`, or a free port on 127.0.0.1 if it is taken (the demo must start).
async fn bind_or_free(addr: &str) -> Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) => {
            eprintln!("note: {addr} is not free ({e}); using a free port instead");
            Ok(tokio::net::TcpListener::bind("127.0.0.1:0").await?)
        }
    }
}

/// Prints how to go on from another terminal: the environment file, `ironlake` on the PATH, examples.
fn demo_handover(
    api: &std::net::SocketAddr,
    pg: &std::net::SocketAddr,
    env_file: &std::path::Path,
    api_tokens: &[(&str, String)],
) {
    let token = |role: &str| {
        api_tokens
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, t)| t.clone())
            .unwrap_or_default()
    };
    let bin_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.display().to_string()))
        .unwrap_or_else(|| "target/release".into());
    println!();
    println!("The daemon is serving on http://{api} (Ctrl-C stops it).");
    println!();
    println!(
        "Dashboard: http://{api}/ — log in with the viewer token {} (the admin token {} may also run pipelines from http://{api}/ops).",
        token("viewer"),
        token("admin")
    );
    println!();
    println!("In another terminal, put ironlake on the PATH and load this demo's environment");
    println!(
        "(feed URL and token, API tokens), so every command of ops/RUNBOOK.md works against it:"
    );
    println!("  export PATH=\"{bin_dir}:$PATH\"");
    println!("  set -a; . '{}'; set +a", env_file.display());
    println!("Then try:");
    println!(
        "  ironlake sql \"SELECT quarter, count(*), sum(balance) FROM bank_loans GROUP BY quarter ORDER BY quarter\""
    );
    println!(
        "  ironlake sql          # the interactive shell: \\dt lists tables, \\d bank_loans describes one,"
    );
    println!(
        "                        # \\d published.bank_lending shows how an indicator is made (口径说明)"
    );
    println!("  ironlake status");
    println!(
        "  PGPASSWORD='{}' psql 'postgresql://analyst@{}:{}/ironlake' -c '\\dt'   # psql, DBeaver, Superset: user analyst, password the analyst token",
        token("analyst"),
        pg.ip(),
        pg.port()
    );
    println!("  ironlake backfill bank_loans --from 2019Q4 --to 2019Q4");
    println!(
        "  curl -H 'Authorization: Bearer {}' 'http://{api}/api/v1/aggregates/loan_growth?format=csv'",
        token("viewer")
    );
    println!(
        "  curl -H 'Authorization: Bearer {}' 'http://{api}/api/v1/aggregates'   # every published indicator, its columns, units and 中文名",
        token("viewer")
    );
    println!(
        "  curl -H 'Authorization: Bearer {}' 'http://{api}/api/v1/aggregates/guarantee_fee_subsidy/definition'",
        token("viewer")
    );
    println!(
        "  curl -H 'Authorization: Bearer {}' -d 'SELECT * FROM published.demand_funnel LIMIT 5' 'http://{api}/api/v1/sql'",
        token("analyst")
    );
    println!(
        "  curl -X POST -H 'Authorization: Bearer {}' 'http://{api}/api/v1/pipelines/bank_loans/runs'",
        token("admin")
    );
    println!("  curl 'http://{api}/metrics'");
    println!(
        "The enterprise portal pushing online applications (网上申请), 50 a second for a minute:"
    );
    println!(
        "  ironlake portal-sim --url 'http://{api}/api/v1/intake/financing_applications' --requests 3000 --rate 50 --bad-share 0.05"
    );
    println!(
        "  (then see them screened and matched to banks: ironlake sql \"SELECT demand_id, screening, recommended_banks FROM published.matching_list ORDER BY rank LIMIT 10\")"
    );
}

/// `ironlake demo`: the simulator and the daemon, a backfill of the plan's period, the indicators.
pub fn demo(opts: LoadOptions, listen: Listen, enterprises: usize) -> Result<ExitCode> {
    // Bind the simulator and set the feed's environment before any thread starts.
    let sim_listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind the simulator")?;
    let sim_addr = sim_listener.local_addr()?;
    let (feed_token, api_tokens) = demo_environment(&sim_addr)?;
    let project = crate::load_project(&opts)?;
    crate::runtime()?.block_on(async move {
        let api_addr = listen.api.unwrap_or_else(|| project.settings.api.listen.to_string());
        let listener = bind_or_free(&api_addr).await?;
        let api = listener.local_addr()?;
        let pg_addr = listen.pg.unwrap_or_else(|| project.settings.pg.listen.to_string());
        let pg_listener = bind_or_free(&pg_addr).await?;
        sim_listener.set_nonblocking(true)?;
        let sim_listener = tokio::net::TcpListener::from_std(sim_listener)?;
        let mut sim = ironlake::feedsim::SimOptions::new(2019, enterprises);
        sim.token = Some(feed_token.clone());
        let sim_stop = tokio_util::sync::CancellationToken::new();
        let stop = sim_stop.clone();
        tokio::spawn(ironlake::feedsim::serve(sim, sim_listener, async move { stop.cancelled().await }));
        let warehouse = project.settings.warehouse_dir.clone();
        let o2 = opts.clone();
        let daemon = tokio::task::spawn_blocking(move || Daemon::new(o2, project, Arc::new(SystemClock))).await??;
        let pg = pg_server(&daemon, pg_listener)?;
        let pg_addr = pg.1.local_addr()?;
        announce(&api, &pg)?;
        println!();
        println!("ironlake demo — Chongqing industry–finance cooperation data platform (产融合作)");
        println!("  partner feeds: simulator on http://{sim_addr} ({enterprises} enterprises, 2017Q1–2019Q4)");
        println!("  warehouse:     {}", warehouse.display());
        println!();
        println!("Backfilling the plan's period, 2017Q1–2019Q4:");
        demo_backfill(&daemon).await;
        demo_indicators(&daemon).await?;
        let env_file = write_demo_env(&opts, &sim_addr.to_string(), &feed_token, &api_tokens, &warehouse)?;
        demo_handover(&api, &pg_addr, &env_file, &api_tokens);
        std::io::stdout().flush()?;
        // Installed only now: Ctrl-C during the backfill still ends the demo at once.
        let signals = Signals::install();
        daemon.start_schedules();
        let code = serve_until_signal(daemon, listener, pg, DRAIN, signals).await;
        sim_stop.cancel();
        code
    })
}

/// The last ten runs as a table; a refresh shows the rows it wrote.
fn print_runs(runs: &[ironlake::warehouse::RunRecord]) {
    println!("recent runs:");
    println!(
        "  {:<23} {:<22} {:<9} {:<9} {:>9} {:>9} {:>9} {:>9}",
        "started (UTC)", "pipeline", "kind", "outcome", "records", "valid", "rejected", "changed"
    );
    for r in runs.iter().take(10) {
        let outcome = serde_json::to_value(r.outcome)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let started = r.started_at.format("%Y-%m-%d %H:%M:%S").to_string();
        // A refresh reads no records: it shows the rows it wrote.
        let (records, valid, rejected, changed) = if r.kind == ironlake::warehouse::RunType::Refresh
        {
            (
                "-".into(),
                "-".into(),
                "-".into(),
                r.rows_written.to_string(),
            )
        } else {
            (
                r.rows_in.to_string(),
                r.rows_valid.to_string(),
                r.rows_rejected.to_string(),
                r.rows_changed.to_string(),
            )
        };
        println!(
            "  {started:<23} {:<22} {:<9} {outcome:<9} {records:>9} {valid:>9} {rejected:>9} {changed:>9}",
            r.pipeline.chars().take(22).collect::<String>(),
            r.kind,
        );
        if let Some(e) = &r.error {
            println!("      error: {}", e.chars().take(200).collect::<String>());
        }
        if let Some(since) = &r.unchanged_since {
            println!("      unchanged: the delivery of run {since} again; nothing decoded");
        }
    }
}

/// `ironlake status`: recent runs and the freshness of each table.
pub fn status(project: &Project) -> Result<ExitCode> {
    let wh = ironlake::warehouse::Warehouse::open_read_only(&project.settings.warehouse_dir)
        .context("cannot open the warehouse")?;
    let manifest = wh.manifest()?;
    let runs = wh.runs()?;
    let now = chrono::Utc::now();
    println!(
        "warehouse {} — manifest version {} ({})",
        wh.root().display(),
        manifest.version,
        if manifest.version == 0 {
            "empty".to_string()
        } else {
            ironlake::warehouse::display_time(&manifest.committed_at)
        }
    );
    println!();
    println!(
        "{:<18} {:>10} {:>9} {:<10} {:<22} age",
        "table", "rows", "quarters", "latest", "last success"
    );
    for t in &project.tables {
        let s = ironlake::warehouse::TableStatus::of(&t.name, &manifest, &runs);
        let (rows, quarters) = (s.rows, s.quarters);
        let latest = s.latest_quarter.unwrap_or_else(|| "-".into());
        let (when, age) = match s.last_success {
            Some(t) => {
                let secs = (now - t).num_seconds().max(0);
                let age = if secs < 120 {
                    format!("{secs}s")
                } else if secs < 7200 {
                    format!("{}m", secs / 60)
                } else if secs < 172_800 {
                    format!("{}h", secs / 3600)
                } else {
                    format!("{}d", secs / 86_400)
                };
                (t.format("%Y-%m-%d %H:%M:%S").to_string(), age)
            }
            None => ("never".into(), "-".into()),
        };
        println!(
            "{:<18} {:>10} {:>9} {:<10} {:<22} {}",
            t.name, rows, quarters, latest, when, age
        );
    }
    println!();
    print_runs(&runs);
    Ok(ExitCode::SUCCESS)
}
