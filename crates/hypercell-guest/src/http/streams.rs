//! wasi:io for a proxy handler: errors, pollables (ready at once, or at a time on the
//! monotonic clock) and streams over buffers: a request's body to read, a response's
//! body to write, and stderr, where the handler's stdout goes too (stdout carries the
//! response to the host).

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use wasmtime::component::Resource;

use super::ProxyState;
use super::bindings::wasi::io::streams::StreamError;
use super::bindings::wasi::io::{error, poll, streams};

/// An I/O error: what went wrong, in words.
pub struct IoError(pub String);

/// Something a handler may wait for.
pub enum Pollable {
    /// Ready now: every stream over a buffer.
    Ready,
    /// Ready once the monotonic clock reaches this time (ns).
    At(u64),
}

impl Pollable {
    fn ready(&self) -> bool {
        match self {
            Self::Ready => true,
            Self::At(when) => monotonic_now() >= *when,
        }
    }
}

/// Now on the monotonic clock, in nanoseconds.
pub fn monotonic_now() -> u64 {
    crate::clock::now(1).unwrap_or(0)
}

/// Bytes to read.
pub enum InputStream {
    /// A body, read from `at` on.
    Bytes { data: Vec<u8>, at: usize },
    /// Nothing: the handler's stdin.
    Empty,
}

/// Where a stream's writes go.
pub enum OutputStream {
    /// The body of the response, by its index in [`ProxyState::bodies`].
    Body(usize),
    /// The cell's stderr.
    Stderr,
}

/// Most bytes a handler is told it may write at once.
const WRITE_BUDGET: u64 = 1 << 20;

impl ProxyState {
    fn write(
        &mut self,
        stream: &Resource<OutputStream>,
        bytes: &[u8],
    ) -> wasmtime::Result<Result<(), StreamError>> {
        match self.table.get(stream)? {
            OutputStream::Body(index) => {
                let index = *index;
                // A body of an earlier request, kept past its call, is closed.
                match self.body_mut(index) {
                    Some(body) if !body.finished => body.data.extend_from_slice(bytes),
                    _ => return Ok(Err(StreamError::Closed)),
                }
            }
            OutputStream::Stderr => {
                let _ = crate::stdio::write(2, &[bytes]);
            }
        }
        Ok(Ok(()))
    }

    fn read(
        &mut self,
        stream: &Resource<InputStream>,
        len: u64,
    ) -> wasmtime::Result<Result<Vec<u8>, StreamError>> {
        Ok(match self.table.get_mut(stream)? {
            InputStream::Bytes { data, at } if *at < data.len() => {
                let n = (data.len() - *at).min(usize::try_from(len).unwrap_or(usize::MAX));
                let chunk = data[*at..*at + n].to_vec();
                *at += n;
                Ok(chunk)
            }
            _ => Err(StreamError::Closed),
        })
    }
}

impl error::Host for ProxyState {}

impl error::HostError for ProxyState {
    fn to_debug_string(&mut self, error: Resource<IoError>) -> wasmtime::Result<String> {
        Ok(self.table.get(&error)?.0.clone())
    }

    fn drop(&mut self, error: Resource<IoError>) -> wasmtime::Result<()> {
        self.table.delete(error)?;
        Ok(())
    }
}

impl poll::Host for ProxyState {
    fn poll(&mut self, waited: Vec<Resource<poll::Pollable>>) -> wasmtime::Result<Vec<u32>> {
        if waited.is_empty() {
            return Err(wasmtime::Error::msg("poll was given no pollables"));
        }
        loop {
            let mut ready = Vec::new();
            let mut earliest = u64::MAX;
            for (index, pollable) in waited.iter().enumerate() {
                let pollable = self.table.get(pollable)?;
                if pollable.ready() {
                    ready.push(index as u32);
                } else if let Pollable::At(when) = pollable {
                    earliest = earliest.min(*when);
                }
            }
            if !ready.is_empty() {
                return Ok(ready);
            }
            crate::clock::sleep(earliest.saturating_sub(monotonic_now()));
        }
    }
}

impl poll::HostPollable for ProxyState {
    fn ready(&mut self, pollable: Resource<Pollable>) -> wasmtime::Result<bool> {
        Ok(self.table.get(&pollable)?.ready())
    }

    fn block(&mut self, pollable: Resource<Pollable>) -> wasmtime::Result<()> {
        if let Pollable::At(when) = self.table.get(&pollable)? {
            crate::clock::sleep(when.saturating_sub(monotonic_now()));
        }
        Ok(())
    }

    fn drop(&mut self, pollable: Resource<Pollable>) -> wasmtime::Result<()> {
        self.table.delete(pollable)?;
        Ok(())
    }
}

impl streams::Host for ProxyState {}

impl streams::HostInputStream for ProxyState {
    fn read(
        &mut self,
        stream: Resource<InputStream>,
        len: u64,
    ) -> wasmtime::Result<Result<Vec<u8>, StreamError>> {
        ProxyState::read(self, &stream, len)
    }

    fn blocking_read(
        &mut self,
        stream: Resource<InputStream>,
        len: u64,
    ) -> wasmtime::Result<Result<Vec<u8>, StreamError>> {
        ProxyState::read(self, &stream, len)
    }

    fn skip(
        &mut self,
        stream: Resource<InputStream>,
        len: u64,
    ) -> wasmtime::Result<Result<u64, StreamError>> {
        Ok(ProxyState::read(self, &stream, len)?.map(|skipped| skipped.len() as u64))
    }

    fn blocking_skip(
        &mut self,
        stream: Resource<InputStream>,
        len: u64,
    ) -> wasmtime::Result<Result<u64, StreamError>> {
        Ok(ProxyState::read(self, &stream, len)?.map(|skipped| skipped.len() as u64))
    }

    fn subscribe(&mut self, stream: Resource<InputStream>) -> wasmtime::Result<Resource<Pollable>> {
        Ok(self.table.push_child(Pollable::Ready, &stream)?)
    }

    fn drop(&mut self, stream: Resource<InputStream>) -> wasmtime::Result<()> {
        self.table.delete(stream)?;
        Ok(())
    }
}

impl streams::HostOutputStream for ProxyState {
    fn check_write(
        &mut self,
        stream: Resource<OutputStream>,
    ) -> wasmtime::Result<Result<u64, StreamError>> {
        self.table.get(&stream)?;
        Ok(Ok(WRITE_BUDGET))
    }

    fn write(
        &mut self,
        stream: Resource<OutputStream>,
        contents: Vec<u8>,
    ) -> wasmtime::Result<Result<(), StreamError>> {
        ProxyState::write(self, &stream, &contents)
    }

    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<OutputStream>,
        contents: Vec<u8>,
    ) -> wasmtime::Result<Result<(), StreamError>> {
        ProxyState::write(self, &stream, &contents)
    }

    fn flush(
        &mut self,
        stream: Resource<OutputStream>,
    ) -> wasmtime::Result<Result<(), StreamError>> {
        self.table.get(&stream)?;
        Ok(Ok(()))
    }

    fn blocking_flush(
        &mut self,
        stream: Resource<OutputStream>,
    ) -> wasmtime::Result<Result<(), StreamError>> {
        self.table.get(&stream)?;
        Ok(Ok(()))
    }

    fn subscribe(
        &mut self,
        stream: Resource<OutputStream>,
    ) -> wasmtime::Result<Resource<Pollable>> {
        Ok(self.table.push_child(Pollable::Ready, &stream)?)
    }

    fn write_zeroes(
        &mut self,
        stream: Resource<OutputStream>,
        len: u64,
    ) -> wasmtime::Result<Result<(), StreamError>> {
        let zeroes = vec![
            0;
            usize::try_from(len)
                .unwrap_or(usize::MAX)
                .min(WRITE_BUDGET as usize)
        ];
        ProxyState::write(self, &stream, &zeroes)
    }

    fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<OutputStream>,
        len: u64,
    ) -> wasmtime::Result<Result<(), StreamError>> {
        streams::HostOutputStream::write_zeroes(self, stream, len)
    }

    fn splice(
        &mut self,
        stream: Resource<OutputStream>,
        source: Resource<InputStream>,
        len: u64,
    ) -> wasmtime::Result<Result<u64, StreamError>> {
        let bytes = match ProxyState::read(self, &source, len)? {
            Ok(bytes) => bytes,
            Err(error) => return Ok(Err(error)),
        };
        Ok(ProxyState::write(self, &stream, &bytes)?.map(|()| bytes.len() as u64))
    }

    fn blocking_splice(
        &mut self,
        stream: Resource<OutputStream>,
        source: Resource<InputStream>,
        len: u64,
    ) -> wasmtime::Result<Result<u64, StreamError>> {
        streams::HostOutputStream::splice(self, stream, source, len)
    }

    fn drop(&mut self, stream: Resource<OutputStream>) -> wasmtime::Result<()> {
        self.table.delete(stream)?;
        Ok(())
    }
}
