//! `RadixTree::check_invariants`: a full, slow walk that recomputes everything the tree
//! keeps incrementally (ref counts, lock counts, statistics, the LRU index) and compares.
//! Tests call it after every operation; it is O(tree size + pool size).

use std::collections::BTreeSet;

use super::RadixTree;
use crate::{InvariantError, PageId, PagePool};

impl RadixTree {
    /// Checks the tree against itself and against the pool.
    ///
    /// `held` lists the references held outside the tree (by sequences), as a multiset of
    /// pages: a page two sequences share appears twice. Checks that for every page
    /// `pool.ref_count(p)` is 1 if the tree holds `p`, plus its count in `held`, so free
    /// pages are neither in the tree nor held; that no page is in the tree twice; that
    /// every node's run is whole pages with one page per `page_size` tokens; that parent,
    /// child and key links agree; that lock counts cover descendants' locks; that access
    /// times never decrease towards the root; that the statistics match a recount; and
    /// that the LRU index holds exactly the unlocked leaves. Also runs the pool's own check.
    pub fn check_invariants(&self, pool: &PagePool, held: &[PageId]) -> Result<(), InvariantError> {
        pool.check_invariants()?;
        if pool.page_size() != self.page_size {
            return Err(InvariantError::PageSizeMismatch {
                tree: self.page_size,
                pool: pool.page_size(),
            });
        }

        let n_pages = pool.n_pages();
        let mut tree_refs = vec![0u32; n_pages];
        let mut recount = Recount::default();
        self.check_nodes(&mut tree_refs, &mut recount)?;
        self.check_counters(&recount)?;

        let mut expected = tree_refs;
        for &page in held {
            let count = expected
                .get_mut(page.index())
                .ok_or(InvariantError::PageOutOfRange { page, n_pages })?;
            *count += 1;
        }
        for (index, &expected) in expected.iter().enumerate() {
            let page = PageId(index as u32);
            let actual = pool.ref_count(page);
            if actual != expected {
                return Err(InvariantError::RefCountMismatch {
                    page,
                    expected,
                    actual,
                });
            }
        }
        Ok(())
    }

    /// Walks every node reachable from the root, checking each and counting what the tree
    /// tracks incrementally. Marks each tree page in `tree_refs`.
    fn check_nodes(
        &self,
        tree_refs: &mut [u32],
        recount: &mut Recount,
    ) -> Result<(), InvariantError> {
        let root = self.arena.get(self.root);
        if root.parent.is_some() || !root.tokens.is_empty() || !root.pages.is_empty() {
            return Err(broken("root has a parent, tokens or pages"));
        }

        let mut stack = vec![self.root];
        while let Some(index) = stack.pop() {
            recount.n_reached += 1;
            if recount.n_reached > self.arena.n_live() {
                return Err(broken("a node is reachable twice: the links form a cycle"));
            }
            self.check_node(index, tree_refs, recount)?;
            stack.extend(self.arena.get(index).children.values().copied());
        }
        if recount.n_reached != self.arena.n_live() {
            return Err(broken(format!(
                "{} live nodes but {} reachable from the root",
                self.arena.n_live(),
                recount.n_reached
            )));
        }
        Ok(())
    }

    /// Checks one node's run, pages, child links, lock count and access time.
    fn check_node(
        &self,
        index: u32,
        tree_refs: &mut [u32],
        recount: &mut Recount,
    ) -> Result<(), InvariantError> {
        let node = self.arena.get(index);
        if index != self.root {
            let n_tokens = node.tokens.len();
            if n_tokens == 0 || !n_tokens.is_multiple_of(self.page_size) {
                return Err(broken(format!(
                    "node {index} holds {n_tokens} tokens, not whole pages"
                )));
            }
            if node.pages.len() * self.page_size != n_tokens {
                return Err(broken(format!(
                    "node {index} holds {n_tokens} tokens in {} pages",
                    node.pages.len()
                )));
            }
            recount.cached_tokens += n_tokens;
            if node.lock_count > 0 {
                recount.locked_tokens += n_tokens;
            } else if node.children.is_empty() {
                recount.evictable.insert((node.last_access, index));
            }
        }
        if node.last_access > self.clock {
            return Err(broken(format!("node {index} was accessed in the future")));
        }

        for &page in &node.pages {
            let n_pages = tree_refs.len();
            let count = tree_refs
                .get_mut(page.index())
                .ok_or(InvariantError::PageOutOfRange { page, n_pages })?;
            if *count > 0 {
                return Err(InvariantError::PageTwiceInTree { page });
            }
            *count = 1;
        }

        let mut child_locks = 0u64;
        for (key, &child_index) in &node.children {
            let child = self.arena.get(child_index);
            if child.parent != Some(index) || child.tokens.get(..self.page_size) != Some(&key[..]) {
                return Err(broken(format!(
                    "child {child_index} of node {index} has a wrong key or parent"
                )));
            }
            if child.last_access > node.last_access {
                return Err(broken(format!(
                    "child {child_index} was accessed after its parent {index}"
                )));
            }
            child_locks += u64::from(child.lock_count);
        }
        if u64::from(node.lock_count) < child_locks {
            return Err(broken(format!(
                "node {index} has {} locks but its children hold {child_locks}",
                node.lock_count
            )));
        }
        Ok(())
    }

    /// Compares the incrementally kept counters and LRU index with a recount.
    fn check_counters(&self, recount: &Recount) -> Result<(), InvariantError> {
        if recount.cached_tokens != self.cached_tokens {
            return Err(broken(format!(
                "stats say {} cached tokens, nodes hold {}",
                self.cached_tokens, recount.cached_tokens
            )));
        }
        if recount.locked_tokens != self.locked_tokens {
            return Err(broken(format!(
                "stats say {} locked tokens, locked nodes hold {}",
                self.locked_tokens, recount.locked_tokens
            )));
        }
        if recount.evictable != self.evictable {
            return Err(broken(format!(
                "LRU index holds {} leaves, {} nodes are unlocked leaves",
                self.evictable.len(),
                recount.evictable.len()
            )));
        }
        Ok(())
    }
}

#[cfg(any(test, feature = "testing"))]
impl RadixTree {
    /// Every cached whole-page prefix with the page holding its last page of tokens, for
    /// comparing the tree with a reference model in tests. O(cached tokens × depth).
    pub fn pages_by_prefix(&self) -> std::collections::BTreeMap<Vec<u32>, PageId> {
        let mut prefixes = std::collections::BTreeMap::new();
        let mut stack = vec![(self.root, Vec::new())];
        while let Some((index, prefix)) = stack.pop() {
            let node = self.arena.get(index);
            let mut prefix: Vec<u32> = prefix;
            for (page_tokens, &page) in node.tokens.chunks_exact(self.page_size).zip(&node.pages) {
                prefix.extend_from_slice(page_tokens);
                prefixes.insert(prefix.clone(), page);
            }
            stack.extend(node.children.values().map(|&child| (child, prefix.clone())));
        }
        prefixes
    }
}

/// What a full walk of the tree finds, to compare with the tree's counters.
#[derive(Default)]
struct Recount {
    n_reached: usize,
    cached_tokens: usize,
    locked_tokens: usize,
    evictable: BTreeSet<(u64, u32)>,
}

fn broken(detail: impl Into<String>) -> InvariantError {
    InvariantError::Tree {
        detail: detail.into(),
    }
}
