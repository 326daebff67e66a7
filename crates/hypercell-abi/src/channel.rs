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
//! Besides its stdin and stdout, a cell with the [`crate::Components::CHANNELS`]
//! component may be granted named channels, each the writing or the reading end of a
//! channel to another cell. Its program opens them by name under the
//! [`CHANNELS_DIRECTORY`] preopen (`/channels/NAME`); the descriptor then reads or
//! writes the ring inside the cell, as a joined stdin or stdout does.
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

/// Most named channels one cell may be granted.
pub const MAX_NAMED_CHANNELS: usize = 16;

/// Longest name of a named channel, in bytes.
pub const MAX_CHANNEL_NAME: usize = 48;

/// The preopen under which a cell's named channels are opened.
pub const CHANNELS_DIRECTORY: &str = "/channels";

/// Whether `name` can name a channel: 1 to [`MAX_CHANNEL_NAME`] ASCII letters, digits,
/// `.`, `_` or `-`, not starting with `.`, and not a stdio stream's name (which
/// `hypercell connect` uses for stdin and stdout).
pub fn is_channel_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CHANNEL_NAME
        && name[0] != b'.'
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !matches!(name, b"stdin" | b"stdout" | b"stderr")
}

/// A named channel in the boot information's table
/// ([`crate::BootInfo::named_channels_addr`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamedChannel {
    /// Guest-physical address of the channel's [`ChannelHeader`] (its window).
    pub header: u64,
    /// 1 when the cell writes the channel, 0 when it reads it.
    pub writer: u32,
    /// Bytes of `name` in use.
    pub name_len: u32,
    /// The name, `name_len` bytes of it.
    pub name: [u8; MAX_CHANNEL_NAME],
}

impl NamedChannel {
    /// The name, if its length is one the host gives.
    pub fn name(&self) -> Option<&[u8]> {
        self.name.get(..self.name_len as usize)
    }
}

/// [`crate::Hypercall::Channel`] operation: block until the peer's index differs from
/// the one given or the peer is gone.
pub const CHANNEL_WAIT: u64 = 1;

/// [`crate::Hypercall::Channel`] operation: wake the peer from its wait.
pub const CHANNEL_KICK: u64 = 2;

/// [`crate::Hypercall::Channel`] operation, for `poll_oneoff`: block until any of
/// several ends' peers moves its index from the one given or is gone, or a timeout
/// passes. Its arguments are the guest address of a list of `(end, observed index)`
/// pairs of `u64`s, their number (at most [`MAX_POLLED_ENDS`]) and the timeout in
/// nanoseconds (`u64::MAX` for none).
pub const CHANNEL_POLL: u64 = 3;

/// Most ends one [`CHANNEL_POLL`] waits on.
pub const MAX_POLLED_ENDS: u64 = 64;

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

const _: () = assert!(core::mem::size_of::<NamedChannel>() == 64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_are_plain_words() {
        for good in ["jobs", "results.v2", "a-b_c", "X"] {
            assert!(is_channel_name(good.as_bytes()), "{good}");
        }
        let long = [b'a'; MAX_CHANNEL_NAME + 1];
        for bad in [
            &b""[..],
            b".hidden",
            b"a/b",
            b"..",
            b"stdin",
            b"stdout",
            b"a b",
            &long,
        ] {
            assert!(!is_channel_name(bad), "{bad:?}");
        }
        assert!(is_channel_name(&long[1..]));
    }
}
