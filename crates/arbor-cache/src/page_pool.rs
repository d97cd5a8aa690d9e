//! `PagePool`: the fixed set of KV pages, who holds them, and which are free.
//!
//! The engine creates one pool at start-up, sized from the KV memory budget. In a step the
//! scheduler *allocates* pages for admitted prompts and for decode tokens that cross a page
//! boundary, and *frees* them when a sequence finishes. Pages are shared by reference
//! counting: a page cached in the [`crate::RadixTree`] carries one reference for the tree
//! plus one for each running sequence whose page table contains it. A page returns to the
//! free list when its count drops to zero.
//!
//! The pool knows nothing about tokens or tensors: a page is an index into the per-layer
//! K/V tensors, whose slot for a token is `page_id * page_size + offset`.

use crate::InvariantError;

/// Index of one KV page: `page_size` token slots in every layer's K and V tensors.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PageId(pub u32);

impl PageId {
    /// The page's position in the pool, for indexing per-page arrays.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A fixed number of pages of `page_size` token slots each, with a reference count per page.
///
/// Allocation takes pages from a free list (O(1) per page); freeing pushes a page back once
/// its reference count reaches zero. Running out of pages is not an error: `allocate`
/// returns `None` and the scheduler evicts from the radix tree, waits or preempts.
///
/// Calling `retain` or `free` on a page that is already free is a bug in the caller (a
/// double free or a use after free) and panics with a message naming the page, rather than
/// silently corrupting the free list.
#[derive(Debug, Clone)]
pub struct PagePool {
    /// Token slots per page; at least 1.
    page_size: usize,
    /// References per page, indexed by `PageId::index`; 0 exactly for pages on `free_list`.
    ref_counts: Vec<u32>,
    /// Pages with no references. Used as a stack so recently freed pages are reused first.
    free_list: Vec<PageId>,
}

impl PagePool {
    /// A pool of `n_pages` free pages of `page_size` token slots each.
    ///
    /// A `page_size` of 0 is raised to 1 (a page must hold at least one token), and
    /// `n_pages` is capped at `u32::MAX` because page ids are 32-bit.
    pub fn new(n_pages: usize, page_size: usize) -> Self {
        let n_pages = n_pages.min(u32::MAX as usize);

        // Reversed so that the first allocation hands out pages 0, 1, 2, ... which makes
        // logs and tests easier to read.
        let free_list = (0..n_pages as u32).rev().map(PageId).collect();
        Self {
            page_size: page_size.max(1),
            ref_counts: vec![0; n_pages],
            free_list,
        }
    }

    /// Token slots per page.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Total pages, free and used.
    pub fn n_pages(&self) -> usize {
        self.ref_counts.len()
    }

    /// Pages on the free list, ready to allocate.
    pub fn n_free(&self) -> usize {
        self.free_list.len()
    }

    /// Pages with at least one reference (held by the radix tree, sequences, or both).
    pub fn n_used(&self) -> usize {
        self.n_pages() - self.n_free()
    }

    /// Pages needed to hold `n_tokens` tokens: `n_tokens / page_size`, rounded up.
    pub fn pages_for_tokens(&self, n_tokens: usize) -> usize {
        n_tokens.div_ceil(self.page_size)
    }

    /// Takes `n_pages` pages off the free list; each returned page has ref count 1.
    ///
    /// Returns `None`, and allocates nothing, when fewer than `n_pages` are free.
    /// `allocate(0)` returns an empty list.
    pub fn allocate(&mut self, n_pages: usize) -> Option<Vec<PageId>> {
        if n_pages > self.free_list.len() {
            return None;
        }

        let pages = self.free_list.split_off(self.free_list.len() - n_pages);
        for &page in &pages {
            self.ref_counts[page.index()] = 1;
        }
        Some(pages)
    }

    /// Adds one reference to each page: a second sequence sharing it, or a sequence or the
    /// tree adopting a page someone else allocated. A page listed twice gains two.
    ///
    /// # Panics
    ///
    /// If a page is free (ref count 0) or out of range: retaining a page nobody holds
    /// means its contents may already belong to someone else.
    pub fn retain(&mut self, pages: &[PageId]) {
        for &page in pages {
            let count = self.count_mut(page, "retain");
            *count += 1;
        }
    }

    /// Drops one reference from each page; a page whose count reaches 0 returns to the free
    /// list. A page listed twice loses two.
    ///
    /// # Panics
    ///
    /// If a page is already free (a double free) or out of range.
    pub fn free(&mut self, pages: &[PageId]) {
        self.free_counting(pages);
    }

    /// Like [`PagePool::free`], and returns how many pages went back to the free list
    /// (pages still held by someone else are not counted).
    ///
    /// # Panics
    ///
    /// If a page is already free (a double free) or out of range.
    pub fn free_counting(&mut self, pages: &[PageId]) -> usize {
        let mut n_freed = 0;
        for &page in pages {
            let count = self.count_mut(page, "free");
            *count -= 1;
            if *count == 0 {
                self.free_list.push(page);
                n_freed += 1;
            }
        }
        n_freed
    }

    /// References currently held on `page`; 0 for a free or out-of-range page.
    pub fn ref_count(&self, page: PageId) -> u32 {
        self.ref_counts.get(page.index()).copied().unwrap_or(0)
    }

    /// Checks that free plus used equals the total, that every page on the free list has
    /// count 0 and appears once, and that every page with count 0 is on the free list.
    ///
    /// Costs O(n_pages); meant for tests and end-of-run leak checks, not the hot path.
    pub fn check_invariants(&self) -> Result<(), InvariantError> {
        let n_pages = self.n_pages();
        if self.n_free() + self.n_used() != n_pages || self.n_free() > n_pages {
            return Err(InvariantError::PoolCountsDisagree {
                n_free: self.n_free(),
                n_used: self.n_used(),
                n_pages,
            });
        }

        let mut on_free_list = vec![false; n_pages];
        for &page in &self.free_list {
            let Some(seen) = on_free_list.get_mut(page.index()) else {
                return Err(InvariantError::PageOutOfRange { page, n_pages });
            };
            if *seen {
                return Err(InvariantError::FreeListDuplicate { page });
            }
            *seen = true;
            let ref_count = self.ref_counts[page.index()];
            if ref_count != 0 {
                return Err(InvariantError::FreePageReferenced { page, ref_count });
            }
        }

        let lost = (0..n_pages).find(|&idx| self.ref_counts[idx] == 0 && !on_free_list[idx]);
        match lost {
            Some(idx) => Err(InvariantError::PageLost {
                page: PageId(idx as u32),
            }),
            None => Ok(()),
        }
    }

    /// The reference count of a live page, for `retain` or `free` to change.
    fn count_mut(&mut self, page: PageId, verb: &str) -> &mut u32 {
        let n_pages = self.ref_counts.len();
        let count = self
            .ref_counts
            .get_mut(page.index())
            .unwrap_or_else(|| panic!("{verb} of page {page:?} outside a pool of {n_pages} pages"));
        assert!(
            *count > 0,
            "{verb} of page {page:?}, which is free: a page must be held to be shared or freed"
        );
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_pool_has_every_page_free() {
        let pool = PagePool::new(8, 16);
        assert_eq!(pool.n_pages(), 8);
        assert_eq!(pool.n_free(), 8);
        assert_eq!(pool.n_used(), 0);
        assert_eq!(pool.page_size(), 16);
        pool.check_invariants().unwrap();
    }

    #[test]
    fn allocate_hands_out_distinct_pages_with_one_reference() {
        let mut pool = PagePool::new(8, 1);
        let pages = pool.allocate(5).unwrap();
        assert_eq!(pages.len(), 5);
        let mut sorted = pages.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 5);
        assert!(pages.iter().all(|&page| pool.ref_count(page) == 1));
        assert_eq!(pool.n_free(), 3);
        assert_eq!(pool.n_used(), 5);
        pool.check_invariants().unwrap();
    }

    #[test]
    fn allocate_returns_none_and_takes_nothing_when_too_few_pages_are_free() {
        let mut pool = PagePool::new(4, 16);
        let _held = pool.allocate(3).unwrap();
        assert_eq!(pool.allocate(2), None);
        assert_eq!(pool.n_free(), 1);
        assert_eq!(pool.allocate(1).map(|pages| pages.len()), Some(1));
        assert_eq!(pool.allocate(1), None);
        pool.check_invariants().unwrap();
    }

    #[test]
    fn allocate_zero_pages_returns_an_empty_list() {
        let mut pool = PagePool::new(0, 16);
        assert_eq!(pool.allocate(0), Some(vec![]));
        assert_eq!(pool.allocate(1), None);
    }

    #[test]
    fn shared_page_returns_to_free_list_only_after_last_free() {
        let mut pool = PagePool::new(2, 16);
        let pages = pool.allocate(1).unwrap();
        pool.retain(&pages);
        assert_eq!(pool.ref_count(pages[0]), 2);

        assert_eq!(pool.free_counting(&pages), 0);
        assert_eq!(pool.n_free(), 1);
        assert_eq!(pool.free_counting(&pages), 1);
        assert_eq!(pool.n_free(), 2);
        assert_eq!(pool.ref_count(pages[0]), 0);
        pool.check_invariants().unwrap();
    }

    #[test]
    fn freed_pages_are_allocated_again() {
        let mut pool = PagePool::new(3, 16);
        let first = pool.allocate(3).unwrap();
        pool.free(&first[1..2]);
        assert_eq!(pool.allocate(1), Some(vec![first[1]]));
        pool.check_invariants().unwrap();
    }

    #[test]
    fn page_size_zero_is_raised_to_one_token() {
        let pool = PagePool::new(2, 0);
        assert_eq!(pool.page_size(), 1);
        assert_eq!(pool.pages_for_tokens(3), 3);
    }

    #[test]
    fn pages_for_tokens_rounds_up_to_whole_pages() {
        let pool = PagePool::new(2, 16);
        assert_eq!(pool.pages_for_tokens(0), 0);
        assert_eq!(pool.pages_for_tokens(16), 1);
        assert_eq!(pool.pages_for_tokens(17), 2);
    }

    #[test]
    fn double_free_panics_with_the_page_named() {
        let mut pool = PagePool::new(2, 16);
        let pages = pool.allocate(1).unwrap();
        pool.free(&pages);
        let result = std::panic::catch_unwind(move || pool.free(&pages));
        let message = *result.unwrap_err().downcast::<String>().unwrap();
        assert!(
            message.contains("free of page PageId(0), which is free"),
            "{message}"
        );
    }

    #[test]
    fn ref_count_of_an_unknown_page_is_zero() {
        let pool = PagePool::new(2, 16);
        assert_eq!(pool.ref_count(PageId(99)), 0);
    }
}
