//! Serving the guest's hypercalls.
//!
//! A request is copied out of guest memory before any field is looked at, and every
//! address and length in it is checked against the cell's memory; a request that
//! breaks the ABI ends the cell with a [`HypercallError`], never the host.

use std::time::{Duration, Instant};

use hypercell_abi::channel::{CHANNEL_KICK, CHANNEL_POLL, CHANNEL_WAIT, MAX_POLLED_ENDS};
use hypercell_abi::hypercall::{
    ERRNO_NOMEM, FailureKind, MAX_IOVECS, RESULT_OFFSET, RESULT_RESTART,
};
use hypercell_abi::layout::LARGE_PAGE_SIZE;
use hypercell_abi::wasi::errno;
use hypercell_abi::{ABI_VERSION, Components, FileOp, Hypercall, HypercallRequest, OutputBuffer};
use vm_memory::{Address, Bytes, GuestAddress};

use crate::channel::{CellChannels, ChannelEnd, wait_any};
use crate::control::{CellControl, StopReason};
use crate::fs::{FileTable, errno_of};
use crate::guest_access::{pieces, read_array, read_guest_bytes, write_guest_bytes};
use crate::identity::IdentityRegion;
use crate::persist::{CellSnapshot, GrowthState, PersistError, ServicesState, TemplatePoint};
use crate::stdio::{
    CellStdio, OUTPUT_CAPACITY, OutputMeter, drain_output, read_guest_from, write_guest_to,
};
use crate::table_variants::TableVariants;
use hypercell_vmm::{GuestMemory, PagingError, ReservationTables, Vm};

/// Ways a guest can break the hypercall ABI.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HypercallError {
    /// A range lies outside the cell's memory.
    #[error("its {what} at {addr:#x} ({len} bytes) lies outside the cell's memory")]
    OutOfBounds {
        /// What the range holds.
        what: &'static str,
        /// Guest-physical start.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// The request carries another ABI version.
    #[error("it sent a request for ABI version {0}, but this host speaks version {ABI_VERSION}")]
    Version(u32),
    /// The hypercall number is unknown.
    #[error("it made hypercall number {0}, which does not exist")]
    Unknown(u32),
    /// The file call number is unknown.
    #[error("it made file call number {0}, which does not exist")]
    UnknownFileOp(u64),
    /// A request names a stdio descriptor it cannot use.
    #[error("it asked to {what} descriptor {fd}, which is not open for that")]
    Descriptor {
        /// Read or write.
        what: &'static str,
        /// The descriptor.
        fd: u64,
    },
    /// An iovec list is too long.
    #[error("it passed {0} buffers in one request, more than the limit of {MAX_IOVECS}")]
    TooManyIovecs(u64),
    /// The output buffer is malformed.
    #[error("its output buffer holds {0}")]
    OutputBuffer(String),
    /// The runtime said an exception was not its own when none had been raised.
    #[error("it reported an exception as unhandled when none had been raised")]
    NoException,
    /// A request to map memory broke the mapping rules.
    #[error("{0}")]
    Mapping(PagingError),
}

/// What the cell does after a hypercall.
#[derive(Debug, PartialEq)]
pub enum Completion {
    /// Resume the guest.
    Resume,
    /// The program exited with this status.
    Exit(i32),
    /// The program trapped; the guest's report.
    Trap(String),
    /// The runtime gave up.
    Fail(FailureKind, String),
    /// The cell was stopped from outside (its time limit, a signal).
    Stopped(StopReason),
    /// The runtime's trap entry found the exception it was sent for is not a wasm
    /// trap.
    Unhandled,
    /// The program reached its output limit.
    OutputLimit,
    /// The runtime is ready to run the program, and the cell is to become a template.
    TemplateReady,
    /// The cell became this template.
    Template(Box<CellSnapshot>),
}

/// How many times the guest made each hypercall.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HypercallCounts([u64; 16]);

impl HypercallCounts {
    /// Calls of `call` so far.
    pub fn get(&self, call: Hypercall) -> u64 {
        self.0[call as usize]
    }

    /// Every call made at least once, with its count.
    pub fn made(&self) -> impl Iterator<Item = (Hypercall, u64)> + '_ {
        self.0.iter().enumerate().filter_map(|(number, &count)| {
            let call = Hypercall::from_number(number as u32)?;
            (count > 0).then_some((call, count))
        })
    }

    pub(crate) fn from_counts(counts: [u64; 16]) -> Self {
        Self(counts)
    }
}

/// The host services one cell uses.
pub struct Services<'a> {
    /// The program's stdio.
    pub stdio: CellStdio<'a>,
    /// Guest address of the output buffer.
    pub output: GuestAddress,
    /// Stop requests and output hand-overs from other threads.
    pub control: CellControl,
    /// Most bytes of linear memory the program was refused (from the last report).
    pub denied_growth: u64,
    /// Output written so far, against the cell's output limit.
    pub meter: OutputMeter,
    /// Mapping more memory as the guest grows; `None` answers every request for
    /// memory with `ENOMEM`.
    pub growth: Option<MemoryGrowth<'a>>,
    /// The program's open files and directories.
    pub files: FileTable,
    /// Where the cell stops to become a template, if it does.
    pub template_stop: Option<TemplatePoint>,
    /// The components the cell is given: the guest answers calls into others with
    /// `notcapable` itself, and the host refuses their hypercalls, whatever the guest.
    pub components: Components,
    /// For a cell that serves several requests: where each next request's identity
    /// goes. `None` answers [`Hypercall::NextRequest`] with "no more".
    pub requests: Option<IdentityRegion>,
    /// The channels the cell's stdin and stdout are joined to, if any.
    pub channels: CellChannels<'a>,
}

/// The part of a cell's memory its VM maps, grown on the guest's request.
pub struct MemoryGrowth<'a> {
    /// The cell's VM.
    pub vm: &'a Vm,
    /// End of the memory mapped so far.
    pub mapped: u64,
    /// End of the memory the guest was told is ready (mapped and backed).
    pub ready: u64,
    /// End of the memory growth may reach: the heap's end (channel windows follow).
    pub end: u64,
    /// The next free KVM memory slot.
    pub next_slot: u32,
    /// End of the memory mapped at boot.
    pub boot_mapping: u64,
    /// The reservation area's page tables.
    pub tables: ReservationTables,
    /// Bytes of linear memory mapped into the reservation area so far.
    pub linear_memory: u64,
    /// Memory below this is not backed ahead of the guest when it grows: in a cell
    /// restored from a snapshot, the end of its memory image rounded up to 2 MiB. The
    /// image is mapped from its file in 4 KiB pages up to there, so backing it ahead
    /// would copy every page of the step, where the guest may touch a few.
    pub populate_from: u64,
    /// In a partition reused from a template, the copies of the tables its runs grew
    /// into: growth switches the vCPU to one rather than writing the tables it runs
    /// on. `None` elsewhere, and once the pool had no room for another copy.
    pub variants: Option<TableVariants>,
    /// The tables root the vCPU is to switch to before it runs on.
    pub switch_to: Option<u64>,
}

/// A copied, decoded request.
struct Request {
    call: Hypercall,
    args: [u64; 6],
}

fn decode(bytes: &[u8; size_of::<HypercallRequest>()]) -> Result<Request, HypercallError> {
    let word =
        |offset: usize| u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"));
    let version = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    let number = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if version != ABI_VERSION {
        return Err(HypercallError::Version(version));
    }
    let call = Hypercall::from_number(number).ok_or(HypercallError::Unknown(number))?;
    let args = std::array::from_fn(|i| word(8 + 8 * i));
    Ok(Request { call, args })
}

impl Services<'_> {
    /// Serves the request at `addr`; writes its result back unless the cell ends.
    pub fn handle(
        &mut self,
        memory: &GuestMemory,
        addr: GuestAddress,
    ) -> Result<Completion, HypercallError> {
        let raw: [u8; size_of::<HypercallRequest>()] =
            read_array(memory, addr).map_err(|_| HypercallError::OutOfBounds {
                what: "request",
                addr: addr.0,
                len: size_of::<HypercallRequest>() as u64,
            })?;
        // Output written before any call reaches the host first, in order.
        if self.drain(memory)? {
            return Ok(Completion::OutputLimit);
        }
        let Request { call, args } = decode(&raw)?;
        self.control.count_hypercall(call);
        let result = match call {
            Hypercall::Flush => 0,
            Hypercall::Write | Hypercall::Read if !self.components.contains(Components::STDIO) => {
                -i64::from(errno::NOTCAPABLE)
            }
            // A stream joined to a channel is the guest's to move through memory.
            Hypercall::Write | Hypercall::Read if self.channels.stdio(args[0]).is_some() => {
                -i64::from(errno::BADF)
            }
            // Named channels are opened through the file table, under `/channels`.
            Hypercall::File
                if !self
                    .components
                    .intersects(Components::FS.union(Components::CHANNELS)) =>
            {
                -i64::from(errno::NOTCAPABLE)
            }
            Hypercall::Write => {
                let written = self.transfer(memory, args, Direction::Write)?;
                if self.meter.exceeded() {
                    return Ok(Completion::OutputLimit);
                }
                written
            }
            Hypercall::Read if self.template_stop == Some(TemplatePoint::FirstRead) => {
                // The template is taken before the read: each cell from it makes the
                // read again, of its own stdin.
                write_result(memory, addr, RESULT_RESTART)?;
                return Ok(Completion::TemplateReady);
            }
            Hypercall::Read => self.transfer(memory, args, Direction::Read)?,
            Hypercall::Exit => {
                self.denied_growth = args[1];
                return Ok(Completion::Exit(args[0] as u32 as i32));
            }
            Hypercall::Trap => {
                self.denied_growth = args[2];
                return Ok(Completion::Trap(read_text(memory, args[0], args[1])?));
            }
            Hypercall::Fail => {
                self.denied_growth = args[3];
                // The message comes from the guest, whose runtime may be damaged: the
                // user gets it as one line.
                let message = read_text(memory, args[0], args[1])?
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                return Ok(Completion::Fail(FailureKind::from_raw(args[2]), message));
            }
            Hypercall::Sleep => self.sleep(Duration::from_nanos(args[0])),
            Hypercall::Random => {
                fill_random(memory, args[0], args[1])?;
                0
            }
            Hypercall::GrowMemory => self.grow_memory(memory, args[0]),
            Hypercall::MapMemory => {
                let [va, len, pa, va2, len2, pa2] = args;
                match self.map_reserved(memory, va, len, pa)? {
                    ready if ready >= 0 && len2 > 0 => self.map_reserved(memory, va2, len2, pa2)?,
                    ready => ready,
                }
            }
            Hypercall::Unhandled => return Ok(Completion::Unhandled),
            Hypercall::Ready
                if matches!(
                    self.template_stop,
                    Some(TemplatePoint::Start | TemplatePoint::Init)
                ) =>
            {
                return Ok(Completion::TemplateReady);
            }
            Hypercall::Ready => 0,
            Hypercall::NextRequest => self.next_request(memory),
            Hypercall::Channel => self.channel(memory, args)?,
            Hypercall::File => {
                let op =
                    FileOp::from_number(args[0]).ok_or(HypercallError::UnknownFileOp(args[0]))?;
                let raw: [u8; 64] = read_array(memory, GuestAddress(args[1]))?;
                let params = std::array::from_fn(|i| {
                    u64::from_le_bytes(raw[8 * i..8 * i + 8].try_into().expect("8 bytes"))
                });
                match self.files.call(memory, op, params) {
                    Ok(value) => value as i64,
                    Err(errno) => -i64::from(errno),
                }
            }
        };
        // A blocking call (a read, a write to a full pipe, a sleep) ends early when
        // the cell is being stopped.
        if let Some(reason) = self.control.stop_requested() {
            return Ok(Completion::Stopped(reason));
        }
        write_result(memory, addr, result)?;
        Ok(Completion::Resume)
    }

    /// A channel wait or kick (see [`crate::channel`]), on end `index` (0 stdin, 1
    /// stdout, 2 + `i` named channel `i`), or a poll of several ends.
    fn channel(&self, memory: &GuestMemory, args: [u64; 6]) -> Result<i64, HypercallError> {
        let [op, index, observed, ..] = args;
        if op == CHANNEL_POLL {
            return self.channel_poll(memory, args);
        }
        let end = match self.channel_end(index) {
            Ok(end) => end,
            Err(errno) => return Ok(errno),
        };
        Ok(match op {
            CHANNEL_WAIT => end.wait(observed, &self.control),
            CHANNEL_KICK => {
                end.kick();
                0
            }
            _ => -i64::from(errno::INVAL),
        })
    }

    /// End `index` of the cell's channels, or the negated errno for one it lacks or
    /// may not use.
    fn channel_end(&self, index: u64) -> Result<&ChannelEnd, i64> {
        let needed = if index < 2 {
            Components::STDIO
        } else {
            Components::CHANNELS
        };
        if !self.components.contains(needed) {
            return Err(-i64::from(errno::NOTCAPABLE));
        }
        self.channels.end(index).ok_or(-i64::from(errno::BADF))
    }

    /// [`CHANNEL_POLL`]: waits on the `(end, observed index)` pairs the guest listed.
    fn channel_poll(
        &self,
        memory: &GuestMemory,
        [_, list, count, timeout, ..]: [u64; 6],
    ) -> Result<i64, HypercallError> {
        if count == 0 || count > MAX_POLLED_ENDS {
            return Ok(-i64::from(errno::INVAL));
        }
        let mut bytes = vec![0u8; count as usize * 16];
        if !read_guest_bytes(memory, list, &mut bytes) {
            return Err(HypercallError::OutOfBounds {
                what: "channel poll list",
                addr: list,
                len: count * 16,
            });
        }
        let mut waits = Vec::with_capacity(count as usize);
        for pair in bytes.chunks_exact(16) {
            let index = u64::from_le_bytes(pair[..8].try_into().expect("8 bytes"));
            let observed = u64::from_le_bytes(pair[8..].try_into().expect("8 bytes"));
            match self.channel_end(index) {
                Ok(end) => waits.push((end, observed)),
                Err(errno) => return Ok(errno),
            }
        }
        let timeout = (timeout != u64::MAX).then(|| Duration::from_nanos(timeout));
        Ok(wait_any(&waits, timeout, &self.control))
    }

    /// Waits for a server's next request and lays it in the cell's identity: 1, or 0
    /// when none comes (or the cell serves one request only).
    fn next_request(&mut self, memory: &GuestMemory) -> i64 {
        let Some(region) = self.requests else {
            return 0;
        };
        let Some(next) = self.control.next_request() else {
            return 0;
        };
        if let Err(error) = region.lay(memory.mem(), &next.identity, Some(&next.input)) {
            tracing::warn!("could not hand a cell its next request: {error}");
            return 0;
        }
        self.meter.restart();
        1
    }

    /// The services' saved state: descriptors, output delivered, memory grown.
    pub fn save_state(&self) -> Result<ServicesState, PersistError> {
        let growth = self.growth.as_ref().map(|g| GrowthState {
            mapped: g.mapped,
            ready: g.ready,
            linear_memory: g.linear_memory,
            tables: g.tables.state(),
        });
        Ok(ServicesState {
            files: self.files.save()?,
            output_written: self.meter.written(),
            denied_growth: self.denied_growth,
            growth: growth.unwrap_or(GrowthState {
                mapped: 0,
                ready: 0,
                linear_memory: 0,
                tables: ReservationTables::default().state(),
            }),
        })
    }

    /// Delivers the guest's buffered output between hypercalls, unless the guest was
    /// stopped while changing the buffer (then its next hypercall or kick delivers it);
    /// true if it went past the output limit.
    pub fn drain_between_calls(&mut self, memory: &GuestMemory) -> Result<bool, HypercallError> {
        let flag = self
            .output
            .unchecked_add(std::mem::offset_of!(OutputBuffer, writing) as u64);
        let writing: u32 =
            memory
                .mem()
                .read_obj(flag)
                .map_err(|_| HypercallError::OutOfBounds {
                    what: "output buffer",
                    addr: self.output.0,
                    len: size_of::<OutputBuffer>() as u64,
                })?;
        if writing != 0 {
            return Ok(false);
        }
        self.drain(memory)
    }

    /// Delivers the guest's buffered output; true if it went past the output limit.
    pub fn drain(&mut self, memory: &GuestMemory) -> Result<bool, HypercallError> {
        drain_output(
            memory,
            self.output,
            self.output_capacity(),
            &self.stdio,
            &mut self.meter,
            &self.control,
        )?;
        Ok(self.meter.exceeded())
    }

    /// Bytes of the output buffer the guest may fill: none without stdio, so that a
    /// guest without it that writes records anyway ends its cell.
    pub fn output_capacity(&self) -> u64 {
        if self.components.contains(Components::STDIO) {
            OUTPUT_CAPACITY
        } else {
            0
        }
    }

    /// Makes guest memory up to at least `requested` ready; returns the new end of
    /// ready memory or a negated `ENOMEM`.
    ///
    /// Ready means mapped into the VM (at least doubling the mapped part, so memory
    /// slots stay few) and backed by host memory, in 2 MiB steps. Backing it first
    /// matters on shadow-paging hosts: a guest's first touch of host memory that is
    /// already there costs one fault per 2 MiB page instead of one per 4 KiB.
    fn grow_memory(&mut self, memory: &GuestMemory, requested: u64) -> i64 {
        let Some(growth) = self.growth.as_mut() else {
            return -ERRNO_NOMEM;
        };
        if requested <= growth.ready {
            return growth.ready as i64;
        }
        let limit = growth.end.min(memory.size());
        if requested > limit {
            return -ERRNO_NOMEM;
        }
        let ready = requested.next_multiple_of(LARGE_PAGE_SIZE).min(limit);
        if ready > growth.mapped {
            let end = ready
                .max(growth.mapped.saturating_mul(2))
                .next_multiple_of(LARGE_PAGE_SIZE)
                .min(limit);
            if let Err(error) = growth
                .vm
                .map_memory(memory, growth.next_slot, growth.mapped..end)
            {
                tracing::warn!("could not grow a cell's memory: {error}");
                return -ERRNO_NOMEM;
            }
            growth.mapped = end;
            growth.next_slot += 1;
        }
        memory.populate(growth.ready.max(growth.populate_from)..ready);
        growth.ready = ready;
        ready as i64
    }

    /// Maps `len` bytes of the reservation area at `va` onto guest memory at `pa`
    /// (readied first); returns the new end of ready memory or a negated `ENOMEM`.
    fn map_reserved(
        &mut self,
        memory: &GuestMemory,
        va: u64,
        len: u64,
        pa: u64,
    ) -> Result<i64, HypercallError> {
        let end = pa
            .checked_add(len)
            .ok_or(HypercallError::Mapping(PagingError::BadMapping {
                va,
                pa,
                len,
            }))?;
        let ready = self.grow_memory(memory, end);
        let Some(growth) = self.growth.as_mut().filter(|_| ready >= 0) else {
            return Ok(-ERRNO_NOMEM);
        };
        let from = memory.tables_root();
        let grown = growth
            .variants
            .as_mut()
            .map(|variants| variants.grown(memory, &mut growth.tables, from, (va, pa, len)));
        // `known`: an earlier run from the template grew alike, into the same pages,
        // which the reset kept in place: they need no readying.
        let (mapped, known) = match grown {
            Some(Ok((root, earlier))) => {
                growth.switch_to = Some(root);
                (Ok(()), earlier)
            }
            // No room for another copy: this run grows its tables in place, and the
            // next reset starts the copies over.
            Some(Err(PagingError::PoolExhausted)) => {
                growth.variants = None;
                (Self::map_in_place(growth, memory, va, pa, len), false)
            }
            Some(Err(error)) => (Err(error), false),
            None => (Self::map_in_place(growth, memory, va, pa, len), false),
        };
        match mapped {
            Ok(()) => {
                // Readying covers whole 2 MiB pages, except where small pages back a
                // memory's first, partly used one: back exactly what was mapped.
                if !known {
                    memory.populate(pa..end);
                }
                growth.linear_memory += len;
                Ok(ready)
            }
            Err(PagingError::PoolExhausted) => Ok(-ERRNO_NOMEM),
            Err(error) => Err(HypercallError::Mapping(error)),
        }
    }

    /// Maps `len` bytes at `va` onto `pa` in the tables the vCPU runs on, reclaiming
    /// pool pages when they run out.
    fn map_in_place(
        growth: &mut MemoryGrowth<'_>,
        memory: &GuestMemory,
        va: u64,
        pa: u64,
        len: u64,
    ) -> Result<(), PagingError> {
        match growth.tables.map(memory, va, pa, len) {
            Err(PagingError::PoolExhausted) => {
                // Reclaimed table pages may still be shadowed by KVM: it must forget
                // them before they are reused.
                if growth.tables.reclaim(memory)? == 0 {
                    return Err(PagingError::PoolExhausted);
                }
                if let Err(error) = growth.vm.drop_table_shadows(memory) {
                    tracing::warn!("could not reset a cell's shadow page tables: {error}");
                    return Err(PagingError::PoolExhausted);
                }
                growth.tables.map(memory, va, pa, len)
            }
            first => first,
        }
    }

    /// Sleeps for `duration`, or until the cell is asked to stop; parks while paused.
    /// A snapshot asked for meanwhile abandons the sleep ([`RESULT_RESTART`]): the
    /// guest asks again for the time left by its own clock.
    fn sleep(&self, duration: Duration) -> i64 {
        // The guest picks the duration: one too long to represent never wakes.
        let wake = Instant::now().checked_add(duration);
        while self.control.stop_requested().is_none() {
            let left = match wake {
                Some(wake) => wake.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(u32::MAX.into()),
            };
            if left.is_zero() {
                return 0;
            }
            let request = libc::timespec {
                tv_sec: left.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: libc::c_long::from(left.subsec_nanos() as i32),
            };
            // SAFETY: clock_nanosleep reads the request and, with no remainder pointer,
            // writes nothing; a kick's signal ends it early with EINTR.
            unsafe {
                libc::clock_nanosleep(libc::CLOCK_MONOTONIC, 0, &request, std::ptr::null_mut())
            };
            // A pause parks the sleeper; the sleep ends on time whatever the pause took.
            if self.control.park_in_call(true) {
                return RESULT_RESTART;
            }
        }
        0
    }

    /// Moves data between a stdio descriptor and the guest buffers of an iovec list;
    /// returns the bytes moved or a negated WASI errno.
    fn transfer(
        &mut self,
        memory: &GuestMemory,
        args: [u64; 6],
        direction: Direction,
    ) -> Result<i64, HypercallError> {
        let [fd, list, count, ..] = args;
        let allowed = match direction {
            Direction::Write => fd == 1 || fd == 2,
            Direction::Read => fd == 0,
        };
        let target = self
            .stdio
            .fd(fd)
            .filter(|_| allowed)
            .ok_or(HypercallError::Descriptor {
                what: direction.verb(),
                fd,
            })?;
        if count > MAX_IOVECS {
            return Err(HypercallError::TooManyIovecs(count));
        }
        let mut buffers = Vec::with_capacity(count as usize);
        for i in 0..count {
            let at = GuestAddress(list.wrapping_add(16 * i));
            let iovec: [u8; 16] =
                read_array(memory, at).map_err(|_| HypercallError::OutOfBounds {
                    what: "buffer list",
                    addr: list,
                    len: 16 * count,
                })?;
            let addr = u64::from_le_bytes(iovec[..8].try_into().expect("8 bytes"));
            let len = u64::from_le_bytes(iovec[8..].try_into().expect("8 bytes"));
            let pieces = pieces(memory, addr, len).ok_or(HypercallError::OutOfBounds {
                what: "buffer",
                addr,
                len,
            })?;
            buffers.extend(pieces.into_iter().map(|(at, len)| (at, len as usize)));
        }
        let mut total = 0usize;
        for (addr, len) in buffers {
            let moved = match direction {
                Direction::Write => {
                    let admitted = self.meter.admit(len as u64) as usize;
                    write_guest_to(memory, addr, admitted, target, &self.control)
                }
                Direction::Read => read_guest_from(memory, addr, len, target, &self.control),
            };
            match moved {
                Ok(n) => {
                    if direction == Direction::Write {
                        self.control.count_delivered(fd, n);
                    }
                    total += n;
                    if n < len {
                        break;
                    }
                }
                Err(_) if total > 0 => break,
                // Abandoned before anything moved, for a snapshot: the guest asks again.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(RESULT_RESTART),
                Err(e) => return Ok(-i64::from(errno_of(&e))),
            }
        }
        Ok(total as i64)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Write,
    Read,
}

impl Direction {
    fn verb(self) -> &'static str {
        match self {
            Direction::Write => "write to",
            Direction::Read => "read from",
        }
    }
}

/// Writes `result` into the request at `addr`, for the guest to read when it resumes.
fn write_result(
    memory: &GuestMemory,
    addr: GuestAddress,
    result: i64,
) -> Result<(), HypercallError> {
    memory
        .mem()
        .write_obj(result, addr.unchecked_add(RESULT_OFFSET))
        .map_err(|_| HypercallError::OutOfBounds {
            what: "request",
            addr: addr.0,
            len: 64,
        })
}

/// Reads a UTF-8 report the guest wrote (lossily; at most 64 KiB).
fn read_text(memory: &GuestMemory, addr: u64, len: u64) -> Result<String, HypercallError> {
    let len = len.min(64 << 10);
    let mut bytes = vec![0u8; len as usize];
    if !read_guest_bytes(memory, addr, &mut bytes) {
        return Err(HypercallError::OutOfBounds {
            what: "report",
            addr,
            len,
        });
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn fill_random(memory: &GuestMemory, addr: u64, len: u64) -> Result<(), HypercallError> {
    let out_of_bounds = HypercallError::OutOfBounds {
        what: "random buffer",
        addr,
        len,
    };
    if pieces(memory, addr, len).is_none() {
        return Err(out_of_bounds);
    }
    let mut bytes = vec![0u8; len as usize];
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: getrandom writes at most the given length into the buffer slice.
        let n = unsafe {
            libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0)
        };
        if n > 0 {
            filled += n as usize;
        }
    }
    if write_guest_bytes(memory, addr, &bytes) {
        Ok(())
    } else {
        Err(out_of_bounds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(request: HypercallRequest) -> [u8; 64] {
        let mut bytes = [0u8; 64];
        bytes[0..4].copy_from_slice(&request.abi_version.to_le_bytes());
        bytes[4..8].copy_from_slice(&request.number.to_le_bytes());
        for (i, arg) in request.args.iter().enumerate() {
            bytes[8 + 8 * i..16 + 8 * i].copy_from_slice(&arg.to_le_bytes());
        }
        bytes
    }

    #[test]
    fn decode_checks_version_and_number() {
        let good = encode(HypercallRequest::new(Hypercall::Exit, [3, 0, 0, 0, 0, 0]));
        let request = decode(&good).unwrap();
        assert_eq!((request.call, request.args[0]), (Hypercall::Exit, 3));
        let mut bad_version = good;
        bad_version[0] = 99;
        assert_eq!(
            decode(&bad_version).err(),
            Some(HypercallError::Version(99))
        );
        let mut bad_number = good;
        bad_number[4] = 200;
        assert_eq!(
            decode(&bad_number).err(),
            Some(HypercallError::Unknown(200))
        );
    }
}
