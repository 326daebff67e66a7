//! Bitmaps of 4 KiB pages, one bit a page, as KVM's dirty log and the host-write
//! bitmap keep them.

use hypercell_abi::layout::PAGE_SIZE;

/// The guest-physical addresses of the pages whose bits are set in `words`, the bitmap
/// of the pages from `base` on, in address order.
pub fn set_pages(words: impl IntoIterator<Item = u64>, base: u64) -> impl Iterator<Item = u64> {
    words
        .into_iter()
        .enumerate()
        .flat_map(move |(word_index, word)| {
            let first = base + word_index as u64 * 64 * PAGE_SIZE;
            // Only set bits cost a step: a pause takes the last round's bitmap.
            let mut bits = word;
            std::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let bit = u64::from(bits.trailing_zeros());
                    bits &= bits - 1;
                    first + bit * PAGE_SIZE
                })
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_set_bit_is_a_page_from_the_base() {
        let pages: Vec<u64> = set_pages([0b101, 0, 1 << 63], 0x10_0000).collect();
        assert_eq!(
            pages,
            [
                0x10_0000,
                0x10_0000 + 2 * PAGE_SIZE,
                0x10_0000 + (2 * 64 + 63) * PAGE_SIZE
            ]
        );
        assert_eq!(set_pages([0u64; 4], 0).count(), 0);
    }
}
