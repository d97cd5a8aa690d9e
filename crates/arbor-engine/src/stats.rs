//! Engine counters, and the `EngineStats` snapshot taken after every step from them,
//! the page pool, the radix tree and the scheduler's queues.

use crate::api::EngineStats;
use crate::kv::KvPages;
use crate::scheduler::Scheduler;

/// Totals since the engine started.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Prompt tokens served from the radix cache at first admission.
    pub cache_hit_tokens: u64,
    /// Prompt tokens admitted.
    pub prompt_tokens: u64,
    /// Prompt and recomputed tokens run through forward passes.
    pub prefill_tokens: u64,
    /// Tokens sampled.
    pub generation_tokens: u64,
    /// Sequences preempted.
    pub preemptions: u64,
    /// Requests finished.
    pub finished_requests: u64,
    /// Forward passes.
    pub steps: u64,
}

impl Counters {
    /// A snapshot of everything `EngineStats` reports.
    pub fn snapshot(&self, kv: &KvPages, scheduler: &Scheduler) -> EngineStats {
        let page_size = kv.page_size();
        let radix = kv.tree.stats();
        let n_pages_cached = radix.cached_tokens / page_size;
        let n_pages_evictable = radix.evictable_tokens / page_size;
        EngineStats {
            n_running: scheduler.running.len(),
            n_waiting: scheduler.waiting.len(),
            n_pages_total: kv.pool.n_pages(),
            n_pages_free: kv.pool.n_free(),
            n_pages_cached,
            n_pages_locked: radix.locked_tokens / page_size,
            n_pages_evictable,
            page_size,
            kv_capacity_tokens: kv.pool.n_pages() * page_size,
            cache_hit_tokens: self.cache_hit_tokens,
            prompt_tokens: self.prompt_tokens,
            prefill_tokens: self.prefill_tokens,
            generation_tokens: self.generation_tokens,
            preemptions: self.preemptions,
            finished_requests: self.finished_requests,
            steps: self.steps,
        }
    }
}
