//! Unit tests for `RadixTree`, one behaviour each, with invariants checked after every
//! call. The randomized test against a reference model lives in `crate::testing`.

use super::*;
use crate::InvariantError;

/// Tokens `start..start + n` as a prompt.
fn run(start: u32, n: u32) -> Vec<u32> {
    (start..start + n).collect()
}

/// A pool and tree with `n_pages` pages of `page_size` tokens.
fn setup(n_pages: usize, page_size: usize) -> (PagePool, RadixTree) {
    (PagePool::new(n_pages, page_size), RadixTree::new(page_size))
}

/// Allocates pages for `tokens`, inserts them, and drops the caller's references, as a
/// finished sequence would. Returns the pages, now held by the tree alone.
fn cache(tree: &mut RadixTree, pool: &mut PagePool, tokens: &[u32]) -> Vec<PageId> {
    let pages = pool.allocate(pool.pages_for_tokens(tokens.len())).unwrap();
    tree.insert(tokens, &pages, pool);
    pool.free(&pages);
    tree.check_invariants(pool, &[]).unwrap();
    pages
}

#[test]
fn match_on_an_empty_tree_returns_the_root_and_counts_misses() {
    let (pool, mut tree) = setup(4, 4);
    let matched = tree.match_prefix(&run(0, 6));
    assert_eq!(matched.n_tokens, 0);
    assert!(matched.pages.is_empty());
    assert_eq!(matched.node, tree.root());
    assert_eq!(tree.stats().miss_tokens, 6);
    tree.check_invariants(&pool, &[]).unwrap();
}

#[test]
fn insert_then_match_returns_the_inserted_pages() {
    let (mut pool, mut tree) = setup(8, 4);
    let pages = cache(&mut tree, &mut pool, &run(0, 12));
    let matched = tree.match_prefix(&run(0, 12));
    assert_eq!(matched.n_tokens, 12);
    assert_eq!(matched.pages, pages);
    assert_eq!(tree.stats().hit_tokens, 12);
}

#[test]
fn insert_takes_one_tree_reference_per_adopted_page() {
    let (mut pool, mut tree) = setup(8, 4);
    let pages = pool.allocate(2).unwrap();
    let outcome = tree.insert(&run(0, 8), &pages, &mut pool);
    assert_eq!(outcome.n_already_cached, 0);
    assert!(outcome.duplicate_pages.is_empty());
    assert!(pages.iter().all(|&page| pool.ref_count(page) == 2));
    tree.check_invariants(&pool, &pages).unwrap();
}

#[test]
fn match_rounds_down_to_whole_pages_with_page_size_sixteen() {
    let (mut pool, mut tree) = setup(8, 16);
    let pages = cache(&mut tree, &mut pool, &run(0, 48));

    let matched = tree.match_prefix(&run(0, 40));
    assert_eq!(matched.n_tokens, 32);
    assert_eq!(matched.pages, pages[..2]);
    assert_eq!(tree.stats().miss_tokens, 8);

    // A prompt differing in the last token of the second page shares only the first.
    let mut prompt = run(0, 48);
    prompt[31] = 999;
    assert_eq!(tree.match_prefix(&prompt).n_tokens, 16);
    tree.check_invariants(&pool, &[]).unwrap();
}

#[test]
fn page_size_one_shares_every_matching_token() {
    let (mut pool, mut tree) = setup(16, 1);
    cache(&mut tree, &mut pool, &[5, 6, 7, 8]);
    let matched = tree.match_prefix(&[5, 6, 7, 9]);
    assert_eq!(matched.n_tokens, 3);
    assert_eq!(matched.pages.len(), 3);
    tree.check_invariants(&pool, &[]).unwrap();
}

#[test]
fn insert_ignores_tokens_past_the_last_whole_page_and_surplus_pages() {
    let (mut pool, mut tree) = setup(8, 4);
    let pages = pool.allocate(3).unwrap();
    tree.insert(&run(0, 10), &pages, &mut pool);
    assert_eq!(tree.stats().cached_tokens, 8);
    assert_eq!(pool.ref_count(pages[2]), 1);
    tree.check_invariants(&pool, &pages).unwrap();

    let short = pool.allocate(1).unwrap();
    let outcome = tree.insert(&run(100, 8), &short, &mut pool);
    assert_eq!(tree.stats().cached_tokens, 12);
    tree.check_invariants(&pool, &[pages, short].concat())
        .unwrap();
    assert_ne!(outcome.node, tree.root());
}

#[test]
fn insert_of_less_than_a_page_caches_nothing_and_returns_the_root() {
    let (mut pool, mut tree) = setup(8, 16);
    let pages = pool.allocate(1).unwrap();
    let outcome = tree.insert(&run(0, 15), &pages, &mut pool);
    assert_eq!(outcome.node, tree.root());
    assert_eq!(tree.stats().cached_tokens, 0);
    tree.check_invariants(&pool, &pages).unwrap();
}

#[test]
fn duplicate_insert_keeps_the_tree_pages_and_hands_back_the_callers() {
    let (mut pool, mut tree) = setup(8, 4);
    let first = cache(&mut tree, &mut pool, &run(0, 8));

    let second = pool.allocate(3).unwrap();
    let outcome = tree.insert(&run(0, 12), &second, &mut pool);
    assert_eq!(outcome.n_already_cached, 8);
    assert_eq!(outcome.duplicate_pages, second[..2]);
    assert_eq!(pool.ref_count(second[0]), 1);
    assert_eq!(pool.ref_count(second[2]), 2);

    pool.free(&second);
    let matched = tree.match_prefix(&run(0, 12));
    assert_eq!(matched.pages, [&first[..], &second[2..]].concat());
    assert_eq!(pool.n_used(), 3);
    tree.check_invariants(&pool, &[]).unwrap();
}

#[test]
fn insert_diverging_inside_a_node_splits_it_at_the_page_boundary() {
    let (mut pool, mut tree) = setup(16, 4);
    let first = cache(&mut tree, &mut pool, &run(0, 16));
    let mut diverging = run(0, 16);
    diverging[9] = 777;
    let second = cache(&mut tree, &mut pool, &diverging);

    // Pages 0..2 are shared; the third page differs, so the node splits after 8 tokens.
    assert_eq!(tree.stats().n_nodes, 3);
    assert_eq!(tree.stats().cached_tokens, 16 + 8);
    let matched = tree.match_prefix(&diverging);
    assert_eq!(matched.pages, [&first[..2], &second[2..]].concat());
    assert_eq!(tree.match_prefix(&run(0, 16)).pages, first);
    assert_eq!(pool.n_used(), 6);
    tree.check_invariants(&pool, &[]).unwrap();
}

#[test]
fn match_ending_inside_a_node_splits_it_so_the_handle_ends_at_the_prefix() {
    let (mut pool, mut tree) = setup(8, 4);
    cache(&mut tree, &mut pool, &run(0, 16));
    let matched = tree.match_prefix(&run(0, 9));
    assert_eq!(matched.n_tokens, 8);
    assert_eq!(tree.stats().n_nodes, 2);

    tree.lock(matched.node);
    assert_eq!(tree.stats().locked_tokens, 8);
    assert_eq!(tree.stats().evictable_tokens, 8);
    tree.check_invariants(&pool, &[]).unwrap();
}

#[test]
fn splitting_a_locked_node_keeps_its_handle_pinning_the_same_prefix() {
    let (mut pool, mut tree) = setup(16, 4);
    cache(&mut tree, &mut pool, &run(0, 16));
    let locked = tree.match_prefix(&run(0, 16)).node;
    tree.lock(locked);

    let mut diverging = run(0, 16);
    diverging[5] = 555;
    cache(&mut tree, &mut pool, &diverging);
    assert_eq!(tree.stats().locked_tokens, 16);

    // Only the diverging branch can go; the locked prefix stays whole.
    assert_eq!(tree.clear(&mut pool), 3);
    assert_eq!(tree.match_prefix(&run(0, 16)).node, locked);
    tree.unlock(locked);
    assert_eq!(tree.stats().locked_tokens, 0);
    tree.check_invariants(&pool, &[]).unwrap();
}

#[test]
fn evict_frees_the_least_recently_used_leaf_first() {
    let (mut pool, mut tree) = setup(8, 4);
    let old = cache(&mut tree, &mut pool, &run(0, 4));
    let middle = cache(&mut tree, &mut pool, &run(100, 4));
    let new = cache(&mut tree, &mut pool, &run(200, 4));

    // Matching refreshes the oldest, so the middle one becomes least recently used.
    tree.match_prefix(&run(0, 4));
    assert_eq!(tree.evict(1, &mut pool), 1);
    assert_eq!(pool.ref_count(middle[0]), 0);
    assert_eq!(pool.ref_count(old[0]), 1);
    assert_eq!(pool.ref_count(new[0]), 1);
    assert_eq!(tree.match_prefix(&run(100, 4)).n_tokens, 0);
    tree.check_invariants(&pool, &[]).unwrap();
}

#[test]
fn evict_trims_a_long_leaf_from_its_end_and_frees_no_more_than_asked() {
    let (mut pool, mut tree) = setup(8, 4);
    let pages = cache(&mut tree, &mut pool, &run(0, 20));
    assert_eq!(tree.evict(2, &mut pool), 2);
    assert_eq!(pool.n_free(), 5);
    let matched = tree.match_prefix(&run(0, 20));
    assert_eq!(matched.n_tokens, 12);
    assert_eq!(matched.pages, pages[..3]);
    tree.check_invariants(&pool, &[]).unwrap();
}

#[test]
fn evicting_the_last_child_makes_the_parent_evictable() {
    let (mut pool, mut tree) = setup(8, 4);
    cache(&mut tree, &mut pool, &run(0, 8));
    let mut branch = run(0, 8);
    branch[4] = 99;
    cache(&mut tree, &mut pool, &branch);
    assert_eq!(tree.stats().n_nodes, 3);
    assert_eq!(tree.stats().n_evictable_leaves, 2);

    assert_eq!(tree.evict(2, &mut pool), 2);
    assert_eq!(tree.stats().n_nodes, 1);
    assert_eq!(tree.stats().n_evictable_leaves, 1);
    assert_eq!(tree.evict(1, &mut pool), 1);
    assert_eq!(tree.stats().n_nodes, 0);
    assert_eq!(pool.n_free(), 8);
    tree.check_invariants(&pool, &[]).unwrap();
}

#[test]
fn evict_never_frees_a_locked_path() {
    let (mut pool, mut tree) = setup(8, 4);
    cache(&mut tree, &mut pool, &run(0, 8));
    cache(&mut tree, &mut pool, &run(100, 8));
    let locked = tree.match_prefix(&run(0, 8)).node;
    tree.lock(locked);

    assert_eq!(tree.evict(8, &mut pool), 2);
    assert_eq!(tree.evict(8, &mut pool), 0);
    assert_eq!(tree.n_evictable_pages(), 0);
    assert_eq!(tree.match_prefix(&run(0, 8)).n_tokens, 8);

    tree.unlock(locked);
    assert_eq!(tree.n_evictable_pages(), 2);
    assert_eq!(tree.evict(8, &mut pool), 2);
    tree.check_invariants(&pool, &[]).unwrap();
}

#[test]
fn evict_does_not_count_pages_a_sequence_still_holds() {
    let (mut pool, mut tree) = setup(8, 4);
    let pages = pool.allocate(2).unwrap();
    tree.insert(&run(0, 8), &pages, &mut pool);

    // The sequence forgot to lock, so the tree may let go, but its pages stay in use.
    assert_eq!(tree.evict(2, &mut pool), 0);
    assert_eq!(tree.stats().cached_tokens, 0);
    assert_eq!(tree.stats().evicted_pages, 2);
    assert!(pages.iter().all(|&page| pool.ref_count(page) == 1));
    tree.check_invariants(&pool, &pages).unwrap();
}

#[test]
fn clear_drops_everything_unlocked_and_reports_pages_freed() {
    let (mut pool, mut tree) = setup(16, 2);
    cache(&mut tree, &mut pool, &run(0, 6));
    cache(&mut tree, &mut pool, &run(50, 4));
    cache(&mut tree, &mut pool, &[0, 1, 9, 9]);
    assert_eq!(tree.clear(&mut pool), 6);
    assert_eq!(pool.n_free(), 16);
    assert_eq!(tree.stats().n_nodes, 0);
    tree.check_invariants(&pool, &[]).unwrap();
}

#[test]
fn stats_split_cached_tokens_into_locked_and_evictable() {
    let (mut pool, mut tree) = setup(8, 4);
    cache(&mut tree, &mut pool, &run(0, 8));
    cache(&mut tree, &mut pool, &run(100, 4));
    let node = tree.match_prefix(&run(0, 8)).node;
    tree.lock(node);
    tree.lock(node);

    let stats = tree.stats();
    assert_eq!(stats.cached_tokens, 12);
    assert_eq!(stats.locked_tokens, 8);
    assert_eq!(stats.evictable_tokens, 4);
    assert_eq!(tree.n_evictable_pages(), 1);

    // Two locks need two unlocks.
    tree.unlock(node);
    assert_eq!(tree.stats().locked_tokens, 8);
    tree.unlock(node);
    assert_eq!(tree.stats().locked_tokens, 0);
    tree.check_invariants(&pool, &[]).unwrap();
}

#[test]
fn check_invariants_reports_a_reference_nobody_accounts_for() {
    let (mut pool, mut tree) = setup(4, 4);
    let pages = pool.allocate(1).unwrap();
    tree.insert(&run(0, 4), &pages, &mut pool);
    let error = tree.check_invariants(&pool, &[]).unwrap_err();
    assert_eq!(
        error,
        InvariantError::RefCountMismatch {
            page: pages[0],
            expected: 1,
            actual: 2,
        }
    );
}

#[test]
fn check_invariants_reports_a_pool_with_another_page_size() {
    let tree = RadixTree::new(16);
    let pool = PagePool::new(4, 1);
    let error = tree.check_invariants(&pool, &[]).unwrap_err();
    assert_eq!(
        error,
        InvariantError::PageSizeMismatch { tree: 16, pool: 1 }
    );
}

#[test]
fn lock_of_an_evicted_node_panics_naming_the_misuse() {
    let (mut pool, mut tree) = setup(4, 4);
    cache(&mut tree, &mut pool, &run(0, 4));
    let node = tree.match_prefix(&run(0, 4)).node;
    tree.clear(&mut pool);
    assert!(!tree.contains(node));

    let result = std::panic::catch_unwind(move || tree.lock(node));
    let message = *result.unwrap_err().downcast::<String>().unwrap();
    assert!(message.contains("which was evicted"), "{message}");
}

#[test]
fn large_tree_matches_a_long_prompt_across_many_nodes() {
    let (mut pool, mut tree) = setup(4096, 16);
    let trunk = run(0, 2048);
    cache(&mut tree, &mut pool, &trunk);
    // Branch off every 64 tokens so the trunk is split into many nodes.
    for branch_at in (64..2048).step_by(64) {
        let mut branch = trunk[..branch_at].to_vec();
        branch.extend(run(10_000 + branch_at as u32 * 100, 32));
        cache(&mut tree, &mut pool, &branch);
    }
    assert_eq!(tree.stats().n_nodes, 2 * 31 + 1);
    let matched = tree.match_prefix(&trunk);
    assert_eq!(matched.n_tokens, 2048);
    assert_eq!(matched.pages.len(), 128);
    tree.check_invariants(&pool, &[]).unwrap();
}

#[test]
fn common_prefix_len_finds_the_first_difference_inside_and_across_chunks() {
    let a: Vec<u32> = (0..40).collect();
    for differ_at in [0, 5, 15, 16, 17, 33, 39] {
        let mut b = a.clone();
        b[differ_at] = 1000;
        assert_eq!(common_prefix_len(&a, &b), differ_at);
    }
    assert_eq!(common_prefix_len(&a, &a[..20]), 20);
    assert_eq!(common_pages(&a, &a, 16), 2);
}
