//! What a server reports: one access-log line per request, with where its time went,
//! and the errors and handler stderr, each line marked with its request's number.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// One answered request.
pub(crate) struct Entry<'a> {
    pub id: u64,
    pub remote: SocketAddr,
    /// `METHOD TARGET VERSION`.
    pub line: &'a str,
    pub status: u16,
    /// Bytes of the response body.
    pub bytes: u64,
    /// From the request's arrival (its body read) to its response's handing over.
    pub total: Duration,
    /// Waiting for a cell.
    pub queue: Duration,
    /// The cell's run, from its start to its end.
    pub handler: Duration,
    /// Putting the partition back for the next request, after the response left.
    pub reset: Duration,
    /// What became of the cell after the request.
    pub after: AfterRequest,
    /// VM exits of the cell's run.
    pub exits: u64,
}

/// What became of a request's cell once it answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AfterRequest {
    /// Its partition was put back to the template, dropping this many pages.
    Reset(u64),
    /// A new partition replaced it.
    NewCell,
    /// It was kept for the next request (`--reuse`).
    Reused,
}

/// Where a server's access log and error lines go.
pub struct AccessLog {
    access: Mutex<Box<dyn Write + Send>>,
    errors: Mutex<Box<dyn Write + Send>>,
}

impl AccessLog {
    /// A log writing access lines to `access` and errors and handlers' stderr to
    /// `errors`.
    pub fn new(access: Box<dyn Write + Send>, errors: Box<dyn Write + Send>) -> Self {
        Self {
            access: Mutex::new(access),
            errors: Mutex::new(errors),
        }
    }

    pub(crate) fn record(&self, entry: &Entry<'_>) {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let reset = match entry.after {
            AfterRequest::Reset(pages) => {
                format!("reset_ms={:.3} reset_pages={pages}", ms(entry.reset))
            }
            AfterRequest::NewCell => format!("new_cell_ms={:.3}", ms(entry.reset)),
            AfterRequest::Reused => "reused".into(),
        };
        let line = format!(
            "{:.3} req={} {} \"{}\" {} {} total_ms={:.3} queue_ms={:.3} handler_ms={:.3} {reset} exits={}\n",
            unix_seconds(),
            entry.id,
            entry.remote,
            entry.line.escape_debug(),
            entry.status,
            entry.bytes,
            ms(entry.total),
            ms(entry.queue),
            ms(entry.handler),
            entry.exits,
        );
        write_line(&self.access, line.as_bytes());
    }

    /// A request the server answered itself, before any cell: refused or malformed.
    pub(crate) fn refused(
        &self,
        id: u64,
        remote: SocketAddr,
        line: &str,
        status: u16,
        total: Duration,
    ) {
        let line = format!(
            "{:.3} req={id} {remote} \"{}\" {status} 0 total_ms={:.3} no_cell\n",
            unix_seconds(),
            line.escape_debug(),
            total.as_secs_f64() * 1e3
        );
        write_line(&self.access, line.as_bytes());
    }

    /// An error, about request `id` if given.
    pub(crate) fn error(&self, id: Option<u64>, message: &str) {
        let line = match id {
            Some(id) => format!("hypercell serve: req={id}: {message}\n"),
            None => format!("hypercell serve: {message}\n"),
        };
        write_line(&self.errors, line.as_bytes());
    }

    /// What request `id`'s handler wrote to stderr, line by line.
    pub(crate) fn handler_stderr(&self, id: u64, text: &[u8]) {
        let mut out = Vec::with_capacity(text.len() + 32);
        for line in text.split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            let _ = write!(out, "req={id} stderr: ");
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        write_line(&self.errors, &out);
    }
}

/// Now, in seconds since the Unix epoch, as the log's lines begin.
fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn write_line(to: &Mutex<Box<dyn Write + Send>>, bytes: &[u8]) {
    let mut out = to.lock().unwrap_or_else(PoisonError::into_inner);
    // A log that cannot be written must not stop the requests.
    let _ = out.write_all(bytes).and_then(|()| out.flush());
}
