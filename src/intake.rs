//! Intake: records partners push (`POST /api/v1/intake/{pipeline}`), the
//! enterprise portal's online financing applications (网上申请) first.
//!
//! A pushed request goes through exactly the decode, validation, quarantine
//! and commit that pulled data gets. Requests arriving together share one
//! commit (group commit): each push pipeline has one worker that takes
//! every request queued while the previous commit ran (waiting at most
//! `api.intake_wait_ms` for more), validates them one after the other into
//! one run and commits once; every request is answered only after that
//! commit is durable. An `Idempotency-Key`'s answer is committed in the same
//! journal entry as the data, so a retry after a lost answer, even across a
//! restart, gets the same answer and commits nothing. After pushes change
//! rows, the aggregates reading the table are refreshed (debounced by
//! `api.intake_refresh_debounce_ms`).

use crate::config::pipeline::Format;
use crate::config::{PushPipeline, TableSchema};
use crate::daemon::Daemon;
use crate::decode::{self, Columns};
use crate::ingest::{Absorber, IngestError, Staging, commit_rows};
use crate::warehouse::{self, IntakeAnswer, Outcome, RunRecord, RunType, Warehouse};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, mpsc, oneshot};

/// Most requests one commit takes.
const MAX_GROUP: usize = 2048;
/// Most body bytes one commit takes (a bigger single request still goes alone).
const MAX_GROUP_BYTES: usize = 64 << 20;
/// Requests queued per pipeline before new ones are told to retry (503).
const QUEUE: usize = 8192;

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

/// Validates a group of pushed requests into one run and commits it (on a
/// blocking thread). Returns the committed run and each request's reply, in order.
pub fn commit_pushes(
    wh: &Warehouse,
    table: &TableSchema,
    pipeline: &PushPipeline,
    batch: &[Pushed],
) -> Result<(RunRecord, Vec<Reply>), IngestError> {
    let run_id = warehouse::new_run_id(&pipeline.name);
    let mut record = RunRecord::start(&run_id, &pipeline.name, RunType::Push, &table.name);
    let staging = Staging::new(wh, &run_id)?;
    let mut sink = Absorber::new(table, &staging, &run_id, &pipeline.name);
    let columns = Columns::new(table.columns.iter().map(|c| c.name.as_str()));
    let mut replies = Vec::with_capacity(batch.len());
    for req in batch {
        let body = as_array(req.format, &req.body);
        let page = match decode::decode(req.format, None, None, &columns, &body) {
            Ok(p) => p,
            Err(e) => {
                replies.push(Err(Refused::Undecodable(e.to_string())));
                continue;
            }
        };
        let (valid, rejected) = (sink.counters.rows_valid, sink.counters.rejected);
        sink.errors = Some(Vec::new());
        let source = format!(
            "push to {} by {}, request {}",
            pipeline.name, req.partner, req.request_no
        );
        sink.absorb(&page, &source)?;
        replies.push(Ok(IntakeAnswer {
            key: req.key.clone(),
            run_id: run_id.clone(),
            accepted: sink.counters.rows_valid - valid,
            rejected: sink.counters.rejected - rejected,
            errors: sink.errors.take().unwrap_or_default(),
        }));
    }
    sink.counters.record_into(&mut record);
    record.bytes = batch.iter().map(|r| r.body.len() as u64).sum();
    record.requests = batch.len() as u64;
    record.intake = replies
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter(|a| a.key.is_some())
        .cloned()
        .collect();
    let spilled = sink.part.finish()?;
    crate::failpoint_panic("intake.before_commit");
    let done = commit_rows(wh, table, &pipeline.name, spilled, None, record, true)?;
    drop(staging);
    Ok((done, replies))
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
/// each group once. A group closes when the queue is empty and as many
/// requests as the previous group had have arrived (clients that waited for
/// the last commit are back), or `api.intake_wait_ms` after its first request.
async fn worker(d: Arc<Daemon>, pipeline: String, mut rx: mpsc::Receiver<Job>) {
    let mut expect = 1;
    while let Some(first) = rx.recv().await {
        let wait = d.project().settings.api.intake_wait;
        let deadline = tokio::time::Instant::now() + wait;
        let mut bytes = first.pushed.body.len();
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP && bytes < MAX_GROUP_BYTES {
            let next = match rx.try_recv() {
                Ok(j) => j,
                Err(_) if jobs.len() >= expect => break,
                Err(_) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(j)) => j,
                    _ => break,
                },
            };
            bytes += next.pushed.body.len();
            jobs.push(next);
        }
        expect = jobs.len();
        commit_group(&d, &pipeline, jobs).await;
    }
}

/// Answers repeated keys from what is committed, commits the rest as one
/// run, and replies to every request.
async fn commit_group(d: &Arc<Daemon>, pipeline: &str, jobs: Vec<Job>) {
    let intake = d.intake();
    let mut fresh: Vec<Job> = Vec::new();
    // Requests repeating a key of this same group wait for the first one's answer.
    let mut repeats: Vec<(usize, Job)> = Vec::new();
    for job in jobs {
        let key = job.pushed.key.clone();
        if let Some(k) = &key {
            if let Some(a) = intake.answered(d, pipeline, k) {
                let _ = job.reply.send(Ok(a));
                continue;
            }
            if let Some(i) = fresh.iter().position(|f| f.pushed.key.as_ref() == Some(k)) {
                repeats.push((i, job));
                continue;
            }
        }
        fresh.push(job);
    }
    if fresh.is_empty() {
        return;
    }
    let project = d.project();
    let found = project
        .push_pipeline(pipeline)
        .and_then(|p| Some((p.clone(), project.table(&p.table)?.clone())));
    let Some((p, table)) = found else {
        let why = Refused::NotCommitted(format!("{pipeline} is no longer a push pipeline"));
        for job in fresh {
            let _ = job.reply.send(Err(why.clone()));
        }
        return;
    };
    let (pushed, replies): (Vec<Pushed>, Vec<oneshot::Sender<Reply>>) =
        fresh.into_iter().map(|j| (j.pushed, j.reply)).unzip();
    let wh = d.warehouse().clone();
    let started = std::time::Instant::now();
    let outcome = tokio::task::spawn_blocking(move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            commit_pushes(&wh, &table, &p, &pushed)
        }))
        .unwrap_or_else(|payload| {
            Err(IngestError::Panicked(crate::ingest::panic_message(
                payload.as_ref(),
            )))
        })
    })
    .await
    .unwrap_or_else(|e| Err(IngestError::Internal(format!("intake thread: {e}"))));
    let answers: Vec<Reply> = match outcome {
        Ok((record, answers)) => {
            tracing::info!(
                pipeline,
                run_id = %record.run_id,
                requests = answers.len(),
                rows_valid = record.rows_valid,
                rows_rejected = record.rows_rejected,
                rows_changed = record.rows_changed,
                secs = started.elapsed().as_secs_f64(),
                "Push committed."
            );
            // The committed run holds exactly the answers to keyed requests.
            intake.remember(pipeline, &record.intake);
            if record.rows_changed > 0 {
                intake.refresh.notify_one();
            }
            answers
        }
        Err(e) => {
            tracing::warn!(pipeline, error = %e, "Push failed; nothing of its requests was committed.");
            let why = Refused::NotCommitted(e.to_string());
            replies.iter().map(|_| Err(why.clone())).collect()
        }
    };
    for (i, job) in repeats {
        let _ = job.reply.send(answers[i].clone());
    }
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(answer);
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
