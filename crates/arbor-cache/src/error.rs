//! The one error type of this crate: a broken bookkeeping invariant.
//!
//! Nothing on the normal path returns an error here. Running out of pages is `None` from
//! [`crate::PagePool::allocate`], not an error. `InvariantError` comes only from the
//! `check_invariants` methods that tests (and a no-leak check after a run) call; any
//! value of it means a bug in this crate or in the code that holds page references.

use crate::PageId;

/// A bookkeeping invariant of the [`crate::PagePool`] or [`crate::RadixTree`] does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvariantError {
    /// Free plus used pages do not add up to the pool size.
    #[error("pool has {n_free} free and {n_used} used pages but {n_pages} in total")]
    PoolCountsDisagree {
        n_free: usize,
        n_used: usize,
        n_pages: usize,
    },
    /// A page on the free list still has references.
    #[error("page {page:?} is on the free list with ref count {ref_count}")]
    FreePageReferenced { page: PageId, ref_count: u32 },
    /// A page is on the free list twice.
    #[error("page {page:?} is on the free list twice")]
    FreeListDuplicate { page: PageId },
    /// A page has no references but is not on the free list, so it can never be reused.
    #[error("page {page:?} has ref count 0 but is not on the free list")]
    PageLost { page: PageId },
    /// A page id is not below the pool size.
    #[error("page {page:?} is out of range for a pool of {n_pages} pages")]
    PageOutOfRange { page: PageId, n_pages: usize },
    /// The pool's count for a page differs from the references the tree and the
    /// sequences hold.
    #[error("page {page:?} has ref count {actual}, but the tree and sequences hold {expected}")]
    RefCountMismatch {
        page: PageId,
        expected: u32,
        actual: u32,
    },
    /// Two radix nodes (or two slots of one node) hold the same page.
    #[error("page {page:?} appears twice in the radix tree")]
    PageTwiceInTree { page: PageId },
    /// Tree and pool disagree on how many token slots a page has.
    #[error("radix tree pages hold {tree} tokens, pool pages hold {pool}")]
    PageSizeMismatch { tree: usize, pool: usize },
    /// The tree's structure, lock counts, statistics or LRU index are inconsistent.
    #[error("radix tree is inconsistent: {detail}")]
    Tree { detail: String },
}
