//! `RadixStats`: counters the radix tree keeps up to date on every call, for metrics,
//! logs and tests. Reading them is O(1).

/// A snapshot of the radix tree's size and effectiveness.
///
/// Token counts cover the tree's own cache; `cached_tokens == evictable_tokens +
/// locked_tokens` always holds. Divide token counts by the page size for pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RadixStats {
    /// Tokens whose KV the tree holds.
    pub cached_tokens: usize,
    /// Cached tokens in unlocked nodes: what eviction may eventually free.
    pub evictable_tokens: usize,
    /// Cached tokens in nodes pinned by at least one lock.
    pub locked_tokens: usize,
    /// Prompt tokens that `match_prefix` found cached, summed over all calls.
    pub hit_tokens: u64,
    /// Prompt tokens that `match_prefix` did not find cached (including the tail of a
    /// partly matched page), summed over all calls.
    pub miss_tokens: u64,
    /// Nodes in the tree, not counting the root.
    pub n_nodes: usize,
    /// Unlocked leaves: the nodes eviction would consider next.
    pub n_evictable_leaves: usize,
    /// Pages whose tree reference eviction or `clear` dropped, summed over all calls. Some
    /// may have stayed in use by sequences.
    pub evicted_pages: u64,
}

impl RadixStats {
    /// Fraction of matched prompt tokens that were cached, in `[0, 1]`; 0 before any match.
    pub fn hit_rate(&self) -> f64 {
        let n_tokens = self.hit_tokens + self.miss_tokens;
        if n_tokens == 0 {
            return 0.0;
        }
        self.hit_tokens as f64 / n_tokens as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_rate_is_zero_before_any_match() {
        assert_eq!(RadixStats::default().hit_rate(), 0.0);
    }

    #[test]
    fn hit_rate_divides_hit_tokens_by_all_matched_tokens() {
        let stats = RadixStats {
            hit_tokens: 3,
            miss_tokens: 1,
            ..RadixStats::default()
        };
        assert_eq!(stats.hit_rate(), 0.75);
    }
}
