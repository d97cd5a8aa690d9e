//! The load generator: warmup, prefix-cache reset, then every request of the workload
//! offered at the configured rate under the concurrency cap, with a progress bar.
//!
//! Arrivals follow SGLang's bench_serving: the first request goes at once, and each
//! next one after an exponentially distributed gap (a Poisson process of
//! `request_rate` per second), or with no gap when the rate is infinite. A request
//! that arrives while `max_concurrency` are in flight waits for a free slot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::BenchError;
use crate::client::Target;
use crate::config::{Api, BenchSpec, LoadSpec};
use crate::metrics::RequestOutcome;
use crate::tokenizer::TokenCounter;
use crate::workload::{BenchRequest, Conversation, History, Prompt, Workload};

/// Longest output a warmup request asks for, tokens.
const WARMUP_OUTPUT_LEN: usize = 32;

/// Mixed into the seed so arrival times do not depend on how many random numbers
/// the workload generator drew.
const ARRIVAL_SEED_SALT: u64 = 0x5eed_a441_7a1e;

/// The measured part of a run.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// One outcome per request, in workload order (conversation by conversation).
    pub outcomes: Vec<RequestOutcome>,
    /// Wall time from the first request sent to the last one finished, seconds.
    pub duration_s: f64,
    /// Whether the server's prefix cache was reset before the measured requests.
    pub cache_reset: bool,
}

/// Runs `workload` against `target` as `spec.load` says. Fails on invalid load
/// settings or when every warmup request fails; failed measured requests are only
/// counted.
pub async fn run(
    target: &Target,
    workload: &Workload,
    spec: &BenchSpec,
    tokenizer: Arc<dyn TokenCounter>,
) -> Result<RunOutput, BenchError> {
    validate(&spec.load)?;
    warmup(
        target,
        workload,
        spec.load.warmup_requests,
        tokenizer.as_ref(),
    )
    .await?;
    let cache_reset = spec.flush_cache && reset_cache(target).await;

    let progress = progress_bar(workload.n_requests() as u64, spec.progress);
    let dispatch = Dispatch {
        target: Arc::new(target.clone()),
        tokenizer,
        slots: spec
            .load
            .max_concurrency
            .map(|n| Arc::new(Semaphore::new(n))),
        progress: progress.clone(),
    };
    let mut arrivals = Arrivals::new(spec.load.request_rate, spec.load.seed);

    let started = Instant::now();
    let outcomes = match workload {
        Workload::Single(requests) => dispatch.single(requests, &mut arrivals).await,
        Workload::MultiTurn(conversations) => {
            dispatch.multi_turn(conversations, &mut arrivals).await
        }
    };
    let duration_s = started.elapsed().as_secs_f64();
    progress.finish();

    Ok(RunOutput {
        outcomes,
        duration_s,
        cache_reset,
    })
}

fn validate(load: &LoadSpec) -> Result<(), BenchError> {
    if load.request_rate.is_nan() || load.request_rate <= 0.0 {
        return Err(BenchError::InvalidSpec(format!(
            "--request-rate must be positive or inf, got {}",
            load.request_rate
        )));
    }
    if load.max_concurrency == Some(0) {
        return Err(BenchError::InvalidSpec(
            "--max-concurrency must be at least 1".to_string(),
        ));
    }
    Ok(())
}

/// Sends `n` copies of the workload's first request at once, with a short output,
/// and fails if none succeeds: a wrong URL, model or API shows up here.
async fn warmup(
    target: &Target,
    workload: &Workload,
    n: usize,
    tokenizer: &dyn TokenCounter,
) -> Result<(), BenchError> {
    let Some((prompt, prompt_len, output_len)) = first_request(target.api, workload, tokenizer)?
    else {
        return Ok(());
    };
    if n == 0 {
        return Ok(());
    }
    let output_len = output_len.min(WARMUP_OUTPUT_LEN);
    let sends = (0..n).map(|_| target.send(&prompt, prompt_len, output_len, tokenizer));
    let outcomes = futures::future::join_all(sends).await;
    if outcomes.iter().any(|o| o.success) {
        tracing::info!(n_requests = n, "warmup finished");
        return Ok(());
    }
    Err(BenchError::WarmupFailed {
        n_requests: n,
        first_error: outcomes
            .into_iter()
            .find_map(|o| o.error)
            .unwrap_or_default(),
    })
}

fn first_request(
    api: Api,
    workload: &Workload,
    tokenizer: &dyn TokenCounter,
) -> Result<Option<(Prompt, usize, usize)>, BenchError> {
    match workload {
        Workload::Single(requests) => Ok(requests
            .first()
            .map(|r| (r.prompt.clone(), r.prompt_len, r.output_len))),
        Workload::MultiTurn(conversations) => {
            let Some(first) = conversations.first() else {
                return Ok(None);
            };
            let prompt = turn_prompt(api, &History::default(), &first.user_turns[0]);
            let prompt_len = prompt_len(&prompt, tokenizer)?;
            Ok(Some((prompt, prompt_len, first.output_len)))
        }
    }
}

/// Resets the prefix cache; a server that refuses only earns a warning, since the
/// run is still valid, just not from a cold cache.
async fn reset_cache(target: &Target) -> bool {
    match target.reset_prefix_cache().await {
        Ok(done) => done,
        Err(e) => {
            tracing::warn!(error = %e, "could not reset the prefix cache; measuring with a warm cache");
            false
        }
    }
}

fn progress_bar(n_requests: u64, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(n_requests), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{elapsed_precise} [{wide_bar:.cyan/blue}] {pos}/{len} requests ({per_sec}, eta {eta})",
    )
    .expect("progress template is valid")
    .progress_chars("=> ");
    bar.set_style(style);
    bar
}

/// Gaps between request arrivals.
struct Arrivals {
    rate: f64,
    rng: StdRng,
}

impl Arrivals {
    fn new(rate: f64, seed: u64) -> Self {
        Arrivals {
            rate,
            rng: StdRng::seed_from_u64(seed ^ ARRIVAL_SEED_SALT),
        }
    }

    /// Time to wait before the next arrival; `None` at an infinite rate.
    fn next_gap(&mut self) -> Option<Duration> {
        if self.rate.is_infinite() {
            return None;
        }
        // Inverse transform of a uniform draw in [0, 1) gives an exponential gap.
        let u: f64 = self.rng.random();
        Some(Duration::from_secs_f64(-(1.0 - u).ln() / self.rate))
    }
}

/// What every spawned request task shares.
#[derive(Clone)]
struct Dispatch {
    target: Arc<Target>,
    tokenizer: Arc<dyn TokenCounter>,
    slots: Option<Arc<Semaphore>>,
    progress: ProgressBar,
}

impl Dispatch {
    async fn single(
        &self,
        requests: &[BenchRequest],
        arrivals: &mut Arrivals,
    ) -> Vec<RequestOutcome> {
        let mut tasks: Vec<JoinHandle<Vec<RequestOutcome>>> = Vec::with_capacity(requests.len());
        for (idx, request) in requests.iter().enumerate() {
            wait_for_arrival(idx, arrivals).await;
            let this = self.clone();
            let request = request.clone();
            tasks.push(tokio::spawn(async move {
                let outcome = this
                    .send(&request.prompt, request.prompt_len, request.output_len)
                    .await;
                vec![outcome]
            }));
        }
        collect(tasks, |_| 1).await
    }

    async fn multi_turn(
        &self,
        conversations: &[Conversation],
        arrivals: &mut Arrivals,
    ) -> Vec<RequestOutcome> {
        let mut tasks = Vec::with_capacity(conversations.len());
        for (idx, conversation) in conversations.iter().enumerate() {
            wait_for_arrival(idx, arrivals).await;
            let this = self.clone();
            let conversation = conversation.clone();
            tasks.push(tokio::spawn(async move {
                this.conversation(&conversation).await
            }));
        }
        collect(tasks, |idx| conversations[idx].user_turns.len()).await
    }

    /// Sends a conversation's turns one after another, each prompt extending the
    /// last with its answer. A failed turn ends the conversation; the turns it could
    /// not send count as failed.
    async fn conversation(&self, conversation: &Conversation) -> Vec<RequestOutcome> {
        let mut history = History::default();
        let mut outcomes = Vec::with_capacity(conversation.user_turns.len());
        for user in &conversation.user_turns {
            let prompt = turn_prompt(self.target.api, &history, user);
            let outcome = match prompt_len(&prompt, self.tokenizer.as_ref()) {
                Ok(n_tokens) => self.send(&prompt, n_tokens, conversation.output_len).await,
                Err(e) => {
                    self.progress.inc(1);
                    RequestOutcome::failed(0, e.to_string())
                }
            };
            if !outcome.success {
                outcomes.push(outcome);
                break;
            }
            history.push(user.clone(), outcome.generated_text.clone());
            outcomes.push(outcome);
        }
        while outcomes.len() < conversation.user_turns.len() {
            outcomes.push(RequestOutcome::failed(
                0,
                "an earlier turn of the conversation failed",
            ));
            self.progress.inc(1);
        }
        outcomes
    }

    /// Sends one request once a concurrency slot is free.
    async fn send(&self, prompt: &Prompt, prompt_len: usize, output_len: usize) -> RequestOutcome {
        let _slot = match &self.slots {
            Some(slots) => Some(
                Arc::clone(slots)
                    .acquire_owned()
                    .await
                    .expect("the concurrency semaphore is never closed"),
            ),
            None => None,
        };
        let outcome = self
            .target
            .send(prompt, prompt_len, output_len, self.tokenizer.as_ref())
            .await;
        self.progress.inc(1);
        outcome
    }
}

async fn wait_for_arrival(idx: usize, arrivals: &mut Arrivals) {
    if idx == 0 {
        return;
    }
    if let Some(gap) = arrivals.next_gap() {
        tokio::time::sleep(gap).await;
    }
}

/// Joins the tasks in order; a task that panicked yields `n_requests(idx)` failures.
async fn collect(
    tasks: Vec<JoinHandle<Vec<RequestOutcome>>>,
    n_requests: impl Fn(usize) -> usize,
) -> Vec<RequestOutcome> {
    let mut outcomes = Vec::new();
    for (idx, task) in tasks.into_iter().enumerate() {
        match task.await {
            Ok(done) => outcomes.extend(done),
            Err(e) => outcomes.extend(
                (0..n_requests(idx))
                    .map(|_| RequestOutcome::failed(0, format!("request task failed: {e}"))),
            ),
        }
    }
    outcomes
}

fn turn_prompt(api: Api, history: &History, user: &str) -> Prompt {
    match api {
        Api::Chat => history.chat_prompt(user),
        Api::Completions | Api::Generate => history.text_prompt(user),
    }
}

/// Prompt length in tokens as the tokenizer counts it.
// Limitation: chat prompts count message contents only; the server's chat template
// adds a few tokens per message, which `usage.prompt_tokens` reports when available.
fn prompt_len(prompt: &Prompt, tokenizer: &dyn TokenCounter) -> Result<usize, BenchError> {
    match prompt {
        Prompt::Text(text) => tokenizer.count(text),
        Prompt::TokenIds(ids) => Ok(ids.len()),
        Prompt::Chat(messages) => messages.iter().map(|m| tokenizer.count(&m.content)).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_gaps_average_one_over_the_rate_and_repeat_with_the_seed() {
        let mut arrivals = Arrivals::new(4.0, 11);
        let gaps: Vec<f64> = (0..20_000)
            .map(|_| arrivals.next_gap().unwrap().as_secs_f64())
            .collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        assert!((mean - 0.25).abs() < 0.01, "mean gap {mean}");
        // An exponential distribution's median is ln 2 / rate.
        let mut sorted = gaps.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        assert!(
            (median - 2f64.ln() / 4.0).abs() < 0.01,
            "median gap {median}"
        );

        let mut again = Arrivals::new(4.0, 11);
        assert_eq!(again.next_gap().unwrap().as_secs_f64(), gaps[0]);
    }

    #[test]
    fn infinite_rate_has_no_gaps() {
        assert_eq!(Arrivals::new(f64::INFINITY, 1).next_gap(), None);
    }

    #[test]
    fn invalid_load_settings_are_refused() {
        let zero_rate = LoadSpec {
            request_rate: 0.0,
            ..LoadSpec::default()
        };
        assert!(validate(&zero_rate).is_err());
        let zero_slots = LoadSpec {
            max_concurrency: Some(0),
            ..LoadSpec::default()
        };
        assert!(validate(&zero_slots).is_err());
        assert!(validate(&LoadSpec::default()).is_ok());
    }

    #[test]
    fn chat_prompt_length_sums_message_contents() {
        let mut history = History::default();
        history.push("abc".into(), "de".into());
        let prompt = turn_prompt(Api::Chat, &history, "fghi");
        assert_eq!(prompt_len(&prompt, &crate::CharTokenizer).unwrap(), 9);
        let text = turn_prompt(Api::Completions, &history, "fghi");
        // Three messages and two blank-line separators of two characters each.
        assert_eq!(prompt_len(&text, &crate::CharTokenizer).unwrap(), 13);
    }
}
