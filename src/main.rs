//! The `ironlake` binary: parses the command line, sets up logging and
//! signals, and calls the library.

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use ironlake::config::LoadOptions;
use std::path::PathBuf;
use std::process::ExitCode;

mod commands;
mod progress;
mod repl;

/// ironlake — the industrial operating-data warehouse daemon.
#[derive(Debug, Parser)]
#[command(name = "ironlake", version, about, long_about = None)]
struct Cli {
    /// Config file [default: ./ironlake.toml, else the embedded default].
    #[arg(long, global = true, env = "IRONLAKE_CONFIG")]
    config: Option<PathBuf>,
    /// Warehouse directory; overrides the config's `warehouse.dir`.
    #[arg(long, global = true, env = "IRONLAKE_WAREHOUSE")]
    warehouse: Option<PathBuf>,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate config, schemas and pipelines; list every problem with file:line.
    Check,
    /// Serve realistic partner feeds for every table (the partner stand-in).
    FeedSim(ironlake::feedsim::SimOptions),
    /// Act as the enterprise portal: many enterprises pushing financing applications; prints a JSON report.
    PortalSim(ironlake::feedsim::portal::PortalOptions),
    /// Run pipelines once now.
    Ingest {
        /// Pipelines to run.
        pipelines: Vec<String>,
        /// Run every pipeline.
        #[arg(long)]
        all: bool,
    },
    /// Re-pull a quarter range of one pipeline.
    Backfill {
        /// Pipeline to backfill.
        pipeline: String,
        /// First quarter, e.g. 2017Q1.
        #[arg(long)]
        from: ironlake::domain::Quarter,
        /// Last quarter, e.g. 2019Q4.
        #[arg(long)]
        to: ironlake::domain::Quarter,
    },
    /// Read-only SQL over the warehouse; a REPL without a query.
    Sql {
        /// The query.
        query: Option<String>,
        /// Result format.
        #[arg(long, value_enum, default_value_t = ironlake::query::OutputFormat::Table)]
        format: ironlake::query::OutputFormat,
        /// Write results to this file instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Print the time taken (planning and execution) to stderr.
        #[arg(long)]
        timing: bool,
    },
    /// Recompute published aggregates (incrementally unless --full).
    Refresh {
        /// Aggregates to refresh (all when empty), with what they read.
        aggregates: Vec<String>,
        /// Rebuild from scratch instead of recomputing changed quarters.
        #[arg(long)]
        full: bool,
    },
    /// Load a local file into a table through the same validation and commit as a feed.
    Import {
        /// Target table.
        table: String,
        /// The file.
        file: PathBuf,
        /// Its format.
        #[arg(long, value_enum)]
        format: ironlake::config::pipeline::Format,
    },
    /// The daemon: schedules, HTTP API, metrics.
    Run {
        /// Address of the HTTP API [default: the config's api.listen]; port 0 picks a free one.
        #[arg(long)]
        listen: Option<String>,
        /// Address of the PostgreSQL protocol [default: the config's pg.listen]; port 0 picks a free one.
        #[arg(long)]
        pg_listen: Option<String>,
        /// Seconds runs in flight get to finish after SIGTERM/SIGINT before they are abandoned.
        #[arg(long, default_value_t = 30)]
        drain_secs: u64,
    },
    /// Simulator + daemon on the embedded default, one command.
    Demo {
        /// Address of the HTTP API [default: the config's api.listen, else a free port].
        #[arg(long)]
        listen: Option<String>,
        /// Address of the PostgreSQL protocol [default: the config's pg.listen, else a free port].
        #[arg(long)]
        pg_listen: Option<String>,
        /// Enterprises in the simulated city.
        #[arg(long, default_value_t = 7000)]
        enterprises: usize,
    },
    /// Recent runs and the freshness of each table.
    Status,
}

fn init_logging(format: LogFormat, progress_bar: bool) {
    use std::io::IsTerminal as _;
    // Under a progress bar on a terminal, only warnings and errors are logged
    // (IRONLAKE_LOG still decides when set).
    let default = if progress_bar && std::io::stderr().is_terminal() {
        "warn"
    } else {
        "info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("IRONLAKE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour only for a person at a terminal, and never with NO_COLOR set.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

/// Resolves when SIGINT or SIGTERM arrives.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn feed_sim(opts: ironlake::feedsim::SimOptions) -> Result<ExitCode> {
    use std::io::Write as _;
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&opts.listen)
            .await
            .with_context(|| format!("cannot listen on {}", opts.listen))?;
        let addr = listener.local_addr()?;
        println!("listening on http://{addr}");
        std::io::stdout().flush()?;
        tracing::info!(%addr, seed = opts.seed, enterprises = opts.enterprises, faults = ?opts.faults, "Feed simulator serving.");
        ironlake::feedsim::serve(opts, listener, shutdown_signal()).await?;
        Ok(ExitCode::SUCCESS)
    })
}

fn catalog(
    project: ironlake::config::Project,
    read_only: bool,
) -> Result<ironlake::catalog::Catalog> {
    let dir = &project.settings.warehouse_dir;
    let wh = if read_only {
        ironlake::warehouse::Warehouse::open_read_only(dir)
    } else {
        ironlake::warehouse::Warehouse::open_with(dir, project.settings.superseded_retention)
    }
    .context("cannot open the warehouse")?;
    Ok(ironlake::catalog::Catalog::new(
        std::sync::Arc::new(project),
        wh,
    )?)
}

async fn sql(
    project: ironlake::config::Project,
    query: Option<String>,
    format: ironlake::query::OutputFormat,
    output: Option<PathBuf>,
    timing: bool,
) -> Result<ExitCode> {
    let catalog = catalog(project, true)?;
    let started = std::time::Instant::now();
    let Some(query) = query else {
        return repl::run(&catalog, format).await;
    };
    if format == ironlake::query::OutputFormat::Parquet && output.is_none() {
        anyhow::bail!("--format parquet writes a file: add --output FILE");
    }
    let snapshot = catalog.snapshot().await?;
    let df = match ironlake::query::sql(&snapshot, &query).await {
        Ok(df) => df,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let out: Box<dyn std::io::Write + Send> = match &output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    match ironlake::query::write_results(df, format, out).await {
        Ok(rows) => {
            if let Some(p) = output {
                eprintln!("{rows} rows written to {}", p.display());
            }
            if timing {
                eprintln!("Time: {:.3} s", started.elapsed().as_secs_f64());
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

async fn refresh(
    project: ironlake::config::Project,
    names: Vec<String>,
    full: bool,
) -> Result<ExitCode> {
    let catalog = catalog(project, false)?;
    match ironlake::models::refresh(&catalog, &names, full).await {
        Ok(report) => {
            for r in report {
                let quarters = if r.quarters.is_empty() {
                    String::new()
                } else if r.quarters.len() <= 6 {
                    format!(" [{}]", r.quarters.join(", "))
                } else {
                    format!(
                        " [{} … {}, {} quarters]",
                        r.quarters[0],
                        r.quarters[r.quarters.len() - 1],
                        r.quarters.len()
                    )
                };
                println!(
                    "{}: {}{quarters}, {} rows, version {}, {:.1} s",
                    r.name, r.mode, r.rows, r.version, r.secs
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("refresh failed, nothing published: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn import(
    project: &ironlake::config::Project,
    table: &str,
    file: &std::path::Path,
    format: ironlake::config::pipeline::Format,
) -> Result<ExitCode> {
    let wh = ironlake::warehouse::Warehouse::open_with(
        &project.settings.warehouse_dir,
        project.settings.superseded_retention,
    )
    .context("cannot open the warehouse")?;

    let f = std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    // A regular file is mapped rather than copied into memory chunk by chunk.
    let mapped = ironlake::warehouse::fsutil::MappedFile::open(&f)
        .with_context(|| format!("cannot map {}", file.display()))?;
    let mut reader = std::io::BufReader::new(f);
    let source = match mapped {
        Some(m) => ironlake::ingest::ImportSource::Mapped(m),
        None => ironlake::ingest::ImportSource::Reader(&mut reader),
    };
    match ironlake::ingest::import(
        project,
        &wh,
        table,
        format,
        &file.display().to_string(),
        source,
    ) {
        Ok(r) if r.unchanged_since.is_some() => {
            println!(
                "{table}: unchanged run {} — {} is the file run {} imported and the table is as it left it; nothing decoded, 0 rows new or changed in 0 partitions",
                r.run_id,
                file.display(),
                r.unchanged_since.as_deref().unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(r) => {
            println!(
                "{table}: committed run {} — {} records in, {} valid, {} rejected, {} rows new or changed in {} partitions",
                r.run_id,
                r.rows_in,
                r.rows_valid,
                r.rows_rejected,
                r.rows_changed,
                r.partitions_touched.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!(
                "{table}: import failed ({}), nothing committed: {e}",
                e.actor().describe()
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// Loads the project or fails with every problem listed.
pub(crate) fn load_project(opts: &LoadOptions) -> Result<ironlake::config::Project> {
    let report = ironlake::config::load(opts);
    match report.project {
        Some(p) => Ok(p),
        None => anyhow::bail!(
            "the configuration has errors (run `ironlake check` for the full report):\n{}",
            report.errors_text()
        ),
    }
}

fn ingest(
    project: &ironlake::config::Project,
    names: Vec<String>,
    kind: ironlake::ingest::RunKind,
) -> Result<ExitCode> {
    use std::io::IsTerminal as _;
    let wh = ironlake::warehouse::Warehouse::open_with(
        &project.settings.warehouse_dir,
        project.settings.superseded_retention,
    )
    .context("cannot open the warehouse")?;
    let progress = progress::reporter(std::io::stderr().is_terminal());
    // Independent pipelines run side by side, up to `ingest.max_concurrent_runs`.
    let slots = project.settings.ingest.max_concurrent_runs.max(1) as usize;
    let failed = runtime()?.block_on(async {
        use futures::StreamExt as _;
        let runs = futures::stream::iter(names.iter()).map(|name| {
            let progress = progress.clone();
            let wh = &wh;
            async move {
                let r = ironlake::ingest::run(project, wh, name, kind, Some(progress)).await;
                (name, r)
            }
        });
        let mut runs = runs.buffer_unordered(slots);
        let mut failed = 0;
        while let Some((name, result)) = runs.next().await {
            progress::clear();
            match result {
                Ok(r) if r.unchanged_since.is_some() => println!(
                    "{name}: unchanged run {} — every page answered 304 Not Modified to the ETags of run {}, whose delivery the table still holds; nothing decoded, 0 rows new or changed in 0 partitions ({} requests, {} retries)",
                    r.run_id,
                    r.unchanged_since.as_deref().unwrap_or_default(),
                    r.requests,
                    r.retries
                ),
                Ok(r) => println!(
                    "{name}: committed run {} — {} records in, {} valid, {} rejected, {} rows new or changed in {} partitions ({} requests, {} retries)",
                    r.run_id,
                    r.rows_in,
                    r.rows_valid,
                    r.rows_rejected,
                    r.rows_changed,
                    r.partitions_touched.len(),
                    r.requests,
                    r.retries
                ),
                Err(e) => {
                    eprintln!(
                        "{name}: run failed ({}), nothing committed: {e}",
                        e.actor().describe()
                    );
                    failed += 1;
                }
            }
        }
        failed
    });
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Freed heap memory above the top of glibc's heaps, kept for reuse.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_TRIM_THRESHOLD: usize = 128 << 20;

/// How much more than asked glibc takes each time a heap grows.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_TOP_PAD: usize = 32 << 20;

/// Arenas glibc may create: each keeps its own freed memory, so with one per
/// thread (up to 8 a core by default) what is kept grew with the run.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_ARENA_MAX: usize = 4;

/// The allocator set-up of the commands that land data: blocks of 1 MiB
/// and more are given back when freed
/// ([`ironlake::primitives::return_large_blocks`]), and below that glibc
/// keeps up to [`MALLOC_TRIM_THRESHOLD`] of freed
/// memory (and grows its heaps [`MALLOC_TOP_PAD`] at a time) instead of
/// returning it to the kernel as soon as a page's buffers are freed: every
/// decoded chunk's buffers were handed back and faulted in again for the
/// next one (about 370,000 page faults and 3 s of system time for a 5M-row
/// CSV import; about 130,000 and 1.6 s with this, for about 40 MB more
/// peak RSS).
///
/// The commands that land data ask for it (`import`, `ingest`, `backfill`);
/// the daemon keeps glibc's defaults. An HTTP backfill (5.1M loan rows,
/// alternating runs with and without): system time 0.9–1.1 s → 0.4–0.55 s,
/// wall time 6% lower, peak RSS 155–164 → 165–182 MB, and 173–174 MB at a
/// quarter of the rows, so memory stays flat. (An earlier measurement, with
/// a smaller ingest working set, found no gain and a peak growing with the
/// rows: 129–139 MB for 5.1M rows against 93–101 MB for 1.3M.) At most
/// [`MALLOC_ARENA_MAX`] arenas bound what is kept: a backfill of 10.7M loan
/// rows over 16 quarters peaked at 191–205 MB against 162–172 MB for 1.3M
/// rows (1.16–1.26×; 198–231 MB against 163–179 MB, 1.19–1.31×, with
/// glibc's default number of arenas; 1.19–1.21× before this setting).
/// An operator's own `MALLOC_TRIM_THRESHOLD_`, `MALLOC_TOP_PAD_` or
/// `MALLOC_ARENA_MAX` wins.
fn allocator_for_ingest() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set = |var: &str| std::env::var_os(var).is_some();
        if !set("MALLOC_TRIM_THRESHOLD_") && !set("MALLOC_TOP_PAD_") {
            // SAFETY: mallopt only sets allocator parameters; called before
            // any other thread starts.
            unsafe {
                libc::mallopt(libc::M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD as libc::c_int);
                libc::mallopt(libc::M_TOP_PAD, MALLOC_TOP_PAD as libc::c_int);
            }
        }
        if !set("MALLOC_ARENA_MAX") {
            // SAFETY: as above.
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENA_MAX as libc::c_int);
            }
        }
    }
    ironlake::primitives::return_large_blocks();
}

fn main() -> Result<ExitCode> {
    // Like other Unix tools, stop quietly when the reader of our output goes away (`| head`).
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        // Past a file-size limit (`ulimit -f`), a write should fail with
        // EFBIG and the commit roll back, not kill the process.
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let cli = Cli::parse();
    let progress_bar = matches!(
        cli.command,
        Command::Ingest { .. } | Command::Backfill { .. } | Command::Demo { .. }
    );
    init_logging(cli.log_format, progress_bar);
    let opts = LoadOptions {
        config: cli.config.clone(),
        warehouse: cli.warehouse.clone(),
    };
    match cli.command {
        Command::Check => {
            let outcome = runtime()?.block_on(ironlake::check::run(&opts));
            print!("{}", outcome.stdout);
            eprint!("{}", outcome.stderr);
            Ok(ExitCode::from(outcome.exit_code as u8))
        }
        Command::FeedSim(sim) => feed_sim(sim),
        Command::PortalSim(opts) => runtime()?.block_on(async move {
            let report = ironlake::feedsim::portal::run(opts)
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }),
        Command::Ingest { pipelines, all } => {
            allocator_for_ingest();
            let project = load_project(&opts)?;
            let names: Vec<String> = if all {
                project.pipelines.iter().map(|p| p.name.clone()).collect()
            } else if pipelines.is_empty() {
                anyhow::bail!("name the pipelines to run, or pass --all");
            } else {
                pipelines
            };
            ingest(&project, names, ironlake::ingest::RunKind::Ingest)
        }
        Command::Backfill { pipeline, from, to } => {
            if to < from {
                anyhow::bail!("--to {to} is before --from {from}");
            }
            allocator_for_ingest();
            let project = load_project(&opts)?;
            ingest(
                &project,
                vec![pipeline],
                ironlake::ingest::RunKind::Backfill { from, to },
            )
        }
        Command::Sql {
            query,
            format,
            output,
            timing,
        } => {
            let project = load_project(&opts)?;
            runtime()?.block_on(sql(project, query, format, output, timing))
        }
        Command::Refresh { aggregates, full } => {
            let project = load_project(&opts)?;
            runtime()?.block_on(refresh(project, aggregates, full))
        }
        Command::Import {
            table,
            file,
            format,
        } => {
            allocator_for_ingest();
            let project = load_project(&opts)?;
            import(&project, &table, &file, format)
        }
        Command::Run {
            listen,
            pg_listen,
            drain_secs,
        } => {
            let project = load_project(&opts)?;
            runtime()?.block_on(commands::run(
                opts,
                project,
                commands::Listen {
                    api: listen,
                    pg: pg_listen,
                },
                drain_secs,
            ))
        }
        Command::Demo {
            listen,
            pg_listen,
            enterprises,
        } => commands::demo(
            opts,
            commands::Listen {
                api: listen,
                pg: pg_listen,
            },
            enterprises,
        ),
        Command::Status => {
            let project = load_project(&opts)?;
            commands::status(&project)
        }
    }
}
