//! `arbor plan`: how a model would fit a GPU of a given size (weights, activation
//! workspace, KV cache and how many tokens it holds), computed from its `config.json` or
//! GGUF header alone, on any machine. It is the plan `serve --device cuda` makes at
//! start-up, without the GPU: for example, whether the 8B distill in Q4_K_M fits a 12 GB
//! card and with how much KV.

use anyhow::Context;
use arbor_engine::{EngineConfig, Gib, KvBudget, LoadOptions, ModelDType, plan_model};
use arbor_models::ModelSource;
use serde_json::json;

use crate::serve::parse_kv_memory;

/// Arguments of `arbor plan`.
#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// Model: a .gguf file, a Hugging Face model directory, a repo id or `smollm2`.
    #[arg(long)]
    pub model: String,

    /// The GPU's memory: 80GiB, 12GiB, 24GB, ... (what `nvidia-smi` reports as total).
    #[arg(long, value_parser = parse_gpu_memory)]
    pub gpu_memory: u64,

    /// Weight type, as for `arbor serve`.
    #[arg(long, default_value = "auto")]
    pub dtype: ModelDType,

    /// KV-cache type, as for `arbor serve` on a GPU.
    #[arg(long, default_value = "auto")]
    pub kv_cache_dtype: ModelDType,

    /// Share of the GPU for weights, workspace and KV (0.9, the default), or a KV
    /// cache size in bytes that must fit beside them.
    #[arg(long, value_parser = parse_kv_memory)]
    pub kv_cache_memory: Option<KvBudget>,

    /// Token slots per KV-cache page.
    #[arg(long, default_value_t = 16)]
    pub page_size: usize,

    /// Most new tokens in one forward pass (sizes the activation workspace).
    #[arg(long, default_value_t = 8192)]
    pub max_batched_tokens: usize,

    /// Most sequences in one batch (sizes the logits).
    #[arg(long, default_value_t = 256)]
    pub max_running_requests: usize,

    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Runs `arbor plan`; fails, naming the sizes, when the model does not fit.
pub fn run(args: PlanArgs) -> anyhow::Result<()> {
    let source = ModelSource::resolve(&args.model)
        .with_context(|| format!("cannot find model {}", args.model))?;
    let load = LoadOptions {
        dtype: args.dtype,
        kv_cache_dtype: args.kv_cache_dtype,
        ..LoadOptions::default()
    };
    let config = EngineConfig {
        page_size: args.page_size,
        kv_cache: args.kv_cache_memory.unwrap_or(KvBudget::Fraction(0.9)),
        max_batched_tokens: args.max_batched_tokens,
        max_running_requests: args.max_running_requests,
        ..EngineConfig::default()
    };
    let memory = args.gpu_memory;
    let (footprint, plan) = plan_model(source.path(), &load, &config, memory, memory)?;
    let kv_dtype = format!("{:?}", footprint.kv_dtype).to_lowercase();
    if args.json {
        let out = json!({
            "model": source.path(),
            "gpu_memory_bytes": memory,
            "weights_bytes": plan.weights_bytes,
            "workspace_bytes": plan.workspace_bytes,
            "kv_bytes": plan.kv_bytes,
            "kv_dtype": kv_dtype,
            "kv_bytes_per_token": plan.kv_bytes_per_token,
            "kv_tokens": plan.kv_tokens,
            "n_kv_pages": plan.n_pages,
            "total_bytes": plan.total_bytes,
        });
        println!("{out}");
        return Ok(());
    }
    println!("model      {}", source.path().display());
    println!("weights    {}", Gib(plan.weights_bytes));
    println!("workspace  {}", Gib(plan.workspace_bytes));
    println!(
        "kv cache   {} in {kv_dtype}: {} tokens ({} pages of {})",
        Gib(plan.kv_bytes),
        plan.kv_tokens,
        plan.n_pages,
        args.page_size
    );
    println!("total      {} of {}", Gib(plan.total_bytes), Gib(memory));
    Ok(())
}

/// `--gpu-memory`: bytes with an optional unit, as `--kv-cache-memory` takes them.
fn parse_gpu_memory(s: &str) -> Result<u64, String> {
    match parse_kv_memory(s)? {
        KvBudget::Bytes(bytes) => Ok(bytes),
        _ => Err(format!(
            "invalid GPU memory {s:?}: give bytes, such as 80GiB"
        )),
    }
}
