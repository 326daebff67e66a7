//! The daemon's process: the API on a Unix socket that only its user may use, until
//! SIGTERM or SIGINT, then every live cell killed and its end recorded.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::future::IntoFuture;

use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::registry::{DEFAULT_LOG_CAP, DaemonError, Registry};

/// VMs the daemon keeps made ahead of the cells it starts.
const VMS_MADE_AHEAD: usize = 4;

/// How long the daemon waits, as it shuts down, for killed cells' ends to be recorded.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Where and how the daemon runs.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// The API's Unix socket.
    pub socket: PathBuf,
    /// Where the records, logs and compile cache live.
    pub state: PathBuf,
    /// A TCP address to serve the API on as well, and the file holding the bearer token
    /// that requests there must carry.
    pub listen: Option<(std::net::SocketAddr, PathBuf)>,
    /// Directories under which cells may be granted directories.
    pub allowed_dirs: Vec<PathBuf>,
    /// How long a cell waits for input before its VM is released, if ever.
    pub park_after: Option<Duration>,
    /// How often cells whose restart policy is `checkpoint` are checkpointed while they
    /// run, if at all (they are also checkpointed as the daemon shuts down).
    pub checkpoint_every: Option<Duration>,
    /// The file holding the secret that migration peers share, and the address to
    /// take cells from other daemons on, if any.
    pub migration: Option<(PathBuf, Option<std::net::SocketAddr>)>,
}

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket could not be made.
    #[error("cannot serve the API on `{path}`: {source}")]
    Socket {
        /// The socket's path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another daemon answers on the socket.
    #[error("another daemon is serving on `{0}`; stop it or choose another --socket")]
    InUse(PathBuf),
    /// The registry could not be opened.
    #[error(transparent)]
    Registry(#[from] DaemonError),
    /// The TCP listener could not be made.
    #[error("cannot serve the API on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The migration secret cannot be used.
    #[error("cannot use the migration secret: {0}")]
    MigrationSecret(String),
    /// The token file is missing, unreadable or empty.
    #[error("cannot use `{path}` as the API's token: {reason}")]
    Token {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The bearer token in `path`: its first line, which must not be empty.
fn read_token(path: &Path) -> Result<String, ServeError> {
    let failed = |reason: String| ServeError::Token {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.len() < 16 {
        return Err(failed(
            "it holds no token of at least 16 characters on its first line".into(),
        ));
    }
    Ok(token)
}

/// The default socket: `$XDG_RUNTIME_DIR/hypercell/api.sock`, or
/// `/run/hypercell/api.sock` for root.
pub fn default_socket() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/run/hypercell/api.sock");
    }
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    runtime.join("hypercell").join("api.sock")
}

/// The default state directory: `$XDG_STATE_HOME/hypercell` (or
/// `~/.local/state/hypercell`), or `/var/lib/hypercell` for root.
pub fn default_state() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/hypercell");
    }
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir)
        .join("hypercell")
}

/// Runs the daemon until SIGTERM or SIGINT; `ready` is called once the socket accepts.
pub async fn serve(options: DaemonOptions, ready: impl FnOnce()) -> Result<(), ServeError> {
    let socket_error = |source| ServeError::Socket {
        path: options.socket.clone(),
        source,
    };
    if let Some(dir) = options.socket.parent() {
        std::fs::create_dir_all(dir).map_err(socket_error)?;
    }
    if options.socket.exists() {
        if tokio::net::UnixStream::connect(&options.socket)
            .await
            .is_ok()
        {
            return Err(ServeError::InUse(options.socket.clone()));
        }
        // Left by a daemon that died: nobody answers on it.
        std::fs::remove_file(&options.socket).map_err(socket_error)?;
    }
    let tcp = match &options.listen {
        Some((addr, token_file)) => {
            let token = read_token(token_file)?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Listen {
                    addr: *addr,
                    source,
                })?;
            Some((listener, token))
        }
        None => None,
    };
    let registry = Registry::open(
        &options.state,
        &options.allowed_dirs,
        DEFAULT_LOG_CAP,
        options.park_after,
        options.checkpoint_every,
    )?;
    if let Some((secret_file, listen)) = &options.migration {
        let secret =
            crate::migration::read_secret(secret_file).map_err(ServeError::MigrationSecret)?;
        registry.set_migration_secret(secret.clone());
        if let Some(addr) = listen {
            let listener =
                std::net::TcpListener::bind(addr).map_err(|source| ServeError::Listen {
                    addr: *addr,
                    source,
                })?;
            let bound = crate::migration::serve_migrations(
                std::sync::Arc::clone(&registry),
                listener,
                secret,
            )
            .map_err(|source| ServeError::Listen {
                addr: *addr,
                source,
            })?;
            registry.set_migration_port(bound.port());
        }
    }
    // Cells start without waiting on the kernel to make their VMs.
    hypercell_host::keep_vms_ready(VMS_MADE_AHEAD);
    let listener = UnixListener::bind(&options.socket).map_err(socket_error)?;
    std::fs::set_permissions(&options.socket, std::fs::Permissions::from_mode(0o600))
        .map_err(socket_error)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(socket_error)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(socket_error)?;
    let restoring = std::sync::Arc::clone(&registry);
    tokio::task::spawn_blocking(move || restoring.restore_checkpointed())
        .await
        .map_err(|e| DaemonError::Internal(e.to_string()))??;
    ready();
    let app = crate::api::router(std::sync::Arc::clone(&registry));
    let (stopping, stop) = tokio::sync::watch::channel(false);
    let mut stop = stop;
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stop.wait_for(|stop| *stop).await;
    });
    let mut server = std::pin::pin!(server.into_future());
    let tcp_server = tcp.map(|(listener, token)| {
        let app = crate::api::router_with_token(std::sync::Arc::clone(&registry), token);
        let mut stop = stopping.subscribe();
        tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                })
                .into_future(),
        )
    });
    let served = tokio::select! {
        served = &mut server => served,
        _ = async {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        } => {
            // Cells first, so that their log followers end; then event streams; then
            // the connections drain.
            registry.shut_down(SHUTDOWN_GRACE).await;
            registry.close();
            let _ = stopping.send(true);
            if let Some(tcp_server) = tcp_server {
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, tcp_server).await;
            }
            tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await.unwrap_or(Ok(()))
        }
    };
    let _ = std::fs::remove_file(&options.socket);
    served.map_err(socket_error)
}
