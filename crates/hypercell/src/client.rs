//! Talking to a running daemon over its Unix socket: one HTTP/1.1 request per call, the
//! answer whole, or streamed as it comes (logs, events).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// Why a request to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `--host` names something this client cannot reach.
    #[error("`{0}` is not a daemon address: use unix:PATH, a socket's path or http://ADDR")]
    Host(String),
    /// No token for a TCP daemon.
    #[error("a daemon at an http:// address needs its token: {0}")]
    Token(String),
    /// Nothing answers at the address.
    #[error("cannot reach the daemon at `{address}`: {source}; start one with `hypercell daemon`")]
    Unreachable {
        /// The socket or address.
        address: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The exchange broke off.
    #[error("the daemon's answer broke off: {0}")]
    Http(String),
    /// The daemon refused the request, with its sentence.
    #[error("{0}")]
    Refused(String),
    /// The command line asks for something no request can be, with a sentence saying
    /// what it can be.
    #[error("{0}")]
    Usage(String),
    /// The daemon is too busy for the request now (503), with its sentence: it may
    /// succeed later.
    #[error("{0}")]
    Busy(String),
}

/// Where the daemon is.
enum Address {
    /// Its Unix socket.
    Unix(PathBuf),
    /// Its TCP listener, and the token it wants.
    Tcp(String, String),
}

/// A client of one daemon.
pub struct Client {
    address: Address,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    /// A client of the daemon at `host` (`unix:PATH`, a path, or `http://ADDR` with the
    /// token in `token_file` or `HYPERCELL_TOKEN`), else at `HYPERCELL_HOST`, else at
    /// the default socket.
    pub fn new(host: Option<&str>, token_file: Option<&Path>) -> Result<Self, ClientError> {
        let host = host
            .map(str::to_string)
            .or_else(|| std::env::var("HYPERCELL_HOST").ok());
        let address = match host.as_deref() {
            None => Address::Unix(hypercell_daemon::default_socket()),
            Some(host) if host.starts_with("unix:") => Address::Unix(PathBuf::from(&host[5..])),
            Some(host) if host.starts_with("http://") => {
                let token = match token_file {
                    Some(file) => std::fs::read_to_string(file)
                        .map_err(|e| ClientError::Token(format!("`{}`: {e}", file.display())))?
                        .lines()
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_string(),
                    None => std::env::var("HYPERCELL_TOKEN").map_err(|_| {
                        ClientError::Token(
                            "give --token-file, or the token in HYPERCELL_TOKEN".into(),
                        )
                    })?,
                };
                Address::Tcp(
                    host["http://".len()..].trim_end_matches('/').to_string(),
                    token,
                )
            }
            Some(host) if host.contains("://") => return Err(ClientError::Host(host.into())),
            Some(host) => Address::Unix(PathBuf::from(host)),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Http(e.to_string()))?;
        Ok(Self { address, runtime })
    }

    /// Sends a request and returns the answer's body; an error answer becomes
    /// [`ClientError::Refused`] with the daemon's sentence.
    pub fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let mut answer = Vec::new();
        self.stream(method, path, body, |chunk| answer.extend_from_slice(chunk))?;
        Ok(Bytes::from(answer))
    }

    /// Sends a request and hands each piece of the answer's body to `chunk` as it
    /// arrives.
    pub fn stream(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        mut chunk: impl FnMut(&[u8]),
    ) -> Result<(), ClientError> {
        self.runtime.block_on(async {
            let mut response = self.send(method, path, body).await?;
            let status = response.status();
            let mut failure = Vec::new();
            while let Some(frame) = response.body_mut().frame().await {
                let frame = frame.map_err(|e| ClientError::Http(e.to_string()))?;
                if let Some(data) = frame.data_ref() {
                    if status.is_success() {
                        chunk(data);
                    } else {
                        failure.extend_from_slice(data);
                    }
                }
            }
            if status.is_success() {
                Ok(())
            } else {
                Err(refusal(status, &failure))
            }
        })
    }

    /// Runs `work`, which may follow several streams at once, on this client's runtime.
    pub fn block_on<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        self.runtime.block_on(work)
    }

    /// Sends one request on a new connection.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let unreachable =
            |address: String| move |source| ClientError::Unreachable { address, source };
        let (mut sender, token) = match &self.address {
            Address::Unix(socket) => {
                let stream = tokio::net::UnixStream::connect(socket)
                    .await
                    .map_err(unreachable(socket.display().to_string()))?;
                (handshake(stream).await?, None)
            }
            Address::Tcp(addr, token) => {
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(unreachable(addr.clone()))?;
                (handshake(stream).await?, Some(token))
            }
        };
        let json = body.is_some();
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "hypercell");
        if let Some(token) = token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if json {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        sender
            .send_request(request)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))
    }
}

/// An HTTP/1.1 connection over `stream`, driven on the runtime.
async fn handshake<S>(
    stream: S,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    tokio::spawn(connection);
    Ok(sender)
}

/// The daemon's sentence from an error answer's body.
pub fn refusal(status: StatusCode, body: &[u8]) -> ClientError {
    let sentence = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|value| value.get("error")?.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("the daemon answered {status}"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        ClientError::Busy(sentence)
    } else {
        ClientError::Refused(sentence)
    }
}
