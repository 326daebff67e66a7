//! The web console, served at `/` on the daemon's TCP listener: static HTML, CSS and
//! JavaScript embedded in the binary (`console/`), which drive the public `/v1` API and
//! nothing else.
//!
//! Access: the console asks once for the daemon's token (`/login`) and answers with a
//! session: a random id in a cookie (`HttpOnly`, `SameSite=Strict`), valid for
//! [`SESSION_LIFE`] or until `/logout` ends it, which the API then takes in place of the
//! bearer header. The cookie is not the token: browsers send a host's cookies to every
//! port of it, and a session can be ended where the token cannot. Only the sign-in form
//! answers without a session. Because a browser sends the cookie with requests that
//! other pages make too, a request that changes anything and is authorised by the
//! cookie alone must also carry the header `X-Hypercell-Console` (which no other origin
//! can add without a CORS preflight this server never grants) and come from this
//! server's own origin (`Sec-Fetch-Site: same-origin`, or an `Origin` naming the host it
//! was sent to). Every console response forbids framing and inline scripts
//! (Content-Security-Policy), so that nothing a cell prints can run as code even if it
//! ever reached the page as HTML.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::registry::hex;

/// The cookie holding the session id.
const COOKIE: &str = "hypercell_session";
/// How long a session lasts.
pub const SESSION_LIFE: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept at once; signing in past it ends the oldest.
const MOST_SESSIONS: usize = 1024;
/// The header a console request that changes something carries.
pub const CONSOLE_HEADER: &str = "x-hypercell-console";

const INDEX: &str = include_str!("console/index.html");
const LOGIN: &str = include_str!("console/login.html");
const APP_JS: &str = include_str!("console/app.js");
const APP_CSS: &str = include_str!("console/app.css");

/// The console's policy: its own scripts, styles and API only.
const CONSOLE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
/// The login form's: no script at all, its own inline style.
const LOGIN_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// How a request proved it may use the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// It carries the token as a bearer token.
    Bearer,
    /// It carries the console's cookie, and, for a request that changes something, the
    /// console's header from this server's origin.
    Console,
    /// It carries the console's cookie but could have been forged by another page.
    Forged,
    /// It carries no valid token.
    Denied,
}

/// The daemon's token and the console's sessions.
#[derive(Debug)]
pub struct ConsoleAuth {
    token: String,
    /// Session ids, hex, and when each ends.
    sessions: Mutex<HashMap<String, Instant>>,
}

impl ConsoleAuth {
    /// Access for a daemon whose token is `token`, with no sessions yet.
    pub fn new(token: String) -> Self {
        Self {
            token,
            sessions: Mutex::default(),
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How `headers` of a `method` request prove access.
    pub fn access(&self, method: &Method, headers: &HeaderMap) -> Access {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        if bearer.is_some_and(|given| same_secret(given.as_bytes(), self.token.as_bytes())) {
            return Access::Bearer;
        }
        if !self.has_session(headers) {
            return Access::Denied;
        }
        let safe = matches!(*method, Method::GET | Method::HEAD);
        if safe || (headers.contains_key(CONSOLE_HEADER) && same_origin(headers)) {
            Access::Console
        } else {
            Access::Forged
        }
    }

    /// Whether `headers` carry a session that has not ended.
    pub fn has_session(&self, headers: &HeaderMap) -> bool {
        let now = Instant::now();
        let sessions = self.sessions();
        session_ids(headers).any(|id| sessions.get(id).is_some_and(|&ends| ends > now))
    }

    /// A new session, if `given` is the token: its id.
    fn sign_in(&self, given: &str) -> Option<String> {
        if !same_secret(given.as_bytes(), self.token.as_bytes()) {
            return None;
        }
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).ok()?;
        let id = hex(&bytes);
        let now = Instant::now();
        let mut sessions = self.sessions();
        sessions.retain(|_, ends| *ends > now);
        if sessions.len() >= MOST_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, ends)| **ends)
                .map(|(id, _)| id.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(id.clone(), now + SESSION_LIFE);
        Some(id)
    }

    /// Ends the sessions `headers` carry.
    fn sign_out(&self, headers: &HeaderMap) {
        let mut sessions = self.sessions();
        for id in session_ids(headers) {
            sessions.remove(id);
        }
    }
}

/// Whether `a` and `b` are equal, in time that does not depend on where they differ.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// The session ids in `headers`' cookies.
fn session_ids(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// Whether a browser says the request comes from this server's own pages: by
/// `Sec-Fetch-Site` (which pages cannot set, and which a reverse proxy that rewrites
/// `Host` leaves alone), or else by an `Origin` naming the host it was sent to. A
/// request with neither is not a browser's, and a forged page cannot make one.
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"same-origin";
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (origin.to_str().ok(), host) {
        (Some(origin), Some(host)) => {
            origin.strip_prefix("http://") == Some(host)
                || origin.strip_prefix("https://") == Some(host)
        }
        _ => false,
    }
}

/// The console's routes, with `auth` the daemon's token and sessions.
pub fn router(auth: Arc<ConsoleAuth>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/console/{asset}", get(asset_response))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .with_state(auth)
}

async fn index(State(auth): State<Arc<ConsoleAuth>>, headers: HeaderMap) -> Response {
    if auth.has_session(&headers) {
        page(
            StatusCode::OK,
            "text/html; charset=utf-8",
            CONSOLE_POLICY,
            INDEX,
        )
    } else {
        login_page(StatusCode::OK, "")
    }
}

async fn asset_response(
    State(auth): State<Arc<ConsoleAuth>>,
    headers: HeaderMap,
    axum::extract::Path(asset): axum::extract::Path<String>,
) -> Response {
    if !auth.has_session(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            "the console needs the daemon's token: sign in at /",
        )
            .into_response();
    }
    match asset.as_str() {
        "app.js" => page(
            StatusCode::OK,
            "text/javascript; charset=utf-8",
            CONSOLE_POLICY,
            APP_JS,
        ),
        "app.css" => page(
            StatusCode::OK,
            "text/css; charset=utf-8",
            CONSOLE_POLICY,
            APP_CSS,
        ),
        _ => (StatusCode::NOT_FOUND, "no such console asset").into_response(),
    }
}

fn page(
    status: StatusCode,
    kind: &'static str,
    policy: &'static str,
    body: &'static str,
) -> Response {
    let mut response = (status, body).into_response();
    secure(response.headers_mut(), kind, policy);
    response
}

fn secure(headers: &mut HeaderMap, kind: &'static str, policy: &'static str) {
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(policy),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn login_page(status: StatusCode, error: &'static str) -> Response {
    let body = LOGIN.replace("{{error}}", error);
    let mut response = (status, body).into_response();
    secure(
        response.headers_mut(),
        "text/html; charset=utf-8",
        LOGIN_POLICY,
    );
    response
}

/// Largest login form taken.
const LOGIN_LIMIT: usize = 4096;

async fn login(State(auth): State<Arc<ConsoleAuth>>, request: Request) -> Response {
    let Ok(body) = axum::body::to_bytes(request.into_body(), LOGIN_LIMIT).await else {
        return login_page(StatusCode::BAD_REQUEST, "The sign-in form was too large.");
    };
    let given = form_field(&body, "token").unwrap_or_default();
    let Some(session) = auth.sign_in(given.trim()) else {
        return login_page(
            StatusCode::UNAUTHORIZED,
            "That is not the daemon's token: use the first line of its --token-file.",
        );
    };
    let cookie = format!(
        "{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_LIFE.as_secs()
    );
    let mut response = (StatusCode::SEE_OTHER, "").into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static("/"));
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        headers.insert(header::SET_COOKIE, cookie);
    }
    response
}

/// Ends the session, when the console itself asks (another site's form cannot sign its
/// user out).
async fn logout(State(auth): State<Arc<ConsoleAuth>>, headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return (
            StatusCode::FORBIDDEN,
            "signing out must come from the console's own page",
        )
            .into_response();
    }
    auth.sign_out(&headers);
    let mut response = (StatusCode::SEE_OTHER, "").into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static("/"));
    headers.insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "hypercell_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        ),
    );
    response
}

/// The value of `name` in a form-urlencoded body.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match bytes
                .get(i + 1..i + 3)
                .filter(|digits| digits.iter().all(u8::is_ascii_hexdigit))
                .and_then(|digits| u8::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok())
            {
                Some(byte) => {
                    out.push(byte);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    const TOKEN: &str = "0123456789abcdef-token";

    fn signed_in() -> (ConsoleAuth, String) {
        let auth = ConsoleAuth::new(TOKEN.into());
        let session = auth.sign_in(TOKEN).unwrap();
        assert_eq!(auth.sign_in("0123456789abcdef-wrong"), None);
        (auth, format!("other=1; {COOKIE}={session}"))
    }

    #[test]
    fn the_bearer_token_or_a_session_gives_access() {
        let (auth, cookie) = signed_in();
        let bearer = format!("Bearer {TOKEN}");
        assert_eq!(
            auth.access(&Method::PUT, &headers(&[("authorization", &bearer)])),
            Access::Bearer
        );
        assert_eq!(
            auth.access(&Method::GET, &headers(&[("cookie", &cookie)])),
            Access::Console
        );
        assert_eq!(auth.access(&Method::GET, &headers(&[])), Access::Denied);
        let token_as_cookie = format!("{COOKIE}={}", hex(TOKEN.as_bytes()));
        assert_eq!(
            auth.access(&Method::GET, &headers(&[("cookie", &token_as_cookie)])),
            Access::Denied,
            "only a session the daemon made opens it"
        );
        assert_eq!(
            auth.access(&Method::GET, &headers(&[("authorization", "Bearer wrong")])),
            Access::Denied
        );
    }

    #[test]
    fn a_session_ends_when_signed_out() {
        let (auth, cookie) = signed_in();
        let with_cookie = headers(&[("cookie", &cookie)]);
        assert!(auth.has_session(&with_cookie));
        auth.sign_out(&with_cookie);
        assert!(!auth.has_session(&with_cookie));
    }

    #[test]
    fn a_change_by_cookie_needs_the_console_header_from_this_origin() {
        let (auth, cookie) = signed_in();
        let forged = headers(&[("cookie", &cookie)]);
        assert_eq!(auth.access(&Method::PUT, &forged), Access::Forged);
        let other_origin = headers(&[
            ("cookie", &cookie),
            (CONSOLE_HEADER, "1"),
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:9999"),
        ]);
        assert_eq!(auth.access(&Method::POST, &other_origin), Access::Forged);
        let other_site = headers(&[
            ("cookie", &cookie),
            (CONSOLE_HEADER, "1"),
            ("sec-fetch-site", "same-site"),
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:8080"),
        ]);
        assert_eq!(auth.access(&Method::POST, &other_site), Access::Forged);
        let console = headers(&[
            ("cookie", &cookie),
            (CONSOLE_HEADER, "1"),
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert_eq!(auth.access(&Method::DELETE, &console), Access::Console);
        let behind_a_proxy = headers(&[
            ("cookie", &cookie),
            (CONSOLE_HEADER, "1"),
            ("host", "10.0.0.5:7880"),
            ("origin", "https://cells.example.com"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert_eq!(auth.access(&Method::PUT, &behind_a_proxy), Access::Console);
    }

    #[test]
    fn form_fields_are_decoded() {
        assert_eq!(
            form_field(b"a=1&token=ab%2Bc+d%3d&z=", "token").as_deref(),
            Some("ab+c d=")
        );
        assert_eq!(
            form_field(b"token=%zz%4", "token").as_deref(),
            Some("%zz%4")
        );
        assert_eq!(form_field(b"x=1", "token"), None);
    }
}
