//! Where the host puts things in a cell's memory.
//!
//! ```text
//! 0        2 MiB     4 MiB                                   2 MiB aligned
//! | unmapped | system | guest image | boot info, request, args, env, output |
//!   | compiled module | unmapped guard | stack | heap ... | channel windows |
//! ```
//!
//! A cell joined to others by channels has windows past its heap, in a memory slot of
//! their own: one for the channel on its stdin, one for the channel on its stdout,
//! then one for each named channel it is granted. Other cells have none.

use hypercell_abi::channel::CHANNEL_WINDOW_SIZE;
use hypercell_abi::layout::{IMAGE_BASE, LARGE_PAGE_SIZE, MAX_MEMORY_SIZE, PAGE_SIZE};
use hypercell_abi::{BootInfo, GuestPhases, HypercallRequest, OutputBuffer};

use crate::stdio::OUTPUT_CAPACITY;

/// Native stack of the guest runtime (wasm code runs on it too).
pub const STACK_SIZE: u64 = 8 << 20;
/// Most native stack wasm code may use, as wasmtime's default.
pub const MAX_WASM_STACK: u64 = 512 << 10;
/// Heap kept for the runtime's own allocations, before the module's share.
const RUNTIME_HEAP_RESERVE: u64 = 16 << 20;
/// Heap mapped at boot; the guest asks for more as it grows. KVM's cost of mapping
/// memory grows with its size, and most programs never need more.
const BOOT_HEAP: u64 = 32 << 20;

/// Addresses of everything the host places in a cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CellLayout {
    /// The [`BootInfo`] block.
    pub boot_info: u64,
    /// The hypercall request block.
    pub request: u64,
    /// The guest's start-up timestamps.
    pub phases: u64,
    /// Argument strings.
    pub args: u64,
    /// Environment strings.
    pub env: u64,
    /// Preopened directory names.
    pub preopens: u64,
    /// Output buffer header; data follows.
    pub output: u64,
    /// Compiled module.
    pub module: u64,
    /// Lowest address of the stack; the 2 MiB below it stay unmapped.
    pub stack_bottom: u64,
    /// Initial stack pointer.
    pub stack_top: u64,
    /// First heap byte.
    pub heap_start: u64,
    /// One past the last heap byte.
    pub heap_end: u64,
    /// The most a linear memory may grow to.
    pub wasm_memory_limit: u64,
    /// Bytes of the region that holds the arguments, environment and preopen names.
    pub identity_capacity: u64,
    /// The first channel window, at the heap's end; 0 for a cell without channels.
    pub channels: u64,
    /// How many channel windows there are: stdin's and stdout's, then one per named
    /// channel; 0 for a cell without channels.
    pub channel_windows: u64,
}

/// Channel windows every cell with channels has: its stdin's, then its stdout's.
const STDIO_CHANNEL_WINDOWS: u64 = 2;

fn align_up(value: u64, align: u64) -> u64 {
    value.next_multiple_of(align)
}

impl CellLayout {
    /// Plans a cell whose linear memory may grow to `wasm_memory_limit` bytes;
    /// `None` if the cell would be larger than a cell can be.
    pub fn plan(
        wasm_memory_limit: u64,
        image_end: u64,
        args_len: u64,
        env_len: u64,
        module_len: u64,
    ) -> Option<Self> {
        Self::plan_with_preopens(
            wasm_memory_limit,
            image_end,
            args_len,
            env_len,
            0,
            module_len,
            identity_capacity(args_len + env_len),
        )
    }

    /// Plans a cell whose preopened directory names take `preopens_len` bytes.
    ///
    /// The heap holds the linear memory, up to its limit, and the runtime's own
    /// allocations beside it, which grow with the module's size: the limit is the
    /// program's alone, as `wasmtime run -W max-memory-size` is.
    pub fn plan_with_preopens(
        wasm_memory_limit: u64,
        image_end: u64,
        args_len: u64,
        env_len: u64,
        preopens_len: u64,
        module_len: u64,
        identity_capacity: u64,
    ) -> Option<Self> {
        if args_len
            .saturating_add(env_len)
            .saturating_add(preopens_len)
            > identity_capacity
        {
            return None;
        }
        let boot_info = align_up(image_end.max(IMAGE_BASE), PAGE_SIZE);
        let request = boot_info + align_up(size_of::<BootInfo>() as u64, 64);
        let phases = request + size_of::<HypercallRequest>() as u64;
        let args = phases + size_of::<GuestPhases>() as u64;
        let env = args + args_len;
        let preopens = env + env_len;
        // The identity (arguments, environment, preopens) has a region of its own size,
        // so that cells of one template, whatever their arguments, share one layout.
        let output = align_up(args + identity_capacity, PAGE_SIZE);
        let module = align_up(
            output + size_of::<OutputBuffer>() as u64 + OUTPUT_CAPACITY,
            64 << 10,
        );
        let stack_bottom = align_up(module + module_len, LARGE_PAGE_SIZE) + LARGE_PAGE_SIZE;
        let stack_top = stack_bottom + STACK_SIZE;
        let heap_start = stack_top;
        let heap_end = heap_start
            .checked_add(runtime_heap(module_len))?
            .checked_add(wasm_memory_limit.checked_next_multiple_of(LARGE_PAGE_SIZE)?)?;
        (heap_end <= MAX_MEMORY_SIZE).then_some(Self {
            boot_info,
            request,
            phases,
            args,
            env,
            preopens,
            output,
            module,
            stack_bottom,
            stack_top,
            heap_start,
            heap_end,
            wasm_memory_limit,
            identity_capacity,
            channels: 0,
            channel_windows: 0,
        })
    }

    /// This layout with channel windows past the heap, for stdio and `named` named
    /// channels; `None` if the cell would be too large.
    pub fn with_channels(self, named: usize) -> Option<Self> {
        let windows = STDIO_CHANNEL_WINDOWS + named as u64;
        let end = self.heap_end + windows * CHANNEL_WINDOW_SIZE;
        (end <= MAX_MEMORY_SIZE).then_some(Self {
            channels: self.heap_end,
            channel_windows: windows,
            ..self
        })
    }

    /// The channel window for end `index` (0 stdin, 1 stdout, 2 + `i` named channel
    /// `i`), if the cell has it.
    pub fn channel_window(&self, index: u64) -> Option<u64> {
        (index < self.channel_windows).then(|| self.channels + index * CHANNEL_WINDOW_SIZE)
    }

    /// End of the memory mapped at boot: everything below the heap and the first
    /// [`BOOT_HEAP`] bytes of it.
    pub fn boot_mapping(&self) -> u64 {
        (self.heap_start + BOOT_HEAP)
            .next_multiple_of(LARGE_PAGE_SIZE)
            .min(self.heap_end)
    }

    /// The 2 MiB page left unmapped below the stack, so an overflow faults.
    pub fn stack_guard(&self) -> u64 {
        self.stack_bottom - LARGE_PAGE_SIZE
    }

    /// This layout in a cell of exactly `size` bytes (rounded up to 2 MiB), with a
    /// heap of whatever lies past the stack; `None` if the runtime's share does not
    /// fit or the cell would be too large.
    pub fn with_memory_size(self, size: u64) -> Option<Self> {
        let heap_end = align_up(size, LARGE_PAGE_SIZE);
        let heap = heap_end.checked_sub(self.heap_start + RUNTIME_HEAP_RESERVE)?;
        (heap_end <= MAX_MEMORY_SIZE && self.channels == 0).then_some(Self {
            heap_end,
            wasm_memory_limit: heap,
            ..self
        })
    }

    /// The guest memory the cell needs: everything up to the end of its heap, and its
    /// channel windows.
    pub fn memory_size(&self) -> u64 {
        if self.channels == 0 {
            self.heap_end
        } else {
            self.channels + self.channel_windows * CHANNEL_WINDOW_SIZE
        }
    }
}

/// Room for a cell's arguments, environment and preopen names: at least 256 KiB, so
/// that cells started from a template can have other, longer ones.
pub fn identity_capacity(needed: u64) -> u64 {
    needed.max(256 << 10).next_multiple_of(64 << 10)
}

/// Heap kept for the runtime's own allocations: a base, and as much again as the
/// module's code, for what wasmtime builds from it (a few percent of it in practice).
fn runtime_heap(module_len: u64) -> u64 {
    align_up(RUNTIME_HEAP_RESERVE + module_len, LARGE_PAGE_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_ordered_aligned_and_disjoint() {
        let layout = CellLayout::plan(64 << 20, 0x4a3000, 100, 200, 30_000).unwrap();
        assert!(layout.boot_info >= 0x4a3000);
        assert!(layout.request >= layout.boot_info + size_of::<BootInfo>() as u64);
        assert_eq!(layout.env, layout.args + 100);
        assert!(layout.output >= layout.env + 200);
        assert!(layout.module >= layout.output + OUTPUT_CAPACITY);
        assert_eq!(layout.stack_guard() % LARGE_PAGE_SIZE, 0);
        assert!(layout.stack_guard() >= layout.module + 30_000);
        assert_eq!(layout.boot_mapping() % LARGE_PAGE_SIZE, 0);
        assert!(layout.boot_mapping() > layout.heap_start);
        assert!(layout.boot_mapping() <= layout.memory_size());
    }

    #[test]
    fn channel_windows_lie_past_the_heap() {
        let layout = CellLayout::plan(64 << 20, 0x4a3000, 0, 0, 30_000).unwrap();
        assert_eq!(layout.channel_window(0), None);
        let joined = layout.with_channels(0).unwrap();
        assert_eq!(joined.channel_window(0), Some(layout.heap_end));
        assert_eq!(
            joined.channel_window(1),
            Some(layout.heap_end + CHANNEL_WINDOW_SIZE)
        );
        assert_eq!(joined.channel_window(2), None);
        assert_eq!(
            joined.memory_size(),
            layout.memory_size() + 2 * CHANNEL_WINDOW_SIZE
        );
        let named = layout.with_channels(3).unwrap();
        assert_eq!(
            named.channel_window(4),
            Some(layout.heap_end + 4 * CHANNEL_WINDOW_SIZE)
        );
        assert_eq!(named.channel_window(5), None);
        assert_eq!(
            named.memory_size(),
            layout.memory_size() + 5 * CHANNEL_WINDOW_SIZE
        );
        let largest = CellLayout::plan(0, 0x4a3000, 0, 0, 30_000)
            .unwrap()
            .with_memory_size(MAX_MEMORY_SIZE)
            .unwrap();
        assert!(largest.with_channels(0).is_none());
    }

    #[test]
    fn the_heap_holds_the_whole_limit_beside_the_runtime() {
        let layout = CellLayout::plan(64 << 20, 0x4a3000, 0, 0, 30_000).unwrap();
        assert_eq!(layout.wasm_memory_limit, 64 << 20);
        assert!(layout.heap_end - layout.heap_start >= (64 << 20) + RUNTIME_HEAP_RESERVE);
        let tiny = CellLayout::plan(0, 0x4a3000, 0, 0, 30_000).unwrap();
        assert!(tiny.heap_end - tiny.heap_start >= RUNTIME_HEAP_RESERVE);
        let large_module = CellLayout::plan(0, 0x4a3000, 0, 0, 200 << 20).unwrap();
        assert!(large_module.heap_end - large_module.heap_start >= 200 << 20);
        assert!(CellLayout::plan(4 << 30, 0x4a3000, 0, 0, 30_000).is_some());
        assert!(CellLayout::plan(8 << 30, 0x4a3000, 0, 0, 30_000).is_none());
        assert!(CellLayout::plan(u64::MAX, 0x4a3000, 0, 0, 30_000).is_none());
    }
}
