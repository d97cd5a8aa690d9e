//! `arbor bench`: measures any OpenAI-compatible server (Arbor, SGLang, vLLM,
//! llama.cpp) the same way, and `arbor bench report` compares the runs.
//!
//! ```text
//! arbor bench --backend openai --base-url http://127.0.0.1:8000 \
//!     --tokenizer model.gguf --dataset-name random --random-input-len 256 \
//!     --random-output-len 64 --num-prompts 32 --max-concurrency 4 --output runs.jsonl
//! arbor bench report runs.jsonl --baseline llama-cpp-python --plot runs.png
//! ```
//!
//! Flags follow SGLang's bench_serving where it has one. The work is done by the
//! `arbor-bench` crate; this module parses flags, loads the tokenizer and prints.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use arbor_bench::workload::{
    MultiTurnSpec, PromptKind, RandomSpec, SharedPrefixSpec, SharegptSpec,
};
use arbor_bench::{
    Api, Backend, BenchError, BenchSpec, LoadSpec, TargetSpec, TokenCounter, WorkloadSpec, plot,
    report,
};
use arbor_models::tokenizer::Tokenizer;
use clap::{Args, Subcommand};

/// Arguments of `arbor bench`: a run, or `report` over recorded runs.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Compare recorded runs side by side, and plot them against concurrency.
    Report(ReportArgs),
}

/// One benchmark run.
#[derive(Args)]
struct RunArgs {
    /// Server family: arbor, sglang, vllm or openai (any other OpenAI-compatible
    /// server). Decides how output length is forced and how the prefix cache is reset.
    #[arg(long, default_value = "arbor")]
    backend: Backend,
    /// Server base URL; a trailing /v1 is accepted.
    #[arg(long, default_value = "http://127.0.0.1:30000")]
    base_url: String,
    /// API to call: completions, chat or generate (SGLang's native API).
    /// Default: generate for sglang, completions otherwise.
    #[arg(long)]
    api: Option<Api>,
    /// Model: a local path (also the default tokenizer) or the served model name.
    #[arg(long)]
    model: Option<String>,
    /// Model name sent in requests; default: --model when it is not a local path,
    /// else the first id of GET /v1/models.
    #[arg(long)]
    served_model_name: Option<String>,
    /// Tokenizer that counts prompt and output tokens: a tokenizer.json, a model
    /// directory or a .gguf file. Default: --model when it is a local path.
    #[arg(long)]
    tokenizer: Option<PathBuf>,

    /// Workload: random, sharegpt, generated-shared-prefix or multi-turn.
    #[arg(long, default_value = "random")]
    dataset_name: String,
    /// ShareGPT-format JSON file, for --dataset-name sharegpt.
    #[arg(long)]
    dataset_path: Option<String>,
    /// Number of requests (random and sharegpt).
    #[arg(long, default_value_t = 200)]
    num_prompts: usize,
    /// Largest prompt length of the random workload, tokens.
    #[arg(long, alias = "random-input", default_value_t = 1024)]
    random_input_len: usize,
    /// Largest output length of the random workload, tokens.
    #[arg(long, alias = "random-output", default_value_t = 1024)]
    random_output_len: usize,
    /// Random lengths are drawn from [len * ratio, len]; 1 fixes them.
    #[arg(long, default_value_t = 0.0)]
    random_range_ratio: f64,
    /// Random prompts as decoded text (any API) or as token ids (exact lengths;
    /// completions and generate only).
    #[arg(long, default_value = "text")]
    random_prompt: PromptKind,
    /// Fixed output length for sharegpt, instead of the recorded answer's length.
    #[arg(long)]
    sharegpt_output_len: Option<usize>,
    /// Skip sharegpt conversations longer than this many tokens (prompt + output).
    #[arg(long)]
    sharegpt_context_len: Option<usize>,
    /// Shared-prefix groups.
    #[arg(long, default_value_t = 64)]
    gsp_num_groups: usize,
    /// Prompts per shared-prefix group.
    #[arg(long, default_value_t = 16)]
    gsp_prompts_per_group: usize,
    /// System prompt length, tokens.
    #[arg(long, default_value_t = 2048)]
    gsp_system_prompt_len: usize,
    /// Question length, tokens.
    #[arg(long, default_value_t = 128)]
    gsp_question_len: usize,
    /// Output length, tokens.
    #[arg(long, default_value_t = 256)]
    gsp_output_len: usize,
    /// Control run: same lengths, but every prompt gets its own system prompt.
    #[arg(long)]
    gsp_no_shared_prefix: bool,
    /// Multi-turn conversations.
    #[arg(long, default_value_t = 16)]
    mt_num_conversations: usize,
    /// Turns per conversation.
    #[arg(long, default_value_t = 4)]
    mt_num_turns: usize,
    /// First user message length, tokens.
    #[arg(long, default_value_t = 1024)]
    mt_first_turn_len: usize,
    /// Later user message length, tokens.
    #[arg(long, default_value_t = 64)]
    mt_turn_len: usize,
    /// Output length of every turn, tokens.
    #[arg(long, default_value_t = 64)]
    mt_output_len: usize,

    /// Requests per second (Poisson arrivals), or inf to send all at once.
    #[arg(long, default_value_t = f64::INFINITY)]
    request_rate: f64,
    /// Most requests in flight at once.
    #[arg(long)]
    max_concurrency: Option<usize>,
    /// Requests sent first and not measured.
    #[arg(long, default_value_t = 1)]
    warmup_requests: usize,
    /// Seed of the workload and of the arrival times.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Let the server stop at end-of-sequence instead of forcing output lengths.
    #[arg(long)]
    disable_ignore_eos: bool,
    /// JSON object merged into every request body, e.g. '{"top_p": 0.9}'.
    #[arg(long)]
    extra_request_body: Option<String>,
    /// Do not reset the server's prefix cache after warmup.
    #[arg(long)]
    no_flush_cache: bool,
    /// Limit for one request, seconds.
    #[arg(long, default_value_t = 3600)]
    request_timeout_s: u64,
    /// API key, sent as a bearer token.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    api_key: Option<String>,

    /// Append the run's record to this JSONL file.
    #[arg(long, alias = "output-file")]
    output: Option<PathBuf>,
    /// Name of the server in reports (default: the backend).
    #[arg(long)]
    label: Option<String>,
    /// Free-form note stored with the record (hardware, server flags).
    #[arg(long)]
    note: Option<String>,
    /// No progress bar.
    #[arg(long, alias = "disable-tqdm")]
    disable_progress: bool,
}

/// `arbor bench report`.
#[derive(Args)]
struct ReportArgs {
    /// JSONL files written by `arbor bench --output` (or SGLang's bench_serving).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Also show every other label's figures divided by this label's.
    #[arg(long)]
    baseline: Option<String>,
    /// Draw throughput and latency against concurrency into this PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Title of the plot.
    #[arg(long, default_value = "arbor bench")]
    title: String,
}

/// Runs `arbor bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    init_logging();
    match args.command {
        Some(BenchCommand::Report(report_args)) => run_report(&report_args),
        None => run_benchmark(args.run),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Another subcommand may have installed a subscriber already; keep that one.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run_benchmark(args: RunArgs) -> anyhow::Result<()> {
    let tokenizer_path = tokenizer_path(&args)?;
    let tokenizer = load_tokenizer(&tokenizer_path)?;
    let spec = bench_spec(&args, &tokenizer_path)?;
    let output = args.output.clone();

    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let record = runtime
        .block_on(arbor_bench::run_benchmark(&spec, Arc::new(tokenizer)))
        .context("benchmark failed")?;

    println!("{}", report::run_summary(&record));
    if let Some(path) = output {
        record
            .append_to(&path)
            .with_context(|| format!("cannot append the record to {}", path.display()))?;
        eprintln!("record appended to {}", path.display());
    }
    Ok(())
}

fn run_report(args: &ReportArgs) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for file in &args.files {
        runs.extend(
            report::load_runs(file).with_context(|| format!("cannot read {}", file.display()))?,
        );
    }
    if runs.is_empty() {
        bail!("the files hold no runs");
    }

    println!("{}", report::runs_table(&runs));
    if let Some(baseline) = &args.baseline {
        println!("Compared with {baseline} (x = figure / {baseline}'s figure):");
        println!("{}", report::comparison_table(&runs, baseline)?);
    }
    if let Some(path) = &args.plot {
        let n_drawn = plot::draw(&runs, &args.title, path)?;
        eprintln!("plotted {n_drawn} runs to {}", path.display());
    }
    Ok(())
}

/// `--tokenizer`, else `--model` when it names a local file or directory.
fn tokenizer_path(args: &RunArgs) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.tokenizer {
        return Ok(path.clone());
    }
    match &args.model {
        Some(model) if Path::new(model).exists() => Ok(PathBuf::from(model)),
        _ => bail!(
            "token counts need the model's tokenizer: pass --tokenizer (a tokenizer.json, \
             a model directory or a .gguf file), or --model as a local path"
        ),
    }
}

/// The model's tokenizer, as `arbor-bench` counts tokens: no BOS added, special
/// tokens skipped when decoding.
struct ModelTokenizer(Tokenizer);

impl TokenCounter for ModelTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>, BenchError> {
        self.0
            .encode(text, false)
            .map_err(|e| BenchError::Tokenizer(e.to_string()))
    }

    fn decode(&self, ids: &[u32]) -> Result<String, BenchError> {
        self.0
            .decode(ids, true)
            .map_err(|e| BenchError::Tokenizer(e.to_string()))
    }

    fn vocab_size(&self) -> usize {
        self.0.vocab_size()
    }
}

fn load_tokenizer(path: &Path) -> anyhow::Result<ModelTokenizer> {
    let is_gguf = path.extension().is_some_and(|ext| ext == "gguf");
    let tokenizer = if path.is_dir() {
        Tokenizer::from_hf_dir(path)
    } else if is_gguf {
        Tokenizer::from_gguf_file(path)
    } else {
        Tokenizer::from_file(path)
    };
    let tokenizer =
        tokenizer.with_context(|| format!("cannot load the tokenizer {}", path.display()))?;
    Ok(ModelTokenizer(tokenizer))
}

fn bench_spec(args: &RunArgs, tokenizer_path: &Path) -> anyhow::Result<BenchSpec> {
    let extra_request_body = match &args.extra_request_body {
        None => serde_json::Map::new(),
        Some(text) => match serde_json::from_str(text) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => bail!("--extra-request-body must be a JSON object, got {text}"),
        },
    };
    let served_model_name = args.served_model_name.clone().or_else(|| {
        args.model
            .clone()
            .filter(|model| !Path::new(model).exists())
    });

    let target = TargetSpec {
        api: args.api,
        model: served_model_name,
        api_key: args.api_key.clone(),
        disable_ignore_eos: args.disable_ignore_eos,
        extra_request_body,
        request_timeout: Duration::from_secs(args.request_timeout_s),
        ..TargetSpec::new(args.base_url.clone(), args.backend)
    };
    Ok(BenchSpec {
        label: args.label.clone(),
        note: args.note.clone(),
        target,
        workload: workload_spec(args)?,
        load: LoadSpec {
            request_rate: args.request_rate,
            max_concurrency: args.max_concurrency,
            warmup_requests: args.warmup_requests,
            seed: args.seed,
        },
        flush_cache: !args.no_flush_cache,
        progress: !args.disable_progress,
        tokenizer: Some(tokenizer_path.display().to_string()),
    })
}

fn workload_spec(args: &RunArgs) -> anyhow::Result<WorkloadSpec> {
    Ok(match args.dataset_name.as_str() {
        "random" => WorkloadSpec::Random(RandomSpec {
            num_prompts: args.num_prompts,
            random_input_len: args.random_input_len,
            random_output_len: args.random_output_len,
            random_range_ratio: args.random_range_ratio,
            random_prompt: args.random_prompt,
        }),
        "sharegpt" => WorkloadSpec::Sharegpt(SharegptSpec {
            dataset_path: args
                .dataset_path
                .clone()
                .context("--dataset-name sharegpt needs --dataset-path FILE.json")?,
            num_prompts: args.num_prompts,
            sharegpt_output_len: args.sharegpt_output_len,
            sharegpt_context_len: args.sharegpt_context_len,
        }),
        "generated-shared-prefix" => WorkloadSpec::GeneratedSharedPrefix(SharedPrefixSpec {
            gsp_num_groups: args.gsp_num_groups,
            gsp_prompts_per_group: args.gsp_prompts_per_group,
            gsp_system_prompt_len: args.gsp_system_prompt_len,
            gsp_question_len: args.gsp_question_len,
            gsp_output_len: args.gsp_output_len,
            gsp_shared_prefix: !args.gsp_no_shared_prefix,
        }),
        "multi-turn" => WorkloadSpec::MultiTurn(MultiTurnSpec {
            mt_num_conversations: args.mt_num_conversations,
            mt_num_turns: args.mt_num_turns,
            mt_first_turn_len: args.mt_first_turn_len,
            mt_turn_len: args.mt_turn_len,
            mt_output_len: args.mt_output_len,
        }),
        other => bail!(
            "unknown --dataset-name {other:?}; expected random, sharegpt, \
             generated-shared-prefix or multi-turn"
        ),
    })
}
