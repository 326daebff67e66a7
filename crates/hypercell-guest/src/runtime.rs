//! Loads the host-compiled module into wasmtime, links WASI, and runs `_start`.

use core::fmt::Write;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use alloc::format;
use alloc::sync::Arc;
use hypercell_abi::hypercall::FailureKind;
use hypercell_abi::{BootInfo, Hypercall, TEMPLATE_STOP_INIT, TEMPLATE_STOP_START};
use hypercell_engine::BoundsChecks;
use wasmtime::{Config, Engine, Linker, Module, ResourceLimiter, Store};

use crate::clock::{self, Phase};
use crate::platform::{FixedBuffer, GuestCodeMemory, fail};
use crate::wasi::CellState;

/// The largest linear-memory size a `memory.grow` was refused for, in bytes.
static DENIED_GROWTH: AtomicU64 = AtomicU64::new(0);

/// Bytes a refused `memory.grow` asked for (0 when none was refused), reported to the
/// host so that an out-of-memory failure names the cell's limit.
pub fn denied_growth() -> u64 {
    DENIED_GROWTH.load(Ordering::Relaxed)
}

/// Refuses linear-memory growth past what the cell's heap can hold.
pub struct GrowthLimiter {
    limit: usize,
}

impl GrowthLimiter {
    /// A limiter for linear memories of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl ResourceLimiter for GrowthLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            DENIED_GROWTH.fetch_max(desired as u64, Ordering::Relaxed);
            return Ok(false);
        }
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // The heap could not hold the new size even below the limit (fragmentation).
        DENIED_GROWTH.fetch_max(self.limit as u64, Ordering::Relaxed);
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

pub fn fail_with(kind: FailureKind, what: &str, error: &wasmtime::Error) -> ! {
    let mut message = FixedBuffer::<4096>::new();
    let _ = write!(message, "{what}: {error:?}");
    fail(kind, message.as_bytes())
}

pub fn run(boot: &BootInfo, boot_ptr: *const BootInfo, bounds_checks: BoundsChecks) -> ! {
    let mut config = Config::new();
    hypercell_engine::configure(&mut config, bounds_checks);
    // SAFETY: the answers come from the host, which checked each feature on the real
    // CPU and compiled the module for exactly that set.
    unsafe {
        config.detect_host_feature(crate::platform::detect_cpu_feature);
    }
    config.with_custom_code_memory(Some(Arc::new(GuestCodeMemory)));
    config.max_wasm_stack(boot.max_wasm_stack as usize);
    let engine = Engine::new(&config)
        .unwrap_or_else(|e| fail_with(FailureKind::Runtime, "failed to start the engine", &e));
    clock::mark(Phase::RuntimeReady);

    let artifact = NonNull::slice_from_raw_parts(
        NonNull::new(boot.module_addr as *mut u8).expect("the host passes a module"),
        boot.module_len as usize,
    );
    #[cfg(feature = "http")]
    if let Some(wasmtime::Precompiled::Component) = Engine::detect_precompiled(
        // SAFETY: as below: the region holds the host's artifact for the cell's life.
        unsafe { artifact.as_ref() },
    ) {
        crate::http::run(&engine, artifact, boot, boot_ptr)
    }
    // SAFETY: the host copied an artifact that its own wasmtime (the same version,
    // configured by `hypercell_engine::configure`) produced into this region; the
    // region is reserved for it for the cell's whole life and nothing else writes it.
    let module = unsafe { Module::deserialize_raw(&engine, artifact) }.unwrap_or_else(|e| {
        fail_with(
            FailureKind::Runtime,
            "failed to load the compiled module",
            &e,
        )
    });
    clock::mark(Phase::ModuleLoaded);

    let mut linker = Linker::new(&engine);
    crate::wasi::add_to_linker(&mut linker)
        .unwrap_or_else(|e| fail_with(FailureKind::Runtime, "failed to define WASI", &e));
    let limiter = GrowthLimiter::new(boot.wasm_memory_limit as usize);
    let mut store = Store::new(&engine, CellState::new(boot, limiter));
    store.limiter(|state| &mut state.limiter);

    let instance = match linker.instantiate(&mut store, &module) {
        Ok(instance) => instance,
        Err(e) if e.is::<wasmtime::Trap>() => trap(&e),
        Err(e) => fail_with(FailureKind::Instantiate, "failed to instantiate", &e),
    };
    clock::mark(Phase::Instantiated);
    // As `wasmtime run`: a reactor's `_initialize` runs first, and a module that
    // exports it alone is done once it returns.
    let mut initialize = instance
        .get_typed_func::<(), ()>(&mut store, "_initialize")
        .ok();
    let start = instance.get_typed_func::<(), ()>(&mut store, "_start");
    if initialize.is_none() && start.is_err() {
        fail(
            FailureKind::Instantiate,
            b"the module exports neither a `_start` nor an `_initialize` function of type [] -> []",
        )
    }
    match boot.template_stop {
        TEMPLATE_STOP_START => {
            // The host takes the template here; in every cell started from it the
            // call returns with this cell's own identity in the boot block, read
            // afresh.
            crate::hypercall::call(Hypercall::Ready, [0; 6]);
            // SAFETY: as in `guest_main`: the host keeps a `BootInfo` at this address.
            let fresh = unsafe { boot_ptr.read_volatile() };
            crate::stdio::init(&fresh);
            crate::files::init(&fresh);
            store.data_mut().reidentify(&fresh);
        }
        TEMPLATE_STOP_INIT => {
            // As Wizer: `_initialize`, then the initialisation export, then the
            // template; cells from it go on to `_start` with what these left.
            if let Some(Err(e)) = initialize.take().map(|f| f.call(&mut store, ())) {
                finish_with(e);
            }
            // SAFETY: the host wrote the export's name there, inside the cell's own
            // identity region, which nothing else writes while the cell boots.
            let name = unsafe {
                core::slice::from_raw_parts(
                    boot.init_export_addr as *const u8,
                    boot.init_export_len as usize,
                )
            };
            let name = core::str::from_utf8(name).unwrap_or("");
            let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, name) else {
                let mut message = FixedBuffer::<512>::new();
                let _ = write!(
                    message,
                    "the module exports no function `{name}` of type [] -> [] to initialise it with"
                );
                fail(FailureKind::Instantiate, message.as_bytes())
            };
            if let Err(e) = init.call(&mut store, ()) {
                finish_with(e);
            }
            crate::hypercall::call(Hypercall::Ready, [0; 6]);
        }
        _ => {}
    }
    let mut entries = initialize.into_iter().chain(start);
    match entries.try_fold((), |(), entry| entry.call(&mut store, ())) {
        Ok(()) => crate::stdio::exit(0),
        Err(e) => finish_with(e),
    }
}

/// Ends the cell after a wasm call failed with `error`: a trap, an exit (which WASI's
/// `proc_exit` raises as an error) or a refused WASI call.
pub fn finish_with(error: wasmtime::Error) -> ! {
    if error.is::<wasmtime::Trap>() {
        trap(&error)
    }
    clock::mark(Phase::Finished);
    fail_with(
        FailureKind::CallError,
        "a WASI call refused its arguments",
        &error,
    )
}

/// Reports a trap (with its wasm backtrace) and ends the cell.
fn trap(error: &wasmtime::Error) -> ! {
    clock::mark(Phase::Finished);
    let report = format!("{error:?}");
    crate::hypercall::call_final(
        Hypercall::Trap,
        [
            report.as_ptr() as u64,
            report.len() as u64,
            denied_growth(),
            0,
            0,
            0,
        ],
    )
}
