//! Metrics of one run, with the definitions of SGLang's bench_serving so that figures
//! are comparable with what people already publish:
//!
//! - throughputs divide totals over completed requests by the run's wall time
//!   (`duration`, from the first request sent to the last answer received);
//! - TTFT: send to first streamed chunk that carries text;
//! - TPOT per request: `(e2e - ttft) / (output_len - 1)`, for requests with more
//!   than one output token;
//! - ITL: every gap between successive text-carrying chunks, pooled over requests;
//! - end-to-end latency: send to end of stream;
//! - `concurrency`: sum of end-to-end latencies over the duration;
//! - percentiles interpolate linearly between order statistics (numpy's default),
//!   `std` is the population standard deviation; an empty sample gives 0.
//!
//! Failed requests count in `failed` and in nothing else.

use serde::Serialize;

/// What happened to one request, as measured by the client. Times in seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestOutcome {
    pub success: bool,
    /// Why the request failed; `None` on success.
    pub error: Option<String>,
    /// Prompt length in tokens, counted with the model's tokenizer.
    pub prompt_len: usize,
    /// Output length in tokens: the server's `completion_tokens` when it reports
    /// usage, else the tokenizer's count of the generated text.
    pub output_len: usize,
    /// The tokenizer's count of the generated text.
    pub output_len_retokenized: usize,
    /// Time to first token.
    pub ttft_s: f64,
    /// End-to-end latency: send to end of stream.
    pub latency_s: f64,
    /// Gaps between successive text-carrying chunks after the first.
    pub itl_s: Vec<f64>,
    pub generated_text: String,
    /// `usage.prompt_tokens`, when the server reports it.
    pub server_prompt_tokens: Option<usize>,
    /// `usage.prompt_tokens_details.cached_tokens` (or SGLang's
    /// `meta_info.cached_tokens`), when the server reports it.
    pub cached_tokens: Option<usize>,
    /// The output length was forced (`ignore_eos`/`min_tokens`) and the stream ended
    /// before it: the server ignored the setting or cut the stream short (as
    /// llama-cpp-python does to a stream when another request arrives).
    pub short_output: bool,
}

impl RequestOutcome {
    /// A failed request with its reason.
    pub fn failed(prompt_len: usize, error: impl Into<String>) -> Self {
        RequestOutcome {
            success: false,
            error: Some(error.into()),
            prompt_len,
            ..RequestOutcome::default()
        }
    }
}

/// Aggregate metrics of one run. Field names are SGLang's bench_serving keys; `_ms`
/// fields are milliseconds, throughputs are per second, `duration` is in seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Metrics {
    pub duration: f64,
    pub completed: usize,
    pub failed: usize,
    pub total_input_tokens: usize,
    pub total_output_tokens: usize,
    pub total_output_tokens_retokenized: usize,
    pub request_throughput: f64,
    pub input_throughput: f64,
    pub output_throughput: f64,
    pub total_throughput: f64,
    pub mean_ttft_ms: f64,
    pub median_ttft_ms: f64,
    pub std_ttft_ms: f64,
    pub p90_ttft_ms: f64,
    pub p99_ttft_ms: f64,
    pub mean_tpot_ms: f64,
    pub median_tpot_ms: f64,
    pub std_tpot_ms: f64,
    pub p90_tpot_ms: f64,
    pub p99_tpot_ms: f64,
    pub mean_itl_ms: f64,
    pub median_itl_ms: f64,
    pub std_itl_ms: f64,
    pub p90_itl_ms: f64,
    pub p95_itl_ms: f64,
    pub p99_itl_ms: f64,
    pub max_itl_ms: f64,
    pub mean_e2e_latency_ms: f64,
    pub median_e2e_latency_ms: f64,
    pub std_e2e_latency_ms: f64,
    pub p90_e2e_latency_ms: f64,
    pub p99_e2e_latency_ms: f64,
    pub concurrency: f64,
    /// Completed requests whose output stopped short of the forced length; not an
    /// SGLang key. Non-zero means the output figures are not for the asked lengths.
    pub short_outputs: usize,
    /// Sum of the server's `prompt_tokens`, when every completed request reported it.
    pub total_input_tokens_server: Option<usize>,
    /// Sum of server-reported cached prompt tokens, when any request reported them.
    pub total_cached_tokens: Option<usize>,
    /// Cached over prompt tokens (the server's count when complete, else ours).
    pub cached_tokens_ratio: Option<f64>,
}

impl Metrics {
    /// Metrics of `outcomes` over a run of `duration_s` seconds.
    pub fn compute(outcomes: &[RequestOutcome], duration_s: f64) -> Metrics {
        let done: Vec<&RequestOutcome> = outcomes.iter().filter(|o| o.success).collect();
        let per_s = |n: f64| {
            if duration_s > 0.0 {
                n / duration_s
            } else {
                0.0
            }
        };

        let total_input: usize = done.iter().map(|o| o.prompt_len).sum();
        let total_output: usize = done.iter().map(|o| o.output_len).sum();
        let ttfts: Vec<f64> = done.iter().map(|o| o.ttft_s).collect();
        let e2es: Vec<f64> = done.iter().map(|o| o.latency_s).collect();
        let tpots: Vec<f64> = done
            .iter()
            .filter(|o| o.output_len > 1)
            .map(|o| (o.latency_s - o.ttft_s) / (o.output_len - 1) as f64)
            .collect();
        let itls: Vec<f64> = done.iter().flat_map(|o| o.itl_s.iter().copied()).collect();
        let (ttft, tpot, itl, e2e) = (
            Stats::of(&ttfts),
            Stats::of(&tpots),
            Stats::of(&itls),
            Stats::of(&e2es),
        );
        let cache = CacheFigures::of(&done, total_input);

        Metrics {
            duration: duration_s,
            completed: done.len(),
            failed: outcomes.len() - done.len(),
            total_input_tokens: total_input,
            total_output_tokens: total_output,
            total_output_tokens_retokenized: done.iter().map(|o| o.output_len_retokenized).sum(),
            request_throughput: per_s(done.len() as f64),
            input_throughput: per_s(total_input as f64),
            output_throughput: per_s(total_output as f64),
            total_throughput: per_s((total_input + total_output) as f64),
            mean_ttft_ms: ttft.mean,
            median_ttft_ms: ttft.median,
            std_ttft_ms: ttft.std,
            p90_ttft_ms: ttft.p90,
            p99_ttft_ms: ttft.p99,
            mean_tpot_ms: tpot.mean,
            median_tpot_ms: tpot.median,
            std_tpot_ms: tpot.std,
            p90_tpot_ms: tpot.p90,
            p99_tpot_ms: tpot.p99,
            mean_itl_ms: itl.mean,
            median_itl_ms: itl.median,
            std_itl_ms: itl.std,
            p90_itl_ms: itl.p90,
            p95_itl_ms: itl.p95,
            p99_itl_ms: itl.p99,
            max_itl_ms: itl.max,
            mean_e2e_latency_ms: e2e.mean,
            median_e2e_latency_ms: e2e.median,
            std_e2e_latency_ms: e2e.std,
            p90_e2e_latency_ms: e2e.p90,
            p99_e2e_latency_ms: e2e.p99,
            concurrency: per_s(e2es.iter().sum()),
            short_outputs: done.iter().filter(|o| o.short_output).count(),
            total_input_tokens_server: cache.server_prompt_tokens,
            total_cached_tokens: cache.cached_tokens,
            cached_tokens_ratio: cache.ratio,
        }
    }
}

/// Summary of a sample of durations in seconds, reported in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Stats {
    mean: f64,
    median: f64,
    std: f64,
    p90: f64,
    p95: f64,
    p99: f64,
    max: f64,
}

impl Stats {
    fn of(sample_s: &[f64]) -> Stats {
        if sample_s.is_empty() {
            return Stats::default();
        }
        let mut sorted = sample_s.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len() as f64;
        let mean = sorted.iter().sum::<f64>() / n;
        let variance = sorted.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let ms = 1000.0;
        Stats {
            mean: mean * ms,
            median: percentile(&sorted, 50.0) * ms,
            std: variance.sqrt() * ms,
            p90: percentile(&sorted, 90.0) * ms,
            p95: percentile(&sorted, 95.0) * ms,
            p99: percentile(&sorted, 99.0) * ms,
            max: sorted[sorted.len() - 1] * ms,
        }
    }
}

/// The `q`-th percentile (0..=100) of an ascending, non-empty sample, interpolating
/// linearly between the two nearest order statistics.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = q / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// Server-reported prompt-cache figures over the completed requests.
struct CacheFigures {
    server_prompt_tokens: Option<usize>,
    cached_tokens: Option<usize>,
    ratio: Option<f64>,
}

impl CacheFigures {
    fn of(done: &[&RequestOutcome], client_input_tokens: usize) -> CacheFigures {
        let server_prompt_tokens: Option<usize> = if done.is_empty() {
            None
        } else {
            done.iter().map(|o| o.server_prompt_tokens).sum()
        };
        let cached_tokens = done
            .iter()
            .any(|o| o.cached_tokens.is_some())
            .then(|| done.iter().filter_map(|o| o.cached_tokens).sum::<usize>());
        let denominator = server_prompt_tokens.unwrap_or(client_input_tokens);
        let ratio = cached_tokens
            .filter(|_| denominator > 0)
            .map(|cached| cached as f64 / denominator as f64);
        CacheFigures {
            server_prompt_tokens,
            cached_tokens,
            ratio,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(
        prompt_len: usize,
        output_len: usize,
        ttft: f64,
        e2e: f64,
        itl: &[f64],
    ) -> RequestOutcome {
        RequestOutcome {
            success: true,
            prompt_len,
            output_len,
            output_len_retokenized: output_len,
            ttft_s: ttft,
            latency_s: e2e,
            itl_s: itl.to_vec(),
            ..RequestOutcome::default()
        }
    }

    fn close(actual: f64, expected: f64) {
        assert!((actual - expected).abs() < 1e-9, "{actual} != {expected}");
    }

    /// Three completed requests and one failure over 2 s; every expected value below
    /// is worked out by hand from the definitions in the module docs.
    fn hand_made_run() -> Metrics {
        let outcomes = vec![
            RequestOutcome {
                server_prompt_tokens: Some(100),
                cached_tokens: Some(64),
                ..ok(100, 5, 0.2, 1.0, &[0.2, 0.2, 0.2, 0.2])
            },
            RequestOutcome {
                server_prompt_tokens: Some(50),
                cached_tokens: Some(0),
                ..ok(50, 3, 0.4, 1.4, &[0.5, 0.5])
            },
            RequestOutcome {
                short_output: true,
                ..RequestOutcome::failed(70, "connection refused")
            },
            RequestOutcome {
                short_output: true,
                ..ok(10, 1, 0.3, 0.3, &[])
            },
        ];
        Metrics::compute(&outcomes, 2.0)
    }

    #[test]
    fn counts_and_throughputs_cover_completed_requests_only() {
        let m = hand_made_run();
        assert_eq!((m.completed, m.failed), (3, 1));
        assert_eq!(m.short_outputs, 1);
        assert_eq!((m.total_input_tokens, m.total_output_tokens), (160, 9));
        close(m.request_throughput, 1.5);
        close(m.input_throughput, 80.0);
        close(m.output_throughput, 4.5);
        close(m.total_throughput, 84.5);
        close(m.concurrency, 1.35);
    }

    #[test]
    fn ttft_and_e2e_summaries_follow_numpy_definitions() {
        let m = hand_made_run();
        close(m.mean_ttft_ms, 300.0);
        close(m.median_ttft_ms, 300.0);
        close(m.std_ttft_ms, (0.02f64 / 3.0).sqrt() * 1000.0);
        close(m.p90_ttft_ms, 380.0);
        close(m.p99_ttft_ms, 398.0);
        close(m.mean_e2e_latency_ms, 900.0);
        close(m.median_e2e_latency_ms, 1000.0);
        close(m.p99_e2e_latency_ms, 1392.0);
    }

    #[test]
    fn tpot_skips_single_token_outputs_and_itl_pools_all_gaps() {
        let m = hand_made_run();
        // TPOT: (1.0 - 0.2) / 4 = 0.2 s and (1.4 - 0.4) / 2 = 0.5 s.
        close(m.mean_tpot_ms, 350.0);
        close(m.median_tpot_ms, 350.0);
        close(m.p99_tpot_ms, 497.0);
        // ITL: four gaps of 0.2 s and two of 0.5 s.
        close(m.mean_itl_ms, 300.0);
        close(m.median_itl_ms, 200.0);
        close(m.p90_itl_ms, 500.0);
        close(m.max_itl_ms, 500.0);
    }

    #[test]
    fn cached_tokens_are_summed_when_reported() {
        let m = hand_made_run();
        // The single-token request reported no usage, so the server's prompt total
        // is incomplete and the ratio falls back to our own count (160 tokens).
        assert_eq!(m.total_input_tokens_server, None);
        assert_eq!(m.total_cached_tokens, Some(64));
        close(m.cached_tokens_ratio.unwrap(), 0.4);
    }

    #[test]
    fn no_completed_request_gives_zeros_not_nan() {
        let m = Metrics::compute(&[RequestOutcome::failed(5, "boom")], 1.0);
        assert_eq!((m.completed, m.failed), (0, 1));
        assert_eq!(m.mean_ttft_ms, 0.0);
        assert_eq!(m.p99_e2e_latency_ms, 0.0);
        assert_eq!(m.total_cached_tokens, None);
    }

    #[test]
    fn percentile_interpolates_between_order_statistics() {
        let sorted = [1.0, 2.0, 3.0, 4.0];
        close(percentile(&sorted, 0.0), 1.0);
        close(percentile(&sorted, 50.0), 2.5);
        close(percentile(&sorted, 99.0), 3.97);
        close(percentile(&sorted, 100.0), 4.0);
        close(percentile(&[7.0], 99.0), 7.0);
    }
}
