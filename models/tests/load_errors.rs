//! Broken Hugging Face model directories: copies of the tiny fixtures in a temp dir with
//! a corrupted `config.json`, a deleted file, a tensor of the wrong shape or of a dtype
//! the loader does not take. Each must fail with one `LoadError` whose message names the
//! file at fault and the problem.

mod common;

use std::collections::HashMap;
use std::path::Path;

use arbor_models::{LoadError, Model};
use candle_core::{DType, Device, Tensor};
use common::*;
use serde_json::Value;

fn load(dir: &Path) -> LoadError {
    Model::load_safetensors_dir(dir, DType::F32, &Device::Cpu).unwrap_err()
}

/// Edits the `config.json` of `dir` as JSON.
fn edit_config(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

/// Rewrites `model.safetensors` of `dir` after `edit` changes its tensors.
fn edit_weights(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &path).unwrap();
}

/// Rewrites the JSON header of a safetensors file, keeping its data bytes.
fn edit_safetensors_header(path: &Path, edit: impl FnOnce(&mut Value)) {
    let bytes = std::fs::read(path).unwrap();
    let n_header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: Value = serde_json::from_slice(&bytes[8..8 + n_header]).unwrap();
    edit(&mut header);
    let mut text = serde_json::to_string(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n_header..]);
    std::fs::write(path, out).unwrap();
}

#[test]
fn unsupported_architecture_names_config_json_and_the_architecture() {
    let dir = TempDir::copy_of_fixture("tiny-qwen2");
    edit_config(dir.path(), |c| {
        c["architectures"] = serde_json::json!(["MistralForCausalLM"])
    });
    let err = load(dir.path());
    assert!(
        matches!(err, LoadError::UnsupportedArchitecture { .. }),
        "{err:?}"
    );
    assert_names(
        &err,
        &dir.path().join("config.json"),
        &["unsupported architecture", "MistralForCausalLM"],
    );
}

#[test]
fn config_without_any_architecture_is_reported_as_such() {
    let dir = TempDir::copy_of_fixture("tiny-llama3");
    edit_config(dir.path(), |c| {
        let c = c.as_object_mut().unwrap();
        c.remove("architectures");
        c.remove("model_type");
    });
    let err = load(dir.path());
    assert!(
        matches!(err, LoadError::UnsupportedArchitecture { .. }),
        "{err:?}"
    );
    assert_names(&err, &dir.path().join("config.json"), &["<none>"]);
}

#[test]
fn unsupported_config_feature_names_config_json_and_the_feature() {
    let dir = TempDir::copy_of_fixture("tiny-llama3");
    edit_config(dir.path(), |c| {
        c["rope_scaling"]["rope_type"] = "yarn".into()
    });
    let err = load(dir.path());
    assert!(
        matches!(err, LoadError::UnsupportedFeature { .. }),
        "{err:?}"
    );
    assert_names(&err, &dir.path().join("config.json"), &["yarn"]);

    let dir = TempDir::copy_of_fixture("tiny-qwen2");
    edit_config(dir.path(), |c| c["hidden_act"] = "gelu".into());
    assert_names(
        &load(dir.path()),
        &dir.path().join("config.json"),
        &["hidden_act", "gelu"],
    );
}

#[test]
fn malformed_config_json_names_the_file_and_the_parse_error() {
    let dir = TempDir::copy_of_fixture("tiny-qwen2");
    let path = dir.path().join("config.json");
    std::fs::write(&path, "{\"architectures\": [\"Qwen2ForCausalLM\"], ").unwrap();
    let err = load(dir.path());
    assert!(matches!(err, LoadError::Config { .. }), "{err:?}");
    assert_names(&err, &path, &["not a valid config.json"]);

    edit_config_text(&path, r#"{"architectures": ["Qwen2ForCausalLM"]}"#);
    assert_names(&load(dir.path()), &path, &["vocab_size"]);
}

fn edit_config_text(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn missing_config_json_names_the_file() {
    let dir = TempDir::copy_of_fixture("tiny-qwen2");
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let err = load(dir.path());
    assert!(matches!(err, LoadError::Io { .. }), "{err:?}");
    assert_names(
        &err,
        &dir.path().join("config.json"),
        &["cannot read", "No such file"],
    );
}

#[test]
fn missing_weights_name_the_directory_and_the_expected_files() {
    let dir = TempDir::copy_of_fixture("tiny-qwen2");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let err = load(dir.path());
    assert!(matches!(err, LoadError::Format { .. }), "{err:?}");
    assert_names(
        &err,
        dir.path(),
        &["model.safetensors", "model.safetensors.index.json"],
    );
}

#[test]
fn a_shard_the_index_names_but_that_is_missing_is_named() {
    let dir = TempDir::copy_of_fixture("tiny-qwen2");
    let tensors =
        candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu).unwrap();
    let weight_map: serde_json::Map<String, Value> = tensors
        .keys()
        .map(|name| {
            (
                name.clone(),
                Value::from("model-00001-of-00001.safetensors"),
            )
        })
        .collect();
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let err = load(dir.path());
    assert!(matches!(err, LoadError::Format { .. }), "{err:?}");
    assert_names(
        &err,
        &dir.path().join("model-00001-of-00001.safetensors"),
        &["listed in model.safetensors.index.json", "does not exist"],
    );

    // Once the shard is there, the sharded checkpoint loads.
    std::fs::rename(
        dir.path().join("model.safetensors"),
        dir.path().join("model-00001-of-00001.safetensors"),
    )
    .unwrap();
    Model::load_safetensors_dir(dir.path(), DType::F32, &Device::Cpu).unwrap();
}

#[test]
fn missing_tensor_names_the_file_and_the_tensor() {
    let dir = TempDir::copy_of_fixture("tiny-llama3");
    edit_weights(dir.path(), |t| {
        t.remove("model.layers.1.mlp.up_proj.weight").unwrap();
    });
    let err = load(dir.path());
    assert!(matches!(err, LoadError::MissingTensor { .. }), "{err:?}");
    assert_names(
        &err,
        &dir.path().join("model.safetensors"),
        &["model.layers.1.mlp.up_proj.weight", "missing"],
    );
}

#[test]
fn missing_lm_head_of_an_untied_model_is_a_missing_tensor() {
    let dir = TempDir::copy_of_fixture("tiny-qwen2");
    edit_weights(dir.path(), |t| {
        t.remove("lm_head.weight").unwrap();
    });
    let err = load(dir.path());
    assert_names(
        &err,
        &dir.path().join("model.safetensors"),
        &["lm_head.weight", "missing"],
    );
}

#[test]
fn tensor_of_the_wrong_shape_names_the_file_tensor_and_both_shapes() {
    let dir = TempDir::copy_of_fixture("tiny-qwen2");
    let name = "model.layers.0.self_attn.k_proj.weight";
    let mut original = Vec::new();
    edit_weights(dir.path(), |t| {
        let weight = t[name].clone();
        original = weight.dims().to_vec();
        t.insert(name.into(), weight.narrow(0, 0, original[0] / 2).unwrap());
    });
    let err = load(dir.path());
    let LoadError::ShapeMismatch {
        expected, found, ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(expected, &original);
    assert_eq!(found, &[original[0] / 2, original[1]]);
    let shapes = [format!("{found:?}"), format!("{expected:?}")];
    assert_names(
        &err,
        &dir.path().join("model.safetensors"),
        &[name, "has shape", &shapes[0], &shapes[1]],
    );

    // A bias of the wrong length too.
    let dir = TempDir::copy_of_fixture("tiny-qwen2");
    let bias = "model.layers.1.self_attn.q_proj.bias";
    edit_weights(dir.path(), |t| {
        let b = t[bias].clone();
        t.insert(bias.into(), b.narrow(0, 1, b.dim(0).unwrap() - 1).unwrap());
    });
    assert_names(
        &load(dir.path()),
        &dir.path().join("model.safetensors"),
        &[bias, "has shape"],
    );
}

#[test]
fn config_that_disagrees_with_the_weights_is_a_shape_mismatch() {
    let dir = TempDir::copy_of_fixture("tiny-qwen2-tied");
    edit_config(dir.path(), |c| {
        let vocab = c["vocab_size"].as_u64().unwrap();
        c["vocab_size"] = (vocab + 64).into();
    });
    let err = load(dir.path());
    assert!(matches!(err, LoadError::ShapeMismatch { .. }), "{err:?}");
    assert_names(
        &err,
        &dir.path().join("model.safetensors"),
        &["model.embed_tokens.weight", "the config implies"],
    );
}

#[test]
fn tensor_in_an_unsupported_dtype_names_the_file_tensor_and_dtype() {
    for (dtype, shown) in [(DType::F64, "F64"), (DType::I64, "I64"), (DType::U8, "U8")] {
        let dir = TempDir::copy_of_fixture("tiny-qwen2");
        let name = "model.norm.weight";
        edit_weights(dir.path(), |t| {
            let converted = t[name].to_dtype(dtype).unwrap();
            t.insert(name.into(), converted);
        });
        let err = load(dir.path());
        assert!(
            matches!(err, LoadError::UnsupportedTensorDtype { .. }),
            "{err:?}"
        );
        assert_names(
            &err,
            &dir.path().join("model.safetensors"),
            &[name, "unsupported dtype", shown],
        );
    }
}

#[test]
fn dtype_the_safetensors_format_does_not_know_is_a_format_error_naming_the_file() {
    let dir = TempDir::copy_of_fixture("tiny-qwen2");
    let path = dir.path().join("model.safetensors");
    edit_safetensors_header(&path, |h| h["model.norm.weight"]["dtype"] = "F7".into());
    let err = load(dir.path());
    assert!(matches!(err, LoadError::Format { .. }), "{err:?}");
    assert_names(
        &err,
        &path,
        &["not a readable safetensors file", "unknown variant `F7`"],
    );
}

#[test]
fn truncated_safetensors_file_is_a_format_error_naming_it() {
    let dir = TempDir::copy_of_fixture("tiny-llama3");
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load(dir.path());
    assert!(matches!(err, LoadError::Format { .. }), "{err:?}");
    assert_names(&err, &path, &["not a readable safetensors file"]);
}

#[test]
fn compute_dtype_other_than_float_is_refused_before_reading_files() {
    let err = Model::load_safetensors_dir(&fixture_dir("tiny-qwen2"), DType::U32, &Device::Cpu)
        .unwrap_err();
    assert!(
        matches!(err, LoadError::UnsupportedDtype(DType::U32)),
        "{err:?}"
    );
    assert!(err.to_string().contains("use f32, bf16 or f16"), "{err}");
}
