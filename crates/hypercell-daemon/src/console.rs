//! The web console, served at `/` on the daemon's TCP listener: static HTML, CSS and
//! JavaScript embedded in the binary (`console/`), which drive the public `/v1` API and
//! nothing else.
//!
//! Access: the console asks once for the daemon's token (`/login`) and keeps it in a
//! cookie (`HttpOnly`, `SameSite=Strict`), which the API then takes in place of the
//! bearer header. Only the login form itself answers without the token. Because a
//! browser sends the cookie with requests that other pages make too, a request that
//! changes anything and is authorised by the cookie alone must also carry the header
//! `X-Hypercell-Console` (which no other origin can add without a CORS preflight this
//! server never grants) and, where the browser sends an `Origin`, come from this
//! server's own. Every console response forbids framing and inline scripts
//! (Content-Security-Policy), so that nothing a cell prints can run as code even if it
//! ever reached the page as HTML.

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

/// The cookie holding the token, hex-encoded.
const COOKIE: &str = "hypercell_token";
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

/// How `headers` of a `method` request prove access with `token`.
pub fn access(method: &Method, headers: &HeaderMap, token: &str) -> Access {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if bearer.is_some_and(|given| same_secret(given.as_bytes(), token.as_bytes())) {
        return Access::Bearer;
    }
    if !has_cookie(headers, token) {
        return Access::Denied;
    }
    let safe = matches!(*method, Method::GET | Method::HEAD);
    if safe || (headers.contains_key(CONSOLE_HEADER) && same_origin(headers)) {
        Access::Console
    } else {
        Access::Forged
    }
}

/// Whether `a` and `b` are equal, in time that does not depend on where they differ.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn has_cookie(headers: &HeaderMap, token: &str) -> bool {
    let expected = hex(token.as_bytes());
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(name, value)| name == COOKIE && same_secret(value.as_bytes(), expected.as_bytes()))
}

/// Whether the request's `Origin`, when it has one, is the server it was sent to.
fn same_origin(headers: &HeaderMap) -> bool {
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

/// The console's routes, for a daemon whose token is `token`.
pub fn router(token: Arc<String>) -> Router {
    let page_token = Arc::clone(&token);
    let asset_token = Arc::clone(&token);
    Router::new()
        .route(
            "/",
            get(move |headers: HeaderMap| {
                let token = Arc::clone(&page_token);
                async move {
                    if has_cookie(&headers, &token) {
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
            }),
        )
        .route(
            "/console/{asset}",
            get(
                move |headers: HeaderMap,
                      axum::extract::Path(asset): axum::extract::Path<String>| {
                    let token = Arc::clone(&asset_token);
                    async move { asset_response(&headers, &token, &asset) }
                },
            ),
        )
        .route(
            "/login",
            post(move |request: Request| {
                let token = Arc::clone(&token);
                async move { login(request, &token).await }
            }),
        )
        .route("/logout", post(logout))
}

fn asset_response(headers: &HeaderMap, token: &str, asset: &str) -> Response {
    if !has_cookie(headers, token) {
        return (
            StatusCode::UNAUTHORIZED,
            "the console needs the daemon's token: sign in at /",
        )
            .into_response();
    }
    match asset {
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

async fn login(request: Request, token: &str) -> Response {
    let Ok(body) = axum::body::to_bytes(request.into_body(), LOGIN_LIMIT).await else {
        return login_page(StatusCode::BAD_REQUEST, "The sign-in form was too large.");
    };
    let given = form_field(&body, "token").unwrap_or_default();
    if !same_secret(given.trim().as_bytes(), token.as_bytes()) {
        return login_page(
            StatusCode::UNAUTHORIZED,
            "That is not the daemon's token: use the first line of its --token-file.",
        );
    }
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
        hex(token.as_bytes())
    );
    let mut response = (StatusCode::SEE_OTHER, "").into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static("/"));
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        headers.insert(header::SET_COOKIE, cookie);
    }
    response
}

async fn logout() -> Response {
    let mut response = (StatusCode::SEE_OTHER, "").into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static("/"));
    headers.insert(
        header::SET_COOKIE,
        HeaderValue::from_static("hypercell_token=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
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

    fn cookie() -> String {
        format!("other=1; {COOKIE}={}", hex(TOKEN.as_bytes()))
    }

    #[test]
    fn the_bearer_token_or_the_cookie_gives_access() {
        let bearer = format!("Bearer {TOKEN}");
        assert_eq!(
            access(&Method::PUT, &headers(&[("authorization", &bearer)]), TOKEN),
            Access::Bearer
        );
        assert_eq!(
            access(&Method::GET, &headers(&[("cookie", &cookie())]), TOKEN),
            Access::Console
        );
        assert_eq!(access(&Method::GET, &headers(&[]), TOKEN), Access::Denied);
        assert_eq!(
            access(
                &Method::GET,
                &headers(&[("cookie", "hypercell_token=00")]),
                TOKEN
            ),
            Access::Denied
        );
        assert_eq!(
            access(
                &Method::GET,
                &headers(&[("authorization", "Bearer wrong")]),
                TOKEN
            ),
            Access::Denied
        );
    }

    #[test]
    fn a_change_by_cookie_needs_the_console_header_from_this_origin() {
        let cookie = cookie();
        let forged = headers(&[("cookie", &cookie)]);
        assert_eq!(access(&Method::PUT, &forged, TOKEN), Access::Forged);
        let other_origin = headers(&[
            ("cookie", &cookie),
            (CONSOLE_HEADER, "1"),
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:9999"),
        ]);
        assert_eq!(access(&Method::POST, &other_origin, TOKEN), Access::Forged);
        let console = headers(&[
            ("cookie", &cookie),
            (CONSOLE_HEADER, "1"),
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert_eq!(access(&Method::DELETE, &console, TOKEN), Access::Console);
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
