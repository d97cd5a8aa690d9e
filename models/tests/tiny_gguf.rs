//! The GGUF loader on a GGUF written here from the tiny Qwen2 fixture (f32 tensors,
//! llama.cpp names and metadata keys; Qwen2 files keep the Hugging Face q/k row order):
//! it must reproduce the `transformers` logits like the safetensors loader does, and
//! broken files (unsupported architecture, missing metadata or tensors, wrong shapes,
//! an unknown tensor type, a truncated file) must each give one error naming the file
//! and the problem.

mod common;

use std::collections::HashMap;
use std::path::Path;

use arbor_models::{LoadError, Model, WeightMode};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use common::*;

const FIXTURE: &str = "tiny-qwen2";

/// llama.cpp's names for the Hugging Face tensor names of a Qwen2/Llama decoder.
fn gguf_name(hf: &str) -> String {
    let fixed = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, gguf)) = fixed.iter().find(|(name, _)| *name == hf) {
        return gguf.to_string();
    }
    let rest = hf.strip_prefix("model.layers.").expect("a layer tensor");
    let (layer, part) = rest.split_once('.').unwrap();
    let parts = [
        ("input_layernorm", "attn_norm"),
        ("post_attention_layernorm", "ffn_norm"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
    ];
    let (module, suffix) = part.rsplit_once('.').unwrap();
    let (_, gguf) = parts
        .iter()
        .find(|(name, _)| *name == module)
        .expect("known module");
    format!("blk.{layer}.{gguf}.{suffix}")
}

/// The fixture's tensors under GGUF names, upcast to f32.
fn gguf_tensors() -> HashMap<String, Tensor> {
    let path = fixture_dir(FIXTURE).join("model.safetensors");
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(name, t)| (gguf_name(&name), t.to_dtype(DType::F32).unwrap()))
        .collect()
}

/// The metadata llama.cpp writes for the fixture's `config.json`.
fn gguf_metadata() -> Vec<(String, Value)> {
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir(FIXTURE).join("config.json")).unwrap(),
    )
    .unwrap();
    let int = |key: &str| Value::U32(config[key].as_u64().unwrap() as u32);
    let float = |key: &str| Value::F32(config[key].as_f64().unwrap() as f32);
    vec![
        ("general.architecture".into(), Value::String("qwen2".into())),
        ("qwen2.block_count".into(), int("num_hidden_layers")),
        (
            "qwen2.context_length".into(),
            int("max_position_embeddings"),
        ),
        ("qwen2.embedding_length".into(), int("hidden_size")),
        ("qwen2.feed_forward_length".into(), int("intermediate_size")),
        (
            "qwen2.attention.head_count".into(),
            int("num_attention_heads"),
        ),
        (
            "qwen2.attention.head_count_kv".into(),
            int("num_key_value_heads"),
        ),
        (
            "qwen2.attention.layer_norm_rms_epsilon".into(),
            float("rms_norm_eps"),
        ),
        ("qwen2.rope.freq_base".into(), float("rope_theta")),
    ]
}

/// Writes a GGUF of `metadata` and `tensors` (stored as `dtype`) to `path`.
fn write_gguf(
    path: &Path,
    metadata: &[(String, Value)],
    tensors: &HashMap<String, Tensor>,
    dtype: GgmlDType,
) {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let quantized: Vec<(&str, QTensor)> = names
        .iter()
        .map(|name| {
            (
                name.as_str(),
                QTensor::quantize(&tensors[*name], dtype).unwrap(),
            )
        })
        .collect();
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = quantized.iter().map(|(n, t)| (*n, t)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &metadata, &tensors).unwrap();
}

/// A temp dir holding `model.gguf`, written after `edit` changes metadata or tensors.
fn broken_gguf(
    edit: impl FnOnce(&mut Vec<(String, Value)>, &mut HashMap<String, Tensor>),
) -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new("tiny-gguf");
    let path = dir.path().join("model.gguf");
    let (mut metadata, mut tensors) = (gguf_metadata(), gguf_tensors());
    edit(&mut metadata, &mut tensors);
    write_gguf(&path, &metadata, &tensors, GgmlDType::F32);
    (dir, path)
}

fn load(path: &Path) -> LoadError {
    Model::load_gguf(path, WeightMode::Quantized, &Device::Cpu).unwrap_err()
}

#[test]
fn qwen2_gguf_written_from_the_tiny_fixture_matches_transformers_logits_in_both_modes() {
    let dir = TempDir::new("tiny-gguf");
    let path = dir.path().join("tiny-qwen2.f32.gguf");
    write_gguf(&path, &gguf_metadata(), &gguf_tensors(), GgmlDType::F32);
    for mode in [WeightMode::Dequantized(DType::F32), WeightMode::Quantized] {
        let model = Model::load_gguf(&path, mode, &Device::Cpu).unwrap();
        let reference =
            Model::load_safetensors_dir(&fixture_dir(FIXTURE), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(model.config().vocab_size, reference.config().vocab_size);
        assert_eq!(model.config().n_kv_heads, reference.config().n_kv_heads);
        assert!(model.config().qkv_bias && !model.config().tie_word_embeddings);
        for (case_idx, case) in tiny_cases(FIXTURE).iter().enumerate() {
            let logits = prompt_logits(&model, 32, DType::F32, &case.prompt_ids);
            let err = max_abs_diff(&logits, &case.logits);
            println!("GGUF {mode:?} case {case_idx}: max error {err:e}");
            assert!(err < 1e-4, "{mode:?} case {case_idx}: max error {err}");
            let mut kv = model.new_kv_cache(32, 16, DType::F32).unwrap();
            assert_eq!(
                greedy(&model, &mut kv, &case.prompt_ids, 16),
                case.greedy_16,
                "{mode:?} case {case_idx}"
            );
        }
    }
}

#[test]
fn missing_gguf_file_is_an_io_error_naming_it() {
    let dir = TempDir::new("tiny-gguf");
    let path = dir.path().join("absent.gguf");
    let err = load(&path);
    assert!(matches!(err, LoadError::Io { .. }), "{err:?}");
    assert_names(&err, &path, &["cannot read", "No such file"]);
}

#[test]
fn unsupported_gguf_architecture_names_the_file_and_the_architecture() {
    let (_dir, path) = broken_gguf(|meta, _| meta[0].1 = Value::String("gemma2".into()));
    let err = load(&path);
    assert!(
        matches!(err, LoadError::UnsupportedArchitecture { .. }),
        "{err:?}"
    );
    assert_names(&err, &path, &["unsupported architecture", "gemma2"]);
}

#[test]
fn missing_metadata_key_names_the_file_and_the_key() {
    let (_dir, path) = broken_gguf(|meta, _| meta.retain(|(key, _)| key != "qwen2.block_count"));
    let err = load(&path);
    assert!(matches!(err, LoadError::Config { .. }), "{err:?}");
    assert_names(&err, &path, &["qwen2.block_count", "missing"]);
}

#[test]
fn missing_gguf_tensor_names_the_file_and_the_tensor() {
    let (_dir, path) = broken_gguf(|_, tensors| {
        tensors.remove("blk.1.ffn_up.weight").unwrap();
    });
    let err = load(&path);
    assert!(matches!(err, LoadError::MissingTensor { .. }), "{err:?}");
    assert_names(&err, &path, &["blk.1.ffn_up.weight", "missing"]);
}

#[test]
fn gguf_tensor_of_the_wrong_shape_names_the_file_tensor_and_both_shapes() {
    let (_dir, path) = broken_gguf(|_, tensors| {
        let k = tensors["blk.0.attn_k.weight"].clone();
        // Fresh storage: `QTensor::quantize` reads a view's whole backing buffer.
        let rows = k.narrow(0, 0, 32).unwrap().to_vec2::<f32>().unwrap();
        tensors.insert(
            "blk.0.attn_k.weight".into(),
            Tensor::new(rows, &Device::Cpu).unwrap(),
        );
    });
    let err = load(&path);
    assert!(matches!(err, LoadError::ShapeMismatch { .. }), "{err:?}");
    assert_names(
        &err,
        &path,
        &["blk.0.attn_k.weight", "[32, 128]", "[64, 128]"],
    );
}

#[test]
fn unknown_gguf_tensor_type_names_the_file_and_the_problem() {
    let dir = TempDir::new("tiny-gguf");
    let path = dir.path().join("model.gguf");
    write_gguf(&path, &gguf_metadata(), &gguf_tensors(), GgmlDType::F32);
    // Tensor info: name (u64 length + bytes), n_dims u32, dims u64 each, type u32.
    let mut bytes = std::fs::read(&path).unwrap();
    let name = b"output_norm.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let type_at = at + 4 + 8 * n_dims;
    assert_eq!(
        &bytes[type_at..type_at + 4],
        &0u32.to_le_bytes(),
        "f32 type code"
    );
    bytes[type_at..type_at + 4].copy_from_slice(&99u32.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let err = load(&path);
    assert!(matches!(err, LoadError::Format { .. }), "{err:?}");
    assert_names(
        &err,
        &path,
        &["not a readable GGUF file", "unknown dtype", "99"],
    );
}

#[test]
fn truncated_gguf_names_the_file() {
    let dir = TempDir::new("tiny-gguf");
    let path = dir.path().join("model.gguf");
    write_gguf(&path, &gguf_metadata(), &gguf_tensors(), GgmlDType::F32);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load(&path);
    assert_names(&err, &path, &[]);
}
