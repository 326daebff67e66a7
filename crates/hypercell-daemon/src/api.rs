//! The HTTP API under `/v1`: JSON in and out, resources in Cloud Hypervisor's and
//! Firecracker's style (`PUT /v1/cells/{cell}/pause`), every error a JSON body with one
//! sentence and the status that fits it.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use futures_util::stream;
use serde::Deserialize;

use crate::console::{self, Access, ConsoleAuth};
use crate::logs::Stream;
use crate::record::{
    CellRecord, CellSpec, CellState, CellStatsView, CellUsage, ChannelSpec, ChannelView,
    DirMapping, DirSpec, Event, MigrationPhase, MigrationProgress, NamedChannelLink, RestartPolicy,
    TemplateRecord, TemplateSpec,
};
use crate::registry::{DaemonError, Migration, Registry};

/// Largest request body the API takes (a cell spec, or a write to stdin).
pub const BODY_LIMIT: usize = 1 << 20;

/// Largest module an upload takes.
pub const MODULE_LIMIT: usize = 256 << 20;

/// How long a stop waits for a cell to end on its own before killing it, unless the
/// request says (`grace_ms`).
const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// How long a kill waits for the cell's end to be recorded.
const KILL_PATIENCE: Duration = Duration::from_secs(30);

/// An error answer: a status and one sentence.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            axum::Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, 1.into());
        }
        response
    }
}

impl From<DaemonError> for ApiError {
    fn from(error: DaemonError) -> Self {
        let status = match &error {
            DaemonError::NotFound(_) | DaemonError::NoTemplate(_) => StatusCode::NOT_FOUND,
            DaemonError::WrongState { .. }
            | DaemonError::NameTaken(_)
            | DaemonError::Conflict(_) => StatusCode::CONFLICT,
            DaemonError::BadRequest { .. } | DaemonError::Start { .. } => StatusCode::BAD_REQUEST,
            DaemonError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            DaemonError::Store(_) | DaemonError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, error.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => Self::new(
                status,
                format!("the request body is larger than the API takes ({BODY_LIMIT} bytes)"),
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::new(
                status,
                "the request body must be sent as `Content-Type: application/json`",
            ),
            // A body that is not JSON, or not of the expected shape, is a bad request;
            // serde's message names the field.
            _ => Self::new(
                StatusCode::BAD_REQUEST,
                format!("the request body is not valid: {}", rejection.body_text()),
            ),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("the query is not valid: {}", rejection.body_text()),
        )
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("the path is not valid: {}", rejection.body_text()),
        )
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        let status = rejection.status();
        let message = match status {
            StatusCode::PAYLOAD_TOO_LARGE => {
                format!("the request body is larger than the API takes ({BODY_LIMIT} bytes)")
            }
            _ => format!("the request body cannot be read: {}", rejection.body_text()),
        };
        Self::new(status, message)
    }
}

type Answer<T> = Result<T, ApiError>;

/// The API's routes over `registry`, answering only requests that carry `token` (as a
/// bearer token, or as the console's cookie), with the web console beside them, for a
/// listener others can reach.
pub fn router_with_token(registry: Arc<Registry>, token: String) -> Router {
    let auth = Arc::new(ConsoleAuth::new(token));
    let checking = Arc::clone(&auth);
    router(registry)
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let auth = Arc::clone(&checking);
                async move {
                    match auth.access(request.method(), request.headers()) {
                        Access::Bearer | Access::Console => next.run(request).await,
                        Access::Forged => ApiError::new(
                            StatusCode::FORBIDDEN,
                            "a change made with the console's cookie must come from the console itself: from its own origin, with its X-Hypercell-Console header",
                        )
                        .into_response(),
                        Access::Denied => ApiError::new(
                            StatusCode::UNAUTHORIZED,
                            "this API needs the daemon's token: send `Authorization: Bearer TOKEN`",
                        )
                        .into_response(),
                    }
                }
            },
        ))
        .merge(console::router(auth))
}

/// The API's routes over `registry`.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/v1/ping", get(ping))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/cells", get(list).post(create))
        .route("/v1/stats", get(all_stats))
        .route(
            "/v1/modules",
            post(upload).layer(DefaultBodyLimit::max(MODULE_LIMIT)),
        )
        .route("/v1/cells/{cell}", get(inspect).delete(remove))
        .route("/v1/cells/{cell}/start", put(start))
        .route("/v1/cells/{cell}/stop", put(stop))
        .route("/v1/cells/{cell}/kill", put(kill))
        .route("/v1/cells/{cell}/pause", put(pause))
        .route("/v1/cells/{cell}/resume", put(resume))
        .route("/v1/cells/{cell}/snapshot", put(snapshot))
        .route("/v1/cells/{cell}/migrate", put(migrate))
        .route("/v1/cells/{cell}/stats", get(stats))
        .route("/v1/cells/{cell}/stdin", post(stdin))
        .route("/v1/cells/{cell}/logs", get(logs))
        .route("/v1/channels", get(channels).post(connect))
        .route("/v1/events", get(events))
        .route("/v1/templates", get(templates).post(create_template))
        .route(
            "/v1/templates/{template}",
            get(template).delete(remove_template),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(registry)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such API path: the API is under /v1 (cells, channels, templates, events, ping)",
    )
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

#[utoipa::path(get, path = "/v1/ping", tag = "daemon",
    responses((status = 200, description = "The daemon's version", body = Version)))]
async fn ping() -> axum::Json<Version> {
    axum::Json(Version {
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

#[utoipa::path(get, path = "/v1/cells", tag = "cells",
    responses((status = 200, description = "Every cell's record, oldest first", body = Vec<CellRecord>)))]
async fn list(State(registry): State<Arc<Registry>>) -> axum::Json<Vec<CellRecord>> {
    axum::Json(registry.list())
}

#[utoipa::path(get, path = "/v1/stats", tag = "cells",
    responses((status = 200, description = "The stats of every live or parked cell, oldest first", body = Vec<CellStatsView>)))]
async fn all_stats(
    State(registry): State<Arc<Registry>>,
) -> Answer<axum::Json<Vec<CellStatsView>>> {
    Ok(axum::Json(
        blocking(move || Ok(registry.live_stats())).await?,
    ))
}

/// `POST /v1/modules`' answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct StoredModule {
    /// Where the daemon keeps it: a cell spec's `module`.
    pub path: String,
    /// The sha256 of its bytes, in hex.
    pub sha256: String,
    /// Its size in bytes.
    pub bytes: u64,
}

#[utoipa::path(post, path = "/v1/modules", tag = "cells",
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, description = "The module is kept on the daemon's host; cells name its path as their module", body = StoredModule),
        (status = 400, description = "The body is empty, or neither a WebAssembly binary nor text", body = ErrorBody),
        (status = 413, description = "The body is over 256 MiB", body = ErrorBody)))]
async fn upload(
    State(registry): State<Arc<Registry>>,
    body: Result<Bytes, BytesRejection>,
) -> Answer<(StatusCode, axum::Json<StoredModule>)> {
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the module is larger than the API takes ({MODULE_LIMIT} bytes)"),
        ),
        _ => ApiError::from(rejection),
    })?;
    // Text starts with a module form, or a comment before it.
    let text = matches!(
        body.iter().find(|byte| !byte.is_ascii_whitespace()),
        Some(b'(' | b';')
    );
    if !body.starts_with(b"\0asm") && !text {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the upload is not a WebAssembly module: send its binary (starting with \\0asm) or its text (.wat, starting with `(` or a `;;` comment)",
        ));
    }
    let bytes = body.len() as u64;
    let (path, sha256) = blocking(move || registry.store_module(&body)).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(StoredModule {
            path: path.display().to_string(),
            sha256,
            bytes,
        }),
    ))
}

#[derive(Deserialize)]
struct CreateQuery {
    /// Start the cell too, as `docker run` does.
    #[serde(default)]
    start: bool,
}

#[utoipa::path(post, path = "/v1/cells", tag = "cells", request_body = CellSpec,
    params(("start" = Option<bool>, Query, description = "Start the cell too (one request, one transaction)")),
    responses((status = 415, description = "The body is not sent as application/json", body = ErrorBody), 
        (status = 201, description = "The new cell, not started", body = CellRecord),
        (status = 400, description = "A field is wrong; the sentence names it", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
        (status = 413, description = "The body is over 1 MiB", body = ErrorBody), (status = 503, description = "As many cells have live partitions as the daemon's limit of open files allows; try again after `Retry-After` seconds", body = ErrorBody)))]
async fn create(
    State(registry): State<Arc<Registry>>,
    query: Result<Query<CreateQuery>, QueryRejection>,
    spec: Result<axum::Json<CellSpec>, JsonRejection>,
) -> Answer<(StatusCode, axum::Json<CellRecord>)> {
    let Query(query) = query?;
    let axum::Json(spec) = spec?;
    let record = if query.start {
        blocking(move || registry.run(spec)).await?
    } else {
        blocking(move || registry.create(spec)).await?
    };
    Ok((StatusCode::CREATED, axum::Json(record)))
}

#[utoipa::path(get, path = "/v1/channels", tag = "channels",
    responses((status = 200, description = "Every channel between cells, by the cell that writes it", body = Vec<ChannelView>)))]
async fn channels(State(registry): State<Arc<Registry>>) -> axum::Json<Vec<ChannelView>> {
    axum::Json(registry.channels())
}

#[utoipa::path(post, path = "/v1/channels", tag = "channels", request_body = ChannelSpec,
    responses((status = 415, description = "The body is not sent as application/json", body = ErrorBody),
        (status = 201, description = "The stdout of `from` is joined to the stdin of `to`, or both are granted the named channel: both records, writer first", body = Vec<CellRecord>),
        (status = 400, description = "A cell is joined to itself, or a field is wrong", body = ErrorBody),
        (status = 404, description = "No such cell", body = ErrorBody),
        (status = 409, description = "A cell has started, starts from a snapshot, is to be checkpointed, lacks `stdio` (or `channels`), takes stdin from the API, has that stream or name joined already, or has 16 named channels", body = ErrorBody),
        (status = 413, description = "The body is over 1 MiB", body = ErrorBody)))]
async fn connect(
    State(registry): State<Arc<Registry>>,
    spec: Result<axum::Json<ChannelSpec>, JsonRejection>,
) -> Answer<(StatusCode, axum::Json<[CellRecord; 2]>)> {
    let axum::Json(spec) = spec?;
    let records =
        blocking(move || registry.connect(&spec.from, &spec.to, spec.name.as_deref())).await?;
    Ok((StatusCode::CREATED, axum::Json(records)))
}

#[utoipa::path(get, path = "/v1/templates", tag = "templates",
    responses((status = 200, description = "Every template, by name", body = Vec<TemplateRecord>)))]
async fn templates(
    State(registry): State<Arc<Registry>>,
) -> Answer<axum::Json<Vec<TemplateRecord>>> {
    Ok(axum::Json(registry.templates()?))
}

#[utoipa::path(post, path = "/v1/templates", tag = "templates", request_body = TemplateSpec,
    responses((status = 415, description = "The body is not sent as application/json", body = ErrorBody),
        (status = 201, description = "The new template", body = TemplateRecord),
        (status = 400, description = "A field is wrong, or the module could not be made a template; the sentence says which", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
        (status = 413, description = "The body is over 1 MiB", body = ErrorBody)))]
async fn create_template(
    State(registry): State<Arc<Registry>>,
    spec: Result<axum::Json<TemplateSpec>, JsonRejection>,
) -> Answer<(StatusCode, axum::Json<TemplateRecord>)> {
    let axum::Json(spec) = spec?;
    let record = blocking(move || registry.create_template(spec)).await?;
    Ok((StatusCode::CREATED, axum::Json(record)))
}

#[utoipa::path(get, path = "/v1/templates/{template}", tag = "templates",
    params(("template" = String, Path, description = "The template's name")),
    responses((status = 400, description = "A path parameter is not valid", body = ErrorBody),
        (status = 200, description = "The template's record", body = TemplateRecord),
        (status = 404, description = "No such template", body = ErrorBody)))]
async fn template(
    State(registry): State<Arc<Registry>>,
    name: Result<Path<String>, PathRejection>,
) -> Answer<axum::Json<TemplateRecord>> {
    let Path(name) = name?;
    Ok(axum::Json(registry.template(&name)?))
}

#[utoipa::path(delete, path = "/v1/templates/{template}", tag = "templates",
    params(("template" = String, Path, description = "The template's name")),
    responses((status = 400, description = "A path parameter is not valid", body = ErrorBody),
        (status = 200, description = "The removed template's record; cells running from it go on", body = TemplateRecord),
        (status = 404, description = "No such template", body = ErrorBody)))]
async fn remove_template(
    State(registry): State<Arc<Registry>>,
    name: Result<Path<String>, PathRejection>,
) -> Answer<axum::Json<TemplateRecord>> {
    let Path(name) = name?;
    Ok(axum::Json(
        blocking(move || registry.remove_template(&name)).await?,
    ))
}

#[utoipa::path(get, path = "/v1/cells/{cell}", tag = "cells", params(("cell" = String, Path, description = "The cell: its id, a prefix of exactly one id, or its name")),
    responses((status = 400, description = "A path or query parameter is not valid", body = ErrorBody), (status = 200, description = "The cell's record", body = CellRecord), (status = 404, description = "No such cell", body = ErrorBody)))]
async fn inspect(
    State(registry): State<Arc<Registry>>,
    cell: Result<Path<String>, PathRejection>,
) -> Answer<axum::Json<CellRecord>> {
    let Path(cell) = cell?;
    Ok(axum::Json(registry.inspect(&cell)?))
}

#[utoipa::path(get, path = "/v1/cells/{cell}/stats", tag = "cells",
    params(("cell" = String, Path, description = "The cell: its id, a prefix of exactly one id, or its name")),
    responses((status = 200, description = "Its state, and what its run did so far (live) or in all (ended)", body = CellStatsView),
        (status = 400, description = "A path or query parameter is not valid", body = ErrorBody),
        (status = 404, description = "No such cell", body = ErrorBody)))]
async fn stats(
    State(registry): State<Arc<Registry>>,
    cell: Result<Path<String>, PathRejection>,
) -> Answer<axum::Json<CellStatsView>> {
    let Path(cell) = cell?;
    Ok(axum::Json(blocking(move || registry.stats(&cell)).await?))
}

#[utoipa::path(put, path = "/v1/cells/{cell}/start", tag = "cells", params(("cell" = String, Path, description = "The cell: its id, a prefix of exactly one id, or its name")),
    responses(
        (status = 200, description = "The cell, running", body = CellRecord),
        (status = 400, description = "It could not start (its record says why too)", body = ErrorBody),
        (status = 404, description = "No such cell", body = ErrorBody),
        (status = 409, description = "It is running already", body = ErrorBody), (status = 503, description = "As many cells have live partitions as the daemon's limit of open files allows; try again after `Retry-After` seconds", body = ErrorBody)))]
async fn start(
    State(registry): State<Arc<Registry>>,
    cell: Result<Path<String>, PathRejection>,
) -> Answer<axum::Json<CellRecord>> {
    let Path(cell) = cell?;
    Ok(axum::Json(blocking(move || registry.start(&cell)).await?))
}

#[utoipa::path(put, path = "/v1/cells/{cell}/pause", tag = "cells", params(("cell" = String, Path, description = "The cell: its id, a prefix of exactly one id, or its name")),
    responses((status = 400, description = "A path or query parameter is not valid", body = ErrorBody), (status = 200, description = "The cell, paused", body = CellRecord), (status = 404, description = "No such cell", body = ErrorBody),
        (status = 409, description = "It is not running", body = ErrorBody), (status = 503, description = "As many cells have live partitions as the daemon's limit of open files allows; try again after `Retry-After` seconds", body = ErrorBody)))]
async fn pause(
    State(registry): State<Arc<Registry>>,
    cell: Result<Path<String>, PathRejection>,
) -> Answer<axum::Json<CellRecord>> {
    let Path(cell) = cell?;
    Ok(axum::Json(blocking(move || registry.pause(&cell)).await?))
}

#[utoipa::path(put, path = "/v1/cells/{cell}/resume", tag = "cells", params(("cell" = String, Path, description = "The cell: its id, a prefix of exactly one id, or its name")),
    responses((status = 400, description = "A path or query parameter is not valid", body = ErrorBody), (status = 200, description = "The cell, running", body = CellRecord), (status = 404, description = "No such cell", body = ErrorBody),
        (status = 409, description = "It is not paused", body = ErrorBody)))]
async fn resume(
    State(registry): State<Arc<Registry>>,
    cell: Result<Path<String>, PathRejection>,
) -> Answer<axum::Json<CellRecord>> {
    let Path(cell) = cell?;
    Ok(axum::Json(blocking(move || registry.resume(&cell)).await?))
}

/// Where `PUT /v1/cells/{cell}/snapshot` writes.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// An absolute path on the daemon's host.
    pub path: String,
}

/// Where `PUT /v1/cells/{cell}/migrate` moves a cell.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// The migration listener (`host:port`) of the daemon to move it to, which holds
    /// the same migration secret.
    pub to: String,
    /// Directories of the cell that the destination finds under other paths; the
    /// others must be at the same paths there.
    #[serde(default)]
    pub dir_map: Vec<DirMapping>,
    /// How long the cell may be paused while the last of its memory moves, in
    /// milliseconds: its memory moves in rounds while it runs until what is left fits
    /// (default 5).
    #[serde(default = "default_downtime_ms")]
    pub downtime_ms: u64,
}

fn default_downtime_ms() -> u64 {
    5
}

/// Every error's body.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, in one sentence.
    pub error: String,
}

/// `GET /v1/ping`'s answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Version {
    /// The daemon's version.
    pub version: String,
}

/// The API's OpenAPI document, made from the routes' annotations.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "hypercelld",
        description = "Hypercell's daemon: cells in one process, managed over HTTP."
    ),
    paths(
        ping,
        list,
        all_stats,
        upload,
        create,
        inspect,
        stats,
        start,
        pause,
        resume,
        snapshot,
        migrate,
        stop,
        kill,
        remove,
        stdin,
        logs,
        events,
        channels,
        connect,
        templates,
        create_template,
        template,
        remove_template
    ),
    components(schemas(
        Stream,
        CellStatsView,
        CellUsage,
        CellSpec,
        CellRecord,
        CellState,
        DirSpec,
        RestartPolicy,
        Event,
        ChannelSpec,
        ChannelView,
        NamedChannelLink,
        ErrorBody,
        SnapshotRequest,
        MigrateRequest,
        DirMapping,
        StoredModule,
        Migration,
        MigrationProgress,
        MigrationPhase,
        TemplateSpec,
        TemplateRecord,
        Version
    ))
)]
pub struct ApiDoc;

/// The OpenAPI document as pretty JSON, as committed in `docs/openapi.json`.
pub fn openapi_json() -> String {
    let mut json = <ApiDoc as utoipa::OpenApi>::openapi()
        .to_pretty_json()
        .expect("the document is JSON");
    json.push('\n');
    json
}

#[utoipa::path(put, path = "/v1/cells/{cell}/snapshot", tag = "cells", params(("cell" = String, Path, description = "The cell: its id, a prefix of exactly one id, or its name")),
    request_body = SnapshotRequest,
    responses((status = 415, description = "The body is not sent as application/json", body = ErrorBody), (status = 200, description = "The checkpoint is written; a running cell goes on", body = CellRecord),
        (status = 400, description = "The path is not absolute or cannot be written", body = ErrorBody),
        (status = 404, description = "No such cell", body = ErrorBody),
        (status = 409, description = "The cell is not live, or cannot be snapshotted now", body = ErrorBody), (status = 503, description = "As many cells have live partitions as the daemon's limit of open files allows; try again after `Retry-After` seconds", body = ErrorBody)))]
async fn snapshot(
    State(registry): State<Arc<Registry>>,
    cell: Result<Path<String>, PathRejection>,
    request: Result<axum::Json<SnapshotRequest>, JsonRejection>,
) -> Answer<axum::Json<CellRecord>> {
    let Path(cell) = cell?;
    let axum::Json(request) = request?;
    let path = std::path::PathBuf::from(request.path);
    Ok(axum::Json(
        blocking(move || registry.snapshot(&cell, &path)).await?,
    ))
}

#[utoipa::path(put, path = "/v1/cells/{cell}/migrate", tag = "cells", params(("cell" = String, Path, description = "The cell: its id, a prefix of exactly one id, or its name")),
    request_body = MigrateRequest,
    responses((status = 415, description = "The body is not sent as application/json", body = ErrorBody), (status = 200, description = "The cell runs at the destination; its record here says where it went", body = Migration),
        (status = 400, description = "The address is not a host:port address, or a directory to map is not the cell's", body = ErrorBody),
        (status = 404, description = "No such cell", body = ErrorBody),
        (status = 409, description = "The cell is not live, or it did not move (it goes on here), or the migration broke after the destination took it (it stays paused here)", body = ErrorBody), (status = 503, description = "As many cells have live partitions as the daemon's limit of open files allows; try again after `Retry-After` seconds", body = ErrorBody)))]
async fn migrate(
    State(registry): State<Arc<Registry>>,
    cell: Result<Path<String>, PathRejection>,
    request: Result<axum::Json<MigrateRequest>, JsonRejection>,
) -> Answer<axum::Json<Migration>> {
    let Path(cell) = cell?;
    let axum::Json(request) = request?;
    Ok(axum::Json(
        blocking(move || {
            let budget = Duration::from_millis(request.downtime_ms);
            registry.migrate(&cell, &request.to, &request.dir_map, budget)
        })
        .await?,
    ))
}

#[derive(Deserialize)]
struct StopQuery {
    grace_ms: Option<u64>,
}

#[utoipa::path(put, path = "/v1/cells/{cell}/stop", tag = "cells",
    params(("cell" = String, Path, description = "The cell: its id, a prefix of exactly one id, or its name"), ("grace_ms" = Option<u64>, Query, description = "How long to wait after closing stdin before killing (10 s)")),
    responses((status = 400, description = "A path or query parameter is not valid", body = ErrorBody), (status = 200, description = "The cell, ended", body = CellRecord), (status = 404, description = "No such cell", body = ErrorBody), (status = 503, description = "As many cells have live partitions as the daemon's limit of open files allows; try again after `Retry-After` seconds", body = ErrorBody)))]
async fn stop(
    State(registry): State<Arc<Registry>>,
    cell: Result<Path<String>, PathRejection>,
    query: Result<Query<StopQuery>, QueryRejection>,
) -> Answer<axum::Json<CellRecord>> {
    let Path(cell) = cell?;
    let Query(query) = query?;
    let grace = query.grace_ms.map_or(DEFAULT_GRACE, Duration::from_millis);
    let asking = Arc::clone(&registry);
    let (id, end) = blocking(move || asking.ask_to_end(&cell, false)).await?;
    if let Some(mut end) = end
        && tokio::time::timeout(grace, end.wait_for(|state| !state.is_live()))
            .await
            .is_err()
    {
        end_now(&registry, &id).await?;
    }
    Ok(axum::Json(registry.inspect(&id)?))
}

#[utoipa::path(put, path = "/v1/cells/{cell}/kill", tag = "cells", params(("cell" = String, Path, description = "The cell: its id, a prefix of exactly one id, or its name")),
    responses((status = 400, description = "A path or query parameter is not valid", body = ErrorBody), (status = 200, description = "The cell, killed", body = CellRecord), (status = 404, description = "No such cell", body = ErrorBody),
        (status = 409, description = "It is not live", body = ErrorBody)))]
async fn kill(
    State(registry): State<Arc<Registry>>,
    cell: Result<Path<String>, PathRejection>,
) -> Answer<axum::Json<CellRecord>> {
    let Path(cell) = cell?;
    let record = registry.inspect(&cell)?;
    if !record.state.is_live() {
        return Err(DaemonError::WrongState {
            name: record.name,
            state: record.state.as_str(),
            action: "kill",
            needed: "running or paused",
        }
        .into());
    }
    end_now(&registry, &record.id).await?;
    Ok(axum::Json(registry.inspect(&record.id)?))
}

/// Kills the cell `id` and waits for its end to be recorded.
async fn end_now(registry: &Arc<Registry>, id: &str) -> Answer<()> {
    let (asking, cell) = (Arc::clone(registry), id.to_string());
    if let (_, Some(mut end)) = blocking(move || asking.ask_to_end(&cell, true)).await? {
        tokio::time::timeout(KILL_PATIENCE, end.wait_for(|state| !state.is_live()))
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cell `{id}` did not end within {KILL_PATIENCE:?} of being killed"),
                )
            })?
            .map_err(|_| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the cell's waiter went away",
                )
            })?;
    }
    Ok(())
}

#[derive(Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

#[utoipa::path(delete, path = "/v1/cells/{cell}", tag = "cells",
    params(("cell" = String, Path, description = "The cell: its id, a prefix of exactly one id, or its name"), ("force" = Option<bool>, Query, description = "Kill a live cell first")),
    responses((status = 400, description = "A path or query parameter is not valid", body = ErrorBody), (status = 204, description = "Removed, with its logs"), (status = 404, description = "No such cell", body = ErrorBody),
        (status = 409, description = "It is live and `force` was not given", body = ErrorBody)))]
async fn remove(
    State(registry): State<Arc<Registry>>,
    cell: Result<Path<String>, PathRejection>,
    query: Result<Query<RemoveQuery>, QueryRejection>,
) -> Answer<StatusCode> {
    let Path(cell) = cell?;
    let Query(query) = query?;
    if query.force {
        let record = registry.inspect(&cell)?;
        if record.state.is_live() {
            end_now(&registry, &record.id).await?;
        }
    }
    registry.remove(&cell)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct StdinQuery {
    #[serde(default)]
    close: bool,
}

#[utoipa::path(post, path = "/v1/cells/{cell}/stdin", tag = "cells",
    params(("cell" = String, Path, description = "The cell: its id, a prefix of exactly one id, or its name"), ("close" = Option<bool>, Query, description = "Close stdin after the write")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 204, description = "Written"),
        (status = 400, description = "The cell has no stdin, or no longer reads it", body = ErrorBody),
        (status = 404, description = "No such cell", body = ErrorBody),
        (status = 409, description = "It is not running with stdin open", body = ErrorBody),
        (status = 413, description = "The body is over 1 MiB", body = ErrorBody), (status = 503, description = "As many cells have live partitions as the daemon's limit of open files allows; try again after `Retry-After` seconds", body = ErrorBody)))]
async fn stdin(
    State(registry): State<Arc<Registry>>,
    cell: Result<Path<String>, PathRejection>,
    query: Result<Query<StdinQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Answer<StatusCode> {
    let Path(cell) = cell?;
    let Query(query) = query?;
    let body = body?;
    blocking(move || registry.write_stdin(&cell, &body, query.close)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct LogsQuery {
    stream: Option<Stream>,
    #[serde(default)]
    follow: bool,
    #[serde(default)]
    from: u64,
}

#[utoipa::path(get, path = "/v1/cells/{cell}/logs", tag = "cells",
    params(("cell" = String, Path, description = "The cell: its id, a prefix of exactly one id, or its name"),
        ("stream" = Option<Stream>, Query, description = "`stdout` (the default) or `stderr`"),
        ("follow" = Option<bool>, Query, description = "Keep sending output until the cell ends"),
        ("from" = Option<u64>, Query, description = "The first byte, counted from the stream's start")),
    responses((status = 400, description = "A path or query parameter is not valid", body = ErrorBody), (status = 200, description = "The output", content_type = "application/octet-stream", body = Vec<u8>), (status = 404, description = "No such cell", body = ErrorBody)))]
async fn logs(
    State(registry): State<Arc<Registry>>,
    cell: Result<Path<String>, PathRejection>,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Answer<Response> {
    let Path(cell) = cell?;
    let Query(query) = query?;
    let (_, logs) = registry.logs(&cell)?;
    let log = std::sync::Arc::clone(logs.stream(query.stream.unwrap_or(Stream::Stdout)));
    let follow = query.follow;
    let watch = log.watch();
    let body = stream::unfold(
        (log, query.from, watch),
        move |(log, from, mut watch)| async move {
            loop {
                match log.read_from(from, 64 * 1024) {
                    Ok((bytes, next)) if !bytes.is_empty() => {
                        return Some((Ok(Bytes::from(bytes)), (log, next, watch)));
                    }
                    Ok(_) if !follow || log.mark().closed => return None,
                    Ok(_) => {
                        if watch.changed().await.is_err() {
                            return None;
                        }
                    }
                    Err(error) => return Some((Err(error), (log, u64::MAX, watch))),
                }
            }
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from_stream(body))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

#[derive(Deserialize)]
struct EventsQuery {
    /// Replays the recorded events after this sequence number first.
    since: Option<u64>,
}

#[utoipa::path(get, path = "/v1/events", tag = "daemon",
    params(("since" = Option<u64>, Query, description = "Send the recorded events after this sequence number first")),
    responses((status = 400, description = "A path or query parameter is not valid", body = ErrorBody), (status = 200, description = "Events as they happen, one JSON object a line", content_type = "application/x-ndjson", body = Event)))]
async fn events(
    State(registry): State<Arc<Registry>>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Answer<Response> {
    let Query(query) = query?;
    // Subscribed before the replay is read, so that nothing falls between them.
    let live = registry.subscribe();
    let replay = match query.since {
        Some(since) => registry.events_after(since)?,
        None => Vec::new(),
    };
    let last = replay.last().map_or(0, |event| event.seq);
    let replayed = stream::iter(replay.into_iter().map(line));
    let following = stream::unfold(
        (
            live,
            registry.closing(),
            last,
            std::collections::VecDeque::new(),
            registry,
        ),
        move |(mut live, mut closing, mut last, mut missed, registry)| async move {
            loop {
                if let Some(event) = missed.pop_front() {
                    return Some((line(event), (live, closing, last, missed, registry)));
                }
                let received = tokio::select! {
                    received = live.recv() => received,
                    _ = closing.wait_for(|closing| *closing) => return None,
                };
                match received {
                    Ok(event) if event.seq <= last => {}
                    Ok(event) => {
                        last = event.seq;
                        return Some((line(event), (live, closing, last, missed, registry)));
                    }
                    // A follower too slow for the live channel gets what it missed from
                    // the records, in order, rather than a gap.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let reading = Arc::clone(&registry);
                        let Ok(Ok(events)) =
                            tokio::task::spawn_blocking(move || reading.events_after(last)).await
                        else {
                            return None;
                        };
                        if let Some(newest) = events.last() {
                            last = newest.seq;
                        }
                        missed.extend(events);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(futures_util::StreamExt::chain(
            replayed, following,
        )))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

fn line(event: crate::record::Event) -> Result<Bytes, std::io::Error> {
    let mut bytes = serde_json::to_vec(&event).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    Ok(Bytes::from(bytes))
}

/// Runs `work`, which may block (compiling, writing to a pipe, waking a parked cell or
/// waiting for one to be parked), off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, DaemonError> + Send + 'static,
) -> Answer<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(ApiError::from)
}

#[cfg(test)]
mod tests {
    /// The committed document is the one the code makes; `HYPERCELL_BLESS=1` rewrites
    /// it after a deliberate change of the API.
    #[test]
    fn the_committed_openapi_document_matches_the_code() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        let made = super::openapi_json();
        if std::env::var_os("HYPERCELL_BLESS").is_some() {
            std::fs::write(&path, &made).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == made,
            "docs/openapi.json differs from the API the code serves; run `HYPERCELL_BLESS=1 cargo test -p hypercell-daemon openapi` and commit it"
        );
    }
}
