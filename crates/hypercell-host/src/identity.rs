//! A cell's identity: its arguments, environment and preopened directories' names, as
//! the NUL-terminated string blocks the guest reads from its identity region, and the
//! rewriting of that region for a cell that starts from a template with an identity of
//! its own, or takes a server's next request.

use std::mem::offset_of;

use hypercell_abi::BootInfo;
use hypercell_vmm::GuestMemoryMap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

use crate::config::CellConfig;

/// The string blocks of a cell's identity.
pub struct Identity {
    /// The arguments.
    pub args: Vec<u8>,
    /// How many.
    pub argc: u64,
    /// The environment, as `NAME=value` strings.
    pub env: Vec<u8>,
    /// How many variables.
    pub envc: u64,
    /// The preopened directories' guest names.
    pub preopens: Vec<u8>,
    /// How many.
    pub preopen_count: u64,
}

impl Identity {
    /// Bytes its blocks take.
    pub fn bytes(&self) -> u64 {
        (self.args.len() + self.env.len() + self.preopens.len()) as u64
    }

    /// The identity `config` gives a cell.
    pub fn of(config: &CellConfig) -> Self {
        Self {
            args: string_block(config.args.iter().map(String::as_bytes)),
            argc: config.args.len() as u64,
            env: string_block(
                config
                    .env
                    .iter()
                    .map(|(name, value)| [name.as_bytes(), b"=", value.as_bytes()].concat()),
            ),
            envc: config.env.len() as u64,
            preopens: string_block(config.preopens.iter().map(|p| p.guest.as_bytes())),
            preopen_count: config.preopens.len() as u64,
        }
    }
}

/// The next request for a cell that serves several (see
/// [`crate::ReusableCell::serve`]).
pub struct NextRequest {
    pub(crate) identity: Identity,
    pub(crate) input: Vec<u8>,
}

impl NextRequest {
    /// A request whose program sees the arguments and environment of `config` (the
    /// cell keeps the preopens, components and limits it started with) and reads
    /// `input` as its whole stdin, which the caller also puts on the cell's stdin
    /// descriptor for when it does not fit beside them.
    pub fn new(config: &CellConfig, input: Vec<u8>) -> Self {
        Self {
            identity: Identity::of(config),
            input,
        }
    }
}

/// Where a cell's identity lives in its memory.
#[derive(Clone, Copy, Debug)]
pub struct IdentityRegion {
    /// The [`BootInfo`] block.
    pub boot_info: u64,
    /// Start of the region: the arguments, then the environment, then the preopens.
    pub start: u64,
    /// Its size in bytes.
    pub capacity: u64,
}

impl IdentityRegion {
    /// Writes `identity` into the region, back to back, and the [`BootInfo`] fields
    /// that find it; then `input`, the program's whole stdin, when it fits in the room
    /// left (the guest reads it with no exit), or a note that stdin comes from the
    /// host. An identity larger than the region is refused, and nothing written.
    pub fn lay(
        &self,
        mem: &GuestMemoryMap,
        identity: &Identity,
        input: Option<&[u8]>,
    ) -> Result<(), GuestMemoryError> {
        let args_addr = self.start;
        let env_addr = args_addr + identity.args.len() as u64;
        let preopens_addr = env_addr + identity.env.len() as u64;
        let laid_at = preopens_addr + identity.preopens.len() as u64;
        if laid_at > self.start + self.capacity {
            return Err(GuestMemoryError::InvalidGuestAddress(GuestAddress(laid_at)));
        }
        for (at, block) in [
            (args_addr, &identity.args),
            (env_addr, &identity.env),
            (preopens_addr, &identity.preopens),
        ] {
            mem.write_slice(block, GuestAddress(at))?;
        }
        let room = (self.start + self.capacity).saturating_sub(laid_at);
        let (input_addr, input_len) = match input {
            Some(input) if input.len() as u64 <= room => {
                mem.write_slice(input, GuestAddress(laid_at))?;
                (laid_at, input.len() as u64)
            }
            _ => (0, 0),
        };
        let fields = [
            (offset_of!(BootInfo, args_addr), args_addr),
            (offset_of!(BootInfo, args_len), identity.args.len() as u64),
            (offset_of!(BootInfo, argc), identity.argc),
            (offset_of!(BootInfo, env_addr), env_addr),
            (offset_of!(BootInfo, env_len), identity.env.len() as u64),
            (offset_of!(BootInfo, envc), identity.envc),
            (offset_of!(BootInfo, preopens_addr), preopens_addr),
            (
                offset_of!(BootInfo, preopens_len),
                identity.preopens.len() as u64,
            ),
            (offset_of!(BootInfo, preopen_count), identity.preopen_count),
            (offset_of!(BootInfo, input_addr), input_addr),
            (offset_of!(BootInfo, input_len), input_len),
        ];
        for (offset, value) in fields {
            mem.write_obj(value, GuestAddress(self.boot_info + offset as u64))?;
        }
        Ok(())
    }
}

/// Strings back to back, each ended by a NUL.
fn string_block<S: AsRef<[u8]>>(strings: impl Iterator<Item = S>) -> Vec<u8> {
    let mut block = Vec::new();
    for string in strings {
        block.extend_from_slice(string.as_ref());
        block.push(0);
    }
    block
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::Preopen;

    fn field(mem: &GuestMemoryMap, offset: usize) -> u64 {
        mem.read_obj(GuestAddress(offset as u64)).unwrap()
    }

    #[test]
    fn an_identity_is_laid_back_to_back_with_its_input_when_it_fits() {
        let mem = GuestMemoryMap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let config = CellConfig {
            args: vec!["h.wasm".into(), "x".into()],
            env: vec![("A".into(), "1".into())],
            preopens: vec![Preopen {
                host: "/tmp".into(),
                guest: "/data".into(),
                read_only: true,
            }],
            ..CellConfig::default()
        };
        let identity = Identity::of(&config);
        let region = IdentityRegion {
            boot_info: 0,
            start: 4096,
            capacity: 64,
        };
        region.lay(&mem, &identity, Some(b"body")).unwrap();
        let mut laid = vec![0; 23];
        mem.read_slice(&mut laid, GuestAddress(4096)).unwrap();
        assert_eq!(laid, b"h.wasm\0x\0A=1\0/data\0body");
        let counts = [
            offset_of!(BootInfo, argc),
            offset_of!(BootInfo, envc),
            offset_of!(BootInfo, preopen_count),
        ];
        assert_eq!(counts.map(|at| field(&mem, at)), [2, 1, 1]);
        let env = [
            offset_of!(BootInfo, env_addr),
            offset_of!(BootInfo, env_len),
        ];
        assert_eq!(env.map(|at| field(&mem, at)), [4096 + 9, 4]);
        let input = [
            offset_of!(BootInfo, input_addr),
            offset_of!(BootInfo, input_len),
        ];
        assert_eq!(input.map(|at| field(&mem, at)), [4096 + 19, 4]);
        region.lay(&mem, &identity, Some(&[7; 64])).unwrap();
        assert_eq!(input.map(|at| field(&mem, at)), [0, 0]);
        let small = IdentityRegion {
            capacity: 18,
            ..region
        };
        assert!(small.lay(&mem, &identity, None).is_err());
    }
}
