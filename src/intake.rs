//! Intake: records partners push (`POST /api/v1/intake/{pipeline}`), the
//! enterprise portal's online financing applications (网上申请) first.
//!
//! A pushed request goes through exactly the decode, validation, quarantine
//! and commit that pulled data gets. Requests arriving together share one
//! commit (group commit): each push pipeline has one worker that takes
//! every request queued while the previous group was handled (waiting at
//! most `api.intake_wait_ms` for more), validates them one after the other
//! into one run and commits once, validating the next group while one
//! commits; every request is answered only after its commit is durable. An `Idempotency-Key`'s answer is committed in the same
//! journal entry as the data, so a retry after a lost answer, even across a
//! restart, gets the same answer and commits nothing. After pushes change
//! rows, the aggregates reading the table are refreshed (debounced by
//! `api.intake_refresh_debounce_ms`).

use crate::config::pipeline::Format;
use crate::config::{PushPipeline, TableSchema};
use crate::daemon::Daemon;
use crate::decode::{self, Columns};
use crate::ingest::{Absorber, IngestError, RowsCommit, Staging, commit_rows};
use crate::warehouse::{self, IntakeAnswer, Outcome, RunRecord, RunType, Warehouse};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

/// Most requests one commit takes.
const MAX_GROUP: usize = 2048;
/// Most body bytes one commit takes (a bigger single request still goes alone).
const MAX_GROUP_BYTES: usize = 64 << 20;
/// Requests queued per pipeline before new ones are told to retry (503).
const QUEUE: usize = 8192;
/// Body bytes from which a group is committed as soon as the previous
/// commit is done, without waiting for more.
const BULK_BYTES: usize = 1 << 20;

/// One pushed request.
pub struct Pushed {
    /// The partner that pushed it.
    pub partner: String,
    /// Its `Idempotency-Key`, if any.
    pub key: Option<String>,
    /// Body format (from `Content-Type`).
    pub format: Format,
    /// The body.
    pub body: Bytes,
    /// A number for the quarantine's source (`request N`).
    pub request_no: u64,
}

/// Why a pushed request was not accepted as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The body could not be read as its declared format: nothing of it was committed.
    Undecodable(String),
    /// The commit failed: nothing of the group was committed.
    NotCommitted(String),
    /// Too many requests are queued.
    Busy,
}

/// What a request gets back: the answer (committed) or why not.
pub type Reply = Result<IntakeAnswer, Refused>;

/// The body as a decoder reads it: a lone JSON object becomes a one-element array.
fn as_array(format: Format, body: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if format == Format::Json && first == Some(&b'{') {
        let mut v = Vec::with_capacity(body.len() + 2);
        v.push(b'[');
        v.extend_from_slice(body);
        v.push(b']');
        std::borrow::Cow::Owned(v)
    } else {
        std::borrow::Cow::Borrowed(body)
    }
}

/// A run that pushed requests are validated into, one after the other,
/// until it is sealed for its commit.
pub struct OpenRun {
    record: RunRecord,
    staging: Staging,
    sink: Absorber,
    columns: Columns,
    replies: Vec<Reply>,
    bytes: u64,
}

impl OpenRun {
    /// A new run of `pipeline` into `table`, staged in the warehouse.
    pub fn new(
        wh: &Warehouse,
        table: &TableSchema,
        pipeline: &PushPipeline,
    ) -> Result<OpenRun, IngestError> {
        let run_id = warehouse::new_run_id(&pipeline.name);
        let record = RunRecord::start(&run_id, &pipeline.name, RunType::Push, &table.name);
        let staging = Staging::new(wh, &run_id)?;
        let sink = Absorber::new(table, &staging, &run_id, &pipeline.name);
        Ok(OpenRun {
            record,
            staging,
            sink,
            columns: Columns::new(table.columns.iter().map(|c| c.name.as_str())),
            replies: Vec::new(),
            bytes: 0,
        })
    }

    /// Decodes and validates one request into the run (blocking); its reply
    /// is the next in [`Absorbed`]'s order.
    pub fn absorb(&mut self, pipeline: &str, req: &Pushed) -> Result<(), IngestError> {
        self.bytes += req.body.len() as u64;
        let body = as_array(req.format, &req.body);
        let page = match decode::decode(req.format, None, None, &self.columns, &body) {
            Ok(p) => p,
            Err(e) => {
                self.replies.push(Err(Refused::Undecodable(e.to_string())));
                return Ok(());
            }
        };
        let sink = &mut self.sink;
        let (valid, rejected) = (sink.counters.rows_valid, sink.counters.rejected);
        sink.errors = Some(Vec::new());
        let source = format!(
            "push to {pipeline} by {}, request {}",
            req.partner, req.request_no
        );
        sink.absorb(&page, &source)?;
        self.replies.push(Ok(IntakeAnswer {
            key: req.key.clone(),
            run_id: self.record.run_id.clone(),
            accepted: sink.counters.rows_valid - valid,
            rejected: sink.counters.rejected - rejected,
            errors: sink.errors.take().unwrap_or_default(),
        }));
        Ok(())
    }

    /// Ends the run's validation: its spilled rows and record, ready to commit.
    pub fn seal(self) -> Result<Absorbed, IngestError> {
        let OpenRun {
            mut record,
            staging,
            sink,
            replies,
            bytes,
            ..
        } = self;
        sink.counters.record_into(&mut record);
        record.bytes = bytes;
        record.requests = replies.len() as u64;
        record.intake = replies
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .filter(|a| a.key.is_some())
            .cloned()
            .collect();
        let spilled = sink.part.finish()?;
        Ok(Absorbed {
            record,
            staging,
            spilled,
            replies,
        })
    }
}

/// A group of pushed requests validated into one run's staging directory,
/// ready to commit, with each request's reply once it is committed.
pub struct Absorbed {
    record: RunRecord,
    staging: Staging,
    spilled: crate::partition::Spilled,
    replies: Vec<Reply>,
}

/// Commits an absorbed group (blocking; takes the warehouse lock). Returns
/// the committed run and each request's reply, in order.
pub fn commit_absorbed(
    wh: &Warehouse,
    table: &TableSchema,
    pipeline: &str,
    a: Absorbed,
) -> Result<(RunRecord, Vec<Reply>), IngestError> {
    crate::failpoint_panic("intake.before_commit");
    let commit = RowsCommit {
        pipeline,
        cursor_after: None,
        append: true,
        delivered: None,
    };
    let done = commit_rows(wh, table, a.spilled, a.record, commit)?;
    drop(a.staging);
    Ok((done, a.replies))
}

/// Runs `f` on a blocking thread; a panic in it becomes an error.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, IngestError> + Send + 'static,
) -> Result<T, IngestError> {
    tokio::task::spawn_blocking(move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
            Err(IngestError::Panicked(crate::ingest::panic_message(
                payload.as_ref(),
            )))
        })
    })
    .await
    .unwrap_or_else(|e| Err(IngestError::Internal(format!("intake thread: {e}"))))
}

struct Job {
    pushed: Pushed,
    reply: oneshot::Sender<Reply>,
}

/// The daemon's intake: a queue and a worker per push pipeline, the
/// committed answers of idempotency keys, and the debounced refresh.
#[derive(Default)]
pub struct Intake {
    queues: Mutex<HashMap<String, mpsc::Sender<Job>>>,
    answers: Mutex<Option<HashMap<(String, String), IntakeAnswer>>>,
    refresh: Arc<Notify>,
    refresher: std::sync::OnceLock<()>,
    requests: std::sync::atomic::AtomicU64,
}

impl Intake {
    /// The committed answer to `key` on `pipeline`, if there is one. The
    /// answers are read from the run history (the last 1,000 runs of each
    /// pipeline) the first time, then kept as pushes commit.
    pub fn answered(&self, d: &Daemon, pipeline: &str, key: &str) -> Option<IntakeAnswer> {
        let mut answers = self.answers.lock().expect("answers lock");
        let map = answers.get_or_insert_with(|| {
            let mut m = HashMap::new();
            if let Ok(runs) = d.warehouse().runs_shared() {
                // Oldest first, so the newest answer to a key wins.
                for r in runs.iter().rev() {
                    if r.outcome != Outcome::Succeeded {
                        continue;
                    }
                    for a in &r.intake {
                        if let Some(k) = &a.key {
                            m.insert((r.pipeline.clone(), k.clone()), a.clone());
                        }
                    }
                }
            }
            m
        });
        map.get(&(pipeline.to_string(), key.to_string())).cloned()
    }

    fn remember(&self, pipeline: &str, answers: &[IntakeAnswer]) {
        let mut guard = self.answers.lock().expect("answers lock");
        if let Some(map) = guard.as_mut() {
            for a in answers {
                if let Some(k) = &a.key {
                    map.insert((pipeline.to_string(), k.clone()), a.clone());
                }
            }
        }
    }

    /// A number for the next request (the quarantine's source names it).
    pub fn next_request_no(&self) -> u64 {
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1
    }

    /// Queues a request on its pipeline's worker and waits for its reply.
    pub async fn push(d: &Arc<Daemon>, pipeline: &str, pushed: Pushed) -> Reply {
        let intake = d.intake();
        intake.refresher.get_or_init(|| {
            let (d2, notify) = (d.clone(), intake.refresh.clone());
            tokio::spawn(refresher(d2, notify));
        });
        let tx = {
            let mut queues = intake.queues.lock().expect("queues lock");
            queues
                .entry(pipeline.to_string())
                .or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(QUEUE);
                    tokio::spawn(worker(d.clone(), pipeline.to_string(), rx));
                    tx
                })
                .clone()
        };
        let (reply, rx) = oneshot::channel();
        if tx.try_send(Job { pushed, reply }).is_err() {
            return Err(Refused::Busy);
        }
        rx.await
            .unwrap_or_else(|_| Err(Refused::NotCommitted("the intake worker stopped".into())))
    }
}

/// Takes the requests queued for `pipeline`, a group at a time, and commits
/// each group once. Requests are validated into the open group as they
/// arrive, also while the previous group commits. The group is sealed once
/// the previous commit is done and it holds as many requests as were
/// waiting at once during the last group (the clients that waited for the
/// last commit are back), or `api.intake_wait_ms` after its first request
/// or the last commit, whichever is later; a group of more than
/// [`BULK_BYTES`] is sealed at once, so one is validated while the other commits.
async fn worker(d: Arc<Daemon>, pipeline: String, mut rx: mpsc::Receiver<Job>) {
    let (to_commit, commits) = mpsc::unbounded_channel::<(Stage, OwnedSemaphorePermit)>();
    let idle = Arc::new(Semaphore::new(1));
    let inflight = Arc::new(InFlight::default());
    tokio::spawn(committer(
        d.clone(),
        pipeline.clone(),
        commits,
        inflight.clone(),
    ));
    // The most requests waiting in the worker at once (the open group, the
    // queue and the committing group) during the last group, and during this
    // one: about how many clients wait on commits.
    let (mut expect, mut peak) = (1, 0);
    let mut committing_group = 0;
    let mut open: Option<Group> = None;
    let mut queued: Vec<Job> = Vec::new();
    // When the group under way received its first request.
    let mut first: Option<tokio::time::Instant> = None;
    loop {
        if open.is_none() && queued.is_empty() {
            first = None;
            match rx.recv().await {
                Some(j) => queued.push(j),
                None => break,
            }
        }
        let first_at = *first.get_or_insert_with(tokio::time::Instant::now);
        let (mut count, mut bytes) = open.as_ref().map_or((0, 0), |g| (g.requests(), g.bytes));
        count += queued.len();
        bytes += queued.iter().map(|j| j.pushed.body.len()).sum::<usize>();
        while count < MAX_GROUP && bytes < MAX_GROUP_BYTES {
            let Ok(j) = rx.try_recv() else { break };
            count += 1;
            bytes += j.pushed.body.len();
            queued.push(j);
        }
        let full = count >= MAX_GROUP || bytes >= MAX_GROUP_BYTES;
        let committing = idle.available_permits() == 0;
        peak = peak.max(count + if committing { committing_group } else { 0 });
        let wait = d.project().settings.api.intake_wait;
        let since = first_at.max(*inflight.last_commit.lock().expect("commit time lock"));
        let ready = full
            || count >= expect
            || bytes >= BULK_BYTES
            || (!committing && tokio::time::Instant::now() >= since + wait);
        // Validate while the previous group commits, or once the group is complete.
        if !queued.is_empty() && (committing || ready) {
            let jobs = std::mem::take(&mut queued);
            open = absorb_into(&d, &pipeline, open, jobs, &inflight).await;
        }
        if !ready {
            tokio::select! {
                j = rx.recv() => queued.extend(j),
                _ = tokio::time::sleep_until(since + wait), if !committing => {}
                _ = idle.acquire(), if committing => {}
            }
            continue;
        }
        if open.is_none() {
            continue;
        }
        let permit = match idle.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            // The previous commit runs: take more requests meanwhile,
            // unless the group is full.
            Err(_) if full => idle.clone().acquire_owned().await.ok(),
            Err(_) => tokio::select! {
                p = idle.clone().acquire_owned() => p.ok(),
                j = rx.recv() => {
                    queued.extend(j);
                    None
                }
            },
        };
        let Some(permit) = permit else { continue };
        if !queued.is_empty() {
            let jobs = std::mem::take(&mut queued);
            open = absorb_into(&d, &pipeline, open, jobs, &inflight).await;
        }
        let Some(g) = open.take() else { continue };
        committing_group = g.requests();
        expect = std::mem::take(&mut peak).max(1);
        first = None;
        if let Some(stage) = g.seal(&pipeline, &inflight).await
            && to_commit.send((stage, permit)).is_err()
        {
            break;
        }
    }
}

/// The requests of a group, waiting for their answers.
struct Waiters {
    replies: Vec<oneshot::Sender<Reply>>,
    /// Requests repeating a key of this group: the index of the first one.
    repeats: Vec<(usize, Job)>,
    /// Each validated request's idempotency key.
    keys: Vec<Option<String>>,
    started: std::time::Instant,
}

impl Waiters {
    /// Answers each validated request with its answer, in order, and each
    /// repeat with the answer of the first request with its key.
    fn answer(self, answers: Vec<Reply>) {
        for (i, job) in self.repeats {
            let _ = job.reply.send(answers[i].clone());
        }
        for (reply, answer) in self.replies.into_iter().zip(answers) {
            let _ = reply.send(answer);
        }
    }

    /// Answers every request of a group that cannot be committed.
    fn fail(self, pipeline: &str, e: &IngestError) {
        tracing::warn!(pipeline, error = %e, "Push failed; nothing of its requests was committed.");
        let why = Refused::NotCommitted(e.to_string());
        let answers = vec![Err(why); self.replies.len()];
        self.answer(answers);
    }
}

/// The group being validated: its run, and who waits for the answers.
struct Group {
    run: OpenRun,
    table: TableSchema,
    bytes: usize,
    waiters: Waiters,
}

impl Group {
    fn requests(&self) -> usize {
        self.waiters.replies.len() + self.waiters.repeats.len()
    }

    /// Ends validation; `None` (every request answered) when that failed.
    async fn seal(self, pipeline: &str, inflight: &InFlight) -> Option<Stage> {
        let Group {
            run,
            table,
            waiters,
            ..
        } = self;
        match blocking(move || run.seal()).await {
            Ok(absorbed) => {
                inflight
                    .keys
                    .lock()
                    .expect("in-flight lock")
                    .extend(waiters.keys.iter().flatten().cloned());
                Some(Stage {
                    absorbed,
                    table,
                    waiters,
                })
            }
            Err(e) => {
                waiters.fail(pipeline, &e);
                None
            }
        }
    }
}

/// Idempotency keys of groups validated but not committed yet; a request
/// repeating one waits for that commit, then gets its answer.
struct InFlight {
    keys: Mutex<std::collections::HashSet<String>>,
    committed: Notify,
    /// When the last commit was answered.
    last_commit: Mutex<tokio::time::Instant>,
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight {
            keys: Mutex::default(),
            committed: Notify::new(),
            last_commit: Mutex::new(tokio::time::Instant::now()),
        }
    }
}

impl InFlight {
    /// Waits until `key` is in no sealed group whose commit is under way.
    async fn settled(&self, key: &str) {
        loop {
            let committed = self.committed.notified();
            if !self.keys.lock().expect("in-flight lock").contains(key) {
                return;
            }
            committed.await;
        }
    }

    /// A commit (or its failure) is settled: its keys are no longer under way.
    fn done(&self, keys: &[Option<String>]) {
        {
            let mut held = self.keys.lock().expect("in-flight lock");
            for k in keys.iter().flatten() {
                held.remove(k);
            }
        }
        *self.last_commit.lock().expect("commit time lock") = tokio::time::Instant::now();
        self.committed.notify_waiters();
    }
}

/// A sealed group on its way to its commit.
struct Stage {
    absorbed: Absorbed,
    table: TableSchema,
    waiters: Waiters,
}

/// Answers `jobs`, which no group took, with `why`.
fn refuse(jobs: Vec<Job>, why: &Refused) {
    for job in jobs {
        let _ = job.reply.send(Err(why.clone()));
    }
}

/// Validates `jobs` into the open group (opening one if needed): repeated
/// keys are answered from what is committed, or wait for the first request
/// with the key in this group. `None` when no group is open afterwards.
async fn absorb_into(
    d: &Arc<Daemon>,
    pipeline: &str,
    open: Option<Group>,
    jobs: Vec<Job>,
    inflight: &InFlight,
) -> Option<Group> {
    let intake = d.intake();
    let mut g = match open {
        Some(g) => g,
        None => {
            let project = d.project();
            let found = project
                .push_pipeline(pipeline)
                .and_then(|p| Some((p.clone(), project.table(&p.table)?.clone())));
            let Some((p, table)) = found else {
                let why = format!("{pipeline} is no longer a push pipeline");
                refuse(jobs, &Refused::NotCommitted(why));
                return None;
            };
            let (wh, t) = (d.warehouse().clone(), table.clone());
            let run = match blocking(move || OpenRun::new(&wh, &t, &p)).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(pipeline, error = %e, "Push failed; nothing of its requests was committed.");
                    refuse(jobs, &Refused::NotCommitted(e.to_string()));
                    return None;
                }
            };
            Group {
                run,
                table,
                bytes: 0,
                waiters: Waiters {
                    replies: Vec::new(),
                    repeats: Vec::new(),
                    keys: Vec::new(),
                    started: std::time::Instant::now(),
                },
            }
        }
    };
    let mut fresh: Vec<Job> = Vec::new();
    for job in jobs {
        if let Some(k) = &job.pushed.key {
            inflight.settled(k).await;
            if let Some(a) = intake.answered(d, pipeline, k) {
                let _ = job.reply.send(Ok(a));
                continue;
            }
            let first = g
                .waiters
                .keys
                .iter()
                .chain(fresh.iter().map(|f| &f.pushed.key))
                .position(|x| x.as_ref() == Some(k));
            if let Some(i) = first {
                g.waiters.repeats.push((i, job));
                continue;
            }
        }
        fresh.push(job);
    }
    if fresh.is_empty() {
        // Nothing validated in a new group: its staged run goes with it.
        return (g.requests() > 0).then_some(g);
    }
    let (pushed, replies): (Vec<Pushed>, Vec<oneshot::Sender<Reply>>) =
        fresh.into_iter().map(|j| (j.pushed, j.reply)).unzip();
    g.waiters.keys.extend(pushed.iter().map(|p| p.key.clone()));
    g.waiters.replies.extend(replies);
    g.bytes += pushed.iter().map(|p| p.body.len()).sum::<usize>();
    let (mut run, name) = (g.run, pipeline.to_string());
    let absorbed = blocking(move || {
        for req in &pushed {
            run.absorb(&name, req)?;
        }
        Ok(run)
    })
    .await;
    match absorbed {
        Ok(run) => {
            g.run = run;
            Some(g)
        }
        Err(e) => {
            g.waiters.fail(pipeline, &e);
            None
        }
    }
}

/// Commits validated groups one at a time and replies to their requests.
async fn committer(
    d: Arc<Daemon>,
    pipeline: String,
    mut stages: mpsc::UnboundedReceiver<(Stage, OwnedSemaphorePermit)>,
    inflight: Arc<InFlight>,
) {
    let intake = d.intake();
    // The permit says a commit runs; it is released when the commit is answered.
    while let Some((stage, _permit)) = stages.recv().await {
        let Stage {
            absorbed,
            table,
            waiters,
        } = stage;
        let (wh, name) = (d.warehouse().clone(), pipeline.clone());
        let outcome = blocking(move || commit_absorbed(&wh, &table, &name, absorbed)).await;
        if let Ok((record, answers)) = &outcome {
            tracing::info!(
                pipeline,
                run_id = %record.run_id,
                requests = answers.len(),
                rows_valid = record.rows_valid,
                rows_rejected = record.rows_rejected,
                rows_changed = record.rows_changed,
                secs = waiters.started.elapsed().as_secs_f64(),
                "Push committed."
            );
            // The committed run holds exactly the answers to keyed requests;
            // remembered before the keys are released, so a repeat finds them.
            intake.remember(&pipeline, &record.intake);
            if record.rows_changed > 0 {
                intake.refresh.notify_one();
            }
        }
        inflight.done(&waiters.keys);
        match outcome {
            Ok((_, answers)) => waiters.answer(answers),
            Err(e) => waiters.fail(&pipeline, &e),
        }
    }
}

/// Refreshes the aggregates after pushes changed rows, once the pushes have
/// been quiet for the debounce time (or at the latest four debounce times
/// after the first), so a burst costs one refresh; after a refresh it pauses
/// as long as the refresh took (at most the debounce time).
async fn refresher(d: Arc<Daemon>, notify: Arc<Notify>) {
    loop {
        notify.notified().await;
        let debounce = d.project().settings.api.intake_refresh_debounce;
        let latest = tokio::time::Instant::now() + debounce * 4;
        loop {
            let quiet = tokio::time::Instant::now() + debounce;
            if quiet >= latest {
                tokio::time::sleep_until(latest).await;
                break;
            }
            tokio::select! {
                _ = notify.notified() => continue,
                _ = tokio::time::sleep_until(quiet) => break,
            }
        }
        let tables: std::collections::BTreeSet<String> = d
            .project()
            .push_pipelines
            .iter()
            .map(|p| p.table.clone())
            .collect();
        let started = tokio::time::Instant::now();
        for t in tables {
            d.refresh_for_table(&t).await;
        }
        // Under a steady stream of pushes, a pause as long as the refresh
        // took (at most the debounce time, so a new push still shows in seconds).
        tokio::time::sleep(started.elapsed().min(debounce)).await;
    }
}
