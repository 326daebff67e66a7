//! The template's contents of the pages a reused partition copies back at each reset,
//! held in host memory: runs from one template mostly write the same pages, and a
//! copy from here costs a `memcpy` where reading the template's file costs a system
//! call and a page-cache lookup for each range.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use hypercell_abi::layout::PAGE_SIZE;
use hypercell_vmm::{Bytes, GuestAddress, GuestMemory};

/// Most pages a reset keeps, copying the template's contents back over them, and so
/// most pages held here (8 MiB): past that, a run that wrote much (a memory bomb) has
/// its pages dropped, and the pages held here are let go and read again as needed.
pub(crate) const KEEP_LIMIT: u64 = 2048;

/// Pages of one template's memory image, by guest-physical address.
#[derive(Debug, Default)]
pub(crate) struct TemplatePages {
    pages: HashMap<u64, Box<[u8]>>,
}

impl TemplatePages {
    /// Puts the pages of `range` (4 KiB-aligned) back to the template's: its memory
    /// image lies in `file` from `offset` and ends at `image_end` (guest-physical),
    /// with zeros past it.
    pub(crate) fn copy_back(
        &mut self,
        memory: &GuestMemory,
        range: Range<u64>,
        file: &File,
        offset: u64,
        image_end: u64,
    ) -> io::Result<()> {
        let out_of_memory = || io::Error::other("the range lies outside the cell's memory");
        let end = range.end.min(memory.size());
        let in_image = range.start..end.min(image_end);
        let adding = in_image.end.saturating_sub(in_image.start) / PAGE_SIZE;
        if self.pages.len() as u64 + adding > KEEP_LIMIT {
            self.pages.clear();
        }
        for page in in_image.clone().step_by(PAGE_SIZE as usize) {
            let bytes = match self.pages.entry(page) {
                std::collections::hash_map::Entry::Occupied(held) => held.into_mut(),
                std::collections::hash_map::Entry::Vacant(missing) => {
                    missing.insert(read_page(file, offset + page)?)
                }
            };
            memory
                .mem()
                .write_slice(bytes, GuestAddress(page))
                .map_err(|_| out_of_memory())?;
        }
        for page in (in_image.end.max(range.start)..end).step_by(PAGE_SIZE as usize) {
            memory
                .mem()
                .write_slice(&[0u8; PAGE_SIZE as usize], GuestAddress(page))
                .map_err(|_| out_of_memory())?;
        }
        Ok(())
    }
}

/// The page at `at` in `file`, with zeros where the file ends before it does.
fn read_page(file: &File, at: u64) -> io::Result<Box<[u8]>> {
    let mut page = vec![0u8; PAGE_SIZE as usize].into_boxed_slice();
    let mut read = 0;
    while read < page.len() {
        match file.read_at(&mut page[read..], at + read as u64) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(memory: &GuestMemory, at: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        memory
            .mem()
            .read_slice(&mut bytes, GuestAddress(at))
            .unwrap();
        bytes
    }

    #[test]
    fn pages_come_back_from_the_image_then_from_memory_with_zeros_past_its_ends() {
        let memory = GuestMemory::new(16 << 20).unwrap();
        let file = tempfile::tempfile().unwrap();
        // The image starts 8 KiB into the file; the file ends halfway into its
        // second page; the image ends after its third.
        let offset = 8192;
        let image = [vec![1u8; 4096], vec![2u8; 2048]].concat();
        file.write_all_at(&image, offset).unwrap();
        memory
            .mem()
            .write_slice(&[0xee; 5 * 4096], GuestAddress(0))
            .unwrap();

        let mut pages = TemplatePages::default();
        pages
            .copy_back(&memory, 0..5 * 4096, &file, offset, 3 * 4096)
            .unwrap();
        let expected = [vec![1u8; 4096], vec![2u8; 2048], vec![0u8; 2048 + 3 * 4096]].concat();
        assert_eq!(read(&memory, 0, 5 * 4096), expected);

        // A page held is copied from memory: the file is not read again.
        file.write_all_at(&[9u8; 4096], offset).unwrap();
        memory
            .mem()
            .write_slice(&[0xee; 4096], GuestAddress(0))
            .unwrap();
        pages
            .copy_back(&memory, 0..4096, &file, offset, 3 * 4096)
            .unwrap();
        assert_eq!(read(&memory, 0, 4096), vec![1u8; 4096]);
    }
}
