//! Paged KV memory bookkeeping for Arbor: which pages are free, who holds each page, and
//! which token prefixes already have their KV cached. Pure Rust: this crate hands out
//! page ids and never sees a tensor.
//!
//! - [`PagePool`] owns a fixed number of pages of `page_size` token slots and counts the
//!   references on each. Pages are *allocated* (count 1), shared with
//!   [`PagePool::retain`] (+1) and *freed* with [`PagePool::free`] (-1); a page returns
//!   to the free list at 0. Running out is `None`, not an error.
//! - [`RadixTree`] maps token prefixes to the pages holding their KV. Prompts are
//!   *matched* against it, finished prefixes *inserted*, and least-recently-used unlocked
//!   leaves *evicted* when the pool runs short.
//!
//! # Reference counting
//!
//! Every holder of a page owns exactly one reference on it:
//!
//! - the tree holds one on each page it caches, taken when `insert` adopts the page and
//!   dropped when `evict` or `clear` removes it;
//! - each running sequence holds one on each page in its page table: its own pages from
//!   `allocate`, and the tree's pages for its matched prefix through `retain`.
//!
//! So `ref_count(p) == (1 if the tree holds p) + (sequences holding p)`, and a page is
//! free exactly when that is 0. [`RadixTree::check_invariants`] checks this equation for
//! every page, given the sequences' pages. Eviction only drops the tree's reference, so a
//! page a sequence still uses is never reused under it.
//!
//! Locks are separate from references: a lock pins a *node path* against eviction, so
//! the tree keeps caching a running sequence's prefix for others to share. References
//! keep pages alive; locks keep prefixes findable.
//!
//! # How the engine uses it
//!
//! ```
//! use arbor_cache::{PagePool, RadixTree};
//!
//! let page_size = 4;
//! let mut pool = PagePool::new(64, page_size);
//! let mut tree = RadixTree::new(page_size);
//! let prompt: Vec<u32> = (0..10).collect();
//!
//! // Admission: reuse the cached prefix, pin it, and allocate pages for the rest.
//! let matched = tree.match_prefix(&prompt);
//! tree.lock(matched.node);
//! pool.retain(&matched.pages);
//! let n_new = pool.pages_for_tokens(prompt.len()) - matched.pages.len();
//! let mut seq_pages = matched.pages.clone();
//! seq_pages.extend(pool.allocate(n_new).expect("pool has room"));
//!
//! // Prefill done: share the prompt's whole pages and move the lock to the longer path.
//! let inserted = tree.insert(&prompt, &seq_pages, &mut pool);
//! tree.lock(inserted.node);
//! tree.unlock(matched.node);
//! assert_eq!(inserted.n_already_cached, 0);
//!
//! // Finished: insert prompt + output (here just the prompt), unlock, free.
//! tree.unlock(inserted.node);
//! pool.free(&seq_pages);
//! assert_eq!(tree.stats().cached_tokens, 8);
//! assert_eq!(pool.n_used(), 2);
//!
//! // A later prompt with the same start reuses the two cached pages.
//! assert_eq!(tree.match_prefix(&prompt).n_tokens, 8);
//! tree.check_invariants(&pool, &[]).unwrap();
//! ```
//!
//! # Testing and fuzzing
//!
//! Unit tests cover each behaviour; a proptest (`testing::tests`) drives thousands of
//! random match/lock/insert/unlock/evict sequences against a simple reference model (a map
//! from cached whole-page prefixes to pages) and checks every invariant after each step:
//!
//! ```text
//! cargo test -p arbor-cache
//! ```
//!
//! The same operation stream, decoded from raw bytes, is a `cargo fuzz` target in
//! `fuzz/` at the repository root (needs a nightly toolchain and `cargo install
//! cargo-fuzz`):
//!
//! ```text
//! cd fuzz && cargo +nightly fuzz run radix_ops -- -max_total_time=60
//! ```
//!
//! Criterion benches for match, insert, evict and page allocate/free live in the root
//! package's `benches/` (`cargo bench --bench radix_tree`, `cargo bench --bench
//! page_pool`); figures are in `BENCHMARKS.md`.

mod error;
mod page_pool;
mod radix;
mod stats;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use error::InvariantError;
pub use page_pool::{PageId, PagePool};
pub use radix::{InsertOutcome, NodeId, PrefixMatch, RadixTree};
pub use stats::RadixStats;
