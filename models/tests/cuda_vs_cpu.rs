//! The tiny fixture models on a CUDA GPU against the same models on the CPU and against
//! the logits `transformers` produced: whole prompts, greedy decoding through the paged
//! cache, and 16-bit weights and KV storage. Built only with the `cuda` feature; prints
//! a skip message and passes where no GPU or driver can be opened.
//!
//! A `cuda` build links the CUDA libraries at load time, so on a machine without the
//! driver this test binary does not start at all; `scripts/check-cuda.sh` only compiles
//! it, `scripts/gpu-check.sh` runs the same comparison through `arbor generate`.

#![cfg(feature = "cuda")]

mod common;

use arbor_models::Model;
use arbor_models::device::open_device;
use candle_core::{DType, Device};
use common::*;

const MODELS: [&str; 3] = ["tiny-qwen2", "tiny-qwen2-tied", "tiny-llama3"];

/// f32 on the GPU: cuBLAS sums in another order than Candle's CPU matmul, so allow a
/// little more than the CPU's 1e-4 agreement with `transformers`.
const F32_TOLERANCE: f32 = 1e-3;

/// The GPU, or `None` after printing why the test is skipped.
fn gpu() -> Option<Device> {
    match open_device("cuda:0") {
        Ok(device) => Some(device),
        Err(err) => {
            println!("skipped: no CUDA GPU ({err})");
            None
        }
    }
}

fn load(name: &str, dtype: DType, device: &Device) -> Model {
    Model::load_safetensors_dir(&fixture_dir(name), dtype, device).unwrap()
}

#[test]
fn f32_logits_on_the_gpu_match_the_cpu_and_transformers() {
    let Some(gpu) = gpu() else { return };
    for name in MODELS {
        let on_gpu = load(name, DType::F32, &gpu);
        let on_cpu = load(name, DType::F32, &Device::Cpu);
        for (case_idx, case) in tiny_cases(name).iter().enumerate() {
            let gpu_logits = prompt_logits(&on_gpu, 64, DType::F32, &case.prompt_ids);
            let cpu_logits = prompt_logits(&on_cpu, 64, DType::F32, &case.prompt_ids);
            let vs_cpu = max_abs_diff(&gpu_logits, &cpu_logits);
            let vs_reference = max_abs_diff(&gpu_logits, &case.logits);
            println!(
                "{name} case {case_idx}: gpu vs cpu {vs_cpu:e}, vs transformers {vs_reference:e}"
            );
            assert!(
                vs_cpu < F32_TOLERANCE,
                "{name} case {case_idx}: gpu vs cpu {vs_cpu}"
            );
            assert!(
                vs_reference < F32_TOLERANCE,
                "{name} case {case_idx}: {vs_reference}"
            );
        }
    }
}

#[test]
fn greedy_decoding_on_the_gpu_reproduces_greedy_16() {
    let Some(gpu) = gpu() else { return };
    for name in MODELS {
        let model = load(name, DType::F32, &gpu);
        for (case_idx, case) in tiny_cases(name).iter().enumerate() {
            // Page size 1 over a scrambled pool: every decode step reads a new page.
            let mut kv = model.new_kv_cache(300, 1, DType::F32).unwrap();
            let ids = greedy(&model, &mut kv, &case.prompt_ids, 16);
            assert_eq!(ids, case.greedy_16, "{name} case {case_idx}");
        }
    }
}

#[test]
fn bf16_weights_and_kv_on_the_gpu_err_no_more_than_on_the_cpu() {
    let Some(gpu) = gpu() else { return };
    for name in MODELS {
        let on_gpu = load(name, DType::BF16, &gpu);
        let on_cpu = load(name, DType::BF16, &Device::Cpu);
        for (case_idx, case) in tiny_cases(name).iter().enumerate() {
            let gpu_err = max_abs_diff(
                &prompt_logits(&on_gpu, 64, DType::BF16, &case.prompt_ids),
                &case.logits,
            );
            let cpu_err = max_abs_diff(
                &prompt_logits(&on_cpu, 64, DType::BF16, &case.prompt_ids),
                &case.logits,
            );
            println!("{name} case {case_idx}: bf16 error gpu {gpu_err:e}, cpu {cpu_err:e}");
            // Both round to bf16 at the same points; the GPU accumulates in f32 as the CPU
            // does, so its error stays of the CPU's order.
            assert!(
                gpu_err <= 2.0 * cpu_err + 1e-2,
                "{name} case {case_idx}: gpu {gpu_err}, cpu {cpu_err}"
            );
        }
    }
}
