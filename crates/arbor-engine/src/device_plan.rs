//! `Engine::load`'s memory plan for a GPU: before any weight is read, the model's
//! footprint (shape, weight storage, KV dtype) is planned against the device's memory
//! with the engine's batch limits; a model that does not fit is refused with the sizes,
//! and one that fits gets exactly the planned number of KV pages.

use std::path::Path;

use anyhow::Context;
use candle_core::Device;

use crate::api::{EngineConfig, KvBudget, LoadOptions};
use crate::footprint::{ModelFootprint, device_memory};
use crate::plan::{Gib, MemoryPlan, PlanRequest, RUNTIME_RESERVE_BYTES, WeightFormat};

/// The plan for the model at `path` on `device`; `None` on the CPU, where the pool is
/// sized from the budget alone.
pub(crate) fn plan_for_device(
    path: &Path,
    load: &LoadOptions,
    config: &EngineConfig,
    device: &Device,
) -> anyhow::Result<Option<MemoryPlan>> {
    if device.is_cpu() {
        return Ok(None);
    }
    let label = device_label(device);
    let (free, total) = device_memory(device)
        .with_context(|| format!("the CUDA driver did not report the memory of {label}"))?;
    let (footprint, plan) = plan_model(path, load, config, total, free)
        .with_context(|| format!("cannot start on {label}"))?;
    let gib = |bytes: u64| (bytes as f64 / (1u64 << 30) as f64 * 100.0).round() / 100.0;
    tracing::info!(
        device = %label,
        weights_gib = gib(plan.weights_bytes),
        workspace_gib = gib(plan.workspace_bytes),
        kv_gib = gib(plan.kv_bytes),
        kv_dtype = ?footprint.kv_dtype,
        kv_tokens = plan.kv_tokens,
        n_kv_pages = plan.n_pages,
        total_gib = gib(plan.total_bytes),
        device_gib = gib(total),
        free_gib = gib(free),
        "memory plan"
    );
    Ok(Some(plan))
}

/// Plans the model at `path`, loaded as `load` says with `config`'s batch limits and KV
/// budget, on a GPU of `total` bytes with `free` of them free, reading only its
/// `config.json` or GGUF header. `arbor plan` asks this for any GPU size on any machine.
pub fn plan_model(
    path: &Path,
    load: &LoadOptions,
    config: &EngineConfig,
    total: u64,
    free: u64,
) -> anyhow::Result<(ModelFootprint, MemoryPlan)> {
    let footprint = ModelFootprint::from_path(path, load.dtype, load.kv_cache_dtype, true)
        .with_context(|| format!("cannot plan memory for {}", path.display()))?;
    let plan = plan_against(&footprint, config, total, free)
        .with_context(|| format!("{} does not fit in {}", path.display(), Gib(total)))?;
    Ok((footprint, plan))
}

/// Plans `footprint` on a device of `total` bytes with `free` of them free now: the plan
/// must fit the device, and (less the CUDA context this process already holds, which
/// `free` excludes) what is free.
pub(crate) fn plan_against(
    footprint: &ModelFootprint,
    config: &EngineConfig,
    total: u64,
    free: u64,
) -> anyhow::Result<MemoryPlan> {
    let request = PlanRequest {
        shape: footprint.shape.clone(),
        weights: footprint.weights,
        kv_dtype_bytes: footprint.kv_dtype_bytes(),
        device_memory_bytes: total,
        kv_budget: config.kv_cache,
        page_size: config.page_size,
        max_batched_tokens: config.max_batched_tokens,
        max_running_requests: config.max_running_requests,
    };
    let plan = request.plan().map_err(|e| {
        let hint = match footprint.weights == (WeightFormat::Dense { bytes_per_param: 4 }) {
            true => " (weights load in f32 with --dtype auto; try --dtype bf16)",
            false => "",
        };
        anyhow::anyhow!("{e}{hint}")
    })?;
    let needed = plan.total_bytes.saturating_sub(RUNTIME_RESERVE_BYTES / 2);
    if needed > free {
        let budget_hint = match config.kv_cache {
            KvBudget::Fraction(_) => "lower --kv-cache-memory",
            _ => "give --kv-cache-memory fewer bytes or pages",
        };
        anyhow::bail!(
            "the device has {:.2} GiB free but the plan needs {:.2} GiB ({plan}); other \
             processes hold the rest: free the GPU or {budget_hint}",
            free as f64 / (1u64 << 30) as f64,
            needed as f64 / (1u64 << 30) as f64
        );
    }
    Ok(plan)
}

fn device_label(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use candle_core::DType;

    use super::*;
    use crate::api::ModelDType;

    const GIB: u64 = 1 << 30;

    fn tiny_qwen2() -> ModelFootprint {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-qwen2");
        ModelFootprint::from_path(&dir, ModelDType::Auto, ModelDType::Auto, true).unwrap()
    }

    fn config(kv_cache: KvBudget) -> EngineConfig {
        EngineConfig {
            kv_cache,
            ..EngineConfig::default()
        }
    }

    #[test]
    fn a_fraction_gives_the_kv_what_is_left_of_the_device() {
        let footprint = tiny_qwen2();
        let plan = plan_against(
            &footprint,
            &config(KvBudget::Fraction(0.5)),
            8 * GIB,
            8 * GIB,
        );
        let plan = plan.unwrap();
        assert!(plan.total_bytes <= 4 * GIB, "{plan}");
        assert!(
            plan.total_bytes + plan.kv_bytes_per_token * 16 > 4 * GIB,
            "{plan}"
        );
        assert_eq!(
            plan.kv_tokens,
            plan.n_pages * EngineConfig::default().page_size
        );
    }

    #[test]
    fn bf16_kv_holds_twice_the_tokens_of_f32_in_the_same_bytes() {
        let f32_kv = tiny_qwen2();
        assert_eq!(f32_kv.kv_dtype, DType::F32);
        let bf16_kv = ModelFootprint {
            kv_dtype: DType::BF16,
            ..f32_kv.clone()
        };
        let budget = config(KvBudget::Bytes(GIB));
        let a = plan_against(&f32_kv, &budget, 8 * GIB, 8 * GIB).unwrap();
        let b = plan_against(&bf16_kv, &budget, 8 * GIB, 8 * GIB).unwrap();
        assert_eq!(b.kv_bytes_per_token * 2, a.kv_bytes_per_token);
        assert!(b.kv_tokens >= 2 * a.kv_tokens, "{a} vs {b}");
    }

    #[test]
    fn a_plan_beyond_the_free_memory_is_refused_with_the_sizes() {
        let footprint = tiny_qwen2();
        let err = plan_against(
            &footprint,
            &config(KvBudget::Bytes(4 * GIB)),
            8 * GIB,
            2 * GIB,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("2.00 GiB free"), "{err}");
        assert!(err.contains("give --kv-cache-memory fewer"), "{err}");
    }

    #[test]
    fn f32_weights_that_do_not_fit_suggest_bf16() {
        let mut footprint = tiny_qwen2();
        footprint.shape.n_layers = 100_000;
        footprint.shape.intermediate_size = 100_000;
        let err = plan_against(
            &footprint,
            &config(KvBudget::Fraction(0.9)),
            8 * GIB,
            8 * GIB,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("try --dtype bf16"), "{err}");
    }
}
