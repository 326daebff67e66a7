//! Rust bindings of the imports a handler's cell serves and the proxy world's export,
//! generated from the WIT in `wit/`, with the resources mapped to the guest's own types.

wasmtime::component::bindgen!({
    path: "wit",
    world: "hypercell:guest/handler-cell",
    imports: { default: trappable },
    with: {
        "wasi:io/error.error": crate::http::streams::IoError,
        "wasi:io/poll.pollable": crate::http::streams::Pollable,
        "wasi:io/streams.input-stream": crate::http::streams::InputStream,
        "wasi:io/streams.output-stream": crate::http::streams::OutputStream,
        "wasi:http/types.fields": crate::http::types::Fields,
        "wasi:http/types.incoming-request": crate::http::types::IncomingRequest,
        "wasi:http/types.outgoing-request": crate::http::types::OutgoingRequest,
        "wasi:http/types.request-options": crate::http::types::RequestOptions,
        "wasi:http/types.response-outparam": crate::http::types::ResponseOutparam,
        "wasi:http/types.incoming-response": crate::http::types::IncomingResponse,
        "wasi:http/types.incoming-body": crate::http::types::IncomingBody,
        "wasi:http/types.future-trailers": crate::http::types::FutureTrailers,
        "wasi:http/types.outgoing-response": crate::http::types::OutgoingResponse,
        "wasi:http/types.outgoing-body": crate::http::types::OutgoingBody,
        "wasi:http/types.future-incoming-response": crate::http::types::FutureIncomingResponse,
    },
});
