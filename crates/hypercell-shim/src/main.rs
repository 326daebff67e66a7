//! `containerd-shim-hypercell-v1`, which containerd starts for each container (or pod)
//! of the `io.containerd.hypercell.v1` runtime.
#![deny(unsafe_op_in_unsafe_fn)]

fn main() {
    containerd_shim::run::<hypercell_shim::shim::HypercellShim>(hypercell_shim::RUNTIME_NAME, None);
}
