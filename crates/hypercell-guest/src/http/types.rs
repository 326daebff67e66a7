//! wasi:http/types for a proxy handler: header fields, the incoming request (read from
//! the cell's identity and stdin before the handler runs), the outgoing response and
//! its body (kept until the handler returns), and outgoing requests, which a cell
//! without a network answers with `HTTP-request-denied`.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use wasmtime::component::Resource;

use super::ProxyState;
use super::bindings::wasi::http::outgoing_handler;
use super::bindings::wasi::http::types::{self as http, ErrorCode, HeaderError, Method, Scheme};
use super::streams::{InputStream, IoError, OutputStream, Pollable};

/// Header fields: names in lower case, in the order given.
#[derive(Clone, Default)]
pub struct Fields {
    pub entries: Vec<(String, Vec<u8>)>,
    /// Those of a request or response, which may not change.
    pub immutable: bool,
}

/// Fields a handler may not set, as wasmtime refuses them: the server owns them.
pub(crate) const FORBIDDEN: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
    "http2-settings",
];

/// `name` as a field name (a token, RFC 9110), in lower case.
fn field_name(name: &str) -> Result<String, HeaderError> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(HeaderError::InvalidSyntax);
    }
    let name = name.to_ascii_lowercase();
    if FORBIDDEN.contains(&name.as_str()) {
        return Err(HeaderError::Forbidden);
    }
    Ok(name)
}

/// Whether `value` may be a field value: no control bytes but tabs (RFC 9110), as the
/// server that sends it checks again.
fn field_value(value: &[u8]) -> Result<(), HeaderError> {
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(HeaderError::InvalidSyntax);
    }
    Ok(())
}

/// The request the cell serves.
pub struct IncomingRequest {
    pub method: Method,
    pub path_with_query: Option<String>,
    pub scheme: Option<Scheme>,
    pub authority: Option<String>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Its body, until the handler consumes it.
    pub body: Option<Vec<u8>>,
}

/// A request's body, until its stream is taken.
pub struct IncomingBody(Option<Vec<u8>>);

/// Trailers that never come: request bodies here have none.
pub struct FutureTrailers;

/// Where the handler sets its response.
pub struct ResponseOutparam;

/// The response a handler builds.
pub struct OutgoingResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Its body's index in [`ProxyState::bodies`], once asked for.
    pub body: Option<usize>,
}

/// A body being written: its index in [`ProxyState::bodies`].
pub struct OutgoingBody {
    index: usize,
    stream_taken: bool,
}

/// An outgoing request, built and then refused.
pub struct OutgoingRequest {
    method: Method,
    path_with_query: Option<String>,
    scheme: Option<Scheme>,
    authority: Option<String>,
    headers: Fields,
    body_taken: bool,
}

/// Options of an outgoing request.
#[derive(Default)]
pub struct RequestOptions {
    connect: Option<u64>,
    first_byte: Option<u64>,
    between_bytes: Option<u64>,
}

/// A response to an outgoing request: none ever is.
pub struct IncomingResponse;

/// The future of an outgoing request's response: none ever is.
pub struct FutureIncomingResponse;

/// The bytes of a body being written, and whether it was finished.
#[derive(Default)]
pub struct Body {
    pub data: Vec<u8>,
    pub finished: bool,
}

impl ProxyState {
    fn immutable_fields(
        &mut self,
        entries: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Resource<Fields>> {
        Ok(self.table.push(Fields {
            entries,
            immutable: true,
        })?)
    }

    fn new_body(&mut self) -> usize {
        self.bodies.push(Body::default());
        self.body_base + self.bodies.len() - 1
    }

    /// The body of index `index`, if this request made it.
    pub(super) fn body(&self, index: usize) -> Option<&Body> {
        self.bodies.get(index.checked_sub(self.body_base)?)
    }

    /// [`Self::body`], to write.
    pub(super) fn body_mut(&mut self, index: usize) -> Option<&mut Body> {
        let at = index.checked_sub(self.body_base)?;
        self.bodies.get_mut(at)
    }

    fn fields_mut(
        &mut self,
        fields: &Resource<Fields>,
    ) -> wasmtime::Result<Result<&mut Fields, HeaderError>> {
        let fields = self.table.get_mut(fields)?;
        Ok(if fields.immutable {
            Err(HeaderError::Immutable)
        } else {
            Ok(fields)
        })
    }
}

impl http::Host for ProxyState {
    fn http_error_code(
        &mut self,
        _error: Resource<IoError>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        Ok(None)
    }
}

impl http::HostFields for ProxyState {
    fn new(&mut self) -> wasmtime::Result<Resource<Fields>> {
        Ok(self.table.push(Fields::default())?)
    }

    fn from_list(
        &mut self,
        entries: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<Resource<Fields>, HeaderError>> {
        let mut fields = Fields::default();
        for (name, value) in entries {
            let name = match field_name(&name).and_then(|name| field_value(&value).map(|()| name)) {
                Ok(name) => name,
                Err(error) => return Ok(Err(error)),
            };
            fields.entries.push((name, value));
        }
        Ok(Ok(self.table.push(fields)?))
    }

    fn get(&mut self, fields: Resource<Fields>, name: String) -> wasmtime::Result<Vec<Vec<u8>>> {
        let name = name.to_ascii_lowercase();
        Ok(self
            .table
            .get(&fields)?
            .entries
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .collect())
    }

    fn has(&mut self, fields: Resource<Fields>, name: String) -> wasmtime::Result<bool> {
        let name = name.to_ascii_lowercase();
        Ok(self
            .table
            .get(&fields)?
            .entries
            .iter()
            .any(|(n, _)| *n == name))
    }

    fn set(
        &mut self,
        fields: Resource<Fields>,
        name: String,
        values: Vec<Vec<u8>>,
    ) -> wasmtime::Result<Result<(), HeaderError>> {
        let name = match field_name(&name) {
            Ok(name) => name,
            Err(error) => return Ok(Err(error)),
        };
        if let Some(error) = values.iter().find_map(|value| field_value(value).err()) {
            return Ok(Err(error));
        }
        Ok(self.fields_mut(&fields)?.map(|fields| {
            fields.entries.retain(|(n, _)| *n != name);
            fields
                .entries
                .extend(values.into_iter().map(|value| (name.clone(), value)));
        }))
    }

    fn delete(
        &mut self,
        fields: Resource<Fields>,
        name: String,
    ) -> wasmtime::Result<Result<(), HeaderError>> {
        let name = match field_name(&name) {
            Ok(name) => name,
            Err(error) => return Ok(Err(error)),
        };
        Ok(self
            .fields_mut(&fields)?
            .map(|fields| fields.entries.retain(|(n, _)| *n != name)))
    }

    fn append(
        &mut self,
        fields: Resource<Fields>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), HeaderError>> {
        let name = match field_name(&name).and_then(|name| field_value(&value).map(|()| name)) {
            Ok(name) => name,
            Err(error) => return Ok(Err(error)),
        };
        Ok(self
            .fields_mut(&fields)?
            .map(|fields| fields.entries.push((name, value))))
    }

    fn entries(&mut self, fields: Resource<Fields>) -> wasmtime::Result<Vec<(String, Vec<u8>)>> {
        Ok(self.table.get(&fields)?.entries.clone())
    }

    fn clone(&mut self, fields: Resource<Fields>) -> wasmtime::Result<Resource<Fields>> {
        let entries = self.table.get(&fields)?.entries.clone();
        Ok(self.table.push(Fields {
            entries,
            immutable: false,
        })?)
    }

    fn drop(&mut self, fields: Resource<Fields>) -> wasmtime::Result<()> {
        self.table.delete(fields)?;
        Ok(())
    }
}

impl http::HostIncomingRequest for ProxyState {
    fn method(&mut self, request: Resource<IncomingRequest>) -> wasmtime::Result<Method> {
        Ok(self.table.get(&request)?.method.clone())
    }

    fn path_with_query(
        &mut self,
        request: Resource<IncomingRequest>,
    ) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&request)?.path_with_query.clone())
    }

    fn scheme(&mut self, request: Resource<IncomingRequest>) -> wasmtime::Result<Option<Scheme>> {
        Ok(self.table.get(&request)?.scheme.clone())
    }

    fn authority(
        &mut self,
        request: Resource<IncomingRequest>,
    ) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&request)?.authority.clone())
    }

    fn headers(
        &mut self,
        request: Resource<IncomingRequest>,
    ) -> wasmtime::Result<Resource<Fields>> {
        let entries = self.table.get(&request)?.headers.clone();
        self.immutable_fields(entries)
    }

    fn consume(
        &mut self,
        request: Resource<IncomingRequest>,
    ) -> wasmtime::Result<Result<Resource<IncomingBody>, ()>> {
        Ok(match self.table.get_mut(&request)?.body.take() {
            Some(body) => Ok(self.table.push(IncomingBody(Some(body)))?),
            None => Err(()),
        })
    }

    fn drop(&mut self, request: Resource<IncomingRequest>) -> wasmtime::Result<()> {
        self.table.delete(request)?;
        Ok(())
    }
}

impl http::HostIncomingBody for ProxyState {
    fn stream(
        &mut self,
        body: Resource<IncomingBody>,
    ) -> wasmtime::Result<Result<Resource<InputStream>, ()>> {
        Ok(match self.table.get_mut(&body)?.0.take() {
            Some(data) => Ok(self.table.push(InputStream::Bytes { data, at: 0 })?),
            None => Err(()),
        })
    }

    fn finish(
        &mut self,
        body: Resource<IncomingBody>,
    ) -> wasmtime::Result<Resource<FutureTrailers>> {
        self.table.delete(body)?;
        Ok(self.table.push(FutureTrailers)?)
    }

    fn drop(&mut self, body: Resource<IncomingBody>) -> wasmtime::Result<()> {
        self.table.delete(body)?;
        Ok(())
    }
}

impl http::HostFutureTrailers for ProxyState {
    fn subscribe(
        &mut self,
        trailers: Resource<FutureTrailers>,
    ) -> wasmtime::Result<Resource<Pollable>> {
        Ok(self.table.push_child(Pollable::Ready, &trailers)?)
    }

    #[allow(clippy::type_complexity)]
    fn get(
        &mut self,
        trailers: Resource<FutureTrailers>,
    ) -> wasmtime::Result<Option<Result<Result<Option<Resource<Fields>>, ErrorCode>, ()>>> {
        self.table.get(&trailers)?;
        Ok(Some(Ok(Ok(None))))
    }

    fn drop(&mut self, trailers: Resource<FutureTrailers>) -> wasmtime::Result<()> {
        self.table.delete(trailers)?;
        Ok(())
    }
}

impl http::HostResponseOutparam for ProxyState {
    fn set(
        &mut self,
        param: Resource<ResponseOutparam>,
        response: Result<Resource<OutgoingResponse>, ErrorCode>,
    ) -> wasmtime::Result<()> {
        self.table.delete(param)?;
        let response = match response {
            Ok(response) => Ok(self.table.delete(response)?),
            Err(code) => Err(code),
        };
        self.response = Some(response);
        Ok(())
    }

    fn send_informational(
        &mut self,
        param: Resource<ResponseOutparam>,
        _status: u16,
        headers: Resource<Fields>,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.table.get(&param)?;
        self.table.delete(headers)?;
        Ok(Err(ErrorCode::InternalError(Some(
            "informational responses are not sent from a cell".to_string(),
        ))))
    }

    fn drop(&mut self, param: Resource<ResponseOutparam>) -> wasmtime::Result<()> {
        self.table.delete(param)?;
        Ok(())
    }
}

impl http::HostOutgoingResponse for ProxyState {
    fn new(&mut self, headers: Resource<Fields>) -> wasmtime::Result<Resource<OutgoingResponse>> {
        let headers = self.table.delete(headers)?.entries;
        Ok(self.table.push(OutgoingResponse {
            status: 200,
            headers,
            body: None,
        })?)
    }

    fn status_code(&mut self, response: Resource<OutgoingResponse>) -> wasmtime::Result<u16> {
        Ok(self.table.get(&response)?.status)
    }

    fn set_status_code(
        &mut self,
        response: Resource<OutgoingResponse>,
        status: u16,
    ) -> wasmtime::Result<Result<(), ()>> {
        if !(100..600).contains(&status) {
            return Ok(Err(()));
        }
        self.table.get_mut(&response)?.status = status;
        Ok(Ok(()))
    }

    fn headers(
        &mut self,
        response: Resource<OutgoingResponse>,
    ) -> wasmtime::Result<Resource<Fields>> {
        let entries = self.table.get(&response)?.headers.clone();
        self.immutable_fields(entries)
    }

    fn body(
        &mut self,
        response: Resource<OutgoingResponse>,
    ) -> wasmtime::Result<Result<Resource<OutgoingBody>, ()>> {
        if self.table.get(&response)?.body.is_some() {
            return Ok(Err(()));
        }
        let index = self.new_body();
        self.table.get_mut(&response)?.body = Some(index);
        Ok(Ok(self.table.push(OutgoingBody {
            index,
            stream_taken: false,
        })?))
    }

    fn drop(&mut self, response: Resource<OutgoingResponse>) -> wasmtime::Result<()> {
        self.table.delete(response)?;
        Ok(())
    }
}

impl http::HostOutgoingBody for ProxyState {
    fn write(
        &mut self,
        body: Resource<OutgoingBody>,
    ) -> wasmtime::Result<Result<Resource<OutputStream>, ()>> {
        let outgoing = self.table.get_mut(&body)?;
        if outgoing.stream_taken {
            return Ok(Err(()));
        }
        outgoing.stream_taken = true;
        let index = outgoing.index;
        Ok(Ok(self
            .table
            .push_child(OutputStream::Body(index), &body)?))
    }

    fn finish(
        &mut self,
        body: Resource<OutgoingBody>,
        trailers: Option<Resource<Fields>>,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        if let Some(trailers) = trailers {
            self.table.delete(trailers)?;
        }
        let index = self.table.delete(body)?.index;
        if let Some(body) = self.body_mut(index) {
            body.finished = true;
        }
        Ok(Ok(()))
    }

    fn drop(&mut self, body: Resource<OutgoingBody>) -> wasmtime::Result<()> {
        self.table.delete(body)?;
        Ok(())
    }
}

impl http::HostOutgoingRequest for ProxyState {
    fn new(&mut self, headers: Resource<Fields>) -> wasmtime::Result<Resource<OutgoingRequest>> {
        let headers = self.table.delete(headers)?;
        Ok(self.table.push(OutgoingRequest {
            method: Method::Get,
            path_with_query: None,
            scheme: None,
            authority: None,
            headers,
            body_taken: false,
        })?)
    }

    fn body(
        &mut self,
        request: Resource<OutgoingRequest>,
    ) -> wasmtime::Result<Result<Resource<OutgoingBody>, ()>> {
        if core::mem::replace(&mut self.table.get_mut(&request)?.body_taken, true) {
            return Ok(Err(()));
        }
        let index = self.new_body();
        Ok(Ok(self.table.push(OutgoingBody {
            index,
            stream_taken: false,
        })?))
    }

    fn method(&mut self, request: Resource<OutgoingRequest>) -> wasmtime::Result<Method> {
        Ok(self.table.get(&request)?.method.clone())
    }

    fn set_method(
        &mut self,
        request: Resource<OutgoingRequest>,
        method: Method,
    ) -> wasmtime::Result<Result<(), ()>> {
        self.table.get_mut(&request)?.method = method;
        Ok(Ok(()))
    }

    fn path_with_query(
        &mut self,
        request: Resource<OutgoingRequest>,
    ) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&request)?.path_with_query.clone())
    }

    fn set_path_with_query(
        &mut self,
        request: Resource<OutgoingRequest>,
        path: Option<String>,
    ) -> wasmtime::Result<Result<(), ()>> {
        self.table.get_mut(&request)?.path_with_query = path;
        Ok(Ok(()))
    }

    fn scheme(&mut self, request: Resource<OutgoingRequest>) -> wasmtime::Result<Option<Scheme>> {
        Ok(self.table.get(&request)?.scheme.clone())
    }

    fn set_scheme(
        &mut self,
        request: Resource<OutgoingRequest>,
        scheme: Option<Scheme>,
    ) -> wasmtime::Result<Result<(), ()>> {
        self.table.get_mut(&request)?.scheme = scheme;
        Ok(Ok(()))
    }

    fn authority(
        &mut self,
        request: Resource<OutgoingRequest>,
    ) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&request)?.authority.clone())
    }

    fn set_authority(
        &mut self,
        request: Resource<OutgoingRequest>,
        authority: Option<String>,
    ) -> wasmtime::Result<Result<(), ()>> {
        self.table.get_mut(&request)?.authority = authority;
        Ok(Ok(()))
    }

    fn headers(
        &mut self,
        request: Resource<OutgoingRequest>,
    ) -> wasmtime::Result<Resource<Fields>> {
        let entries = self.table.get(&request)?.headers.entries.clone();
        self.immutable_fields(entries)
    }

    fn drop(&mut self, request: Resource<OutgoingRequest>) -> wasmtime::Result<()> {
        self.table.delete(request)?;
        Ok(())
    }
}

impl http::HostRequestOptions for ProxyState {
    fn new(&mut self) -> wasmtime::Result<Resource<RequestOptions>> {
        Ok(self.table.push(RequestOptions::default())?)
    }

    fn connect_timeout(
        &mut self,
        options: Resource<RequestOptions>,
    ) -> wasmtime::Result<Option<u64>> {
        Ok(self.table.get(&options)?.connect)
    }

    fn set_connect_timeout(
        &mut self,
        options: Resource<RequestOptions>,
        duration: Option<u64>,
    ) -> wasmtime::Result<Result<(), ()>> {
        self.table.get_mut(&options)?.connect = duration;
        Ok(Ok(()))
    }

    fn first_byte_timeout(
        &mut self,
        options: Resource<RequestOptions>,
    ) -> wasmtime::Result<Option<u64>> {
        Ok(self.table.get(&options)?.first_byte)
    }

    fn set_first_byte_timeout(
        &mut self,
        options: Resource<RequestOptions>,
        duration: Option<u64>,
    ) -> wasmtime::Result<Result<(), ()>> {
        self.table.get_mut(&options)?.first_byte = duration;
        Ok(Ok(()))
    }

    fn between_bytes_timeout(
        &mut self,
        options: Resource<RequestOptions>,
    ) -> wasmtime::Result<Option<u64>> {
        Ok(self.table.get(&options)?.between_bytes)
    }

    fn set_between_bytes_timeout(
        &mut self,
        options: Resource<RequestOptions>,
        duration: Option<u64>,
    ) -> wasmtime::Result<Result<(), ()>> {
        self.table.get_mut(&options)?.between_bytes = duration;
        Ok(Ok(()))
    }

    fn drop(&mut self, options: Resource<RequestOptions>) -> wasmtime::Result<()> {
        self.table.delete(options)?;
        Ok(())
    }
}

impl http::HostIncomingResponse for ProxyState {
    fn status(&mut self, _response: Resource<IncomingResponse>) -> wasmtime::Result<u16> {
        Err(wasmtime::Error::msg(
            "no incoming response exists in a cell",
        ))
    }

    fn headers(
        &mut self,
        _response: Resource<IncomingResponse>,
    ) -> wasmtime::Result<Resource<Fields>> {
        Err(wasmtime::Error::msg(
            "no incoming response exists in a cell",
        ))
    }

    fn consume(
        &mut self,
        _response: Resource<IncomingResponse>,
    ) -> wasmtime::Result<Result<Resource<IncomingBody>, ()>> {
        Err(wasmtime::Error::msg(
            "no incoming response exists in a cell",
        ))
    }

    fn drop(&mut self, response: Resource<IncomingResponse>) -> wasmtime::Result<()> {
        self.table.delete(response)?;
        Ok(())
    }
}

impl http::HostFutureIncomingResponse for ProxyState {
    fn subscribe(
        &mut self,
        future: Resource<FutureIncomingResponse>,
    ) -> wasmtime::Result<Resource<Pollable>> {
        Ok(self.table.push_child(Pollable::Ready, &future)?)
    }

    #[allow(clippy::type_complexity)]
    fn get(
        &mut self,
        _future: Resource<FutureIncomingResponse>,
    ) -> wasmtime::Result<Option<Result<Result<Resource<IncomingResponse>, ErrorCode>, ()>>> {
        Err(wasmtime::Error::msg(
            "no outgoing request is sent from a cell",
        ))
    }

    fn drop(&mut self, future: Resource<FutureIncomingResponse>) -> wasmtime::Result<()> {
        self.table.delete(future)?;
        Ok(())
    }
}

impl outgoing_handler::Host for ProxyState {
    fn handle(
        &mut self,
        request: Resource<OutgoingRequest>,
        options: Option<Resource<RequestOptions>>,
    ) -> wasmtime::Result<Result<Resource<FutureIncomingResponse>, ErrorCode>> {
        self.table.delete(request)?;
        if let Some(options) = options {
            self.table.delete(options)?;
        }
        Ok(Err(ErrorCode::InternalError(Some(
            "a cell has no network: outgoing requests are refused".to_string(),
        ))))
    }
}
