//! The HTTP front end: HTTP/1.1 with keep-alive on a TCP listener, each request read
//! in full, turned into a cell's configuration and queued for the pool; refused with
//! 503 when the queue is full; drained on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};

use crate::access_log::AccessLog;
use crate::handler::{Handler, RequestRefused};
use crate::pool::{Job, Pool, PoolLimits, failure};

/// How a server runs.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// Its cells and queue.
    pub limits: PoolLimits,
    /// Largest request body taken; a larger one gets 413.
    pub max_body: usize,
    /// Longest a request's body may take to arrive; a slower one gets 408.
    pub body_timeout: Duration,
    /// Longest a shutdown waits for the requests in flight and connections that are
    /// sending one.
    pub drain_timeout: Duration,
}

/// Largest request head (request line and headers) read. Its arguments and variables
/// must fit in the room a template keeps for them (256 KiB), which they do with room
/// to spare at this size, however the query repeats in them.
const MAX_HEAD: usize = 48 << 10;

/// How long a request that waited for a full queue is told to wait before trying again.
const RETRY_AFTER_SECONDS: u32 = 1;

struct Context {
    handler: Arc<Handler>,
    pool: Pool,
    log: Arc<AccessLog>,
    max_body: usize,
    body_timeout: Duration,
    /// Requests held in memory at once (being read, queued or in a cell): each holds
    /// up to `max_body`, so their number is bounded by the queue and the cells.
    admitted: Arc<Semaphore>,
    next_id: AtomicU64,
}

/// Serves `handler` on `listener` until `shutdown` completes, then stops taking
/// connections, lets the requests in flight finish and their cells end.
pub async fn serve(
    listener: TcpListener,
    handler: Handler,
    options: ServeOptions,
    log: Arc<AccessLog>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let handler = Arc::new(handler);
    let pool = Pool::new(Arc::clone(&handler), options.limits, Arc::clone(&log));
    let context = Arc::new(Context {
        handler,
        pool: pool.clone(),
        log: Arc::clone(&log),
        max_body: options.max_body,
        body_timeout: options.body_timeout,
        admitted: Arc::new(Semaphore::new(
            options.limits.queue + options.limits.max_cells,
        )),
        next_id: AtomicU64::new(0),
    });
    let local = listener.local_addr()?;
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, most likely: the connections open now end in
                    // time; taking more meanwhile would fail the same way.
                    log.error(None, &format!("cannot accept a connection: {error}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let context = Arc::clone(&context);
        let service = service_fn(move |request| {
            let context = Arc::clone(&context);
            async move { Ok::<_, Infallible>(answer(request, &context, remote, local).await) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .keep_alive(true)
            .max_buf_size(MAX_HEAD)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
    drop(listener);
    if tokio::time::timeout(options.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        log.error(
            None,
            "connections still open after the drain time were closed",
        );
    }
    tokio::task::spawn_blocking(move || pool.drain())
        .await
        .map_err(std::io::Error::other)
}

async fn answer(
    request: Request<Incoming>,
    context: &Context,
    remote: SocketAddr,
    local: SocketAddr,
) -> Response<Full<Bytes>> {
    let id = context.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    let line = format!(
        "{} {} {:?}",
        request.method(),
        request.uri(),
        request.version()
    );
    let arrived = Instant::now();
    let refuse = |status: StatusCode, what: &str| {
        context
            .log
            .refused(id, remote, &line, status.as_u16(), arrived.elapsed());
        failure(status, id, what)
    };
    let Ok(_admitted) = Arc::clone(&context.admitted).try_acquire_owned() else {
        return busy(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "every cell is busy and the queue is full",
        ));
    };
    let (parts, body) = request.into_parts();
    let collected = Limited::new(body, context.max_body).collect();
    let Ok(collected) = tokio::time::timeout(context.body_timeout, collected).await else {
        return refuse(
            StatusCode::REQUEST_TIMEOUT,
            "the request's body did not arrive in time",
        );
    };
    let body = match collected {
        Ok(body) => body.to_bytes(),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "the request's body is larger than the server's limit of {} bytes",
                    context.max_body
                ),
            );
        }
        Err(error) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                &format!("the request's body could not be read: {error}"),
            );
        }
    };
    let received = Instant::now();
    let config = match context.handler.config_for(&parts, &body, remote, local) {
        Ok(config) => config,
        Err(error @ RequestRefused::TooLarge) => {
            return refuse(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                &error.to_string(),
            );
        }
        Err(error) => return refuse(StatusCode::BAD_REQUEST, &error.to_string()),
    };
    let (reply, response) = oneshot::channel();
    let job = Job {
        id,
        config,
        body,
        line: line.clone(),
        remote,
        received,
        reply,
    };
    if !context.pool.submit(job) {
        return busy(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "every cell is busy and the queue is full",
        ));
    }
    match response.await {
        Ok(response) => response,
        // The worker went away without answering: only a panic does that.
        Err(_) => refuse(StatusCode::INTERNAL_SERVER_ERROR, "the server failed"),
    }
}

/// `response` with the header that tells a refused client when to try again.
fn busy(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    response.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        HeaderValue::from(RETRY_AFTER_SECONDS),
    );
    response
}
