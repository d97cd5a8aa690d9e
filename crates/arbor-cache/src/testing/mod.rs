//! A driver for randomized testing: a stream of engine-like operations applied both to a
//! real [`PagePool`] + [`RadixTree`] and to a plain reference model, comparing every
//! result and checking every invariant after each step.
//!
//! Compiled for this crate's unit tests (the proptest in `tests`) and, with the `testing`
//! feature, for the `radix_ops` fuzz target, which feeds [`run_bytes`] raw fuzzer input.
//! Each sequence here behaves like one in the engine: it matches its prompt, locks the
//! matched path, retains the matched pages, allocates the rest (evicting when short),
//! inserts its whole pages, moves its lock to the inserted node, and finally unlocks and
//! frees everything it holds.

mod model;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt::Debug;

use crate::{NodeId, PageId, PagePool, RadixTree};
use model::Model;

/// Most sequences alive at once; admissions beyond it are skipped.
const MAX_SEQUENCES: usize = 12;

/// Shape of one randomized run.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Token slots per page.
    pub page_size: usize,
    /// Pages in the pool; small, so that eviction happens often.
    pub n_pages: usize,
    /// Seed for the base sequences that prompts start from.
    pub seed: u64,
    /// Distinct token ids in base sequences; few make prompts share prefixes.
    pub n_token_kinds: u32,
}

/// One step of an engine-like workload. Sequence indices are taken modulo the number of
/// live sequences (a step naming one is skipped when there is none).
#[derive(Debug, Clone)]
pub enum Op {
    /// Admit a sequence whose prompt is the first `prefix_len` tokens of base sequence
    /// `base`, then `suffix`: match, lock, retain, allocate the rest.
    Admit {
        base: usize,
        prefix_len: usize,
        suffix: Vec<u32>,
    },
    /// Append decoded `tokens` to a sequence, allocating pages as it needs them.
    Extend { seq: usize, tokens: Vec<u32> },
    /// Insert a sequence's whole pages and move its lock to the inserted node.
    Insert { seq: usize },
    /// Insert a sequence's whole pages, then unlock and free it.
    Finish { seq: usize },
    /// Unlock and free a sequence without inserting it.
    Abort { seq: usize },
    /// Match a prompt without locking it.
    Probe {
        base: usize,
        prefix_len: usize,
        suffix: Vec<u32>,
    },
    /// Evict until `n_pages` pages are free.
    Evict { n_pages: usize },
    /// Drop everything unlocked.
    Clear,
}

/// A live sequence: its tokens, the pages it holds a reference on, and its lock.
#[derive(Debug, Clone)]
struct Sequence {
    tokens: Vec<u32>,
    pages: Vec<PageId>,
    node: NodeId,
    n_locked_tokens: usize,
}

/// The real pool and tree, the reference model, and the live sequences.
#[derive(Debug, Clone)]
pub struct Harness {
    pool: PagePool,
    tree: RadixTree,
    model: Model,
    bases: Vec<Vec<u32>>,
    seqs: Vec<Sequence>,
}

/// Decodes fuzzer input into a configuration and operations and runs them all; `Err`
/// describes the first disagreement or broken invariant.
pub fn run_bytes(data: &[u8]) -> Result<(), String> {
    let mut input = ByteReader { data };
    let config = Config {
        page_size: [1, 2, 4, 16][usize::from(input.byte() % 4)],
        n_pages: 4 + usize::from(input.byte() % 60),
        seed: u64::from_le_bytes(std::array::from_fn(|_| input.byte())),
        n_token_kinds: 1 + u32::from(input.byte() % 4),
    };
    let mut harness = Harness::new(config);
    while !input.data.is_empty() {
        harness.apply(&input.op())?;
    }
    harness.finish()
}

impl Harness {
    /// A fresh pool and tree, with three base sequences of 48 tokens drawn from `seed`.
    pub fn new(config: Config) -> Self {
        let mut state = config.seed | 1;
        let mut next_token = move || {
            // Xorshift: a tiny deterministic generator, enough to vary the bases.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % u64::from(config.n_token_kinds.max(1))) as u32
        };
        let bases = (0..3)
            .map(|_| (0..48).map(|_| next_token()).collect())
            .collect();
        Self {
            pool: PagePool::new(config.n_pages, config.page_size),
            tree: RadixTree::new(config.page_size),
            model: Model::new(config.page_size),
            bases,
            seqs: Vec::new(),
        }
    }

    /// Applies one operation to the tree and the model, compares their answers, then
    /// checks all invariants.
    pub fn apply(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::Admit {
                base,
                prefix_len,
                suffix,
            } => self.admit(self.prompt(*base, *prefix_len, suffix))?,
            Op::Extend { seq, tokens } => self.extend(*seq, tokens)?,
            Op::Insert { seq } => {
                if let Some(seq) = self.pick(*seq) {
                    self.insert(seq)?;
                }
            }
            Op::Finish { seq } => {
                if let Some(seq) = self.pick(*seq) {
                    self.insert(seq)?;
                    self.release(seq)?;
                }
            }
            Op::Abort { seq } => {
                if let Some(seq) = self.pick(*seq) {
                    self.release(seq)?;
                }
            }
            Op::Probe {
                base,
                prefix_len,
                suffix,
            } => {
                self.match_prefix(&self.prompt(*base, *prefix_len, suffix))?;
            }
            Op::Evict { n_pages } => self.evict(*n_pages)?,
            Op::Clear => self.evict(usize::MAX)?,
        }
        self.check()
    }

    /// Ends every sequence, clears the cache, and checks that no page leaked.
    pub fn finish(mut self) -> Result<(), String> {
        while !self.seqs.is_empty() {
            self.release(0)?;
            self.check()?;
        }
        self.evict(usize::MAX)?;
        self.check()?;
        same(
            "free pages after clear",
            self.pool.n_free(),
            self.pool.n_pages(),
        )?;
        same(
            "cached tokens after clear",
            self.tree.stats().cached_tokens,
            0,
        )
    }

    fn prompt(&self, base: usize, prefix_len: usize, suffix: &[u32]) -> Vec<u32> {
        let base = &self.bases[base % self.bases.len()];
        let mut prompt = base[..prefix_len.min(base.len())].to_vec();
        prompt.extend_from_slice(suffix);
        prompt
    }

    fn pick(&self, seq: usize) -> Option<usize> {
        (!self.seqs.is_empty()).then(|| seq % self.seqs.len())
    }

    fn admit(&mut self, prompt: Vec<u32>) -> Result<(), String> {
        if prompt.is_empty() || self.seqs.len() >= MAX_SEQUENCES {
            return Ok(());
        }
        let matched = self.match_prefix(&prompt)?;
        self.tree.lock(matched.node);
        self.model.lock(&prompt[..matched.n_tokens])?;
        self.pool.retain(&matched.pages);

        let n_new_pages = self.pool.pages_for_tokens(prompt.len()) - matched.pages.len();
        self.seqs.push(Sequence {
            tokens: prompt,
            pages: matched.pages,
            node: matched.node,
            n_locked_tokens: matched.n_tokens,
        });
        let seq = self.seqs.len() - 1;
        match self.allocate(n_new_pages)? {
            Some(pages) => self.seqs[seq].pages.extend(pages),
            None => self.release(seq)?,
        }
        Ok(())
    }

    fn extend(&mut self, seq: usize, tokens: &[u32]) -> Result<(), String> {
        let Some(seq) = self.pick(seq) else {
            return Ok(());
        };
        let n_tokens = self.seqs[seq].tokens.len() + tokens.len();
        let n_new_pages = self.pool.pages_for_tokens(n_tokens) - self.seqs[seq].pages.len();
        if let Some(pages) = self.allocate(n_new_pages)? {
            self.seqs[seq].pages.extend(pages);
            self.seqs[seq].tokens.extend_from_slice(tokens);
        }
        Ok(())
    }

    fn match_prefix(&mut self, prompt: &[u32]) -> Result<crate::PrefixMatch, String> {
        let matched = self.tree.match_prefix(prompt);
        let (n_tokens, pages) = self.model.match_prefix(prompt);
        same("matched tokens", matched.n_tokens, n_tokens)?;
        same("matched pages", &matched.pages, &pages)?;
        Ok(matched)
    }

    fn insert(&mut self, seq: usize) -> Result<(), String> {
        let Sequence { tokens, pages, .. } = &self.seqs[seq];
        let outcome = self.tree.insert(tokens, pages, &mut self.pool);
        let (n_cached, duplicates) = self.model.insert(tokens, pages);
        same("already cached tokens", outcome.n_already_cached, n_cached)?;
        same("duplicate pages", &outcome.duplicate_pages, &duplicates)?;

        // Lock the new path before unlocking the old, as the engine does, so the prefix
        // is never unprotected in between.
        let page_size = self.pool.page_size();
        let n_inserted = pages.len().min(tokens.len() / page_size) * page_size;
        let locked_prefix = tokens[..n_inserted].to_vec();
        let old_prefix = tokens[..self.seqs[seq].n_locked_tokens].to_vec();
        self.tree.lock(outcome.node);
        self.model.lock(&locked_prefix)?;
        self.tree.unlock(self.seqs[seq].node);
        self.model.unlock(&old_prefix)?;
        self.seqs[seq].node = outcome.node;
        self.seqs[seq].n_locked_tokens = n_inserted;
        Ok(())
    }

    fn release(&mut self, seq: usize) -> Result<(), String> {
        let seq = self.seqs.swap_remove(seq);
        self.tree.unlock(seq.node);
        self.model.unlock(&seq.tokens[..seq.n_locked_tokens])?;
        self.pool.free(&seq.pages);
        Ok(())
    }

    /// Allocates `n_pages`, evicting first when too few are free; `None` if still short.
    fn allocate(&mut self, n_pages: usize) -> Result<Option<Vec<PageId>>, String> {
        let n_short = n_pages.saturating_sub(self.pool.n_free());
        if n_short > 0 {
            self.evict(n_short)?;
        }
        Ok(self.pool.allocate(n_pages))
    }

    fn evict(&mut self, n_pages: usize) -> Result<(), String> {
        let held: HashSet<PageId> = self.held().into_iter().collect();
        let n_freed = self.tree.evict(n_pages, &mut self.pool);
        let n_expected = self.model.evict(n_pages, &held)?;
        same("pages freed by eviction", n_freed, n_expected)
    }

    /// Every reference the sequences hold, as a multiset.
    fn held(&self) -> Vec<PageId> {
        self.seqs
            .iter()
            .flat_map(|seq| seq.pages.iter().copied())
            .collect()
    }

    fn check(&self) -> Result<(), String> {
        self.tree
            .check_invariants(&self.pool, &self.held())
            .map_err(|error| error.to_string())?;
        same(
            "cached prefixes",
            self.tree.pages_by_prefix(),
            self.model.pages_by_prefix(),
        )?;

        let stats = self.tree.stats();
        let page_size = self.pool.page_size();
        let n_evictable = self.model.cached_tokens() - self.model.locked_tokens();
        same(
            "cached tokens",
            stats.cached_tokens,
            self.model.cached_tokens(),
        )?;
        same(
            "locked tokens",
            stats.locked_tokens,
            self.model.locked_tokens(),
        )?;
        same("evictable tokens", stats.evictable_tokens, n_evictable)?;
        same(
            "evictable pages",
            self.tree.n_evictable_pages(),
            n_evictable / page_size,
        )
    }
}

/// `Ok` if the tree's answer equals the model's, else an error naming what differed.
fn same<T: PartialEq + Debug>(what: &str, tree: T, model: T) -> Result<(), String> {
    if tree == model {
        return Ok(());
    }
    Err(format!("{what}: tree says {tree:?}, model says {model:?}"))
}

/// Reads fuzzer bytes; past the end it reads zeros, so every input decodes.
struct ByteReader<'a> {
    data: &'a [u8],
}

impl ByteReader<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&first, rest)) = self.data.split_first() else {
            return 0;
        };
        self.data = rest;
        first
    }

    fn tokens(&mut self, max_len: u8) -> Vec<u32> {
        let n_tokens = self.byte() % (max_len + 1);
        (0..n_tokens).map(|_| u32::from(self.byte() % 4)).collect()
    }

    fn op(&mut self) -> Op {
        match self.byte() % 8 {
            0 => Op::Admit {
                base: usize::from(self.byte()),
                prefix_len: usize::from(self.byte() % 49),
                suffix: self.tokens(20),
            },
            1 => Op::Extend {
                seq: usize::from(self.byte()),
                tokens: self.tokens(24),
            },
            2 => Op::Insert {
                seq: usize::from(self.byte()),
            },
            3 => Op::Finish {
                seq: usize::from(self.byte()),
            },
            4 => Op::Abort {
                seq: usize::from(self.byte()),
            },
            5 => Op::Probe {
                base: usize::from(self.byte()),
                prefix_len: usize::from(self.byte() % 49),
                suffix: self.tokens(20),
            },
            6 => Op::Evict {
                n_pages: usize::from(self.byte() % 8),
            },
            _ => Op::Clear,
        }
    }
}
