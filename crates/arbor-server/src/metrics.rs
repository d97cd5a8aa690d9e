//! `GET /metrics`: Prometheus text exposition of the engine's load and cache (from
//! `EngineStats`) and of per-request latencies the server records as sequences finish.
//!
//! Names use the `arbor:` prefix with the suffix vLLM uses for the same quantity
//! (`num_requests_running`, `prompt_tokens_total`, `time_to_first_token_seconds`, ...),
//! or SGLang's where vLLM has none (`cache_hit_rate`). Every series carries a
//! `model_name` label, as vLLM's do.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arbor_engine::{EngineStats, FinishReason, Usage};

/// Upper bounds (seconds) of the time-to-first-token buckets.
const TTFT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0,
];
/// Upper bounds (seconds) of the time-per-output-token buckets.
const TPOT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0,
];
/// Upper bounds (seconds) of the end-to-end and queue-time buckets.
const LATENCY_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0, 600.0,
];

/// Latency histograms and finish counters, shared by all handlers.
#[derive(Debug)]
pub struct ServerMetrics {
    ttft: Histogram,
    tpot: Histogram,
    e2e: Histogram,
    queue: Histogram,
    /// Finished sequences by reason: stop, length, abort.
    finished: [AtomicU64; 3],
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self {
            ttft: Histogram::new(TTFT_BUCKETS),
            tpot: Histogram::new(TPOT_BUCKETS),
            e2e: Histogram::new(LATENCY_BUCKETS),
            queue: Histogram::new(LATENCY_BUCKETS),
            finished: Default::default(),
        }
    }
}

impl ServerMetrics {
    /// Records one finished sequence.
    pub fn record_finished(&self, reason: FinishReason, usage: &Usage) {
        let slot = match reason {
            FinishReason::Stop => 0,
            FinishReason::Length => 1,
            FinishReason::Abort => 2,
        };
        self.finished[slot].fetch_add(1, Ordering::Relaxed);
        if let Some(ttft) = usage.time_to_first_token {
            self.ttft.observe(ttft);
        }
        if let Some(tpot) = usage.time_per_output_token() {
            self.tpot.observe(tpot);
        }
        self.e2e.observe(usage.e2e_time);
        self.queue.observe(usage.queue_time);
    }

    /// Counts `n` sequences aborted before the engine reported their finish (their
    /// client left); they add no latency observations.
    pub fn record_aborted(&self, n: usize) {
        self.finished[2].fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The Prometheus text of all metrics.
    pub fn render(&self, stats: &EngineStats, model_name: &str) -> String {
        let mut out = Exposition::new(model_name);
        render_engine(&mut out, stats);
        out.header(
            "request_success_total",
            "counter",
            "Finished sequences, by finish reason.",
        );
        for (slot, reason) in ["stop", "length", "abort"].iter().enumerate() {
            let n = self.finished[slot].load(Ordering::Relaxed);
            out.sample(
                "request_success_total",
                &format!(",finished_reason=\"{reason}\""),
                n as f64,
            );
        }
        let histograms = [
            (
                "time_to_first_token_seconds",
                "Time from arrival to the first output token.",
                &self.ttft,
            ),
            (
                "time_per_output_token_seconds",
                "Mean time per output token after the first.",
                &self.tpot,
            ),
            (
                "e2e_request_latency_seconds",
                "Time from arrival to finish.",
                &self.e2e,
            ),
            (
                "request_queue_time_seconds",
                "Time from arrival to first admission.",
                &self.queue,
            ),
        ];
        for (name, help, histogram) in histograms {
            out.header(name, "histogram", help);
            histogram.render(&mut out, name);
        }
        out.text
    }
}

fn render_engine(out: &mut Exposition, stats: &EngineStats) {
    let n_pages_used = stats.n_pages_total.saturating_sub(stats.n_pages_free);
    let usage = ratio(n_pages_used as f64, stats.n_pages_total as f64);
    let hit_rate = ratio(stats.cache_hit_tokens as f64, stats.prompt_tokens as f64);
    let gauges: [(&str, &str, f64); 10] = [
        (
            "num_requests_running",
            "Sequences in the running batch.",
            stats.n_running as f64,
        ),
        (
            "num_requests_waiting",
            "Sequences waiting for admission.",
            stats.n_waiting as f64,
        ),
        (
            "kv_cache_usage_perc",
            "Fraction of KV pages in use (0 to 1).",
            usage,
        ),
        (
            "num_kv_pages_total",
            "KV pages in the pool.",
            stats.n_pages_total as f64,
        ),
        (
            "num_kv_pages_used",
            "KV pages held by sequences or the radix cache.",
            n_pages_used as f64,
        ),
        (
            "num_kv_pages_cached",
            "KV pages held by the radix cache.",
            stats.n_pages_cached as f64,
        ),
        (
            "num_kv_pages_locked",
            "Radix-cache pages locked by running sequences.",
            stats.n_pages_locked as f64,
        ),
        (
            "kv_capacity_tokens",
            "Token slots of the KV pool.",
            stats.kv_capacity_tokens as f64,
        ),
        (
            "page_size",
            "Token slots per KV page.",
            stats.page_size as f64,
        ),
        (
            "cache_hit_rate",
            "Prompt tokens served from the radix cache, over all prompt tokens.",
            hit_rate,
        ),
    ];
    for (name, help, value) in gauges {
        out.header(name, "gauge", help);
        out.sample(name, "", value);
    }
    let counters: [(&str, &str, u64); 6] = [
        (
            "prompt_tokens_total",
            "Prompt tokens admitted.",
            stats.prompt_tokens,
        ),
        (
            "generation_tokens_total",
            "Tokens generated.",
            stats.generation_tokens,
        ),
        (
            "prefix_cache_queries_total",
            "Prompt tokens looked up in the radix cache.",
            stats.prompt_tokens,
        ),
        (
            "prefix_cache_hits_total",
            "Prompt tokens served from the radix cache.",
            stats.cache_hit_tokens,
        ),
        (
            "num_preemptions_total",
            "Sequences preempted.",
            stats.preemptions,
        ),
        (
            "num_steps_total",
            "Engine steps (forward passes) run.",
            stats.steps,
        ),
    ];
    for (name, help, value) in counters {
        out.header(name, "counter", help);
        out.sample(name, "", value as f64);
    }
}

fn ratio(num: f64, den: f64) -> f64 {
    if den > 0.0 { num / den } else { 0.0 }
}

/// Builds the exposition text, adding the prefix and the `model_name` label.
struct Exposition {
    text: String,
    label: String,
}

impl Exposition {
    fn new(model_name: &str) -> Self {
        let escaped = model_name
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        Self {
            text: String::with_capacity(8192),
            label: format!("model_name=\"{escaped}\""),
        }
    }

    fn header(&mut self, name: &str, kind: &str, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, "# HELP arbor:{name} {help}");
        let _ = writeln!(self.text, "# TYPE arbor:{name} {kind}");
    }

    /// One sample; `extra_labels` starts with a comma when not empty.
    fn sample(&mut self, name: &str, extra_labels: &str, value: f64) {
        let _ = writeln!(
            self.text,
            "arbor:{name}{{{}{extra_labels}}} {value}",
            self.label
        );
    }
}

/// A fixed-bucket histogram of durations in seconds.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    state: Mutex<HistogramState>,
}

#[derive(Debug, Default)]
struct HistogramState {
    /// Observations per bucket (not cumulative); the last slot is `+Inf`.
    counts: Vec<u64>,
    sum_secs: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        let counts = vec![0; bounds.len() + 1];
        Self {
            bounds,
            state: Mutex::new(HistogramState {
                counts,
                sum_secs: 0.0,
            }),
        }
    }

    fn observe(&self, value: Duration) {
        let secs = value.as_secs_f64();
        let slot = self
            .bounds
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(self.bounds.len());
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.counts[slot] += 1;
        state.sum_secs += secs;
    }

    fn render(&self, out: &mut Exposition, name: &str) {
        let (counts, sum) = {
            let state = self
                .state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            (state.counts.clone(), state.sum_secs)
        };
        let mut cumulative = 0;
        for (slot, count) in counts.iter().enumerate() {
            cumulative += count;
            let le = self
                .bounds
                .get(slot)
                .map_or("+Inf".to_string(), |b| b.to_string());
            out.sample(
                &format!("{name}_bucket"),
                &format!(",le=\"{le}\""),
                cumulative as f64,
            );
        }
        out.sample(&format!("{name}_sum"), "", sum);
        out.sample(&format!("{name}_count"), "", cumulative as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_of(text: &str, series: &str) -> f64 {
        text.lines()
            .find(|line| line.starts_with(series))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
    }

    #[test]
    fn engine_stats_render_as_gauges_and_counters() {
        let stats = EngineStats {
            n_running: 2,
            n_waiting: 1,
            n_pages_total: 10,
            n_pages_free: 6,
            cache_hit_tokens: 30,
            prompt_tokens: 120,
            preemptions: 4,
            ..EngineStats::default()
        };
        let text = ServerMetrics::default().render(&stats, "m");
        assert_eq!(
            value_of(&text, "arbor:num_requests_running{model_name=\"m\"}"),
            2.0
        );
        assert_eq!(value_of(&text, "arbor:num_requests_waiting{"), 1.0);
        assert_eq!(value_of(&text, "arbor:num_kv_pages_used{"), 4.0);
        assert_eq!(value_of(&text, "arbor:kv_cache_usage_perc{"), 0.4);
        assert_eq!(value_of(&text, "arbor:cache_hit_rate{"), 0.25);
        assert_eq!(value_of(&text, "arbor:prefix_cache_hits_total{"), 30.0);
        assert_eq!(value_of(&text, "arbor:num_preemptions_total{"), 4.0);
        assert!(text.contains("# TYPE arbor:prompt_tokens_total counter"));
    }

    #[test]
    fn finished_sequences_fill_histograms_cumulatively() {
        let metrics = ServerMetrics::default();
        let usage = Usage {
            completion_tokens: 3,
            time_to_first_token: Some(Duration::from_millis(20)),
            e2e_time: Duration::from_millis(220),
            ..Usage::default()
        };
        metrics.record_finished(FinishReason::Stop, &usage);
        metrics.record_finished(FinishReason::Abort, &Usage::default());
        let text = metrics.render(&EngineStats::default(), "m");
        let ttft = "arbor:time_to_first_token_seconds";
        assert_eq!(
            value_of(
                &text,
                &format!("{ttft}_bucket{{model_name=\"m\",le=\"0.01\"}}")
            ),
            0.0
        );
        assert_eq!(
            value_of(
                &text,
                &format!("{ttft}_bucket{{model_name=\"m\",le=\"0.025\"}}")
            ),
            1.0
        );
        assert_eq!(
            value_of(
                &text,
                &format!("{ttft}_bucket{{model_name=\"m\",le=\"+Inf\"}}")
            ),
            1.0
        );
        assert_eq!(value_of(&text, &format!("{ttft}_count{{")), 1.0);
        // 200 ms over the two tokens after the first.
        assert!((value_of(&text, "arbor:time_per_output_token_seconds_sum{") - 0.1).abs() < 1e-9);
        assert_eq!(
            value_of(&text, "arbor:e2e_request_latency_seconds_count{"),
            2.0
        );
        let abort = "arbor:request_success_total{model_name=\"m\",finished_reason=\"abort\"}";
        assert_eq!(value_of(&text, abort), 1.0);
    }

    #[test]
    fn model_names_are_escaped_in_labels() {
        let text = ServerMetrics::default().render(&EngineStats::default(), "a\"b");
        assert!(text.contains("model_name=\"a\\\"b\""));
    }
}
