//! The cells that answer requests: a queue of requests, and worker threads that each
//! keep one partition and run every request they take in a cell started afresh from
//! the handler's template. After each request the partition is put back to the
//! template (the pages the request wrote dropped, the vCPU's state restored), so the
//! next request finds a fresh cell; after a failure it is replaced by a new one.
//! Workers are added while requests wait, up to the most allowed, and leave after
//! they have been idle a while, down to the fewest kept.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hypercell_host::config::format_size;
use hypercell_host::{
    CellConfig, CellControl, CellError, CellExit, CellFailure, CellReport, CellStdio, NextRequest,
    ReusableCell,
};
use tokio::sync::oneshot;

use crate::access_log::{AccessLog, AfterRequest, Entry};
use crate::cgi::parse_response;
use crate::handler::{Handler, HandlerKind};

/// How many cells a server keeps and how many requests may wait for one.
#[derive(Clone, Copy, Debug)]
pub struct PoolLimits {
    /// Most cells running requests at once.
    pub max_cells: usize,
    /// Cells kept however idle the server is.
    pub min_cells: usize,
    /// Most requests waiting for a cell; more are refused with 503.
    pub queue: usize,
    /// How long a cell beyond `min_cells` stays without a request before it goes.
    pub idle: Duration,
    /// Most requests one cell answers in turn (`--reuse`): 1 gives each request a
    /// fresh cell.
    pub requests_per_cell: u64,
}

/// A request on its way to a cell.
pub(crate) struct Job {
    /// The request's number, for the logs.
    pub id: u64,
    /// The cell's configuration, the request's arguments and variables in it.
    pub config: CellConfig,
    /// The request's body, the cell's stdin.
    pub body: Bytes,
    /// The request line, for the access log.
    pub line: String,
    /// Who sent it.
    pub remote: SocketAddr,
    /// When it arrived (its body read).
    pub received: Instant,
    /// Where its response goes.
    pub reply: oneshot::Sender<Response<Full<Bytes>>>,
}

struct State {
    jobs: VecDeque<Job>,
    /// Workers waiting for a job.
    idle: usize,
    /// Workers alive.
    workers: usize,
    /// Set once no new jobs are taken: workers finish the queue and leave.
    closing: bool,
    /// Numbers the next worker's thread.
    next_worker: u64,
}

struct Shared {
    state: Mutex<State>,
    /// A job was queued, or the pool is closing.
    work: Condvar,
    /// A worker left.
    left: Condvar,
    handler: Arc<Handler>,
    limits: PoolLimits,
    log: Arc<AccessLog>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The pool of cells of one handler.
#[derive(Clone)]
pub(crate) struct Pool {
    shared: Arc<Shared>,
}

impl Pool {
    /// A pool for `handler` within `limits`, with its fewest cells started.
    pub fn new(handler: Arc<Handler>, limits: PoolLimits, log: Arc<AccessLog>) -> Self {
        let pool = Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    jobs: VecDeque::new(),
                    idle: 0,
                    workers: 0,
                    closing: false,
                    next_worker: 0,
                }),
                work: Condvar::new(),
                left: Condvar::new(),
                handler,
                limits,
                log,
            }),
        };
        let mut state = pool.shared.lock();
        for _ in 0..limits.min_cells.min(limits.max_cells) {
            pool.add_worker(&mut state);
        }
        drop(state);
        pool
    }

    /// Queues `job` for a cell, adding a worker when none is free and the most are not
    /// yet running; refuses it (false) when the queue is full or the pool is closing.
    pub fn submit(&self, job: Job) -> bool {
        let mut state = self.shared.lock();
        if state.closing || state.jobs.len() >= self.shared.limits.queue {
            return false;
        }
        state.jobs.push_back(job);
        if state.idle < state.jobs.len() && state.workers < self.shared.limits.max_cells {
            self.add_worker(&mut state);
        }
        drop(state);
        self.shared.work.notify_one();
        true
    }

    /// Takes no more jobs and waits until the workers have answered those queued and
    /// left.
    pub fn drain(&self) {
        let mut state = self.shared.lock();
        state.closing = true;
        self.shared.work.notify_all();
        while state.workers > 0 {
            state = self
                .shared
                .left
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn add_worker(&self, state: &mut State) {
        add_worker(&self.shared, state);
    }
}

/// Starts a worker and counts it (or logs why it could not).
fn add_worker(shared: &Arc<Shared>, state: &mut State) {
    let number = state.next_worker;
    let for_worker = Arc::clone(shared);
    let started = std::thread::Builder::new()
        .name(format!("hypercell-serve-{number}"))
        .spawn(move || work(&for_worker));
    match started {
        Ok(_) => {
            state.workers += 1;
            state.next_worker += 1;
        }
        Err(error) => shared.log.error(
            None,
            &format!("cannot start a thread for another cell: {error}"),
        ),
    }
}

/// A worker's place in the count: given up under the lock when the worker decides to
/// leave, or, when it ends otherwise (it could not make its cell, or a panic), in its
/// drop, which then starts a replacement if requests wait with nobody to take them.
struct Membership<'s> {
    shared: &'s Arc<Shared>,
    left: bool,
}

impl Membership<'_> {
    fn leave(&mut self, state: &mut State) {
        state.workers -= 1;
        self.left = true;
    }
}

impl Drop for Membership<'_> {
    fn drop(&mut self) {
        if !self.left {
            let mut state = self.shared.lock();
            state.workers -= 1;
            if !state.closing && !state.jobs.is_empty() && state.workers < state.jobs.len() {
                add_worker(self.shared, &mut state);
            }
        }
        self.shared.left.notify_all();
    }
}

/// A worker's life: takes jobs until it has been idle too long (and is not among the
/// fewest kept) or the pool closes with nothing left queued.
fn work(shared: &Arc<Shared>) {
    let mut membership = Membership {
        shared,
        left: false,
    };
    let mut worker = match Worker::new(&shared.handler) {
        Ok(worker) => worker,
        Err(error) => {
            let message = format!("cannot make a cell to serve requests: {error}");
            shared.log.error(None, &message);
            // One request answered for each failed attempt, so that a lasting failure
            // empties the queue rather than retrying forever.
            let job = shared.lock().jobs.pop_front();
            if let Some(job) = job {
                let _ = job.reply.send(failure(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    job.id,
                    "the server could not make a cell for it",
                ));
            }
            return;
        }
    };
    let most = shared.limits.requests_per_cell;
    // What the last request wrote goes before the worker waits, not after each.
    while let Some(job) = next_live_job(shared, &mut membership, &mut || worker.files.release()) {
        let id = job.id;
        let served = catch_unwind(AssertUnwindSafe(|| {
            if most > 1 {
                worker.serve_in_turn(job, shared, &mut membership, most)
            } else {
                worker.serve(job, shared);
                true
            }
        }));
        match served {
            Err(_) => {
                // The request's reply went with the panic: its client gets a 500.
                shared.log.error(
                    Some(id),
                    "the worker serving this request failed; another replaces it",
                );
                return;
            }
            // The worker left the pool while its cell waited for a request.
            Ok(false) => return,
            Ok(true) => {}
        }
        if worker.cell.is_none() {
            // `serve` logged why no new cell could be made.
            return;
        }
    }
}

/// The next job for a worker, or `None` when it should leave (counted out already).
/// `before_waiting` runs, without the lock, the first time none is queued.
fn next_job(
    shared: &Shared,
    membership: &mut Membership<'_>,
    before_waiting: &mut dyn FnMut(),
) -> Option<Job> {
    let mut state = shared.lock();
    let mut waiting = false;
    loop {
        if let Some(job) = state.jobs.pop_front() {
            return Some(job);
        }
        if state.closing {
            membership.leave(&mut state);
            return None;
        }
        if !waiting {
            waiting = true;
            drop(state);
            before_waiting();
            state = shared.lock();
            continue;
        }
        state.idle += 1;
        let (next, waited) = shared
            .work
            .wait_timeout(state, shared.limits.idle)
            .unwrap_or_else(PoisonError::into_inner);
        state = next;
        state.idle -= 1;
        // Decided under the lock, so that idle workers leaving together stop at the
        // fewest kept.
        if waited.timed_out() && state.jobs.is_empty() && state.workers > shared.limits.min_cells {
            membership.leave(&mut state);
            return None;
        }
    }
}

/// [`next_job`], past the jobs whose clients went away while they waited.
fn next_live_job(
    shared: &Shared,
    membership: &mut Membership<'_>,
    before_waiting: &mut dyn FnMut(),
) -> Option<Job> {
    loop {
        let job = next_job(shared, membership, before_waiting)?;
        if !job.reply.is_closed() {
            return Some(job);
        }
        shared.log.refused(
            job.id,
            job.remote,
            &job.line,
            CLIENT_GONE,
            job.received.elapsed(),
        );
    }
}

/// The status the access log gives a request whose client left before a cell took it,
/// as nginx logs it.
const CLIENT_GONE: u16 = 499;

/// One worker's partition and the files that are its cells' stdio.
struct Worker {
    /// `None` after a failure, until [`Worker::ready`] makes a new one.
    cell: Option<ReusableCell>,
    files: StdioFiles,
}

/// Where a request's time went.
#[derive(Clone, Copy)]
struct Served {
    /// When a cell took it.
    picked: Instant,
    /// When its cell answered it.
    ran: Instant,
    /// The VM exits its cell took for it.
    exits: u64,
}

/// A request answered, for its line in the access log.
struct Answered {
    id: u64,
    remote: SocketAddr,
    line: String,
    received: Instant,
    status: u16,
    bytes: u64,
    served: Served,
    /// When the answer left for the client.
    at: Instant,
}

impl Worker {
    fn new(handler: &Handler) -> Result<Self, String> {
        Ok(Self {
            cell: Some(fresh_cell(handler)?),
            files: StdioFiles::new()?,
        })
    }

    /// Runs `job` in a fresh cell, answers it, puts the partition back and logs it.
    fn serve(&mut self, job: Job, shared: &Shared) {
        let picked = Instant::now();
        let control = CellControl::new();
        let result = self
            .files
            .prepare(&job.body)
            .map(|()| match &mut self.cell {
                Some(cell) => {
                    cell.run_with_input(&job.config, self.files.stdio(), Some(&job.body), &control)
                }
                None => unreachable!("a worker takes requests only with a cell ready"),
            });
        let ran = Instant::now();
        let (answer, exits) = outcome(result, &job, &self.files, shared.handler.kind());
        self.answer_last(job, answer, Served { picked, ran, exits }, shared);
    }

    /// Answers `job`, the last request of the worker's cell, and readies the partition
    /// for the next: put back, or replaced after a failure.
    fn answer_last(&mut self, job: Job, answer: Answer, served: Served, shared: &Shared) {
        let fresh = matches!(answer, Answer::Failed { .. });
        let answered = respond(job, answer, served, &self.files, shared);
        self.put_back(fresh, answered, shared);
    }

    /// Runs `first` and the requests after it in one cell, in turn (`--reuse`): up to
    /// `most`, while its runtime asks for more (a wasi:http component's does; a WAGI
    /// program ends after one) and answers them, until no job comes within `--idle`
    /// (a worker among the fewest kept waits on with its cell). Then the partition is
    /// put back, or, after a failure, replaced. False when the worker left the pool
    /// while its cell waited for a request: its cell then goes with it.
    fn serve_in_turn(
        &mut self,
        first: Job,
        shared: &Shared,
        membership: &mut Membership<'_>,
        most: u64,
    ) -> bool {
        let control = CellControl::new();
        let config = first.config.clone();
        let input = first.body.clone();
        let kind = shared.handler.kind();
        let Worker { cell, files } = self;
        let prepared = files.prepare(&first.body);
        // The request in the cell, when a cell took it, and the exits before it.
        let mut current = Some((first, Instant::now(), 0));
        let mut answered = 0;
        let mut stays = true;
        // The request the cell answered last when it is not kept for another, logged
        // once it is put back; whether the cell broke the protocol answering it.
        let mut last_answered: Option<(Answered, bool)> = None;
        // Set when the server failed to hand the cell its next request.
        let mut replace = false;
        let mut next = || {
            let (job, picked, before) = current.take()?;
            let ran = Instant::now();
            let exits = control.activity().exits;
            let answer = files
                .response(&job, kind)
                .map_or_else(handler_failed, Answer::Response);
            // A cell that broke the protocol goes; the next request gets a fresh one.
            let broken = matches!(answer, Answer::Failed { .. });
            let served = Served {
                picked,
                ran,
                exits: exits - before,
            };
            let done = respond(job, answer, served, files, shared);
            // What the request wrote goes now, not when the next comes.
            files.release();
            answered += 1;
            if broken || answered >= most {
                last_answered = Some((done, broken));
                return None;
            }
            // Kept for the next request, which it waits for.
            record(&done, AfterRequest::Reused, Instant::now(), shared);
            let Some(job) = next_live_job(shared, membership, &mut || {}) else {
                stays = false;
                return None;
            };
            if let Err(error) = files.prepare(&job.body) {
                // The cell is replaced, as after any failure of the server's own.
                replace = true;
                let (answer, _) = outcome(Err(error), &job, files, kind);
                let now = Instant::now();
                let served = Served {
                    picked: now,
                    ran: now,
                    exits: 0,
                };
                let refused = respond(job, answer, served, files, shared);
                record(&refused, AfterRequest::NewCell, Instant::now(), shared);
                return None;
            }
            let request = NextRequest::new(&job.config, job.body.to_vec());
            current = Some((job, Instant::now(), exits));
            Some(request)
        };
        let result = prepared.map(|()| match cell {
            Some(cell) => cell.serve(&config, files.stdio(), Some(&input), &control, &mut next),
            None => unreachable!("a worker takes requests only with a cell ready"),
        });
        let ran = Instant::now();
        let last = current.take();
        let exits = control.activity().exits;
        match last {
            // The cell ended with a request in it: that request's answer is the cell's.
            Some((job, picked, before)) => {
                let (answer, _) = outcome(result, &job, files, kind);
                let served = Served {
                    picked,
                    ran,
                    exits: exits - before,
                };
                self.answer_last(job, answer, served, shared);
            }
            // It was told no more requests come, and ended.
            None => {
                let failure = match result {
                    Ok(Ok(report)) if report.exit == CellExit::Exited(0) => None,
                    Ok(Ok(report)) => Some(format!("{:?}", report.exit)),
                    Ok(Err(failure)) => Some(failure.error.to_string()),
                    Err(error) => Some(error.to_string()),
                };
                let id = last_answered.as_ref().map(|(done, _)| done.id);
                if let Some(failure) = &failure {
                    shared.log.error(
                        id,
                        &format!(
                            "the cell that answered this request failed as it ended: {failure}"
                        ),
                    );
                }
                let fresh = failure.is_some() || replace;
                match last_answered {
                    Some((done, broken)) => self.put_back(fresh || broken, done, shared),
                    // The worker leaves: its cell goes with it.
                    None if !stays => {
                        self.cell = None;
                        self.files.release();
                    }
                    None => {
                        self.reset_or_replace(fresh, id, shared);
                    }
                }
            }
        }
        stays
    }

    /// Readies the worker's partition for the next request, the answer to the last
    /// one having left: put back to the template, or, after a failure (`fresh`),
    /// dropped for a new one; then logs the request.
    fn put_back(&mut self, fresh: bool, answered: Answered, shared: &Shared) {
        let after = self.reset_or_replace(fresh, Some(answered.id), shared);
        record(&answered, after, Instant::now(), shared);
    }

    /// Puts the partition back to the template, or replaces it (when `fresh`, or when
    /// it cannot be put back), and makes sure a cell is ready.
    fn reset_or_replace(&mut self, fresh: bool, id: Option<u64>, shared: &Shared) -> AfterRequest {
        let after = match self
            .cell
            .as_mut()
            .filter(|_| !fresh)
            .map(ReusableCell::reset)
        {
            Some(Ok(report)) => AfterRequest::Reset(report.pages),
            Some(Err(error)) => {
                shared
                    .log
                    .error(id, &format!("a new cell replaces this one: {error}"));
                self.cell = None;
                AfterRequest::NewCell
            }
            None => {
                self.cell = None;
                AfterRequest::NewCell
            }
        };
        if self.cell.is_none() {
            match fresh_cell(&shared.handler) {
                Ok(cell) => self.cell = Some(cell),
                Err(error) => shared.log.error(
                    id,
                    &format!("cannot make a new cell after this request: {error}"),
                ),
            }
        }
        after
    }
}

/// How a cell's run answered `job`, and the VM exits it took.
fn outcome(
    result: std::io::Result<Result<CellReport, CellFailure>>,
    job: &Job,
    files: &StdioFiles,
    kind: HandlerKind,
) -> (Answer, u64) {
    match result {
        Err(error) => (
            server_failed(format!("cannot give the request to the cell: {error}")),
            0,
        ),
        Ok(Ok(report)) => {
            // A refused memory.grow is the likeliest cause of a failure after it.
            let denied = report.denied_growth.map_or_else(String::new, |bytes| {
                format!(
                    " (it was refused a linear memory of {}, over its limit of {})",
                    format_size(bytes),
                    format_size(job.config.memory_limit)
                )
            });
            let answer = match report.exit {
                CellExit::Exited(0) => files
                    .response(job, kind)
                    .map_or_else(handler_failed, Answer::Response),
                CellExit::Exited(status) => {
                    handler_failed(format!("the handler exited with status {status}{denied}"))
                }
                CellExit::Trapped(trap) => {
                    handler_failed(format!("the handler trapped{denied}: {trap}"))
                }
                CellExit::Template => {
                    handler_failed("the handler's cell stopped as a template".into())
                }
            };
            (answer, report.stats.exits)
        }
        Ok(Err(cell_failure)) => {
            let exits = cell_failure.stats.as_ref().map_or(0, |stats| stats.exits);
            let answer = match cell_failure.error {
                CellError::Timeout(limit) => Answer::Failed {
                    status: StatusCode::GATEWAY_TIMEOUT,
                    what: "the handler ran past its time limit",
                    cause: format!("the handler ran past its time limit of {limit:?}"),
                },
                CellError::OutputLimit(limit) => Answer::Failed {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    what: "the handler's response is too large",
                    cause: format!("the handler wrote more than the response limit of {limit}"),
                },
                error => handler_failed(error.to_string()),
            };
            (answer, exits)
        }
    }
}

fn handler_failed(cause: String) -> Answer {
    Answer::Failed {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        what: "the handler failed",
        cause,
    }
}

fn server_failed(cause: String) -> Answer {
    Answer::Failed {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        what: "the server failed",
        cause,
    }
}

/// Sends `answer` to `job`'s client, with where its time went, and logs what the
/// handler wrote to stderr and any failure's cause.
fn respond(
    job: Job,
    answer: Answer,
    served: Served,
    files: &StdioFiles,
    shared: &Shared,
) -> Answered {
    let (mut response, problem) = match answer {
        Answer::Response(response) => (response, None),
        Answer::Failed {
            status,
            what,
            cause,
        } => (failure(status, job.id, what), Some(cause)),
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let timing = format!(
        "queue;dur={:.3}, handler;dur={:.3}",
        ms(served.picked - job.received),
        ms(served.ran - served.picked)
    );
    if let Ok(timing) = hyper::header::HeaderValue::from_str(&timing) {
        response.headers_mut().insert("server-timing", timing);
    }
    let status = response.status().as_u16();
    let bytes = hyper::body::Body::size_hint(response.body())
        .exact()
        .unwrap_or(0);
    let _ = job.reply.send(response);
    let at = Instant::now();
    files.log_stderr(job.id, &shared.log);
    if let Some(problem) = &problem {
        shared.log.error(Some(job.id), problem);
    }
    Answered {
        id: job.id,
        remote: job.remote,
        line: job.line,
        received: job.received,
        status,
        bytes,
        served,
        at,
    }
}

/// Writes `answered`'s line in the access log; what followed it lasted until `until`.
fn record(answered: &Answered, after: AfterRequest, until: Instant, shared: &Shared) {
    shared.log.record(&Entry {
        id: answered.id,
        remote: answered.remote,
        line: &answered.line,
        status: answered.status,
        bytes: answered.bytes,
        total: answered.at - answered.received,
        queue: answered.served.picked - answered.received,
        handler: answered.served.ran - answered.served.picked,
        reset: until - answered.at,
        after,
        exits: answered.served.exits,
    });
}

/// The files a worker's cells have as stdin, stdout and stderr.
struct StdioFiles {
    stdin: File,
    stdout: File,
    stderr: File,
    /// Whether stdin holds anything: most requests have no body, and emptying an
    /// empty file is a system call for nothing.
    stdin_holds: std::cell::Cell<bool>,
}

impl StdioFiles {
    fn new() -> Result<Self, String> {
        let memfd = |name: &str| {
            memfd::MemfdOptions::default()
                .close_on_exec(true)
                .create(name)
                .map(memfd::Memfd::into_file)
                .map_err(|error| format!("cannot make a file for its stdio: {error}"))
        };
        Ok(Self {
            stdin: memfd("hypercell-request")?,
            stdout: memfd("hypercell-response")?,
            stderr: memfd("hypercell-stderr")?,
            stdin_holds: std::cell::Cell::new(false),
        })
    }

    fn stdio(&self) -> CellStdio<'_> {
        CellStdio {
            stdin: self.stdin.as_fd(),
            stdout: self.stdout.as_fd(),
            stderr: self.stderr.as_fd(),
        }
    }

    /// Lets go of what the last request wrote, so that an idle worker holds none of it.
    fn release(&self) {
        for file in [&self.stdin, &self.stdout, &self.stderr] {
            let _ = file.set_len(0);
        }
        self.stdin_holds.set(false);
    }

    /// Puts `body` on the cell's stdin and empties its stdout and stderr.
    fn prepare(&self, body: &[u8]) -> std::io::Result<()> {
        if self.stdin_holds.get() {
            self.stdin.set_len(0)?;
        }
        self.stdin_holds.set(!body.is_empty());
        self.stdin.write_all_at(body, 0)?;
        (&self.stdin).seek(SeekFrom::Start(0))?;
        for output in [&self.stdout, &self.stderr] {
            output.set_len(0)?;
            let mut output = output;
            output.seek(SeekFrom::Start(0))?;
        }
        Ok(())
    }

    /// The response the handler wrote, or why there is none.
    fn response(&self, job: &Job, kind: HandlerKind) -> Result<Response<Full<Bytes>>, String> {
        let output = read_start(&self.stdout, u64::MAX)
            .map(|(output, _)| output)
            .map_err(|error| format!("cannot read the handler's response: {error}"))?;
        let parsed =
            parse_response(output, kind == HandlerKind::Wagi).map_err(|error| error.to_string())?;
        let mut response = Response::new(Full::new(parsed.body));
        *response.status_mut() = parsed.status;
        let headers = response.headers_mut();
        for (name, value) in parsed.headers {
            headers.append(name, value);
        }
        headers.insert("x-request-id", job.id.into());
        Ok(response)
    }

    /// Passes on what the handler wrote to stderr (its first 64 KiB), each line marked
    /// with the request.
    fn log_stderr(&self, id: u64, log: &AccessLog) {
        const SHOWN: u64 = 64 << 10;
        match read_start(&self.stderr, SHOWN) {
            Ok((text, _)) if text.is_empty() => {}
            Ok((text, written)) => {
                log.handler_stderr(id, &text);
                if written > SHOWN {
                    log.error(
                        Some(id),
                        &format!(
                            "the handler wrote {} more to stderr, not shown",
                            format_size(written - SHOWN)
                        ),
                    );
                }
            }
            Err(error) => log.error(
                Some(id),
                &format!("cannot read the handler's stderr: {error}"),
            ),
        }
    }
}

/// How a request's run ended.
enum Answer {
    /// With the handler's response.
    Response(Response<Full<Bytes>>),
    /// With a failure: the status and what the client is told, and the cause, for the
    /// server's log.
    Failed {
        status: StatusCode,
        what: &'static str,
        cause: String,
    },
}

/// A partition for `handler`'s template, made on its first run.
fn fresh_cell(handler: &Handler) -> Result<ReusableCell, String> {
    ReusableCell::new(
        Arc::clone(&handler.template),
        Arc::clone(&handler.module),
        handler.cpu_features,
    )
    .map_err(|error| error.to_string())
}

/// The first `most` bytes written to `file`, and how many were written in all.
fn read_start(file: &File, most: u64) -> std::io::Result<(Bytes, u64)> {
    let written = file.metadata()?.len();
    let mut bytes = vec![0; written.min(most) as usize];
    file.read_exact_at(&mut bytes, 0)?;
    Ok((Bytes::from(bytes), written))
}

/// The response to request `id` that failed with `status`: a line of text saying
/// `what`, and where to look for more. The cause stays in the server's log.
pub(crate) fn failure(status: StatusCode, id: u64, what: &str) -> Response<Full<Bytes>> {
    let mut body = Vec::new();
    let _ = writeln!(
        body,
        "{} {}: {what} (request {id}; the server's log has the cause)",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert("x-request-id", id.into());
    response
}
