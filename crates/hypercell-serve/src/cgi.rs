//! The WAGI convention between the server and a handler program, which is CGI's
//! (RFC 3875) for WASI commands: a request becomes environment variables, arguments
//! (the query's `&`-separated parts, decoded) and stdin (the body); the program's
//! stdout becomes the response, as header lines, a blank line, then the body.

use std::net::SocketAddr;

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::{HeaderName, HeaderValue};
use hyper::http::request::Parts;
use percent_encoding::percent_decode_str;

/// What one request gives the handler program.
#[derive(Clone, Debug)]
pub struct CgiRequest {
    /// The program's arguments after its name: the query's parts, decoded.
    pub args: Vec<String>,
    /// The CGI variables, `HTTP_*` ones for the request's headers among them.
    pub env: Vec<(String, String)>,
    /// The body, the program's stdin.
    pub body: Bytes,
}

/// Why a request cannot be given to a program.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// Decoding the path or query gave a NUL byte, which arguments and variables
    /// cannot carry.
    #[error(
        "the request's {0} decodes to a NUL byte, which a program's arguments and environment cannot carry"
    )]
    Nul(&'static str),
}

/// The CGI view of a request that arrived from `remote` at `local`, with `body`
/// read in full.
pub fn cgi_request(
    parts: &Parts,
    body: Bytes,
    remote: SocketAddr,
    local: SocketAddr,
) -> Result<CgiRequest, RequestError> {
    let raw_path = parts.uri.path();
    let path_info = decode(raw_path, false).ok_or(RequestError::Nul("path"))?;
    let query = parts.uri.query().unwrap_or("");
    let args = query
        .split('&')
        .filter(|part| !part.is_empty())
        .map(|part| decode(part, true).ok_or(RequestError::Nul("query")))
        .collect::<Result<Vec<_>, _>>()?;
    let host = parts
        .headers
        .get(hyper::header::HOST)
        .and_then(|host| host.to_str().ok())
        .map(str::to_owned);
    let (server_name, server_port) = match host.as_deref().map(split_host) {
        Some((name, Some(port))) => (name.to_owned(), port.to_owned()),
        Some((name, None)) => (name.to_owned(), "80".to_owned()),
        None => (local.ip().to_string(), local.port().to_string()),
    };
    let authority = host.unwrap_or_else(|| local.to_string());
    let full_url = match parts.uri.path_and_query() {
        Some(path_and_query) => format!("http://{authority}{path_and_query}"),
        None => format!("http://{authority}{raw_path}"),
    };
    let header = |name: HeaderName| {
        parts
            .headers
            .get(name)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .unwrap_or_default()
    };
    let mut env = vec![
        ("GATEWAY_INTERFACE".into(), "CGI/1.1".into()),
        (
            "SERVER_SOFTWARE".into(),
            concat!("Hypercell/", env!("CARGO_PKG_VERSION")).into(),
        ),
        // `HTTP/1.1` and the like, as the http crate names its versions.
        ("SERVER_PROTOCOL".into(), format!("{:?}", parts.version)),
        ("SERVER_NAME".into(), server_name),
        ("SERVER_PORT".into(), server_port),
        ("REQUEST_METHOD".into(), parts.method.as_str().into()),
        ("SCRIPT_NAME".into(), String::new()),
        ("PATH_INFO".into(), path_info.clone()),
        ("PATH_TRANSLATED".into(), path_info),
        ("QUERY_STRING".into(), query.into()),
        ("REQUEST_URI".into(), parts.uri.to_string()),
        ("X_RAW_PATH_INFO".into(), raw_path.into()),
        ("X_MATCHED_ROUTE".into(), "/...".into()),
        ("X_FULL_URL".into(), full_url),
        ("REMOTE_ADDR".into(), remote.ip().to_string()),
        ("REMOTE_HOST".into(), remote.ip().to_string()),
        ("REMOTE_PORT".into(), remote.port().to_string()),
        ("AUTH_TYPE".into(), String::new()),
        ("REMOTE_USER".into(), String::new()),
        ("CONTENT_LENGTH".into(), body.len().to_string()),
        ("CONTENT_TYPE".into(), header(hyper::header::CONTENT_TYPE)),
    ];
    for name in parts.headers.keys() {
        // `X_A` would pass for `X-A` once named as a variable, so a client could stand
        // in for a header a proxy sets: left out, as nginx and Apache do. `Proxy` would
        // become `HTTP_PROXY`, which HTTP clients take as their proxy (httpoxy).
        let spoofing = name.as_str().contains('_') || name.as_str() == "proxy";
        if spoofing || name == hyper::header::CONTENT_LENGTH || name == hyper::header::CONTENT_TYPE
        {
            continue;
        }
        // Repeated fields are joined, as one field with a list would read; cookies
        // have their own separator.
        let separator = if name == hyper::header::COOKIE {
            "; "
        } else {
            ", "
        };
        let value = parts
            .headers
            .get_all(name)
            .iter()
            .map(|value| String::from_utf8_lossy(value.as_bytes()))
            .collect::<Vec<_>>()
            .join(separator);
        let variable = format!(
            "HTTP_{}",
            name.as_str().to_ascii_uppercase().replace('-', "_")
        );
        env.push((variable, value));
    }
    Ok(CgiRequest { args, env, body })
}

/// `text` percent-decoded (and `+` read as a space in a query), or `None` when it
/// decodes to a NUL byte.
fn decode(text: &str, query: bool) -> Option<String> {
    let spaced;
    let text = if query && text.contains('+') {
        spaced = text.replace('+', " ");
        &spaced
    } else {
        text
    };
    let decoded = percent_decode_str(text).decode_utf8_lossy().into_owned();
    (!decoded.contains('\0')).then_some(decoded)
}

/// A `Host` header's name and port.
fn split_host(host: &str) -> (&str, Option<&str>) {
    // An IPv6 literal keeps its colons inside brackets.
    let port_at = match host.rfind(']') {
        Some(end) => host[end..].find(':').map(|at| end + at),
        None => host.rfind(':'),
    };
    match port_at {
        Some(at) => (&host[..at], Some(&host[at + 1..])),
        None => (host, None),
    }
}

/// A handler's response, read from its stdout.
#[derive(Debug)]
pub struct CgiResponse {
    /// From its `Status` header; 302 for a `Location` without one; otherwise 200.
    pub status: StatusCode,
    /// Its other headers, but those the server sets itself (`Content-Length`) and
    /// those about the connection.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// What followed the blank line.
    pub body: Bytes,
}

/// Why a handler's output is no response.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResponseError {
    /// No blank line ends the headers.
    #[error(
        "the handler's output has no blank line ending its headers (it wrote {0} bytes); a handler writes headers, a blank line, then the body"
    )]
    NoHeaderEnd(usize),
    /// A header line is not `Name: value`.
    #[error("the handler's header line {0:?} is not `Name: value`")]
    BadHeader(String),
    /// The `Status` header holds no final status code.
    #[error("the handler's `Status: {0}` does not start with a status code from 200 to 599")]
    BadStatus(String),
    /// More header lines than a response may have.
    #[error("the handler's response has more than {MAX_HEADERS} header lines")]
    TooManyHeaders,
    /// A body without a type.
    #[error("the handler's response has a body but no Content-Type header")]
    NoContentType,
}

/// Most header lines a handler's response may have.
pub const MAX_HEADERS: usize = 1000;

/// The response a handler wrote as `output`; `typed` when a body must say its
/// `Content-Type`, as CGI requires (a wasi:http response need not).
pub fn parse_response(output: Bytes, typed: bool) -> Result<CgiResponse, ResponseError> {
    let mut status = None;
    let mut location = false;
    let mut content_type = false;
    let mut headers = Vec::new();
    let mut at = 0;
    let body_at = loop {
        let Some(end) = output[at..].iter().position(|&b| b == b'\n') else {
            return Err(ResponseError::NoHeaderEnd(output.len()));
        };
        let line = &output[at..at + end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        at += end + 1;
        if line.is_empty() {
            break at;
        }
        let bad = || ResponseError::BadHeader(String::from_utf8_lossy(line).into_owned());
        let colon = line.iter().position(|&b| b == b':').ok_or_else(bad)?;
        let name = HeaderName::from_bytes(&line[..colon]).map_err(|_| bad())?;
        let value = line[colon + 1..].trim_ascii();
        if name.as_str() == "status" {
            let text = String::from_utf8_lossy(value).into_owned();
            // Informational codes are the server's to send, not a handler's answer.
            let code = text
                .split_ascii_whitespace()
                .next()
                .and_then(|code| code.parse::<u16>().ok())
                .filter(|code| (200..600).contains(code))
                .and_then(|code| StatusCode::from_u16(code).ok());
            status = Some(code.ok_or(ResponseError::BadStatus(text))?);
            continue;
        }
        let value = HeaderValue::from_bytes(value).map_err(|_| bad())?;
        location |= name == hyper::header::LOCATION;
        content_type |= name == hyper::header::CONTENT_TYPE;
        let connection_level = [
            hyper::header::CONTENT_LENGTH,
            hyper::header::TRANSFER_ENCODING,
            hyper::header::CONNECTION,
            hyper::header::UPGRADE,
            hyper::header::TE,
            hyper::header::TRAILER,
            HeaderName::from_static("keep-alive"),
            HeaderName::from_static("proxy-connection"),
        ];
        if !connection_level.contains(&name) {
            if headers.len() == MAX_HEADERS {
                return Err(ResponseError::TooManyHeaders);
            }
            headers.push((name, value));
        }
    };
    if typed && !content_type && body_at < output.len() {
        return Err(ResponseError::NoContentType);
    }
    let status = status.unwrap_or(if location {
        StatusCode::FOUND
    } else {
        StatusCode::OK
    });
    Ok(CgiResponse {
        status,
        headers,
        body: output.slice(body_at..),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Request;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut request = Request::builder().method("POST").uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    fn var<'a>(request: &'a CgiRequest, name: &str) -> Option<&'a str> {
        request
            .env
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_request_becomes_cgi_variables_and_arguments() {
        let parts = parts(
            "/a%20b/c?x=1&name=J%C3%BCrgen+M&&flag",
            &[
                ("host", "example.com:8080"),
                ("content-type", "text/plain"),
                ("x-thing", "one"),
                ("x-thing", "two"),
                ("x_thing", "spoofed"),
                ("proxy", "http://evil.example"),
                ("cookie", "a=1"),
                ("cookie", "b=2"),
            ],
        );
        let remote: SocketAddr = "10.0.0.2:5555".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:3000".parse().unwrap();
        let request = cgi_request(&parts, Bytes::from_static(b"hello"), remote, local).unwrap();
        assert_eq!(request.args, ["x=1", "name=Jürgen M", "flag"]);
        assert_eq!(var(&request, "REQUEST_METHOD"), Some("POST"));
        assert_eq!(var(&request, "PATH_INFO"), Some("/a b/c"));
        assert_eq!(var(&request, "X_RAW_PATH_INFO"), Some("/a%20b/c"));
        assert_eq!(
            var(&request, "QUERY_STRING"),
            Some("x=1&name=J%C3%BCrgen+M&&flag")
        );
        assert_eq!(var(&request, "SERVER_NAME"), Some("example.com"));
        assert_eq!(var(&request, "SERVER_PORT"), Some("8080"));
        assert_eq!(var(&request, "CONTENT_LENGTH"), Some("5"));
        assert_eq!(var(&request, "CONTENT_TYPE"), Some("text/plain"));
        assert_eq!(var(&request, "HTTP_X_THING"), Some("one, two"));
        assert_eq!(var(&request, "HTTP_COOKIE"), Some("a=1; b=2"));
        assert_eq!(var(&request, "HTTP_CONTENT_TYPE"), None);
        assert_eq!(var(&request, "HTTP_PROXY"), None);
        assert_eq!(var(&request, "REMOTE_ADDR"), Some("10.0.0.2"));
        assert_eq!(
            var(&request, "X_FULL_URL"),
            Some("http://example.com:8080/a%20b/c?x=1&name=J%C3%BCrgen+M&&flag")
        );
    }

    #[test]
    fn the_server_address_stands_in_for_a_missing_host() {
        let parts = parts("/", &[]);
        let local: SocketAddr = "[::1]:3000".parse().unwrap();
        let request = cgi_request(&parts, Bytes::new(), local, local).unwrap();
        assert_eq!(var(&request, "SERVER_NAME"), Some("::1"));
        assert_eq!(var(&request, "SERVER_PORT"), Some("3000"));
        assert_eq!(split_host("[::1]:80"), ("[::1]", Some("80")));
        assert_eq!(split_host("[::1]"), ("[::1]", None));
    }

    #[test]
    fn a_nul_byte_is_refused() {
        let local: SocketAddr = "127.0.0.1:3000".parse().unwrap();
        let nul_query = parts("/?a%00b", &[]);
        assert_eq!(
            cgi_request(&nul_query, Bytes::new(), local, local).unwrap_err(),
            RequestError::Nul("query")
        );
        let nul_path = parts("/a%00", &[]);
        assert_eq!(
            cgi_request(&nul_path, Bytes::new(), local, local).unwrap_err(),
            RequestError::Nul("path")
        );
    }

    #[test]
    fn a_response_is_headers_a_blank_line_and_a_body() {
        let output = Bytes::from_static(
            b"Content-Type: text/plain\r\nStatus: 404 Not Found\nX-A:  b \nContent-Length: 99\n\nbody\n\nmore",
        );
        let response = parse_response(output, true).unwrap();
        assert_eq!(response.status, StatusCode::NOT_FOUND);
        assert_eq!(
            response.headers,
            [
                (
                    hyper::header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain")
                ),
                (
                    HeaderName::from_static("x-a"),
                    HeaderValue::from_static("b")
                ),
            ]
        );
        assert_eq!(&response.body[..], b"body\n\nmore");
    }

    #[test]
    fn a_response_without_a_body_needs_no_type() {
        let response =
            parse_response(Bytes::from_static(b"Status: 204 No Content\n\n"), true).unwrap();
        assert_eq!(response.status, StatusCode::NO_CONTENT);
        assert!(response.body.is_empty());
    }

    #[test]
    fn a_location_redirects() {
        let response =
            parse_response(Bytes::from_static(b"Location: /elsewhere\n\n"), true).unwrap();
        assert_eq!(response.status, StatusCode::FOUND);
        let response =
            parse_response(Bytes::from_static(b"Location: /x\nStatus: 301\n\n"), true).unwrap();
        assert_eq!(response.status, StatusCode::MOVED_PERMANENTLY);
    }

    #[test]
    fn broken_responses_are_named() {
        let parse =
            |text: &'static [u8]| parse_response(Bytes::from_static(text), true).unwrap_err();
        assert_eq!(parse(b"hello world"), ResponseError::NoHeaderEnd(11));
        assert_eq!(parse(b"X-A: b\n\nbody"), ResponseError::NoContentType);
        assert_eq!(
            parse(b"Content-Type: a\nStatus: 101\n\n"),
            ResponseError::BadStatus("101".into())
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: a\n")).collect();
        assert_eq!(
            parse_response(Bytes::from(many + "\n"), false).unwrap_err(),
            ResponseError::TooManyHeaders
        );
        assert_eq!(
            parse(b"no colon here\n\n"),
            ResponseError::BadHeader("no colon here".into())
        );
        assert_eq!(
            parse(b"Content-Type: a\nStatus: ok\n\n"),
            ResponseError::BadStatus("ok".into())
        );
        assert_eq!(
            parse(b"Content-Type: a\nStatus: 42\n\n"),
            ResponseError::BadStatus("42".into())
        );
    }
}
