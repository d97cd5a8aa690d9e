//! The reference model for the randomized tests: the radix tree's behaviour restated as
//! plainly as possible, with no tree and no cleverness.
//!
//! The cache is a map from every cached whole-page prefix (a token list whose length is
//! a multiple of the page size) to the page holding that prefix's last page of tokens,
//! its last access time and its lock count. Matching looks prefixes up one page at a
//! time; eviction scans all entries for the least recently used unlocked one that no
//! longer prefix extends. It is slow (quadratic) and only meant for small pools.

use std::collections::{BTreeMap, HashSet};

use crate::PageId;

/// One cached whole-page prefix.
#[derive(Debug, Clone, Copy)]
struct Entry {
    page: PageId,
    last_access: u64,
    n_locks: u32,
}

/// The set of cached sequences, page by page.
#[derive(Debug, Clone)]
pub(crate) struct Model {
    page_size: usize,
    entries: BTreeMap<Vec<u32>, Entry>,
    /// Ticks once per match or insert, like the tree's clock.
    clock: u64,
}

impl Model {
    pub fn new(page_size: usize) -> Self {
        Self {
            page_size,
            entries: BTreeMap::new(),
            clock: 0,
        }
    }

    /// Longest cached whole-page prefix of `tokens` and its pages; refreshes their time.
    pub fn match_prefix(&mut self, tokens: &[u32]) -> (usize, Vec<PageId>) {
        self.clock += 1;
        let mut pages = Vec::new();
        for end in (self.page_size..=tokens.len()).step_by(self.page_size) {
            let Some(entry) = self.entries.get_mut(&tokens[..end]) else {
                break;
            };
            entry.last_access = self.clock;
            pages.push(entry.page);
        }
        (pages.len() * self.page_size, pages)
    }

    /// Caches the whole pages of `tokens` that `pages` covers; returns the tokens already
    /// cached and the caller's pages for them.
    pub fn insert(&mut self, tokens: &[u32], pages: &[PageId]) -> (usize, Vec<PageId>) {
        self.clock += 1;
        let n_pages = pages.len().min(tokens.len() / self.page_size);
        let mut duplicates = Vec::new();
        for (page_idx, &page) in pages.iter().enumerate().take(n_pages) {
            let prefix = &tokens[..(page_idx + 1) * self.page_size];
            match self.entries.get_mut(prefix) {
                Some(entry) => {
                    entry.last_access = self.clock;
                    duplicates.push(page);
                }
                None => {
                    let entry = Entry {
                        page,
                        last_access: self.clock,
                        n_locks: 0,
                    };
                    self.entries.insert(prefix.to_vec(), entry);
                }
            }
        }
        (duplicates.len() * self.page_size, duplicates)
    }

    /// Adds one lock to every whole-page prefix of `prefix` (all must be cached).
    pub fn lock(&mut self, prefix: &[u32]) -> Result<(), String> {
        for entry in self.path(prefix)? {
            entry.n_locks += 1;
        }
        Ok(())
    }

    /// Removes one lock from every whole-page prefix of `prefix`.
    pub fn unlock(&mut self, prefix: &[u32]) -> Result<(), String> {
        for entry in self.path(prefix)? {
            entry.n_locks = entry
                .n_locks
                .checked_sub(1)
                .ok_or("model: unlock of an unlocked prefix")?;
        }
        Ok(())
    }

    /// Drops least-recently-used unlocked leaf prefixes one page at a time until `n_pages`
    /// pages are free (a page is free once the tree lets go, unless `held`) or none is left.
    pub fn evict(&mut self, n_pages: usize, held: &HashSet<PageId>) -> Result<usize, String> {
        let mut n_freed = 0;
        while n_freed < n_pages {
            let Some(prefix) = self.least_recently_used_leaf()? else {
                break;
            };
            let entry = self
                .entries
                .remove(&prefix)
                .expect("chosen prefix is cached");
            if !held.contains(&entry.page) {
                n_freed += 1;
            }
        }
        Ok(n_freed)
    }

    /// Every cached prefix and its page.
    pub fn pages_by_prefix(&self) -> BTreeMap<Vec<u32>, PageId> {
        self.entries
            .iter()
            .map(|(prefix, entry)| (prefix.clone(), entry.page))
            .collect()
    }

    pub fn cached_tokens(&self) -> usize {
        self.entries.len() * self.page_size
    }

    pub fn locked_tokens(&self) -> usize {
        let n_locked = self
            .entries
            .values()
            .filter(|entry| entry.n_locks > 0)
            .count();
        n_locked * self.page_size
    }

    /// The entries for each whole-page prefix of `prefix`, shortest first.
    fn path(&mut self, prefix: &[u32]) -> Result<Vec<&mut Entry>, String> {
        let n_pages = prefix.len() / self.page_size;
        let keys: HashSet<&[u32]> = (1..=n_pages)
            .map(|n| &prefix[..n * self.page_size])
            .collect();
        let entries: Vec<&mut Entry> = self
            .entries
            .iter_mut()
            .filter(|(key, _)| keys.contains(key.as_slice()))
            .map(|(_, entry)| entry)
            .collect();
        if entries.len() != n_pages {
            return Err(format!(
                "model: prefix of {} tokens is not cached",
                prefix.len()
            ));
        }
        Ok(entries)
    }

    /// The unlocked prefix that no other cached prefix extends and that was used least
    /// recently. Two candidates with the same time would make the expected eviction order
    /// ambiguous, so they are reported as an error rather than guessed.
    fn least_recently_used_leaf(&self) -> Result<Option<Vec<u32>>, String> {
        let parents: HashSet<&[u32]> = self
            .entries
            .keys()
            .filter(|key| key.len() > self.page_size)
            .map(|key| &key[..key.len() - self.page_size])
            .collect();
        let mut candidates: Vec<(u64, &Vec<u32>)> = self
            .entries
            .iter()
            .filter(|(key, entry)| entry.n_locks == 0 && !parents.contains(key.as_slice()))
            .map(|(key, entry)| (entry.last_access, key))
            .collect();
        candidates.sort();
        match candidates.as_slice() {
            [] => Ok(None),
            [(first, _), (second, _), ..] if first == second => {
                Err(format!("model: two leaves were last used at time {first}"))
            }
            [(_, key), ..] => Ok(Some((*key).clone())),
        }
    }
}
