//! `EngineCore`: the single-threaded engine. It owns the model runner, the page pool and
//! radix tree, the running and waiting sequences and the requests' event channels, and
//! advances them one `step` at a time. The engine thread (`worker.rs`) drives it; tests
//! and benches drive it directly for exact, deterministic scenarios.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arbor_cache::{InvariantError, PageId};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, debug_span};

use crate::api::{
    EngineConfig, EngineError, EngineStats, Event, GenerateRequest, KvBudget, ModelInfo, RequestId,
};
use crate::batch::BatchBuilder;
use crate::clock::{Clock, SystemClock};
use crate::constrained::Constrained;
use crate::detokenizer::Detokenizer;
use crate::json_mode::JsonVocab;
use crate::kv::KvPages;
use crate::runner::{ModelRunner, TokenDecoder};
use crate::sampler::{PenaltyState, SequenceRng, rng_from_seed, uses_penalties};
use crate::scheduler::waiting::WaitingQueue;
use crate::scheduler::{Limits, Scheduler};
use crate::sequence::{RequestState, Sequence, SequenceId};
use crate::stats::Counters;
use crate::stop::StopStrings;

/// Injected dependencies of an engine: its clock and the seed of the generator that
/// seeds sequences without their own seed.
#[derive(Clone)]
pub struct StartOptions {
    /// Where time is read (usage timings, admission aging).
    pub clock: Arc<dyn Clock>,
    /// Seed of the engine's generator; `None` seeds it from the system time.
    pub seed: Option<u64>,
}

impl Default for StartOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            seed: None,
        }
    }
}

/// What one step did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepReport {
    /// Sequences in the forward pass.
    pub n_sequences: usize,
    /// Prompt (or recomputed) tokens computed.
    pub n_prefill_tokens: usize,
    /// Decode tokens computed.
    pub n_decode_tokens: usize,
    /// Sequences preempted while scheduling.
    pub n_preempted: usize,
    /// Sequences admitted from the waiting queue.
    pub n_admitted: usize,
    /// Sequences finished (any reason).
    pub n_finished: usize,
}

/// Requests by id. The update phase looks a request up several times per sequence per
/// step, so ids are hashed with one multiply instead of SipHash (ids are counters, not
/// attacker-chosen keys).
pub(crate) type RequestMap = HashMap<RequestId, RequestState, BuildHasherDefault<IdHasher>>;

/// A multiplicative hasher for `u64` ids.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The engine loop's state; see the module docs.
pub struct EngineCore {
    pub(crate) runner: Box<dyn ModelRunner>,
    pub(crate) decoder: Option<Arc<dyn TokenDecoder>>,
    pub(crate) info: ModelInfo,
    pub(crate) config: EngineConfig,
    pub(crate) kv: KvPages,
    pub(crate) scheduler: Scheduler,
    pub(crate) requests: RequestMap,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) counters: Counters,
    seed_rng: SequenceRng,
    next_sequence_id: u64,
    /// Builds each step's batch from the last one.
    batch_builder: BatchBuilder,
    /// Token texts for JSON mode, decoded on its first use.
    pub(crate) json_vocab: OnceLock<JsonVocab>,
}

impl EngineCore {
    /// Sizes the KV pool from `config.kv_cache`, allocates it in the runner and returns
    /// an idle engine. Fails with `EngineError::Load` if the budget gives no page or the
    /// runner cannot allocate it.
    pub fn new(
        mut runner: Box<dyn ModelRunner>,
        config: EngineConfig,
        options: StartOptions,
    ) -> Result<Self, EngineError> {
        let info = runner.info();
        let config = resolve_config(config, &info)?;
        let n_pages = n_pages_for_budget(runner.as_ref(), &config)?;
        runner
            .allocate_kv(n_pages, config.page_size)
            .map_err(|e| EngineError::Load(format!("kv cache allocation failed: {e}")))?;
        let limits = Limits {
            max_running: config.max_running_requests,
            max_batched_tokens: config.max_batched_tokens,
            chunk_size: config.chunked_prefill_size,
        };
        let seed = options.seed.unwrap_or_else(seed_from_time);
        Ok(Self {
            decoder: runner.decoder(),
            runner,
            info,
            kv: KvPages::new(n_pages, config.page_size, !config.disable_radix_cache),
            scheduler: Scheduler::new(limits, WaitingQueue::new(config.schedule_policy)),
            config,
            requests: RequestMap::default(),
            clock: options.clock,
            counters: Counters::default(),
            seed_rng: rng_from_seed(seed),
            next_sequence_id: 0,
            batch_builder: BatchBuilder::default(),
            json_vocab: OnceLock::new(),
        })
    }

    /// The model's name, context length, vocabulary and eos ids.
    pub fn model_info(&self) -> &ModelInfo {
        &self.info
    }

    /// The configuration in effect (`max_context_tokens` resolved).
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Pages in the KV pool.
    pub fn n_pages_total(&self) -> usize {
        self.kv.pool.n_pages()
    }

    /// Checks `request` and queues its sequences; their events go to `events`.
    pub fn add_request(
        &mut self,
        id: RequestId,
        request: GenerateRequest,
        events: UnboundedSender<Event>,
        submitted_at: Instant,
    ) -> Result<(), EngineError> {
        validate_request(&request, &self.info, &self.config, self.kv.pool.n_pages())?;
        if request.params.constraint.is_some() && self.decoder.is_none() {
            let message = "constrained output (JSON mode) needs a model with a tokenizer";
            return Err(EngineError::InvalidParams(message.into()));
        }
        let params = Arc::new(request.params);
        let mut stop_token_ids = params.stop_token_ids.clone();
        if !params.ignore_eos {
            stop_token_ids.extend(&self.info.eos_token_ids);
        }
        for index in 0..request.n {
            let seed = match params.seed {
                Some(seed) => seed.wrapping_add(index as u64),
                None => rand::Rng::next_u64(&mut self.seed_rng),
            };
            let seq = self.new_sequence(id, index, &request.prompt_ids, &params, seed);
            self.scheduler.waiting.push_arrival(seq);
        }
        self.requests.insert(
            id,
            RequestState {
                events,
                submitted_at,
                stop_token_ids,
                n_live: request.n,
                n_prompt_tokens: request.prompt_ids.len(),
                n_output_tokens: 0,
                n_cached_tokens: 0,
                first_token_at: None,
            },
        );
        Ok(())
    }

    /// Whether any sequence runs or waits.
    pub fn has_work(&self) -> bool {
        !self.scheduler.running.is_empty() || !self.scheduler.waiting.is_empty()
    }

    /// Runs one step: schedule, build batch, forward, sample and update, emit. Returns
    /// what it did; an idle engine returns an empty report without a forward pass.
    ///
    /// A failed forward pass aborts every request in the batch and returns
    /// `EngineError::Forward`; the engine stays usable.
    pub fn step(&mut self) -> Result<StepReport, EngineError> {
        let step_idx = self.counters.steps;
        let span = debug_span!(
            "step",
            step = step_idx,
            n_prefill = tracing::field::Empty,
            n_decode = tracing::field::Empty,
            n_free_pages = self.kv.pool.n_free()
        );
        let _enter = span.enter();

        let now = self.clock.now();
        let outcome = self.scheduler.schedule(&mut self.kv, now);
        let mut report = StepReport {
            n_preempted: outcome.n_preempted,
            n_admitted: outcome.admitted.len(),
            ..StepReport::default()
        };
        self.counters.preemptions += outcome.n_preempted as u64;
        self.note_admissions(&outcome.admitted, now);
        report.n_finished += self.finish_out_of_pages(outcome.out_of_pages);

        let mut builder = std::mem::take(&mut self.batch_builder);
        // Admitted sequences were appended to the running set: the others kept running.
        let n_continuing = self.scheduler.running.len() - outcome.admitted.len();
        builder.fill(&self.scheduler.running, n_continuing);
        let batch = &builder.batch;
        if batch.sequences.is_empty() {
            self.batch_builder = builder;
            return Ok(report);
        }
        count_tokens(&self.scheduler.running, &mut report);
        span.record("n_prefill", report.n_prefill_tokens);
        span.record("n_decode", report.n_decode_tokens);

        let logits = match self.runner.forward(batch) {
            Ok(logits) if logits.n_rows() == batch.n_logit_rows() => logits,
            Ok(logits) => {
                let msg = format!(
                    "{} logit rows for {}",
                    logits.n_rows(),
                    batch.n_logit_rows()
                );
                return Err(self.fail_batch(msg));
            }
            Err(e) => return Err(self.fail_batch(e.to_string())),
        };

        report.n_finished += self.update(&logits);
        self.counters.steps += 1;
        self.counters.prefill_tokens += report.n_prefill_tokens as u64;
        report.n_sequences = batch.sequences.len();
        self.batch_builder = builder;
        debug!(
            n_sequences = report.n_sequences,
            n_finished = report.n_finished,
            "step done"
        );
        Ok(report)
    }

    /// Aborts every sequence of request `id` (running or waiting), releasing its pages
    /// and sending `Finished { reason: Abort }`. Unknown ids are ignored.
    pub fn abort(&mut self, id: RequestId) {
        let mut seqs = self.scheduler.waiting.remove_request(id);
        let running = std::mem::take(&mut self.scheduler.running);
        let (gone, kept): (Vec<_>, Vec<_>) = running.into_iter().partition(|s| s.request_id == id);
        self.scheduler.running = kept;
        seqs.extend(gone);
        for seq in seqs {
            self.finish(seq, crate::api::FinishReason::Abort, None);
        }
    }

    /// Aborts every request.
    pub fn abort_all(&mut self) {
        let ids: Vec<RequestId> = self.requests.keys().copied().collect();
        for id in ids {
            self.abort(id);
        }
    }

    /// Drops every unlocked cached prefix. `Busy` while sequences run or wait.
    pub fn flush_cache(&mut self) -> Result<usize, EngineError> {
        if self.has_work() {
            return Err(EngineError::Busy);
        }
        Ok(self.kv.flush())
    }

    /// Current statistics.
    pub fn stats(&self) -> EngineStats {
        self.counters.snapshot(&self.kv, &self.scheduler)
    }

    /// Checks the page pool and radix tree against the pages sequences hold, that
    /// waiting sequences hold no pages and no lock, and that every running sequence's
    /// page table covers its computed tokens. The error names the broken invariant.
    pub fn check_invariants(&self) -> Result<(), String> {
        if let Some(seq) = self
            .scheduler
            .waiting
            .iter()
            .find(|s| !s.pages.is_empty() || s.locked_node.is_some())
        {
            return Err(format!(
                "waiting sequence {} holds pages or a lock",
                seq.id.0
            ));
        }
        let page_size = self.kv.page_size();
        if let Some(seq) = self
            .scheduler
            .running
            .iter()
            .find(|s| s.pages.len() * page_size < s.n_computed)
        {
            return Err(format!(
                "sequence {} has fewer pages than computed tokens",
                seq.id.0
            ));
        }
        let held: Vec<PageId> = self
            .scheduler
            .running
            .iter()
            .flat_map(|s| s.pages.iter().copied())
            .collect();
        self.kv
            .check_invariants(&held)
            .map_err(|e: InvariantError| e.to_string())
    }

    /// Pages neither free nor evictable: held by running sequences or locked for them.
    pub fn n_pages_pinned(&self) -> usize {
        self.kv.pool.n_pages() - self.kv.n_available()
    }

    fn new_sequence(
        &mut self,
        request_id: RequestId,
        index: usize,
        prompt_ids: &[u32],
        params: &Arc<SamplingParams>,
        seed: u64,
    ) -> Sequence {
        self.next_sequence_id += 1;
        Sequence {
            id: SequenceId(self.next_sequence_id),
            request_id,
            index,
            submitted_at: self.clock.now(),
            params: Arc::clone(params),
            tokens: prompt_ids.to_vec(),
            n_prompt_tokens: prompt_ids.len(),
            n_computed: 0,
            pages: Vec::new(),
            n_inserted: 0,
            locked_node: None,
            n_scheduled: 0,
            n_cached_prompt_tokens: None,
            admitted_at: None,
            first_token_at: None,
            rng: rng_from_seed(seed),
            penalties: uses_penalties(params).then(|| PenaltyState::new(prompt_ids, &[])),
            detokenizer: Detokenizer::new(params.skip_special_tokens),
            stop_strings: StopStrings::new(params.stop_strings.clone()),
            constrained: params
                .constraint
                .as_ref()
                .map(|c| Constrained::new(c, params.constraint_after.as_deref())),
            cached_hint: 0,
            cached_hint_version: 0,
        }
    }

    /// Records first admissions: queue time, cached prompt tokens, prompt statistics.
    fn note_admissions(&mut self, admitted: &[usize], now: Instant) {
        for &idx in admitted {
            let seq = &mut self.scheduler.running[idx];
            if seq.n_cached_prompt_tokens.is_some() {
                continue;
            }
            let n_cached = seq.n_computed.min(seq.n_prompt_tokens);
            seq.n_cached_prompt_tokens = Some(n_cached);
            seq.admitted_at = Some(now);
            self.counters.cache_hit_tokens += n_cached as u64;
            self.counters.prompt_tokens += seq.n_prompt_tokens as u64;
        }
    }

    /// Finishes sequences that can never get another page.
    fn finish_out_of_pages(&mut self, seqs: Vec<Sequence>) -> usize {
        let n = seqs.len();
        for seq in seqs {
            debug!(sequence = seq.id.0, "kv cache full for a lone sequence");
            self.finish(seq, crate::api::FinishReason::Length, None);
        }
        n
    }

    /// Aborts every request with a sequence in the failed batch.
    fn fail_batch(&mut self, msg: String) -> EngineError {
        tracing::error!(error = %msg, "forward pass failed");
        let mut ids: Vec<RequestId> = self
            .scheduler
            .running
            .iter()
            .filter(|s| s.n_scheduled > 0)
            .map(|s| s.request_id)
            .collect();
        ids.dedup();
        for id in ids {
            self.abort(id);
        }
        EngineError::Forward(msg)
    }
}

use crate::api::SamplingParams;

/// Fills in `max_context_tokens` and checks the limits are usable.
fn resolve_config(mut config: EngineConfig, info: &ModelInfo) -> Result<EngineConfig, EngineError> {
    let model_limit = info.max_context_tokens;
    config.max_context_tokens = Some(
        config
            .max_context_tokens
            .unwrap_or(model_limit)
            .min(model_limit),
    );
    let positive = [
        ("page_size", config.page_size),
        ("max_running_requests", config.max_running_requests),
        ("max_batched_tokens", config.max_batched_tokens),
        ("chunked_prefill_size", config.chunked_prefill_size),
    ];
    if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
        return Err(EngineError::Load(format!("{name} must be at least 1")));
    }
    Ok(config)
}

/// Pages of `config.page_size` slots that `config.kv_cache` affords.
fn n_pages_for_budget(
    runner: &dyn ModelRunner,
    config: &EngineConfig,
) -> Result<usize, EngineError> {
    let page_bytes = (runner.kv_bytes_per_token() * config.page_size).max(1) as u64;
    let n_pages = match config.kv_cache {
        KvBudget::Pages(n) => n,
        KvBudget::Bytes(bytes) => (bytes / page_bytes) as usize,
        KvBudget::Fraction(fraction) => {
            if !(fraction > 0.0 && fraction <= 1.0) {
                return Err(EngineError::Load(
                    "kv cache fraction must be in (0, 1]".into(),
                ));
            }
            let free = runner.free_memory_bytes().ok_or_else(|| {
                EngineError::Load(
                    "free memory is unknown: give the kv cache in bytes or pages".into(),
                )
            })?;
            (free as f64 * fraction as f64 / page_bytes as f64) as usize
        }
    };
    if n_pages == 0 {
        return Err(EngineError::Load(
            "kv cache budget is smaller than one page".into(),
        ));
    }
    Ok(n_pages)
}

/// Checks a request against the model and the engine's limits.
pub(crate) fn validate_request(
    request: &GenerateRequest,
    info: &ModelInfo,
    config: &EngineConfig,
    n_pages_total: usize,
) -> Result<(), EngineError> {
    if request.prompt_ids.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    if request.n == 0 {
        return Err(EngineError::InvalidParams("n must be at least 1".into()));
    }
    request.params.validate()?;
    if let Some(&token_id) = request
        .prompt_ids
        .iter()
        .find(|&&id| id as usize >= info.vocab_size)
    {
        return Err(EngineError::TokenOutOfRange {
            token_id,
            vocab_size: info.vocab_size,
        });
    }
    let limit = config.max_context_tokens.unwrap_or(info.max_context_tokens);
    let n_tokens = request.prompt_ids.len() + request.params.max_tokens;
    if n_tokens > limit {
        return Err(EngineError::PromptTooLong { n_tokens, limit });
    }
    let n_pages = (request.prompt_ids.len() + 1).div_ceil(config.page_size);
    if n_pages > n_pages_total {
        return Err(EngineError::TooLargeForCache {
            n_pages,
            capacity: n_pages_total,
        });
    }
    Ok(())
}

/// Counts the step's prefill and decode tokens.
fn count_tokens(running: &[Sequence], report: &mut StepReport) {
    for seq in running.iter().filter(|s| s.n_scheduled > 0) {
        if seq.is_decoding() {
            report.n_decode_tokens += seq.n_scheduled;
        } else {
            report.n_prefill_tokens += seq.n_scheduled;
        }
    }
}

fn seed_from_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
