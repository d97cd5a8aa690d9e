//! `arbor generate`: loads a model into an engine, runs one prompt (or a file of prompts,
//! all submitted at once) and prints the output, as text or as JSON.
//!
//! It is the quickest way to check a model by hand and the shape CLI tests drive: the
//! prompt goes in as text (`--prompt`), as one chat message put through the model's chat
//! template (`--chat`), or as token ids (`--prompt-ids`), and `--json` prints the ids
//! that went in and came out. With `--prompts-file` every line is a request; they share
//! the engine (and its radix cache) exactly as concurrent server requests do.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use arbor_engine::{
    Engine, EngineConfig, Event, FinishReason, GenerateRequest, KvBudget, RequestStream,
    SamplingParams,
};
use arbor_models::{ChatMessage, RenderOptions};
use serde_json::{Value, json};

use crate::serve::{LoadArgs, chunked_prefill_size, kv_budget, parse_kv_memory};

/// Arguments of `arbor generate`.
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Model to run: a .gguf file, a Hugging Face model directory, a repo id
    /// (owner/name, or owner/name:file.gguf), or `smollm2`, the small demo model.
    #[arg(long, env = "ARBOR_MODEL", default_value = "smollm2")]
    pub model: String,

    #[command(flatten)]
    pub input: PromptInput,

    /// Most new tokens per prompt (a prompts-file line may set its own).
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,

    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,

    /// Nucleus sampling: keep the most likely tokens up to this probability mass.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,

    /// Keep only the k most likely tokens; 0 turns it off.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,

    /// Seed of the sampler: the same seed and prompt give the same output.
    #[arg(long)]
    pub seed: Option<u64>,

    /// Keep generating past the model's end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,

    /// Print JSON (one object; with --prompts-file always one line per prompt).
    #[arg(long)]
    pub json: bool,

    /// Weight and KV-cache types and the device.
    #[command(flatten)]
    pub load: LoadArgs,

    /// Token slots per KV-cache page.
    #[arg(long, default_value_t = 16)]
    pub page_size: usize,

    /// KV-cache size: bytes (2GiB, 512MiB, 1000000000) or a fraction, as for `arbor
    /// serve` (default 1GiB on the CPU, 0.9 of the GPU's memory on CUDA, planned before
    /// loading).
    #[arg(long, value_parser = parse_kv_memory)]
    pub kv_cache_memory: Option<KvBudget>,

    /// Most sequences in one batch.
    #[arg(long, default_value_t = 256)]
    pub max_running_requests: usize,

    /// Turn off prefix sharing between prompts (the radix cache).
    #[arg(long)]
    pub disable_radix_cache: bool,
}

/// Where the prompts come from: exactly one of the four.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct PromptInput {
    /// Prompt text, tokenized with the model's tokenizer (BOS added as it says).
    #[arg(long)]
    pub prompt: Option<String>,

    /// One user message, put through the model's chat template with the assistant's
    /// turn opened.
    #[arg(long)]
    pub chat: Option<String>,

    /// Prompt token ids, comma-separated (1,2,3).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub prompt_ids: Option<Vec<u32>>,

    /// A file of prompts, one JSON object a line: exactly one of `prompt`, `chat` or
    /// `prompt_ids`, and optionally `max_tokens`, `temperature`, `seed`, `ignore_eos`.
    #[arg(long)]
    pub prompts_file: Option<PathBuf>,
}

/// Runs `arbor generate`.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    init_logging();
    let jobs = match &args.input.prompts_file {
        Some(path) => read_prompts_file(path)?,
        None => vec![single_job(&args.input)],
    };
    let engine = load_engine(&args)?;
    let prepared = jobs
        .into_iter()
        .map(|job| prepare(&engine, &args, job))
        .collect::<anyhow::Result<Vec<_>>>()?;

    if args.input.prompts_file.is_some() {
        run_batch(&engine, prepared)
    } else {
        let job = prepared
            .into_iter()
            .next()
            .expect("one job without --prompts-file");
        run_single(&engine, job, args.json)
    }
}

/// A prompt as the user gave it.
#[derive(Debug, Clone, PartialEq)]
enum Prompt {
    Text(String),
    Chat(String),
    Ids(Vec<u32>),
}

/// One prompt and the sampling settings a prompts-file line overrides.
#[derive(Debug, Clone, PartialEq, Default)]
struct Job {
    /// 1-based line of the prompts file, for error messages; 0 for a CLI prompt.
    line: usize,
    prompt: Option<Prompt>,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    seed: Option<u64>,
    ignore_eos: Option<bool>,
}

/// A job tokenized and ready to submit.
struct Prepared {
    line: usize,
    request: GenerateRequest,
}

/// What one prompt produced.
#[derive(Debug, Default)]
struct Outcome {
    output_ids: Vec<u32>,
    text: String,
    finish_reason: Option<FinishReason>,
    cached_tokens: usize,
    time_to_first_token: Option<Duration>,
    elapsed: Duration,
}

fn init_logging() {
    // Logs go to stderr so that stdout holds only the output (text or JSON).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}

fn single_job(input: &PromptInput) -> Job {
    let prompt = if let Some(text) = &input.prompt {
        Prompt::Text(text.clone())
    } else if let Some(text) = &input.chat {
        Prompt::Chat(text.clone())
    } else {
        Prompt::Ids(input.prompt_ids.clone().unwrap_or_default())
    };
    Job {
        prompt: Some(prompt),
        ..Job::default()
    }
}

fn load_engine(args: &GenerateArgs) -> anyhow::Result<Engine> {
    let load = args.load.options();
    let config = EngineConfig {
        page_size: args.page_size,
        kv_cache: kv_budget(args.kv_cache_memory, args.load.device),
        chunked_prefill_size: chunked_prefill_size(None, args.load.device),
        max_running_requests: args.max_running_requests,
        disable_radix_cache: args.disable_radix_cache,
        ..EngineConfig::default()
    };
    tracing::info!(model = %args.model, dtype = ?args.load.dtype, "loading model");
    Engine::load(&args.model, &load, config)
        .with_context(|| format!("cannot load model {}", args.model))
}

/// Tokenizes a job's prompt and fills its sampling settings from the CLI defaults.
fn prepare(engine: &Engine, args: &GenerateArgs, job: Job) -> anyhow::Result<Prepared> {
    let prompt = job.prompt.clone().expect("every job has a prompt");
    let prompt_ids = match tokenize(engine, &prompt) {
        Err(e) if job.line > 0 => return Err(e.context(format!("line {}", job.line))),
        result => result?,
    };
    let params = SamplingParams {
        temperature: job.temperature.unwrap_or(args.temperature),
        top_p: args.top_p,
        top_k: args.top_k,
        seed: job.seed.or(args.seed),
        max_tokens: job.max_tokens.unwrap_or(args.max_tokens),
        ignore_eos: job.ignore_eos.unwrap_or(args.ignore_eos),
        ..SamplingParams::default()
    };
    let request = GenerateRequest::new(prompt_ids, params);
    Ok(Prepared {
        line: job.line,
        request,
    })
}

fn tokenize(engine: &Engine, prompt: &Prompt) -> anyhow::Result<Vec<u32>> {
    let no_tokenizer = "this model has no tokenizer; give the prompt as token ids (--prompt-ids)";
    match prompt {
        Prompt::Ids(ids) => Ok(ids.clone()),
        Prompt::Text(text) => {
            let tokenizer = engine.tokenizer().context(no_tokenizer)?;
            Ok(tokenizer.encode(text, true)?)
        }
        Prompt::Chat(message) => {
            let tokenizer = engine.tokenizer().context(no_tokenizer)?;
            let template = engine
                .chat_template()
                .context("this model has no chat template; use --prompt instead of --chat")?;
            let options = RenderOptions {
                add_generation_prompt: true,
                ..RenderOptions::default()
            };
            let text = template.render(&[ChatMessage::new("user", message.as_str())], &options)?;
            // The template writes the BOS and other special tokens itself.
            Ok(tokenizer.encode(&text, false)?)
        }
    }
}

/// Runs one prompt, streaming its text unless `--json` asks for one object at the end.
fn run_single(engine: &Engine, job: Prepared, json_output: bool) -> anyhow::Result<()> {
    let prompt_ids = job.request.prompt_ids.clone();
    let started = Instant::now();
    let mut stream = engine
        .submit(job.request)
        .context("the engine refused the prompt")?;
    let stream_text = !json_output && engine.tokenizer().is_some();
    let outcome = collect(&mut stream, stream_text)?;
    let elapsed = started.elapsed();
    engine.shutdown();

    let n_output = outcome.output_ids.len();
    let tokens_per_s = per_second(n_output, elapsed);
    if json_output {
        let object = json!({
            "prompt_ids": prompt_ids,
            "output_ids": outcome.output_ids,
            "text": outcome.text,
            "finish_reason": outcome.finish_reason,
            "cached_tokens": outcome.cached_tokens,
            "elapsed_s": elapsed.as_secs_f64(),
            "time_to_first_token_s": outcome.time_to_first_token.map(|t| t.as_secs_f64()),
            "tokens_per_s": tokens_per_s,
        });
        println!("{object}");
    } else {
        if engine.tokenizer().is_none() {
            let ids: Vec<String> = outcome.output_ids.iter().map(u32::to_string).collect();
            print!("{}", ids.join(" "));
        }
        println!();
        eprintln!(
            "[{} prompt tokens, {n_output} output tokens, finish_reason {}, {:.2} s, \
             {tokens_per_s:.1} tokens/s]",
            prompt_ids.len(),
            reason_str(outcome.finish_reason),
            elapsed.as_secs_f64(),
        );
    }
    Ok(())
}

/// Submits every prompt at once, then prints one JSON line per prompt in input order
/// and a last line of totals.
fn run_batch(engine: &Engine, jobs: Vec<Prepared>) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut submitted = Vec::with_capacity(jobs.len());
    for job in jobs {
        let prompt_ids = job.request.prompt_ids.clone();
        let stream = engine
            .submit(job.request)
            .with_context(|| format!("line {}: the engine refused the prompt", job.line))?;
        submitted.push((prompt_ids, stream));
    }
    let mut outcomes = Vec::with_capacity(submitted.len());
    for (prompt_ids, mut stream) in submitted {
        outcomes.push((prompt_ids, collect(&mut stream, false)?));
    }
    let elapsed = started.elapsed();
    // Shutting down joins the engine thread, so the statistics read next are final.
    engine.shutdown();

    let mut out = std::io::stdout().lock();
    for (index, (prompt_ids, outcome)) in outcomes.iter().enumerate() {
        let line = json!({
            "index": index,
            "prompt_ids": prompt_ids,
            "output_ids": outcome.output_ids,
            "text": outcome.text,
            "cached_tokens": outcome.cached_tokens,
            "finish_reason": outcome.finish_reason,
        });
        writeln!(out, "{line}")?;
    }
    let output_tokens: usize = outcomes.iter().map(|(_, o)| o.output_ids.len()).sum();
    let engine_stats = engine.stats();
    let stats = json!({
        "prompts": outcomes.len(),
        "prompt_tokens": outcomes.iter().map(|(p, _)| p.len()).sum::<usize>(),
        "cached_prompt_tokens": outcomes.iter().map(|(_, o)| o.cached_tokens).sum::<usize>(),
        "output_tokens": output_tokens,
        "preemptions": engine_stats.preemptions,
        "kv_capacity_tokens": engine_stats.kv_capacity_tokens,
        "elapsed_s": elapsed.as_secs_f64(),
        "output_tokens_per_s": per_second(output_tokens, elapsed),
    });
    writeln!(out, "{}", json!({ "stats": stats }))?;
    Ok(())
}

/// Reads a request's events to the end; with `stream_text`, prints text as it comes.
fn collect(stream: &mut RequestStream, stream_text: bool) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome::default();
    let mut stdout = std::io::stdout();
    while let Some(event) = stream.blocking_next() {
        match event {
            Event::Token {
                token_ids, text, ..
            } => {
                outcome.output_ids.extend(token_ids);
                if stream_text {
                    print!("{text}");
                    stdout.flush()?;
                }
                outcome.text.push_str(&text);
            }
            Event::Finished { reason, usage, .. } => {
                outcome.finish_reason = Some(reason);
                outcome.cached_tokens = usage.cached_prompt_tokens;
                outcome.time_to_first_token = usage.time_to_first_token;
                outcome.elapsed = usage.e2e_time;
            }
        }
    }
    if outcome.finish_reason == Some(FinishReason::Abort) {
        bail!("the request was aborted (the engine stopped or a forward pass failed; see the log)");
    }
    Ok(outcome)
}

fn per_second(n_tokens: usize, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        n_tokens as f64 / secs
    } else {
        0.0
    }
}

fn reason_str(reason: Option<FinishReason>) -> String {
    reason.map_or_else(|| "none".to_string(), |r| r.to_string())
}

/// Reads a prompts file; errors name the file and the 1-based line. Blank lines are
/// skipped.
fn read_prompts_file(path: &Path) -> anyhow::Result<Vec<Job>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read prompts file {}", path.display()))?;
    let mut jobs = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let job = parse_prompt_line(line, idx + 1)
            .with_context(|| format!("{}: line {}", path.display(), idx + 1))?;
        jobs.push(job);
    }
    if jobs.is_empty() {
        bail!("prompts file {} holds no prompts", path.display());
    }
    Ok(jobs)
}

/// Parses one prompts-file line (a JSON object).
fn parse_prompt_line(line: &str, line_no: usize) -> anyhow::Result<Job> {
    let value: Value = serde_json::from_str(line).context("not valid JSON")?;
    let Value::Object(fields) = value else {
        bail!("expected a JSON object");
    };
    let mut job = Job {
        line: line_no,
        ..Job::default()
    };
    for (key, value) in &fields {
        let prompt = match key.as_str() {
            "prompt" => Some(Prompt::Text(string_field(key, value)?)),
            "chat" => Some(Prompt::Chat(string_field(key, value)?)),
            "prompt_ids" => Some(Prompt::Ids(ids_field(value)?)),
            "max_tokens" => {
                job.max_tokens = Some(uint_field(key, value)? as usize);
                None
            }
            "temperature" => {
                let t = value.as_f64().context("`temperature` must be a number")?;
                job.temperature = Some(t as f32);
                None
            }
            "seed" => {
                job.seed = Some(uint_field(key, value)?);
                None
            }
            "ignore_eos" => {
                job.ignore_eos = Some(
                    value
                        .as_bool()
                        .context("`ignore_eos` must be true or false")?,
                );
                None
            }
            other => bail!(
                "unknown field `{other}` (expected prompt, chat, prompt_ids, max_tokens, \
                 temperature, seed, ignore_eos)"
            ),
        };
        if prompt.is_some() && job.prompt.is_some() {
            bail!("give exactly one of `prompt`, `chat` or `prompt_ids`");
        }
        job.prompt = prompt.or(job.prompt);
    }
    if job.prompt.is_none() {
        bail!("missing the prompt: give one of `prompt`, `chat` or `prompt_ids`");
    }
    Ok(job)
}

fn string_field(key: &str, value: &Value) -> anyhow::Result<String> {
    value
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("`{key}` must be a string"))
}

fn uint_field(key: &str, value: &Value) -> anyhow::Result<u64> {
    value
        .as_u64()
        .with_context(|| format!("`{key}` must be a non-negative integer"))
}

fn ids_field(value: &Value) -> anyhow::Result<Vec<u32>> {
    let bad = || "`prompt_ids` must be an array of token ids (integers >= 0)";
    let items = value.as_array().with_context(bad)?;
    items
        .iter()
        .map(|item| {
            item.as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .with_context(bad)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompts_line_takes_one_prompt_and_its_overrides() {
        let job =
            parse_prompt_line(r#"{"prompt_ids": [1, 2], "max_tokens": 4, "seed": 7}"#, 3).unwrap();
        assert_eq!(job.prompt, Some(Prompt::Ids(vec![1, 2])));
        assert_eq!((job.line, job.max_tokens, job.seed), (3, Some(4), Some(7)));
        let job = parse_prompt_line(
            r#"{"chat": "hi", "ignore_eos": true, "temperature": 0.5}"#,
            1,
        )
        .unwrap();
        assert_eq!(job.prompt, Some(Prompt::Chat("hi".into())));
        assert_eq!((job.ignore_eos, job.temperature), (Some(true), Some(0.5)));
    }

    #[test]
    fn bad_prompts_lines_say_what_is_wrong() {
        let error = |line: &str| format!("{:#}", parse_prompt_line(line, 1).unwrap_err());
        assert!(error("{").contains("not valid JSON"));
        assert!(error("[1]").contains("expected a JSON object"));
        assert!(error(r#"{"max_tokens": 3}"#).contains("missing the prompt"));
        assert!(error(r#"{"prompt": "a", "chat": "b"}"#).contains("exactly one of"));
        assert!(error(r#"{"prompt_ids": [1, -2]}"#).contains("array of token ids"));
        assert!(error(r#"{"prompt": "a", "max_token": 3}"#).contains("unknown field `max_token`"));
    }
}
