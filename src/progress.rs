//! Progress display for `ingest` and `backfill`: a bar on a terminal; off a
//! terminal, progress lines at debug level only (one summary line per run).

use ironlake::ingest::{Progress, ProgressFn};
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;

static LAST: Mutex<Option<Instant>> = Mutex::new(None);

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn line(p: &Progress) -> String {
    let rate = if p.elapsed_secs > 0.0 {
        p.rows_in as f64 / p.elapsed_secs
    } else {
        0.0
    };
    let eta = if p.windows_done > 0 && p.windows_total > 1 && p.windows_done < p.windows_total {
        let per = p.elapsed_secs / p.windows_done as f64;
        format!(
            ", ETA {:.0}s",
            per * (p.windows_total - p.windows_done) as f64
        )
    } else {
        String::new()
    };
    format!(
        "{} [{}/{} windows] {} pages, {} rows, {} rows/s, {} rejected{eta} — {}",
        p.pipeline,
        p.windows_done,
        p.windows_total,
        thousands(p.pages),
        thousands(p.rows_in),
        thousands(rate as u64),
        thousands(p.rejected),
        p.phase
    )
}

/// A progress callback: redraws a bar on a terminal, logs every few seconds otherwise.
pub fn reporter(terminal: bool) -> ProgressFn {
    Arc::new(move |p: &Progress| {
        let mut last = LAST.lock().expect("progress lock");
        let due = last.is_none_or(|t| t.elapsed().as_millis() >= if terminal { 100 } else { 5000 });
        if !due && p.phase == "fetching" {
            return;
        }
        *last = Some(Instant::now());
        if terminal {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r\x1b[2K{}", line(p));
            let _ = err.flush();
        } else {
            // Plain mode: the run's one summary line is its result; progress
            // only at debug level (the run's span already names pipeline and run).
            tracing::debug!("{}", line(p));
        }
    })
}

/// Clears the bar before printing a result line.
pub fn clear() {
    use std::io::IsTerminal as _;
    if std::io::stderr().is_terminal() {
        let _ = write!(std::io::stderr(), "\r\x1b[2K");
    }
    *LAST.lock().expect("progress lock") = None;
}
