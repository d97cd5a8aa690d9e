//! The engine's KV bookkeeping: the page pool and the radix tree, and the few ways a
//! sequence uses them (match its prefix on admission, allocate pages, insert computed
//! pages into the tree, release everything when it finishes or is preempted). Pure page
//! ids; the tensors live in the model runner.

use arbor_cache::{InvariantError, PageId, PagePool, RadixTree};
use tracing::debug;

use crate::sequence::Sequence;

/// Page pool plus radix tree, owned by the engine thread.
#[derive(Debug)]
pub struct KvPages {
    /// Reference-counted pages.
    pub pool: PagePool,
    /// Cached prefixes; unused (always empty) when the radix cache is disabled.
    pub tree: RadixTree,
    /// Whether prefixes are matched and inserted.
    pub radix_enabled: bool,
    /// Bumped on every insert or eviction, so cached match hints know they are stale.
    pub version: u64,
}

/// A cached prefix found for a sequence: how many of its tokens, and in which pages.
pub struct CachedPrefix {
    /// Tokens covered (a multiple of the page size, less than the sequence's length).
    pub n_tokens: usize,
    /// Pages holding them (not yet retained).
    pub pages: Vec<PageId>,
    /// The node to lock.
    pub node: arbor_cache::NodeId,
}

impl KvPages {
    /// An empty pool of `n_pages` pages of `page_size` slots and an empty tree.
    pub fn new(n_pages: usize, page_size: usize, radix_enabled: bool) -> Self {
        Self {
            pool: PagePool::new(n_pages, page_size),
            tree: RadixTree::new(page_size),
            radix_enabled,
            // Hints start at version 0, so they are stale from the start.
            version: 1,
        }
    }

    /// Token slots per page.
    pub fn page_size(&self) -> usize {
        self.pool.page_size()
    }

    /// Pages that an allocation could get now, evicting unlocked tree pages if needed.
    pub fn n_available(&self) -> usize {
        self.pool.n_free() + self.tree.n_evictable_pages()
    }

    /// Allocates `n_pages`, evicting least-recently-used tree pages when the free list
    /// is short. `None` (and nothing allocated) if even eviction cannot make room.
    pub fn allocate(&mut self, n_pages: usize) -> Option<Vec<PageId>> {
        if n_pages == 0 {
            return Some(Vec::new());
        }
        let short = n_pages.saturating_sub(self.pool.n_free());
        if short > 0 {
            let n_evicted = self.tree.evict(short, &mut self.pool);
            self.version += 1;
            debug!(n_pages_wanted = short, n_evicted, "evicted cached pages");
        }
        self.pool.allocate(n_pages)
    }

    /// The longest usable cached prefix of `tokens`: whole pages, and at least one token
    /// left uncached so the last position gets computed (its logits are needed).
    pub fn match_prefix(&mut self, tokens: &[u32]) -> Option<CachedPrefix> {
        if !self.radix_enabled || tokens.is_empty() {
            return None;
        }
        let page_size = self.page_size();
        let usable = (tokens.len() - 1) / page_size * page_size;
        let matched = self.tree.match_prefix(&tokens[..usable]);
        Some(CachedPrefix {
            n_tokens: matched.n_tokens,
            pages: matched.pages,
            node: matched.node,
        })
    }

    /// Cached prefix length of `tokens` for ordering decisions (same rules as
    /// `match_prefix`, and equally a tree walk).
    pub fn peek_cached_len(&mut self, tokens: &[u32]) -> usize {
        self.match_prefix(tokens).map_or(0, |m| m.n_tokens)
    }

    /// Takes a sequence's references on a matched prefix and locks it.
    pub fn attach_prefix(&mut self, seq: &mut Sequence, prefix: CachedPrefix) {
        self.tree.lock(prefix.node);
        self.pool.retain(&prefix.pages);
        seq.pages = prefix.pages;
        seq.n_computed = prefix.n_tokens;
        seq.n_inserted = prefix.n_tokens;
        seq.locked_node = Some(prefix.node);
    }

    /// Inserts the sequence's computed whole pages that the tree does not have yet, and
    /// moves its lock to the end of the inserted path so they stay cached while it runs.
    pub fn insert_computed(&mut self, seq: &mut Sequence) {
        if !self.radix_enabled {
            return;
        }
        let page_size = self.page_size();
        let n_full = seq.n_computed / page_size * page_size;
        if n_full <= seq.n_inserted {
            return;
        }
        // Limitation: when another sequence inserted the same tokens first, this one
        // keeps its own duplicate pages until it ends instead of switching to the
        // tree's; the concurrent-prefix delay in admission makes that rare.
        let outcome = self.tree.insert(
            &seq.tokens[..n_full],
            &seq.pages[..n_full / page_size],
            &mut self.pool,
        );
        self.tree.lock(outcome.node);
        if let Some(old) = seq.locked_node.replace(outcome.node) {
            self.tree.unlock(old);
        }
        seq.n_inserted = n_full;
        self.version += 1;
    }

    /// Inserts what the sequence computed, unlocks its prefix and frees its pages; the
    /// sequence keeps its tokens (so it can be recomputed) but holds nothing.
    pub fn release(&mut self, seq: &mut Sequence) {
        self.insert_computed(seq);
        if let Some(node) = seq.locked_node.take() {
            self.tree.unlock(node);
        }
        self.pool.free(&seq.pages);
        seq.pages.clear();
        seq.n_computed = 0;
        seq.n_inserted = 0;
        seq.n_scheduled = 0;
    }

    /// Drops every unlocked cached prefix; returns the pages freed.
    pub fn flush(&mut self) -> usize {
        self.version += 1;
        self.tree.clear(&mut self.pool)
    }

    /// Checks pool and tree invariants given the pages sequences hold.
    pub fn check_invariants(&self, held: &[PageId]) -> Result<(), InvariantError> {
        self.tree.check_invariants(&self.pool, held)
    }
}
