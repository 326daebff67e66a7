//! The seccomp filter on a cell's vCPU thread.
//!
//! While a guest runs, the thread that runs it needs only a handful of system calls:
//! the KVM ioctls of the run loop, listing the pages it wrote (for a snapshot of its
//! changes), reading and writing the program's stdio, the
//! `*at` file calls that serve its preopened directories, sleeping, random bytes,
//! memory management for its own allocations, and returning from the kick signal.
//! Everything else is refused with `EPERM`, so a bug in the host's hypercall handling
//! that a hostile guest might steer cannot open sockets or start processes. Refusing (rather than killing the process) keeps other cells of the same
//! host process running: the refused call surfaces as an error that ends only this
//! cell.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Errors installing the filter.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter could not be built.
    #[error("could not build the vCPU thread's seccomp filter: {0}")]
    Build(String),
    /// The kernel refused the filter.
    #[error("could not install the vCPU thread's seccomp filter: {0}")]
    Install(String),
}

/// System calls the vCPU thread may make with any arguments.
const ALLOWED: &[libc::c_long] = &[
    // The program's stdio, through the host descriptors the cell was given.
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_write,
    libc::SYS_writev,
    // Sleeping for the guest, and waking the watchdog.
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_futex,
    libc::SYS_futex_waitv,
    libc::SYS_sched_yield,
    // Files in preopened directories, always relative to a directory descriptor
    // (cap-std resolves every path beneath one).
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fcntl,
    libc::SYS_lseek,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    // Appends, which go to the end whatever the offset (`RWF_APPEND`).
    libc::SYS_pwritev2,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_getdents64,
    libc::SYS_mkdirat,
    libc::SYS_unlinkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_symlinkat,
    libc::SYS_readlinkat,
    libc::SYS_readlink,
    libc::SYS_linkat,
    libc::SYS_utimensat,
    // Random bytes for CPUs without `rdrand`.
    libc::SYS_getrandom,
    // The host allocator.
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mincore,
    libc::SYS_brk,
    // Returning from the kick signal, and the thread's own end.
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_exit,
];

fn build() -> Result<BpfProgram, SeccompError> {
    let error = |e: seccompiler::BackendError| SeccompError::Build(e.to_string());
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|&call| (call, Vec::new())).collect();
    let ioctls = hypercell_vmm::run_ioctls()
        .into_iter()
        .chain([hypercell_vmm::memory::PAGEMAP_SCAN])
        .map(|request| {
            SeccompRule::new(vec![
                SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)
                    .map_err(error)?,
            ])
            .map_err(error)
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctls);
    // The allocator grows a thread's heap with mprotect; without it, every allocation
    // of the thread past its arena got a mapping of its own (tens of thousands of
    // them in a daemon, each slowing the kernel's making of VMs). Never executable.
    rules.insert(
        libc::SYS_mprotect,
        vec![
            SeccompRule::new(vec![
                SeccompCondition::new(
                    2,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
                    0,
                )
                .map_err(error)?,
            ])
            .map_err(error)?,
        ],
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(error)?;
    BpfProgram::try_from(filter).map_err(error)
}

/// Restricts the calling thread to the system calls a running cell needs. Irreversible
/// for the thread; other threads are not affected.
pub fn install_vcpu_filter() -> Result<(), SeccompError> {
    static PROGRAM: OnceLock<Result<BpfProgram, String>> = OnceLock::new();
    let program = PROGRAM
        .get_or_init(|| build().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| SeccompError::Build(e.clone()))?;
    seccompiler::apply_filter(program).map_err(|e| SeccompError::Install(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a new thread under the filter.
    fn filtered<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            install_vcpu_filter().unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    #[test]
    fn forbidden_system_calls_are_refused() {
        let (socket, socket_errno, exec, exec_errno) = filtered(|| {
            // SAFETY: plain system calls with valid arguments; their results are only
            // inspected.
            unsafe {
                let socket = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                let socket_errno = errno();
                let exec = libc::execve(c"/bin/true".as_ptr(), std::ptr::null(), std::ptr::null());
                (socket, socket_errno, exec, errno())
            }
        });
        assert_eq!((socket, socket_errno), (-1, libc::EPERM));
        assert_eq!((exec, exec_errno), (-1, libc::EPERM));
    }

    #[test]
    fn only_the_run_loop_ioctls_are_allowed() {
        let (result, errno) = filtered(|| {
            let mut size = [0u16; 4];
            // SAFETY: TIOCGWINSZ writes a `winsize` (four u16) into `size`.
            let result = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, size.as_mut_ptr()) };
            (result, errno())
        });
        assert_eq!((result, errno), (-1, libc::EPERM));
    }

    #[test]
    fn the_filtered_thread_can_still_allocate_write_and_sleep() {
        let written = filtered(|| {
            let buffer = vec![7u8; 1 << 20];
            std::thread::sleep(std::time::Duration::from_millis(1));
            // SAFETY: writes zero bytes from a valid buffer to stderr.
            unsafe { libc::write(2, buffer.as_ptr().cast(), 0) }
        });
        assert_eq!(written, 0);
    }

    #[test]
    fn memory_may_be_protected_but_never_made_executable() {
        let (writable, executable, errno) = filtered(|| {
            // SAFETY: maps and protects a fresh private page of this thread's own, then
            // unmaps it; nothing else uses it.
            unsafe {
                let page = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                let writable = libc::mprotect(page, 4096, libc::PROT_READ | libc::PROT_WRITE);
                let executable = libc::mprotect(page, 4096, libc::PROT_READ | libc::PROT_EXEC);
                let errno = errno();
                libc::munmap(page, 4096);
                (writable, executable, errno)
            }
        });
        assert_eq!(writable, 0);
        assert_eq!((executable, errno), (-1, libc::EPERM));
    }

    #[test]
    fn other_threads_are_not_restricted() {
        filtered(|| ());
        let file = std::fs::File::open("/proc/self/status");
        assert!(file.is_ok());
    }
}
