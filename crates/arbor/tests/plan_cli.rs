//! `arbor plan` run as a process: the GPU memory plan of a model from its files alone.
//! The real DeepSeek-R1-Distill configurations come from `tests/fixtures/models.json`
//! (written out as a `config.json`, which is all the plan reads of a model directory).

#[path = "../../../tests/support/fixtures.rs"]
mod fixtures;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fixtures::{fixture, fixtures, read_json, smollm2};
use serde_json::Value;

fn arbor_plan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arbor"))
        .arg("plan")
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .expect("the arbor binary runs")
}

/// Runs `arbor plan`, which must fail; returns its stderr.
fn plan_fails(args: &[&str]) -> String {
    let out = arbor_plan(args);
    assert!(!out.status.success(), "arbor plan {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn plan_json(model: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--model", model.to_str().unwrap(), "--json"];
    all.extend(args);
    let out = arbor_plan(&all);
    assert!(
        out.status.success(),
        "arbor plan {all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

/// A directory holding only the `config.json` of one of `models.json`'s models.
fn config_only(name: &str) -> PathBuf {
    let models = read_json(&fixtures().join("models.json"));
    let config = &models["models"][name];
    assert!(config.is_object(), "{name} is not in models.json");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("plan-{}", name.rsplit('/').next().unwrap()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    dir
}

const GIB: f64 = (1u64 << 30) as f64;

#[test]
fn qwen_32b_in_bf16_on_an_80_gb_h100_gets_tens_of_thousands_of_kv_tokens() {
    let dir = config_only("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B");
    let plan = plan_json(&dir, &["--dtype", "bf16", "--gpu-memory", "81559MiB"]);
    let weights_gib = plan["weights_bytes"].as_f64().unwrap() / GIB;
    assert!((weights_gib - 61.03).abs() < 0.05, "{plan}");
    assert_eq!(plan["kv_dtype"], "bf16");
    // 64 layers x 8 KV heads x 128 dims x K and V x 2 bytes.
    assert_eq!(plan["kv_bytes_per_token"], 256 * 1024);
    let tokens = plan["kv_tokens"].as_u64().unwrap();
    assert!((25_000..40_000).contains(&tokens), "{plan}");
    let total = plan["total_bytes"].as_f64().unwrap();
    assert!(total <= 0.9 * 81559.0 * 1024.0 * 1024.0, "{plan}");
}

#[test]
fn a_bf16_kv_cache_plans_twice_the_tokens_of_f32() {
    let model = fixture("tiny-qwen2");
    let f32_kv = plan_json(&model, &["--gpu-memory", "2GiB"]);
    let bf16_kv = plan_json(
        &model,
        &["--gpu-memory", "2GiB", "--kv-cache-dtype", "bf16"],
    );
    assert_eq!(f32_kv["kv_dtype"], "f32");
    assert_eq!(bf16_kv["kv_dtype"], "bf16");
    let (a, b) = (
        f32_kv["kv_tokens"].as_u64().unwrap(),
        bf16_kv["kv_tokens"].as_u64().unwrap(),
    );
    assert!(b >= 2 * a && b <= 2 * a + 16, "{a} f32 vs {b} bf16 tokens");
}

#[test]
fn a_quantized_gguf_keeps_its_kv_in_bf16_on_a_12_gb_card() {
    let Some(gguf) = smollm2() else { return };
    let plan = plan_json(&gguf, &["--gpu-memory", "12GiB"]);
    assert_eq!(plan["kv_dtype"], "bf16");
    // The weights are the file's tensors: a little under the file's size.
    let file = std::fs::metadata(&gguf).unwrap().len() as f64;
    let weights = plan["weights_bytes"].as_f64().unwrap();
    assert!(weights <= file && weights > 0.9 * file, "{plan}");
}

#[test]
fn a_model_that_does_not_fit_is_refused_with_the_sizes() {
    let model = fixture("tiny-qwen2");
    let stderr = plan_fails(&["--model", model.to_str().unwrap(), "--gpu-memory", "512MiB"]);
    assert!(stderr.contains("does not fit in 0.50 GiB"), "{stderr}");
    assert!(stderr.contains("activation workspace"), "{stderr}");

    let stderr = plan_fails(&["--model", model.to_str().unwrap(), "--gpu-memory", "0.5"]);
    assert!(stderr.contains("give bytes, such as 80GiB"), "{stderr}");
}
