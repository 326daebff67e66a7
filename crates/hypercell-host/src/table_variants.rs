//! Copies of a reused partition's page tables, one for each growth of linear memory
//! its runs made.
//!
//! A shadow-paging KVM does not see the host write a table page, so tables that a
//! run grew cannot be put back for the next run in place: the next would run on a
//! fresh copy, whose shadows KVM builds again, fault by fault. Runs from one template
//! mostly grow the same way, so each growth gets its own copy the first time (the
//! tables it grew from, plus the new mapping) and the vCPU switches to it; the
//! template's copy is never written, and the next run that grows alike switches to
//! the same copies and finds KVM's shadows of them.

use std::collections::HashMap;

use hypercell_vmm::{GuestMemory, PagingError, ReservationTables};

/// One growth: the tables it grew from, and the mapping it added to them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Growth {
    from: u64,
    va: u64,
    pa: u64,
    len: u64,
}

/// The copies made so far, by the growth that made each.
#[derive(Debug, Default)]
pub struct TableVariants {
    grown: HashMap<Growth, u64>,
}

impl TableVariants {
    /// The root of the tables that are those at `from` with guest-virtual
    /// `va..va + len` mapped onto guest-physical `pa`, and whether an earlier run made
    /// them: an earlier copy, or a new one in pool pages from `tables`. `memory`'s
    /// tables root is left at the result, or at `from` when there is none.
    pub(crate) fn grown(
        &mut self,
        memory: &GuestMemory,
        tables: &mut ReservationTables,
        from: u64,
        (va, pa, len): (u64, u64, u64),
    ) -> Result<(u64, bool), PagingError> {
        let growth = Growth { from, va, pa, len };
        if let Some(&root) = self.grown.get(&growth) {
            memory.set_tables_root(root);
            return Ok((root, true));
        }
        let made = tables.fresh_copy(memory, from).and_then(|root| {
            memory.set_tables_root(root);
            tables.map(memory, va, pa, len).map(|()| root)
        });
        match made {
            Ok(root) => {
                self.grown.insert(growth, root);
                Ok((root, false))
            }
            Err(error) => {
                memory.set_tables_root(from);
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypercell_abi::layout::{PAGE_SIZE, RESERVATION_BASE};
    use hypercell_vmm::paging::translate;
    use hypercell_vmm::system::write_system_region;
    use vm_memory::{Bytes, GuestAddress};

    const VA: u64 = RESERVATION_BASE;
    const PA: u64 = 8 << 20;

    /// A cell's memory on its own copy of its tables, with one 64 KiB page mapped.
    fn cell() -> (GuestMemory, ReservationTables, u64) {
        let memory = GuestMemory::new(64 << 20).unwrap();
        write_system_region(&memory, &[]).unwrap();
        let mut tables = ReservationTables::default();
        tables.map(&memory, VA, PA, 64 << 10).unwrap();
        let root = tables.fresh_copy(&memory, memory.tables_root()).unwrap();
        memory.set_tables_root(root);
        (memory, tables, root)
    }

    fn pages(memory: &GuestMemory, root: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; PAGE_SIZE as usize];
        memory
            .mem()
            .read_slice(&mut bytes, GuestAddress(root))
            .unwrap();
        bytes
    }

    #[test]
    fn growth_goes_into_a_copy_and_a_like_growth_finds_it() {
        let (memory, mut tables, start) = cell();
        let before = pages(&memory, start);
        let mut variants = TableVariants::default();
        let growth = (VA + (64 << 10), PA + (64 << 10), 64 << 10);
        let (grown, known) = variants.grown(&memory, &mut tables, start, growth).unwrap();
        assert!(!known, "a first growth is new");
        assert_ne!(grown, start);
        assert_eq!(memory.tables_root(), grown);
        assert!(translate(&memory, VA + (100 << 10), 8).is_ok());
        // The tables grown from are as they were: a run on them again sees no growth.
        assert_eq!(pages(&memory, start), before);
        memory.set_tables_root(start);
        assert!(translate(&memory, VA + (100 << 10), 8).is_err());

        let used = tables.state().next;
        let again = variants.grown(&memory, &mut tables, start, growth).unwrap();
        assert_eq!(again, (grown, true));
        assert_eq!(tables.state().next, used, "no pool page for a known growth");
        // Another growth from the grown tables is a copy of its own.
        let (further, _) = variants
            .grown(
                &memory,
                &mut tables,
                grown,
                (VA + (128 << 10), PA + (128 << 10), 64 << 10),
            )
            .unwrap();
        assert!(![start, grown].contains(&further));
        assert!(translate(&memory, VA + (150 << 10), 8).is_ok());
        assert!(translate(&memory, VA + (100 << 10), 8).is_ok());
    }

    #[test]
    fn a_growth_with_no_room_leaves_the_tables_it_came_from() {
        let (memory, mut tables, start) = cell();
        let mut full = ReservationTables::from_state(&hypercell_vmm::TablesState {
            next: hypercell_vmm::paging::table_pool().end - PAGE_SIZE,
            free: Vec::new(),
        })
        .unwrap();
        let mut variants = TableVariants::default();
        let growth = (VA + (64 << 10), PA + (64 << 10), 64 << 10);
        assert_eq!(
            variants.grown(&memory, &mut full, start, growth),
            Err(PagingError::PoolExhausted)
        );
        assert_eq!(memory.tables_root(), start);
        // Nothing was remembered: with room, the growth is made.
        assert!(variants.grown(&memory, &mut tables, start, growth).is_ok());
    }
}
