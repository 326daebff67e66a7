//! Links the `hypercell` binary with packed relative relocations (RELR): the dynamic
//! loader reads about 20 KiB of them at start-up instead of 1.4 MB, which every
//! `hypercell run` would otherwise fault in and keep resident.

fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
}
