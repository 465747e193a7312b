//! The daemon: schedules each pipeline by its cron expression and time zone,
//! never runs a pipeline twice at once, catches up after downtime by the
//! pipeline's policy, refreshes the aggregates that read what an ingest
//! changed, holds a global concurrency limit, reloads on SIGHUP, and shuts
//! down gracefully.

use crate::catalog::Catalog;
use crate::config::pipeline::{CatchUp, Schedule};
use crate::config::{self, LoadOptions, Project};
use crate::ingest::{self, RunKind};
use crate::metrics::Metrics;
use crate::models;
use crate::warehouse::{Outcome, Warehouse};
use chrono::{DateTime, Utc};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A source of the current time (a paused-time clock in tests).
pub trait Clock: Send + Sync {
    /// Now, in UTC.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that follows tokio's (possibly paused) time from a fixed start.
#[derive(Debug, Clone)]
pub struct TokioClock {
    base: DateTime<Utc>,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `base` now.
    pub fn new(base: DateTime<Utc>) -> TokioClock {
        TokioClock {
            base,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        self.base + chrono::Duration::from_std(self.start.elapsed()).unwrap_or_default()
    }
}

/// The next time a schedule fires strictly after `after`.
pub fn next_fire(s: &Schedule, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    s.cron
        .after(&after.with_timezone(&s.time_zone))
        .next()
        .map(|t| t.with_timezone(&Utc))
}

/// What to do at startup about runs missed while the daemon was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUpDecision {
    /// No fire time passed since the last successful run.
    NothingMissed,
    /// Runs were missed and the policy is `run_once`: run once now (a
    /// pipeline that never succeeded counts as missed).
    RunOnce,
    /// Runs were missed and the policy is `skip`.
    Skip,
}

/// Decides catch-up for a schedule, the one place this is decided.
pub fn catch_up(
    s: &Schedule,
    last_run: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> CatchUpDecision {
    let missed = last_run.is_none_or(|l| next_fire(s, l).is_some_and(|n| n <= now));
    match (missed, s.catch_up) {
        (false, _) => CatchUpDecision::NothingMissed,
        (true, CatchUp::RunOnce) => CatchUpDecision::RunOnce,
        (true, CatchUp::Skip) => CatchUpDecision::Skip,
    }
}

/// Whether a run falls due at startup (see [`catch_up`]).
pub fn catch_up_due(s: &Schedule, last_run: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    catch_up(s, last_run, now) == CatchUpDecision::RunOnce
}

/// What happened when a run fell due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fire {
    /// A run started.
    Started,
    /// The previous run is still in flight; this one was skipped.
    SkippedRunning,
    /// The daemon is shutting down.
    Stopped,
}

/// Runs `on_fire` at every fire time of `s` until `cancel`; returns the number of fires.
pub async fn schedule_loop(
    s: Schedule,
    clock: Arc<dyn Clock>,
    cancel: CancellationToken,
    mut on_fire: impl FnMut(DateTime<Utc>) -> Fire + Send,
) -> u64 {
    let mut fires = 0;
    let mut after = clock.now();
    loop {
        let Some(next) = next_fire(&s, after) else {
            return fires;
        };
        let wait = (next - clock.now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = cancel.cancelled() => return fires,
            _ = tokio::time::sleep(wait) => {}
        }
        fires += 1;
        if on_fire(next) == Fire::Stopped {
            return fires;
        }
        after = next;
    }
}

/// Why a run could not be started.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TriggerError {
    /// No such pipeline.
    #[error("no pipeline named {0:?}")]
    Unknown(String),
    /// A run of it is in flight.
    #[error("pipeline {0} is already running")]
    Running(String),
    /// The daemon is shutting down.
    #[error("the daemon is shutting down")]
    ShuttingDown,
}

/// Why a reload was refused (the previous configuration stays in force).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The files have errors (every one, a line each).
    #[error("{0}")]
    Config(String),
    /// A token cannot be used.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The SQL engine could not be set up.
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
}

/// Why an API token cannot be used (the operator must fix the file).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file cannot be read.
    #[error("cannot read the token file {}: {source}", path.display())]
    Unreadable {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The token file can be read by other users.
    #[error("the token file {} can be read by other users (mode {mode:o}); run `chmod 600 {}`", path.display(), path.display())]
    Exposed {
        /// The file.
        path: std::path::PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The token file holds nothing.
    #[error("the token file {} is empty", path.display())]
    Empty {
        /// The file.
        path: std::path::PathBuf,
    },
}

/// API bearer tokens by role.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    /// Admin token: trigger runs, reload.
    pub admin: Option<String>,
    /// Analyst token: SQL.
    pub analyst: Option<String>,
    /// Viewer token: aggregates.
    pub viewer: Option<String>,
    /// Partners' tokens: each may push to its pipelines and nothing else.
    pub partners: Vec<PartnerToken>,
}

/// A partner's token and what it may push to.
#[derive(Debug, Clone)]
pub struct PartnerToken {
    /// Partner name.
    pub name: String,
    /// Its token.
    pub token: String,
    /// Push pipelines it may push to.
    pub pipelines: Vec<String>,
}

impl Tokens {
    /// Tokens from the environment (`IRONLAKE_TOKEN_*`, surrounding
    /// whitespace trimmed) or the files the config names. A named file that
    /// cannot be read or is empty is an error (the role would silently be
    /// locked out); a file others can read is refused too.
    pub fn load(project: &Project) -> Result<Tokens, TokenError> {
        let api = &project.settings.api;
        let mut partners = Vec::new();
        for p in &api.partners {
            let env = p.token_env.as_deref().unwrap_or("");
            match read_token(env, p.token_file.as_deref())? {
                Some(token) => partners.push(PartnerToken {
                    name: p.name.clone(),
                    token,
                    pipelines: p.pipelines.clone(),
                }),
                None => tracing::warn!(
                    partner = %p.name,
                    token_env = env,
                    "The partner has no token (its variable is unset and no file is named); it cannot push until it has one."
                ),
            }
        }
        Ok(Tokens {
            admin: read_token("IRONLAKE_TOKEN_ADMIN", api.admin_token_file.as_deref())?,
            analyst: read_token("IRONLAKE_TOKEN_ANALYST", api.analyst_token_file.as_deref())?,
            viewer: read_token("IRONLAKE_TOKEN_VIEWER", api.viewer_token_file.as_deref())?,
            partners,
        })
    }
}

/// One role's token: the environment first, then the configured file.
fn read_token(env: &str, file: Option<&std::path::Path>) -> Result<Option<String>, TokenError> {
    if !env.is_empty()
        && let Ok(v) = std::env::var(env)
        && !v.trim().is_empty()
    {
        return Ok(Some(v.trim().to_string()));
    }
    let Some(file) = file else {
        return Ok(None);
    };
    let unreadable = |source| TokenError::Unreadable {
        path: file.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(file).map_err(unreadable)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(TokenError::Exposed {
                path: file.to_path_buf(),
                mode: mode & 0o777,
            });
        }
    }
    let text = std::fs::read_to_string(file).map_err(unreadable)?;
    match text.trim() {
        "" => Err(TokenError::Empty {
            path: file.to_path_buf(),
        }),
        t => Ok(Some(t.to_string())),
    }
}

/// One pipeline's totals over the run history.
#[derive(Default)]
struct RunTotals {
    succeeded: u64,
    failed: u64,
    aborted: u64,
    rows_in: u64,
    rows_valid: u64,
    rows_rejected: u64,
    bytes: u64,
    retries: u64,
    last_success: Option<f64>,
}

/// Marks a pipeline as running until dropped.
struct RunningSlot {
    daemon: Arc<Daemon>,
    name: String,
}

impl Drop for RunningSlot {
    fn drop(&mut self) {
        self.daemon
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.name);
    }
}

/// The daemon's shared state.
pub struct Daemon {
    opts: LoadOptions,
    project: RwLock<Arc<Project>>,
    catalog: RwLock<Catalog>,
    wh: Warehouse,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    running: Mutex<HashSet<String>>,
    permits: Arc<tokio::sync::Semaphore>,
    refresh_lock: tokio::sync::Mutex<()>,
    ready: AtomicBool,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    clock: Arc<dyn Clock>,
    tokens: RwLock<Tokens>,
    schedules: Mutex<CancellationToken>,
    /// Each aggregate's definition (its SQL header), read with the project.
    definitions: RwLock<Arc<std::collections::BTreeMap<String, models::Definition>>>,
    /// Slots for API SQL queries (`api.sql_max_concurrent`, read at start).
    sql_permits: Arc<tokio::sync::Semaphore>,
    /// Encoded aggregate responses by representation (`api.response_cache_mb`).
    responses: crate::serve::ResponseCache,
    /// Dashboard login sessions (in memory: a restart logs everyone out).
    sessions: crate::dashboard::Sessions,
    /// Pushed records: queues, group commits, idempotency answers.
    intake: crate::intake::Intake,
    /// Held for the daemon's life: a second daemon on the warehouse refuses to start.
    _daemon_lock: crate::warehouse::fsutil::FileLock,
}

impl Daemon {
    /// Opens the warehouse (recovering it) and builds the daemon.
    pub fn new(
        opts: LoadOptions,
        project: Project,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Arc<Daemon>> {
        let wh = Warehouse::open_with(
            &project.settings.warehouse_dir,
            project.settings.superseded_retention,
        )?;
        let daemon_lock = wh.lock_daemon(&format!(
            "pid {}, started {}",
            std::process::id(),
            crate::warehouse::display_time(&crate::warehouse::now())
        ))?;
        let project = Arc::new(project);
        let sql_slots = project.settings.api.sql_max_concurrent;
        let cache_bytes = (project.settings.api.response_cache_mb as usize) << 20;
        let catalog = Catalog::new(project.clone(), wh.clone())?;
        let metrics = Arc::new(Metrics::new());
        let tokens = Tokens::load(&project)?;
        let permits = Arc::new(tokio::sync::Semaphore::new(
            project.settings.ingest.max_concurrent_runs as usize,
        ));
        let d = Arc::new(Daemon {
            opts,
            definitions: RwLock::new(Arc::new(models::definitions(&project))),
            project: RwLock::new(project),
            catalog: RwLock::new(catalog),
            wh,
            metrics,
            running: Mutex::new(HashSet::new()),
            permits,
            refresh_lock: tokio::sync::Mutex::new(()),
            ready: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            clock,
            tokens: RwLock::new(tokens),
            schedules: Mutex::new(CancellationToken::new()),
            sql_permits: Arc::new(tokio::sync::Semaphore::new(sql_slots)),
            responses: crate::serve::ResponseCache::new(cache_bytes),
            sessions: crate::dashboard::Sessions::default(),
            intake: crate::intake::Intake::default(),
            _daemon_lock: daemon_lock,
        });
        d.sync_run_metrics();
        Ok(d)
    }

    /// Sets the run counters and last-success gauges from the run history,
    /// so they count the runs of every ironlake process on this warehouse
    /// (CLI backfills, the demo, an earlier daemon) and survive restarts.
    /// They cover the history kept (the last 1000 runs of each pipeline).
    pub fn sync_run_metrics(&self) {
        let runs = match self.wh.runs_shared() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot read the run history for /metrics.");
                return;
            }
        };
        let project = self.project();
        let mut per: std::collections::BTreeMap<&str, RunTotals> = project
            .pipelines
            .iter()
            .map(|p| (p.name.as_str(), RunTotals::default()))
            .collect();
        for r in runs
            .iter()
            .filter(|r| r.kind != crate::warehouse::RunType::Refresh)
        {
            let t = per.entry(r.pipeline.as_str()).or_default();
            match r.outcome {
                Outcome::Succeeded => {
                    t.succeeded += 1;
                    let ended = r.ended_at.map(|e| e.timestamp_millis() as f64 / 1000.0);
                    if let Some(e) = ended {
                        t.last_success = Some(t.last_success.map_or(e, |l| l.max(e)));
                    }
                }
                Outcome::Failed => t.failed += 1,
                Outcome::Aborted => t.aborted += 1,
                Outcome::Running => continue,
            }
            t.rows_in += r.rows_in;
            t.rows_valid += r.rows_valid;
            t.rows_rejected += r.rows_rejected;
            t.bytes += r.bytes;
            t.retries += r.retries;
        }
        let m = &self.metrics;
        for (p, t) in per {
            for (outcome, n) in [
                ("succeeded", t.succeeded),
                ("failed", t.failed),
                ("aborted", t.aborted),
            ] {
                m.set(
                    crate::metrics::Metric::PipelineRuns,
                    &[("pipeline", p), ("outcome", outcome)],
                    n as f64,
                );
            }
            for (kind, n) in [
                ("in", t.rows_in),
                ("valid", t.rows_valid),
                ("rejected", t.rows_rejected),
            ] {
                m.set(
                    crate::metrics::Metric::PipelineRows,
                    &[("pipeline", p), ("kind", kind)],
                    n as f64,
                );
            }
            m.set(
                crate::metrics::Metric::PipelineBytes,
                &[("pipeline", p)],
                t.bytes as f64,
            );
            m.set(
                crate::metrics::Metric::PipelineRetries,
                &[("pipeline", p)],
                t.retries as f64,
            );
            if let Some(ts) = t.last_success {
                m.set(
                    crate::metrics::Metric::PipelineLastSuccess,
                    &[("pipeline", p)],
                    ts,
                );
            }
            // Exposed from the start, so an alert on it has data.
            m.inc(
                crate::metrics::Metric::PipelineRunsSkipped,
                &[("pipeline", p)],
                0.0,
            );
        }
    }

    /// The current project.
    pub fn project(&self) -> Arc<Project> {
        self.project.read().expect("project lock").clone()
    }

    /// Each aggregate's definition, by name, as loaded at start or the last reload.
    pub fn aggregate_definitions(
        &self,
    ) -> Arc<std::collections::BTreeMap<String, models::Definition>> {
        self.definitions.read().expect("definitions lock").clone()
    }

    /// The current catalog.
    pub fn catalog(&self) -> Catalog {
        self.catalog.read().expect("catalog lock").clone()
    }

    /// The warehouse.
    pub fn warehouse(&self) -> &Warehouse {
        &self.wh
    }

    /// API tokens.
    pub fn tokens(&self) -> Tokens {
        self.tokens.read().expect("tokens lock").clone()
    }

    /// Whether the warehouse is recovered and schedules are loaded.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Pipelines with a run in flight.
    pub fn running(&self) -> HashSet<String> {
        self.running.lock().expect("running lock").clone()
    }

    /// The daemon's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Starts a run of `pipeline` now, unless one is in flight.
    pub fn trigger(self: &Arc<Self>, pipeline: &str, kind: RunKind) -> Result<(), TriggerError> {
        if self.shutdown.is_cancelled() {
            return Err(TriggerError::ShuttingDown);
        }
        let project = self.project();
        if project.pipeline(pipeline).is_none() {
            return Err(TriggerError::Unknown(pipeline.to_string()));
        }
        if !self
            .running
            .lock()
            .expect("running lock")
            .insert(pipeline.to_string())
        {
            return Err(TriggerError::Running(pipeline.to_string()));
        }
        let me = self.clone();
        let name = pipeline.to_string();
        self.tracker.spawn(async move {
            // Frees the pipeline's slot however the task ends, a panic included.
            let _slot = RunningSlot {
                daemon: me.clone(),
                name: name.clone(),
            };
            let permit = tokio::select! {
                p = me.permits.clone().acquire_owned() => p.ok(),
                _ = me.shutdown.cancelled() => None,
            };
            if permit.is_some() {
                let run = std::panic::AssertUnwindSafe(me.run_pipeline(&project, &name, kind));
                if let Err(payload) = futures::FutureExt::catch_unwind(run).await {
                    tracing::error!(
                        pipeline = %name,
                        panic = %ingest::panic_message(payload.as_ref()),
                        "A run panicked after it ended (a bug); the daemon keeps serving."
                    );
                }
            }
        });
        Ok(())
    }

    async fn run_pipeline(self: &Arc<Self>, project: &Arc<Project>, name: &str, kind: RunKind) {
        let started = std::time::Instant::now();
        let result = ingest::run(project, &self.wh, name, kind, None).await;
        let secs = started.elapsed().as_secs_f64();
        let m = &self.metrics;
        m.observe(
            crate::metrics::Metric::PipelineRunDuration,
            &[("pipeline", name)],
            secs,
        );
        // Run counts, rows and last success come from the run history (see
        // `sync_run_metrics`); only what the history does not hold is counted here.
        match result {
            Ok(r) => {
                if !r.partitions_touched.is_empty() {
                    self.refresh_for_table(&r.table).await;
                }
            }
            Err(ingest::IngestError::AlreadyRunning(_)) => {
                m.inc(
                    crate::metrics::Metric::PipelineRunsSkipped,
                    &[("pipeline", name)],
                    1.0,
                );
            }
            Err(e) => {
                tracing::debug!(pipeline = name, error = %e, "Run failed.");
            }
        }
    }

    /// Refreshes the aggregates that read `table`, and those that read them.
    pub async fn refresh_for_table(&self, table: &str) {
        let names = models::readers_of(&self.project(), table);
        if !names.is_empty() {
            self.refresh(&names, false).await;
        }
    }

    /// Refreshes aggregates (one refresh at a time), recording metrics.
    pub async fn refresh(&self, names: &[String], full: bool) -> Option<Vec<models::Refreshed>> {
        let _one = self.refresh_lock.lock().await;
        let started = std::time::Instant::now();
        let catalog = self.catalog();
        match models::refresh(&catalog, names, full).await {
            Ok(report) => {
                let secs = started.elapsed().as_secs_f64();
                for r in &report {
                    if r.mode != models::RefreshMode::Unchanged {
                        self.metrics.set(
                            crate::metrics::Metric::AggregateRefreshDuration,
                            &[("aggregate", &r.name)],
                            r.secs,
                        );
                    }
                    self.metrics.set(
                        crate::metrics::Metric::AggregatePublishedVersion,
                        &[("aggregate", &r.name)],
                        r.version as f64,
                    );
                }
                tracing::info!(aggregates = report.len(), secs, "Refreshed aggregates.");
                Some(report)
            }
            Err(e) => {
                tracing::error!(error = %e, "Refresh failed; the previous versions stay published.");
                None
            }
        }
    }

    /// Starts (or restarts) one scheduling task per pipeline, with catch-up.
    pub fn start_schedules(self: &Arc<Self>) {
        let cancel = {
            let mut s = self.schedules.lock().expect("schedules lock");
            s.cancel();
            *s = self.shutdown.child_token();
            s.clone()
        };
        let project = self.project();
        let runs = self.wh.runs().unwrap_or_default();
        let now = self.clock.now();
        for p in &project.pipelines {
            let last = runs
                .iter()
                .filter(|r| r.pipeline == p.name && r.outcome == Outcome::Succeeded)
                .map(|r| r.started_at)
                .max();
            match catch_up(&p.schedule, last, now) {
                CatchUpDecision::RunOnce => {
                    tracing::info!(pipeline = %p.name, "Runs were missed while the daemon was down; running once now (catch_up = run_once).");
                    let _ = self.trigger(&p.name, RunKind::Ingest);
                }
                CatchUpDecision::Skip if last.is_some() => {
                    tracing::info!(pipeline = %p.name, "Runs were missed while the daemon was down; skipping them (catch_up = skip).");
                }
                _ => {}
            }
            let me = self.clone();
            let name = p.name.clone();
            let schedule = p.schedule.clone();
            let clock = self.clock.clone();
            let cancel = cancel.clone();
            self.tracker.spawn(async move {
                schedule_loop(schedule, clock, cancel, |at| match me.trigger(&name, RunKind::Ingest) {
                    Ok(()) => {
                        tracing::debug!(pipeline = %name, due = %at, "Scheduled run started.");
                        Fire::Started
                    }
                    Err(TriggerError::Running(_)) => {
                        me.metrics.inc(crate::metrics::Metric::PipelineRunsSkipped, &[("pipeline", &name)], 1.0);
                        tracing::warn!(pipeline = %name, due = %at, "Skipped a scheduled run: the previous run is still in flight.");
                        Fire::SkippedRunning
                    }
                    Err(_) => Fire::Stopped,
                })
                .await;
            });
        }
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Reloads configuration and pipelines; invalid files leave the old ones running.
    pub fn reload(self: &Arc<Self>) -> Result<usize, ReloadError> {
        let report = config::load(&self.opts);
        let Some(project) = report.project else {
            let errors = report.errors_text();
            tracing::error!(errors = %errors, "Reload refused: the configuration has errors; the previous pipelines keep running.");
            return Err(ReloadError::Config(errors));
        };
        let project = Arc::new(project);
        let catalog = Catalog::new(project.clone(), self.wh.clone())?;
        let n = project.pipelines.len();
        let tokens = Tokens::load(&project)?;
        *self.tokens.write().expect("tokens lock") = tokens;
        *self.catalog.write().expect("catalog lock") = catalog;
        *self.definitions.write().expect("definitions lock") =
            Arc::new(models::definitions(&project));
        *self.project.write().expect("project lock") = project;
        self.start_schedules();
        tracing::info!(pipelines = n, "Reloaded the configuration.");
        Ok(n)
    }

    /// Stops scheduling, lets runs finish within `deadline`; returns whether all finished.
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        self.shutdown.cancel();
        self.tracker.close();
        let finished = tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok();
        if !finished {
            tracing::warn!(
                deadline_secs = deadline.as_secs(),
                "Runs still in flight at the shutdown deadline were abandoned; nothing of them is committed unless their commit had begun, and the next start recovers."
            );
        }
        finished
    }

    /// The intake of pushed records.
    pub fn intake(&self) -> &crate::intake::Intake {
        &self.intake
    }

    /// The dashboard's login sessions.
    pub fn sessions(&self) -> &crate::dashboard::Sessions {
        &self.sessions
    }

    /// The cache of encoded aggregate responses.
    pub fn responses(&self) -> &crate::serve::ResponseCache {
        &self.responses
    }

    /// Slots for API SQL queries.
    pub fn sql_permits(&self) -> Arc<tokio::sync::Semaphore> {
        self.sql_permits.clone()
    }

    /// The shutdown token (cancelled when the daemon stops).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn schedule(expr: &str, tz: chrono_tz::Tz, catch_up: CatchUp) -> Schedule {
        Schedule {
            expression: expr.into(),
            cron: cron::Schedule::from_str(expr).unwrap(),
            time_zone: tz,
            catch_up,
        }
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn time_zones_shift_fire_times() {
        let s = schedule("0 0 2 * * *", chrono_tz::Asia::Shanghai, CatchUp::Skip);
        // 02:00 in Shanghai is 18:00 UTC the day before.
        assert_eq!(
            next_fire(&s, t("2019-10-01T00:00:00Z")),
            Some(t("2019-10-01T18:00:00Z"))
        );
        let u = schedule("0 0 2 * * *", chrono_tz::UTC, CatchUp::Skip);
        assert_eq!(
            next_fire(&u, t("2019-10-01T00:00:00Z")),
            Some(t("2019-10-01T02:00:00Z"))
        );
    }

    #[test]
    fn catch_up_policies() {
        let once = schedule("0 0 2 * * *", chrono_tz::UTC, CatchUp::RunOnce);
        let skip = schedule("0 0 2 * * *", chrono_tz::UTC, CatchUp::Skip);
        let last = Some(t("2019-10-01T02:00:05Z"));
        // Down over the next 02:00: run_once runs, skip does not.
        assert!(catch_up_due(&once, last, t("2019-10-02T09:00:00Z")));
        assert!(!catch_up_due(&skip, last, t("2019-10-02T09:00:00Z")));
        // Nothing missed yet.
        assert!(!catch_up_due(&once, last, t("2019-10-01T23:00:00Z")));
        // Never ran: run_once runs.
        assert!(catch_up_due(&once, None, t("2019-10-01T23:00:00Z")));
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_fires_at_each_due_time_and_skips_overlaps() {
        let s = schedule("0 * * * * *", chrono_tz::UTC, CatchUp::Skip);
        let clock = Arc::new(TokioClock::new(t("2019-01-01T00:00:30Z")));
        let cancel = CancellationToken::new();
        let fired = Arc::new(Mutex::new(Vec::new()));
        let f2 = fired.clone();
        let task = tokio::spawn(schedule_loop(s, clock.clone(), cancel.clone(), move |at| {
            let mut f = f2.lock().unwrap();
            f.push(at);
            // Every second fire finds the previous run still in flight.
            if f.len() % 2 == 0 {
                Fire::SkippedRunning
            } else {
                Fire::Started
            }
        }));
        tokio::time::sleep(Duration::from_secs(5 * 60 + 1)).await;
        cancel.cancel();
        let n = task.await.unwrap();
        let fired = fired.lock().unwrap().clone();
        assert_eq!(n, 5);
        assert_eq!(fired[0], t("2019-01-01T00:01:00Z"));
        assert_eq!(fired[4], t("2019-01-01T00:05:00Z"));
        assert!(clock.now() >= t("2019-01-01T00:05:31Z"));
    }
}
