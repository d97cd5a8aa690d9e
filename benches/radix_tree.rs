//! Criterion benches for the radix prefix cache (`arbor-cache`): prefix matching, insert
//! and eviction on a tree of about 10^6 cached tokens in about 10^4 nodes, at page sizes
//! 16 and 1. Bench names state the workload size.
//!
//! The tree is built like a serving workload: a few 4k-token conversations, then
//! thousands of requests that reuse a random page-aligned prefix of an earlier one and add
//! 16-288 new tokens, so prompts share prefixes at every depth.
//!
//! Run: `cargo bench --bench radix_tree -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::{Duration, Instant};

use arbor_cache::{PagePool, RadixTree};
use arbor_engine::testing::XorShift;
use criterion::{Criterion, criterion_group, criterion_main};

/// Tokens in the longest prompt and in each base conversation.
const PROMPT_TOKENS: usize = 4096;
/// Cached tokens the tree is filled to.
const TREE_TOKENS: usize = 1_000_000;
/// New tokens inserted, and evicted, per iteration of the insert and evict benches.
const CHURN_TOKENS: usize = 2048;

/// A pool and a tree of about `TREE_TOKENS` tokens, the sequences inserted into it, and
/// a source of token ids never used before.
struct Workload {
    pool: PagePool,
    tree: RadixTree,
    sequences: Vec<Vec<u32>>,
    next_token: u32,
    rng: XorShift,
}

impl Workload {
    fn new(page_size: usize) -> Self {
        // Room for the tree plus a few churn iterations before eviction starts.
        let n_pages = (TREE_TOKENS + 64 * PROMPT_TOKENS) / page_size;
        let mut workload = Self {
            pool: PagePool::new(n_pages, page_size),
            tree: RadixTree::new(page_size),
            sequences: Vec::new(),
            next_token: 0,
            rng: XorShift(0x2545_f491_4f6c_dd1d),
        };
        for _ in 0..8 {
            let tokens = workload.fresh_tokens(PROMPT_TOKENS);
            workload.cache(tokens);
        }
        while workload.tree.stats().cached_tokens < TREE_TOKENS {
            let n_new = 16 * (1 + workload.rng.below(18));
            let tokens = workload.branch(PROMPT_TOKENS - n_new, n_new);
            workload.cache(tokens);
        }
        workload
    }

    /// A random page-aligned prefix (at most `max_shared` tokens) of a random earlier
    /// sequence, followed by `n_new` fresh tokens.
    fn branch(&mut self, max_shared: usize, n_new: usize) -> Vec<u32> {
        let parent = &self.sequences[self.rng.below(self.sequences.len())];
        let n_shared = self.rng.below(parent.len().min(max_shared) / 16 + 1) * 16;
        let mut tokens = parent[..n_shared].to_vec();
        tokens.extend(self.fresh_tokens(n_new));
        tokens
    }

    fn fresh_tokens(&mut self, n_tokens: usize) -> Vec<u32> {
        let start = self.next_token;
        self.next_token += n_tokens as u32;
        (start..self.next_token).collect()
    }

    /// Inserts `tokens` as a finished sequence would: allocate, insert, free its refs.
    fn cache(&mut self, tokens: Vec<u32>) {
        let pages = self.allocate(self.pool.pages_for_tokens(tokens.len()));
        self.tree.insert(&tokens, &pages, &mut self.pool);
        self.pool.free(&pages);
        self.sequences.push(tokens);
    }

    fn allocate(&mut self, n_pages: usize) -> Vec<arbor_cache::PageId> {
        let n_short = n_pages.saturating_sub(self.pool.n_free());
        self.tree.evict(n_short, &mut self.pool);
        self.pool.allocate(n_pages).expect("eviction made room")
    }

    fn describe(&mut self, name: &str, prompt: &[u32]) {
        let stats = self.tree.stats();
        assert!(
            (9_000..=11_000).contains(&stats.n_nodes),
            "the bench names promise about 10k nodes, the tree has {}",
            stats.n_nodes
        );
        eprintln!(
            "{name}: {} cached tokens in {} nodes, prompt of {} tokens",
            stats.cached_tokens,
            stats.n_nodes,
            prompt.len()
        );
    }
}

fn bench_match(c: &mut Criterion) {
    for page_size in [16, 1] {
        let mut workload = Workload::new(page_size);
        let full_hit = workload.sequences[0].clone();
        let mut half_hit = full_hit[..PROMPT_TOKENS / 2].to_vec();
        half_hit.extend(workload.fresh_tokens(PROMPT_TOKENS / 2));
        workload.describe("match", &full_hit);
        workload.tree.check_invariants(&workload.pool, &[]).unwrap();

        let name = format!("match/4k_prompt_full_hit/1m_tokens_10k_nodes/page_size_{page_size}");
        c.bench_function(&name, |b| {
            b.iter(|| black_box(workload.tree.match_prefix(black_box(&full_hit)).n_tokens))
        });
        let name = format!("match/4k_prompt_2k_hit/1m_tokens_10k_nodes/page_size_{page_size}");
        c.bench_function(&name, |b| {
            b.iter(|| black_box(workload.tree.match_prefix(black_box(&half_hit)).n_tokens))
        });
    }
}

/// Times only `insert`: each iteration inserts a prompt sharing up to 2k tokens with an
/// earlier one plus 2k new tokens; allocating its pages (and evicting to make room) and
/// freeing the caller's references are outside the timed region.
fn bench_insert(c: &mut Criterion) {
    for page_size in [16, 1] {
        let mut workload = Workload::new(page_size);
        let name = format!("insert/4k_prompt_2k_new/1m_tokens_10k_nodes/page_size_{page_size}");
        c.bench_function(&name, |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let tokens = workload.branch(PROMPT_TOKENS - CHURN_TOKENS, CHURN_TOKENS);
                    let pages = workload.allocate(workload.pool.pages_for_tokens(tokens.len()));
                    let start = Instant::now();
                    black_box(workload.tree.insert(&tokens, &pages, &mut workload.pool));
                    timed += start.elapsed();
                    workload.pool.free(&pages);
                }
                timed
            })
        });
        workload.tree.check_invariants(&workload.pool, &[]).unwrap();
    }
}

/// Times only `evict` of 2k tokens' worth of pages from the least recently used leaves;
/// refilling the tree with a fresh 2k-token branch is outside the timed region.
fn bench_evict(c: &mut Criterion) {
    for page_size in [16, 1] {
        let mut workload = Workload::new(page_size);
        let n_pages = CHURN_TOKENS / page_size;
        let name = format!("evict/{n_pages}_pages/1m_tokens_10k_nodes/page_size_{page_size}");
        c.bench_function(&name, |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let tokens = workload.branch(PROMPT_TOKENS - CHURN_TOKENS, CHURN_TOKENS);
                    workload.cache(tokens);
                    let start = Instant::now();
                    black_box(workload.tree.evict(n_pages, &mut workload.pool));
                    timed += start.elapsed();
                }
                timed
            })
        });
        workload.tree.check_invariants(&workload.pool, &[]).unwrap();
    }
}

criterion_group!(benches, bench_match, bench_insert, bench_evict);
criterion_main!(benches);
