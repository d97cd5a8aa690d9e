//! `RadixTree`: which token prefixes have their KV cached, in which pages, and which of
//! them running sequences pin.
//!
//! In a step the scheduler *matches* each admitted prompt to reuse its longest cached
//! prefix, *locks* the matched path while the sequence runs, *inserts* a prompt once its
//! prefill is done (and prompt plus output when the sequence finishes), and *evicts*
//! least-recently-used unlocked leaves when the [`PagePool`] runs short.
//!
//! # Shape
//!
//! Each node is an edge holding a run of token ids, a whole number of pages long, and the
//! pages storing their KV. A node's children are keyed by the token ids of their first
//! page, so a lookup compares real tokens, one page at a time, and never trusts a hash.
//! When a new sequence diverges inside a node's run, the node is split at the last page
//! boundary before the divergence. Sharing is per page: a prefix that ends mid-page is
//! rounded down, and the sequence recomputes the rest into a page of its own.
//!
//! # Costs
//!
//! `match_prefix` and `insert` cost O(tokens compared + nodes on the path × log children);
//! `lock`/`unlock` cost O(depth); `evict` costs O(log leaves) per node it removes. Unlocked
//! leaves sit in a `BTreeSet` ordered by `(last_access, node)`, kept current on every
//! access, so no call scans the whole tree. The clock is logical: one tick per match or
//! insert.

mod arena;
mod invariants;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

use tracing::debug;

pub use arena::NodeId;

use crate::PageId;
use crate::PagePool;
use crate::RadixStats;
use arena::{Arena, Node};

/// Result of [`RadixTree::match_prefix`]: the longest cached prefix of a prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixMatch {
    /// Cached prefix length in tokens: a multiple of the page size, at most the prompt.
    pub n_tokens: usize,
    /// The tree's pages holding that prefix, `n_tokens / page_size` of them, in order. The
    /// caller does not own them until it calls [`PagePool::retain`].
    pub pages: Vec<PageId>,
    /// The node ending exactly at the prefix (the root when nothing matched). Lock it to
    /// pin the whole prefix.
    pub node: NodeId,
}

/// Result of [`RadixTree::insert`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertOutcome {
    /// Leading tokens of the inserted run that the tree already held (their pages stay
    /// the tree's). A multiple of the page size.
    pub n_already_cached: usize,
    /// The caller's pages for that already-cached range: duplicates the tree did not
    /// adopt. The caller still holds its references on them.
    pub duplicate_pages: Vec<PageId>,
    /// Node that ends the inserted run (lock it to pin the whole path). The root when the
    /// run had no whole page.
    pub node: NodeId,
}

/// A radix tree over token ids whose nodes own KV pages; see the module docs.
///
/// The tree holds exactly one pool reference on each page it caches. It never frees pages
/// that sequences hold: eviction only drops the tree's own reference, and a page returns
/// to the free list when its last holder lets go.
#[derive(Debug, Clone)]
pub struct RadixTree {
    /// Token slots per page; must equal the pool's.
    page_size: usize,
    arena: Arena,
    root: u32,
    /// Unlocked, childless, non-root nodes, ordered by `(last_access, index)`.
    evictable: BTreeSet<(u64, u32)>,
    /// Logical time: one tick per `match_prefix` or `insert`.
    clock: u64,
    cached_tokens: usize,
    locked_tokens: usize,
    hit_tokens: u64,
    miss_tokens: u64,
    evicted_pages: u64,
}

impl RadixTree {
    /// An empty tree for pages of `page_size` token slots (0 is raised to 1).
    pub fn new(page_size: usize) -> Self {
        let mut arena = Arena::default();
        let root = arena.insert(Node::new(None, Vec::new(), Vec::new(), 0));
        Self {
            page_size: page_size.max(1),
            arena,
            root,
            evictable: BTreeSet::new(),
            clock: 0,
            cached_tokens: 0,
            locked_tokens: 0,
            hit_tokens: 0,
            miss_tokens: 0,
            evicted_pages: 0,
        }
    }

    /// Token slots per page.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// The root node: the empty prefix. Locking it pins nothing evictable.
    pub fn root(&self) -> NodeId {
        self.arena.id(self.root)
    }

    /// Whether `node` still names a node in the tree.
    pub fn contains(&self, node: NodeId) -> bool {
        self.arena.resolve(node).is_some()
    }

    /// Finds the longest cached prefix of `tokens`, rounded down to whole pages.
    ///
    /// Refreshes the LRU time of every node on the matched path, splits the last node if
    /// the match ends inside it (so the returned node ends exactly at the prefix), and adds
    /// to the hit/miss token counts. Does not change ref counts or locks.
    pub fn match_prefix(&mut self, tokens: &[u32]) -> PrefixMatch {
        self.clock += 1;
        let whole_pages = &tokens[..tokens.len() / self.page_size * self.page_size];

        let mut pages = Vec::new();
        let (node, n_tokens) = self.descend(whole_pages, Some(&mut pages));

        self.hit_tokens += n_tokens as u64;
        self.miss_tokens += (tokens.len() - n_tokens) as u64;
        PrefixMatch {
            n_tokens,
            pages,
            node: self.arena.id(node),
        }
    }

    /// Pins `node` and all its ancestors (lock count +1 each); locked nodes are never
    /// evicted. Every `lock` needs a matching [`RadixTree::unlock`].
    ///
    /// # Panics
    ///
    /// If `node` is no longer in the tree: only a handle just returned by `match_prefix`
    /// or `insert`, or one already locked, is guaranteed to be live.
    pub fn lock(&mut self, node: NodeId) {
        let mut index = self.resolve(node, "lock");
        loop {
            self.unindex(index);
            let node = self.arena.get_mut(index);
            node.lock_count += 1;
            if node.lock_count == 1 {
                self.locked_tokens += node.tokens.len();
            }
            match node.parent {
                Some(parent) => index = parent,
                None => return,
            }
        }
    }

    /// Releases one lock taken by [`RadixTree::lock`] on `node` and its ancestors; nodes
    /// whose count reaches 0 become evictable again once they are leaves.
    ///
    /// # Panics
    ///
    /// If `node` is no longer in the tree or is not locked: both mean an unlock without
    /// its lock, which would leave some other sequence's prefix unprotected.
    pub fn unlock(&mut self, node: NodeId) {
        let mut index = self.resolve(node, "unlock");
        loop {
            let node = self.arena.get_mut(index);
            node.lock_count = node
                .lock_count
                .checked_sub(1)
                .expect("unlocked radix node was locked");
            let parent = node.parent;
            if node.lock_count == 0 {
                self.locked_tokens -= node.tokens.len();
                self.index(index);
            }
            match parent {
                Some(parent) => index = parent,
                None => return,
            }
        }
    }

    /// Caches the first `n` whole pages of `tokens` in `pages`, where `n` is
    /// `pages.len()` or `tokens.len() / page_size`, whichever is smaller (tokens past the
    /// last whole page, and surplus pages, are ignored).
    ///
    /// Where the tree already holds a leading part of the run it keeps its own pages and
    /// reports the caller's as `duplicate_pages`. For the rest it takes its own reference
    /// (`pool.retain`) on each adopted page; the caller keeps its references either way.
    /// Splits a node if the run diverges or ends inside it, and refreshes LRU times on the
    /// path. Each page must not already be in the tree at another position.
    ///
    /// # Panics
    ///
    /// If the pool's page size differs from the tree's, or (from `pool.retain`) if an
    /// adopted page is free.
    pub fn insert(
        &mut self,
        tokens: &[u32],
        pages: &[PageId],
        pool: &mut PagePool,
    ) -> InsertOutcome {
        assert_eq!(
            pool.page_size(),
            self.page_size,
            "radix tree and page pool use the same page size"
        );
        self.clock += 1;
        let n_pages = pages.len().min(tokens.len() / self.page_size);
        let tokens = &tokens[..n_pages * self.page_size];
        let pages = &pages[..n_pages];

        let (node, n_already_cached) = self.descend(tokens, None);
        let n_cached_pages = n_already_cached / self.page_size;

        let node = if n_already_cached < tokens.len() {
            let new_tokens = tokens[n_already_cached..].to_vec();
            let new_pages = pages[n_cached_pages..].to_vec();
            self.add_leaf(node, new_tokens, new_pages, pool)
        } else {
            node
        };
        InsertOutcome {
            n_already_cached,
            duplicate_pages: pages[..n_cached_pages].to_vec(),
            node: self.arena.id(node),
        }
    }

    /// Drops the tree's references on least-recently-used unlocked leaves until `n_pages`
    /// pages went back to the free list or nothing is evictable; returns the pages actually
    /// freed to the pool, never more than `n_pages`: a leaf longer than needed is trimmed
    /// from its end rather than dropped whole.
    ///
    /// A parent whose last child goes becomes a leaf, and evictable if unlocked. Pages that
    /// a sequence also holds lose the tree's reference but stay in use, and do not count.
    pub fn evict(&mut self, n_pages: usize, pool: &mut PagePool) -> usize {
        let mut n_freed = 0;
        let mut n_released = 0;
        while n_freed < n_pages {
            let Some(&(_, index)) = self.evictable.first() else {
                break;
            };
            let n_leaf_pages = self.arena.get(index).pages.len();
            let n_trim = (n_pages - n_freed).min(n_leaf_pages);
            let released = if n_trim == n_leaf_pages {
                self.remove_leaf(index)
            } else {
                self.trim_leaf(index, n_trim)
            };
            n_released += released.len();
            n_freed += pool.free_counting(&released);
        }

        self.evicted_pages += n_released as u64;
        if n_released > 0 {
            debug!(
                n_requested = n_pages,
                n_released, n_freed, "evicted radix leaves"
            );
        }
        n_freed
    }

    /// Drops every unlocked node (for a cache flush); returns the pages freed to the pool.
    /// Locked paths, and pages sequences hold, stay.
    pub fn clear(&mut self, pool: &mut PagePool) -> usize {
        self.evict(usize::MAX, pool)
    }

    /// Current counters; O(1).
    pub fn stats(&self) -> RadixStats {
        RadixStats {
            cached_tokens: self.cached_tokens,
            evictable_tokens: self.cached_tokens - self.locked_tokens,
            locked_tokens: self.locked_tokens,
            hit_tokens: self.hit_tokens,
            miss_tokens: self.miss_tokens,
            n_nodes: self.arena.n_live() - 1,
            n_evictable_leaves: self.evictable.len(),
            evicted_pages: self.evicted_pages,
        }
    }

    /// Pages in unlocked nodes: an upper bound on what `evict` can free (pages a sequence
    /// also holds stay in use when the tree lets go of them).
    pub fn n_evictable_pages(&self) -> usize {
        (self.cached_tokens - self.locked_tokens) / self.page_size
    }

    /// Walks down from the root along `tokens` (whole pages only), refreshing LRU times and
    /// pushing the path's pages into `pages`. Splits the last node when the walk stops
    /// inside it. Returns the node ending the matched prefix and the prefix's length.
    fn descend(&mut self, tokens: &[u32], mut pages: Option<&mut Vec<PageId>>) -> (u32, usize) {
        let page_size = self.page_size;
        let mut node = self.root;
        let mut n_matched = 0;
        self.touch(node);

        while n_matched < tokens.len() {
            let rest = &tokens[n_matched..];
            let Some(&child) = self.arena.get(node).children.get(&rest[..page_size]) else {
                break;
            };
            let run = &self.arena.get(child).tokens;
            let n_common = common_pages(run, rest, page_size);
            let n_run_pages = run.len() / page_size;

            // Split first, so the node we stop at ends exactly where the match ends and the
            // part we did not match keeps its old access time.
            let reached = if n_common < n_run_pages {
                self.split(child, n_common)
            } else {
                child
            };
            self.touch(reached);
            if let Some(pages) = pages.as_deref_mut() {
                pages.extend_from_slice(&self.arena.get(reached).pages);
            }
            node = reached;
            n_matched += n_common * page_size;
            if n_common < n_run_pages {
                break;
            }
        }
        (node, n_matched)
    }

    /// Splits `lower` after its first `n_pages` pages into a new parent node holding those
    /// pages; `lower` keeps the rest and its handle. Returns the new upper node.
    fn split(&mut self, lower: u32, n_pages: usize) -> u32 {
        let page_size = self.page_size;
        let node = self.arena.get_mut(lower);
        let upper_tokens: Vec<u32> = node.tokens.drain(..n_pages * page_size).collect();
        let upper_pages: Vec<PageId> = node.pages.drain(..n_pages).collect();
        let lower_key: Box<[u32]> = node.tokens[..page_size].into();
        let parent = node.parent.expect("split node is not the root");
        let (lock_count, last_access) = (node.lock_count, node.last_access);

        // The upper part inherits the lock count: every lock on `lower` also pinned it.
        let upper_key: Box<[u32]> = upper_tokens[..page_size].into();
        let mut upper_node = Node::new(Some(parent), upper_tokens, upper_pages, last_access);
        upper_node.lock_count = lock_count;
        upper_node.children.insert(lower_key, lower);
        let upper = self.arena.insert(upper_node);

        self.arena.get_mut(lower).parent = Some(upper);
        self.arena.get_mut(parent).children.insert(upper_key, upper);
        upper
    }

    /// Adds a new unlocked leaf under `parent` and takes the tree's references on its pages.
    fn add_leaf(
        &mut self,
        parent: u32,
        tokens: Vec<u32>,
        pages: Vec<PageId>,
        pool: &mut PagePool,
    ) -> u32 {
        pool.retain(&pages);
        self.cached_tokens += tokens.len();
        self.unindex(parent);

        let key: Box<[u32]> = tokens[..self.page_size].into();
        let leaf = self
            .arena
            .insert(Node::new(Some(parent), tokens, pages, self.clock));
        self.arena.get_mut(parent).children.insert(key, leaf);
        self.index(leaf);
        leaf
    }

    /// Removes an evictable leaf; returns its pages, whose tree references the caller drops.
    fn remove_leaf(&mut self, index: u32) -> Vec<PageId> {
        self.unindex(index);
        let node = self.arena.remove(index);
        let parent = node.parent.expect("evicted node is not the root");
        self.cached_tokens -= node.tokens.len();

        let removed = self
            .arena
            .get_mut(parent)
            .children
            .remove(&node.tokens[..self.page_size]);
        debug_assert_eq!(removed, Some(index), "evicted leaf is its parent's child");
        self.index(parent);
        node.pages
    }

    /// Cuts the last `n_pages` pages off an evictable leaf; returns them, whose tree
    /// references the caller drops. Its key and access time stay, so its index entry does.
    fn trim_leaf(&mut self, index: u32, n_pages: usize) -> Vec<PageId> {
        let node = self.arena.get_mut(index);
        let n_keep = node.pages.len() - n_pages;
        node.tokens.truncate(n_keep * self.page_size);
        self.cached_tokens -= n_pages * self.page_size;
        node.pages.split_off(n_keep)
    }

    /// Sets a node's access time to now, keeping the LRU index in step.
    fn touch(&mut self, index: u32) {
        if self.arena.get(index).last_access == self.clock {
            return;
        }
        let was_indexed = self.unindex(index);
        self.arena.get_mut(index).last_access = self.clock;
        if was_indexed {
            self.index(index);
        }
    }

    /// Whether a node belongs in the LRU index: unlocked, childless and not the root.
    fn is_evictable_leaf(&self, index: u32) -> bool {
        let node = self.arena.get(index);
        index != self.root && node.lock_count == 0 && node.children.is_empty()
    }

    /// Adds a node to the LRU index if it is an evictable leaf. Call after a change.
    fn index(&mut self, index: u32) {
        if self.is_evictable_leaf(index) {
            let last_access = self.arena.get(index).last_access;
            self.evictable.insert((last_access, index));
        }
    }

    /// Takes a node out of the LRU index if it is in it; returns whether it was. Call
    /// before a change to its lock count, children or access time.
    fn unindex(&mut self, index: u32) -> bool {
        if !self.is_evictable_leaf(index) {
            return false;
        }
        let last_access = self.arena.get(index).last_access;
        self.evictable.remove(&(last_access, index))
    }

    /// The index of a live node, or a panic naming the misuse.
    fn resolve(&self, node: NodeId, verb: &str) -> u32 {
        self.arena
            .resolve(node)
            .unwrap_or_else(|| panic!("{verb} of radix node {node:?}, which was evicted"))
    }
}

/// Whole pages at the start of `run` and `tokens` that hold the same token ids.
fn common_pages(run: &[u32], tokens: &[u32], page_size: usize) -> usize {
    common_prefix_len(run, tokens) / page_size
}

/// Tokens at the start of `a` and `b` that are equal.
fn common_prefix_len(a: &[u32], b: &[u32]) -> usize {
    // Compare 16 tokens at a time (one vectorised slice comparison), then find the first
    // difference inside the chunk that differs; token by token is ~4x slower at page size 1.
    const CHUNK: usize = 16;
    let n_chunks = a
        .chunks_exact(CHUNK)
        .zip(b.chunks_exact(CHUNK))
        .take_while(|(a, b)| a == b)
        .count();
    let start = n_chunks * CHUNK;
    let n_rest = a[start..]
        .iter()
        .zip(&b[start..])
        .take_while(|(a, b)| a == b)
        .count();
    start + n_rest
}
