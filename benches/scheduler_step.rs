//! Scheduler overhead: the time one `EngineCore::step` takes around a model that costs
//! (almost) nothing, so what is left is scheduling, batch building, sampling, update,
//! detokenizing and emitting. Prints one table row per case: mean and p99 microseconds
//! per step, both for the whole step and for the step minus the fake model's forward.
//!
//! Workload (a shared-prefix mix): 16 system prompts of 512 tokens; each request is one
//! of them plus a 32-128 token question of its own and asks for 32-512 greedy tokens.
//!
//! - `decode_256`: a closed loop holding 256 running sequences (a finished request is
//!   replaced at once), so steady-state steps mix 256-ish decode tokens with the
//!   prefill of the few newcomers; radix cache on; page sizes 1 and 16.
//! - `waiting_5000_lpm`: the same closed loop with 5000 more requests waiting, under the
//!   cache-aware `Lpm` policy (256 running at most; every finished request is replaced,
//!   so about 5000 keep waiting).
//!
//! The fake model's forward (hashing the new tokens through the page tables, one
//! vocabulary-sized logits row per sequence, 256-token vocabulary) is timed separately
//! and subtracted for the `sched` columns; real models do that work on the accelerator.
//! `wall` is elapsed time; `cpu` is the engine thread's CPU time (what the step costs
//! when the machine is shared with other work, which inflates wall-clock tails).
//!
//! A last line times the greedy pick alone for 256 rows of a real vocabulary (49152,
//! SmolLM2's): the full sampler (which copies the row) against the greedy fast path
//! the update phase takes (`argmax` over the row in place).
//!
//! Run: `cargo bench --bench scheduler_step` (`-- --steps N` to change the sample).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arbor_engine::parts;
use arbor_engine::testing::{FakeModel, XorShift};
use arbor_engine::{
    EngineConfig, EngineCore, Event, ForwardBatch, GenerateRequest, KvBudget, Logits, ModelInfo,
    ModelRunner, RequestId, RunnerError, SamplingParams, SchedulePolicy, StartOptions,
    TokenDecoder,
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

const VOCAB: usize = 256;
const N_SYSTEM_PROMPTS: usize = 16;
const SYSTEM_TOKENS: usize = 512;
const RUNNING: usize = 256;

/// `n_tokens` ids below `VOCAB` from `rng`.
fn tokens(rng: &mut XorShift, n_tokens: usize) -> Vec<u32> {
    (0..n_tokens).map(|_| rng.below(VOCAB) as u32).collect()
}

/// Wall-clock and thread CPU time, in nanoseconds.
#[derive(Clone, Copy, Debug, Default)]
struct Times {
    wall: u64,
    cpu: u64,
}

impl Times {
    fn now(origin: Instant) -> Self {
        Self {
            wall: origin.elapsed().as_nanos() as u64,
            cpu: thread_cpu_ns(),
        }
    }

    fn since(self, earlier: Times) -> Times {
        Times {
            wall: self.wall - earlier.wall,
            cpu: self.cpu - earlier.cpu,
        }
    }
}

/// CPU time of the calling thread.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "thread cpu clock is available");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The fake model, with the (wall, cpu) time spent in its forward passes added to
/// counters.
struct TimedModel {
    inner: FakeModel,
    origin: Instant,
    forward_ns: Arc<[AtomicU64; 2]>,
}

impl ModelRunner for TimedModel {
    fn info(&self) -> ModelInfo {
        self.inner.info()
    }

    fn kv_bytes_per_token(&self) -> usize {
        self.inner.kv_bytes_per_token()
    }

    fn allocate_kv(&mut self, n_pages: usize, page_size: usize) -> Result<(), RunnerError> {
        self.inner.allocate_kv(n_pages, page_size)
    }

    fn forward(&mut self, batch: &ForwardBatch) -> Result<Logits, RunnerError> {
        let start = Times::now(self.origin);
        let logits = self.inner.forward(batch);
        let spent = Times::now(self.origin).since(start);
        self.forward_ns[0].fetch_add(spent.wall, Ordering::Relaxed);
        self.forward_ns[1].fetch_add(spent.cpu, Ordering::Relaxed);
        logits
    }

    fn decoder(&self) -> Option<Arc<dyn TokenDecoder>> {
        self.inner.decoder()
    }
}

/// An engine core over the timed fake model, submitting the shared-prefix mix.
struct Bench {
    core: EngineCore,
    origin: Instant,
    forward_ns: Arc<[AtomicU64; 2]>,
    rng: XorShift,
    systems: Vec<Vec<u32>>,
    // Every request sends its events into one channel; the bench only counts finishes.
    events: UnboundedSender<Event>,
    receiver: UnboundedReceiver<Event>,
    next_id: u64,
}

impl Bench {
    fn new(page_size: usize, n_pages: usize, policy: SchedulePolicy) -> Self {
        let forward_ns = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let origin = Instant::now();
        let model = TimedModel {
            inner: FakeModel::new(VOCAB).with_max_context(8192),
            origin,
            forward_ns: Arc::clone(&forward_ns),
        };
        let config = EngineConfig {
            page_size,
            kv_cache: KvBudget::Pages(n_pages),
            max_running_requests: RUNNING,
            max_batched_tokens: 8192,
            chunked_prefill_size: 2048,
            schedule_policy: policy,
            ..EngineConfig::default()
        };
        let options = StartOptions {
            seed: Some(7),
            ..StartOptions::default()
        };
        let core = EngineCore::new(Box::new(model), config, options).expect("engine starts");
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let systems = (0..N_SYSTEM_PROMPTS)
            .map(|_| tokens(&mut rng, SYSTEM_TOKENS))
            .collect();
        let (events, receiver) = unbounded_channel();
        Self {
            core,
            origin,
            forward_ns,
            rng,
            systems,
            events,
            receiver,
            next_id: 0,
        }
    }

    fn submit(&mut self) {
        let system = &self.systems[self.rng.below(N_SYSTEM_PROMPTS)];
        let mut prompt = system.clone();
        let n_question = 32 + self.rng.below(97);
        prompt.extend(tokens(&mut self.rng, n_question));
        let params = SamplingParams::greedy(32 + self.rng.below(481));
        self.next_id += 1;
        let request = GenerateRequest::new(prompt, params);
        self.core
            .add_request(
                RequestId(self.next_id),
                request,
                self.events.clone(),
                Instant::now(),
            )
            .expect("request accepted");
    }

    /// Drains the events (as clients would); returns how many requests finished.
    fn drain(&mut self) -> usize {
        let mut n_finished = 0;
        while let Ok(event) = self.receiver.try_recv() {
            n_finished += usize::from(matches!(event, Event::Finished { .. }));
        }
        n_finished
    }

    /// One timed step: the whole step's wall time, and the step minus the forward pass
    /// in wall and cpu time.
    fn timed_step(&mut self) -> [Duration; 3] {
        let forward = |b: &Self| Times {
            wall: b.forward_ns[0].load(Ordering::Relaxed),
            cpu: b.forward_ns[1].load(Ordering::Relaxed),
        };
        let forward_before = forward(self);
        let start = Times::now(self.origin);
        self.core.step().expect("step succeeds");
        let total = Times::now(self.origin).since(start);
        let model = forward(self).since(forward_before);
        [
            Duration::from_nanos(total.wall),
            Duration::from_nanos(total.wall.saturating_sub(model.wall)),
            Duration::from_nanos(total.cpu.saturating_sub(model.cpu)),
        ]
    }
}

/// Per-step samples of one case.
#[derive(Default)]
struct Samples {
    total: Vec<Duration>,
    sched_wall: Vec<Duration>,
    sched_cpu: Vec<Duration>,
    n_running: usize,
    n_waiting: usize,
}

impl Samples {
    fn push(&mut self, [total, sched_wall, sched_cpu]: [Duration; 3], core: &EngineCore) {
        self.total.push(total);
        self.sched_wall.push(sched_wall);
        self.sched_cpu.push(sched_cpu);
        let stats = core.stats();
        self.n_running += stats.n_running;
        self.n_waiting += stats.n_waiting;
    }
}

fn decode_256(page_size: usize, n_warmup: usize, n_steps: usize) -> Samples {
    // Room for 256 sequences of up to 1152 tokens plus the system prompts, twice.
    let n_pages = 2 * RUNNING * 1152 / page_size;
    let mut bench = Bench::new(page_size, n_pages, SchedulePolicy::Fcfs);
    for _ in 0..RUNNING {
        bench.submit();
    }
    // Warm up: past the initial prefill wave, into the closed loop's steady state.
    for _ in 0..n_warmup {
        bench.core.step().expect("step succeeds");
        for _ in 0..bench.drain() {
            bench.submit();
        }
    }
    let mut samples = Samples::default();
    for _ in 0..n_steps {
        let timing = bench.timed_step();
        samples.push(timing, &bench.core);
        for _ in 0..bench.drain() {
            bench.submit();
        }
    }
    samples
}

fn waiting_5000_lpm(page_size: usize, n_warmup: usize, n_steps: usize) -> Samples {
    let n_pages = 2 * RUNNING * 1152 / page_size;
    let mut bench = Bench::new(page_size, n_pages, SchedulePolicy::Lpm);
    for _ in 0..RUNNING + 5000 {
        bench.submit();
    }
    let mut samples = Samples::default();
    for step_idx in 0..n_warmup + n_steps {
        if step_idx < n_warmup {
            bench.core.step().expect("step succeeds");
        } else {
            let timing = bench.timed_step();
            samples.push(timing, &bench.core);
        }
        // Every finished request is replaced, so about 5000 keep waiting.
        for _ in 0..bench.drain() {
            bench.submit();
        }
    }
    samples
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// (mean, p99) in microseconds.
fn summary(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let mean = samples.iter().map(|d| micros(*d)).sum::<f64>() / samples.len() as f64;
    let p99_idx = (samples.len() * 99).div_ceil(100).saturating_sub(1);
    (mean, micros(samples[p99_idx]))
}

fn print_row(name: &str, page_size: usize, samples: Samples) {
    let n = samples.total.len();
    let running = samples.n_running as f64 / n as f64;
    let waiting = samples.n_waiting as f64 / n as f64;
    let (mean, p99) = summary(samples.total);
    let (wall_mean, wall_p99) = summary(samples.sched_wall);
    let (cpu_mean, cpu_p99) = summary(samples.sched_cpu);
    println!(
        "| {name:<16} | {page_size:>4} | {n:>5} | {running:>7.1} | {waiting:>7.0} | \
         {mean:>9.1} | {p99:>8.1} | {wall_mean:>10.1} | {wall_p99:>9.1} | {cpu_mean:>9.1} | \
         {cpu_p99:>8.1} |"
    );
}

fn main() {
    // `cargo bench` passes `--bench`; without it (`cargo test --all-targets`) this is a
    // smoke run of a few steps. Only `--steps N` and a case-name filter are ours.
    let args: Vec<String> = std::env::args().collect();
    let bench_mode = args.iter().any(|a| a == "--bench");
    let n_steps = args
        .iter()
        .position(|a| a == "--steps")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(if bench_mode { 2000 } else { 5 });
    let n_warmup = if bench_mode { 600 } else { 5 };
    let filter = args
        .iter()
        .skip(1)
        .find(|a| !a.starts_with("--") && a.parse::<usize>().is_err());

    println!("scheduler step, fake model, {n_steps} measured steps per case (µs per step)");
    println!(
        "| case             | page | steps | running | waiting | step mean | step p99 | sched wall | wall p99  \
         | sched cpu | cpu p99  |"
    );
    println!(
        "|------------------|------|-------|---------|---------|-----------|----------|------------|-----------\
         |-----------|----------|"
    );
    let wanted = |name: &str| filter.is_none_or(|f| name.contains(f.as_str()));
    for page_size in [1, 16] {
        if wanted("decode_256") {
            print_row(
                "decode_256",
                page_size,
                decode_256(page_size, n_warmup, n_steps),
            );
        }
    }
    for page_size in [1, 16] {
        if wanted("waiting_5000_lpm") {
            print_row(
                "waiting_5000_lpm",
                page_size,
                waiting_5000_lpm(page_size, n_warmup, n_steps),
            );
        }
    }
    if wanted("greedy_pick") {
        greedy_pick(if bench_mode { 50 } else { 1 });
    }
}

/// Prints the time to pick the greedy token of 256 rows of 49152 logits, through the
/// full sampler and through `argmax` alone.
fn greedy_pick(n_reps: usize) {
    const ROWS: usize = 256;
    const VOCAB_REAL: usize = 49152;
    let mut rng = XorShift(0x1234_5678_9abc_def1);
    let logits: Vec<f32> = (0..ROWS * VOCAB_REAL)
        .map(|_| rng.below(1 << 20) as f32 / 1e5)
        .collect();
    let params = SamplingParams::greedy(1);
    let mut seq_rng = parts::rng_from_seed(1);
    let time = |pick: &mut dyn FnMut(&[f32]) -> u32| {
        let start = Instant::now();
        let mut checksum = 0u64;
        for _ in 0..n_reps {
            for row in logits.chunks_exact(VOCAB_REAL) {
                checksum += u64::from(pick(std::hint::black_box(row)));
            }
        }
        (
            start.elapsed().as_secs_f64() * 1e6 / n_reps as f64,
            checksum,
        )
    };
    let (full_us, a) =
        time(&mut |row| parts::sample(row, &params, None, &[], &mut seq_rng).token_id);
    let (fast_us, b) = time(&mut |row| parts::argmax(row));
    assert_eq!(a, b, "both pick the same tokens");
    println!(
        "greedy pick, {ROWS} rows x {VOCAB_REAL} logits: sampler {full_us:.0} µs per step, \
         argmax fast path {fast_us:.0} µs per step"
    );
}
