//! The guest's output buffer, drained by the host.
//!
//! The guest appends stdout and stderr bytes as records (`fd: u32`, `len: u32`, then
//! `len` bytes, unaligned) so their relative order survives buffering. The host drains
//! the buffer on [`crate::Hypercall::Flush`], before `Write` and `Read`, at exit, on a
//! trap, when the cell faults or is stopped, and while the program computes, when the
//! host's supervising thread kicks the vCPU to hand buffered output over (every few
//! milliseconds at most), so nothing the program wrote is lost or held back.

/// Size of a record header: `fd: u32` then `len: u32`, little-endian.
pub const OUTPUT_RECORD_HEADER: usize = 8;

/// Header of the output buffer; `capacity` data bytes follow it in guest memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutputBuffer {
    /// Bytes of records currently in the buffer. Reset to 0 by the host after a drain.
    pub used: u64,
    /// Size of the data area that follows this header (set by the host at boot).
    pub capacity: u64,
    /// For stdout and stderr, the WASI errno of the last drain that failed to deliver
    /// to that descriptor (a closed pipe, a full disk), or 0. The host sets it; the
    /// guest returns it from the program's next write there and clears it, as a
    /// buffered C library reports a failed flush.
    pub errors: [u32; 2],
    /// Nonzero while the guest is changing the buffer. The host drains output between
    /// hypercalls (when a kick brings the vCPU out of the guest) only while it is zero,
    /// since the guest may have been stopped halfway through a record.
    pub writing: u32,
    /// Reserved, zero.
    pub reserved: u32,
}
