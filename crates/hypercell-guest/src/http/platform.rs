//! What a proxy handler imports besides HTTP and streams: clocks and random numbers,
//! served in the cell as for preview1 programs, and stdio, whose stdout and stderr go
//! to the cell's stderr and whose stdin is empty.

use alloc::vec;
use alloc::vec::Vec;

use wasmtime::component::Resource;

use super::ProxyState;
use super::bindings::wasi::cli::{stderr, stdin, stdout};
use super::bindings::wasi::clocks::{monotonic_clock, wall_clock};
use super::bindings::wasi::random::random;
use super::streams::{InputStream, OutputStream, Pollable, monotonic_now};

impl monotonic_clock::Host for ProxyState {
    fn now(&mut self) -> wasmtime::Result<u64> {
        Ok(monotonic_now())
    }

    fn resolution(&mut self) -> wasmtime::Result<u64> {
        Ok(crate::clock::resolution(1).unwrap_or(1))
    }

    fn subscribe_instant(&mut self, when: u64) -> wasmtime::Result<Resource<Pollable>> {
        Ok(self.table.push(Pollable::At(when))?)
    }

    fn subscribe_duration(&mut self, duration: u64) -> wasmtime::Result<Resource<Pollable>> {
        let when = monotonic_now().saturating_add(duration);
        Ok(self.table.push(Pollable::At(when))?)
    }
}

impl wall_clock::Host for ProxyState {
    fn now(&mut self) -> wasmtime::Result<wall_clock::Datetime> {
        let ns = crate::clock::now(0).unwrap_or(0);
        Ok(wall_clock::Datetime {
            seconds: ns / 1_000_000_000,
            nanoseconds: (ns % 1_000_000_000) as u32,
        })
    }

    fn resolution(&mut self) -> wasmtime::Result<wall_clock::Datetime> {
        Ok(wall_clock::Datetime {
            seconds: 0,
            nanoseconds: crate::clock::resolution(0).unwrap_or(1) as u32,
        })
    }
}

impl random::Host for ProxyState {
    fn get_random_bytes(&mut self, len: u64) -> wasmtime::Result<Vec<u8>> {
        let len = usize::try_from(len)
            .map_err(|_| wasmtime::Error::msg("too many random bytes asked for"))?;
        let mut bytes = vec![0; len];
        crate::random::fill(&mut bytes);
        Ok(bytes)
    }

    fn get_random_u64(&mut self) -> wasmtime::Result<u64> {
        let mut bytes = [0; 8];
        crate::random::fill(&mut bytes);
        Ok(u64::from_le_bytes(bytes))
    }
}

impl stdout::Host for ProxyState {
    fn get_stdout(&mut self) -> wasmtime::Result<Resource<OutputStream>> {
        Ok(self.table.push(OutputStream::Stderr)?)
    }
}

impl stderr::Host for ProxyState {
    fn get_stderr(&mut self) -> wasmtime::Result<Resource<OutputStream>> {
        Ok(self.table.push(OutputStream::Stderr)?)
    }
}

impl stdin::Host for ProxyState {
    fn get_stdin(&mut self) -> wasmtime::Result<Resource<InputStream>> {
        Ok(self.table.push(InputStream::Empty)?)
    }
}
