//! Channels: a byte stream from one cell to another through memory both can reach.
//!
//! A channel is a ring of [`BootInfo::channel_capacity`](crate::BootInfo) bytes that
//! the host maps into both cells at once, behind a [`ChannelHeader`]. The writing cell
//! copies bytes in and advances `head`; the reading cell copies them out and advances
//! `tail`. Neither exits while there is data to read or room to write. A side that must
//! block (the reader finds the ring empty, the writer finds it full) spins briefly,
//! then raises its `*_waiting` flag and makes a [`crate::Hypercall::Channel`] wait; the
//! other side, seeing the flag when it next moves its index, clears it and makes a
//! kick. When a cell ends, the host sets its side's `*_closed` flag and wakes the peer.
//!
//! Everything in the header is written by both cells' programs, one of which may be
//! hostile: each side keeps its own index in private memory, trusts the capacity from
//! its boot information only, and treats a peer index more than a capacity away from
//! its own as a broken channel.

/// Size of a channel window in guest memory: one large page, holding the header page
/// and the ring.
pub const CHANNEL_WINDOW_SIZE: u64 = crate::layout::LARGE_PAGE_SIZE;

/// Where the ring's bytes start, from the header's address.
pub const CHANNEL_DATA_OFFSET: u64 = 4096;

/// Largest ring that fits a window behind its header.
pub const MAX_CHANNEL_CAPACITY: u64 = 1 << 20;

/// [`crate::Hypercall::Channel`] operation: block until the peer's index differs from
/// the one given or the peer is gone.
pub const CHANNEL_WAIT: u64 = 1;

/// [`crate::Hypercall::Channel`] operation: wake the peer from its wait.
pub const CHANNEL_KICK: u64 = 2;

/// The shared header at the start of a channel window. Each field has a cache line of
/// its own, so that the two sides' writes do not contend.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelHeader {
    /// Bytes ever written, by the writer (wrapping).
    pub head: u64,
    _head_pad: [u64; 7],
    /// Bytes ever read, by the reader (wrapping).
    pub tail: u64,
    _tail_pad: [u64; 7],
    /// Nonzero while the reader waits, or is about to, for data.
    pub reader_waiting: u32,
    _reader_waiting_pad: [u32; 15],
    /// Nonzero while the writer waits, or is about to, for room.
    pub writer_waiting: u32,
    _writer_waiting_pad: [u32; 15],
    /// Nonzero once the writer is gone: what is left in the ring is the rest of the
    /// stream.
    pub writer_closed: u32,
    _writer_closed_pad: [u32; 15],
    /// Nonzero once the reader is gone: writes fail with `EPIPE`.
    pub reader_closed: u32,
    _reader_closed_pad: [u32; 15],
}

const _: () = assert!(core::mem::size_of::<ChannelHeader>() as u64 <= CHANNEL_DATA_OFFSET);
const _: () = assert!(CHANNEL_DATA_OFFSET + MAX_CHANNEL_CAPACITY <= CHANNEL_WINDOW_SIZE);
