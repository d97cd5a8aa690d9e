//! Reading `tests/fixtures` and finding the SmolLM2 GGUF, for the integration tests of
//! several crates, which include this file with
//! `#[path = "../../../tests/support/fixtures.rs"] mod fixtures;` (Cargo does not build
//! files in subdirectories of `tests/` as tests of their own).

#![allow(dead_code)] // each test crate uses a different part

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The repository's `tests/fixtures`, found above the including crate's directory.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join("tests/fixtures"))
        .find(|dir| dir.is_dir())
        .expect("tests/fixtures above the crate")
}

/// A fixture model's directory, such as `tiny-qwen2`.
pub fn fixture(model: &str) -> PathBuf {
    fixtures().join(model)
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A JSON array of token ids.
pub fn ids(value: &Value) -> Vec<u32> {
    let items = value
        .as_array()
        .unwrap_or_else(|| panic!("not an id list: {value}"));
    items.iter().map(|id| id.as_u64().unwrap() as u32).collect()
}

/// (prompt_ids, greedy_16) of each case of a tiny model's `reference.json`, which
/// transformers produced.
pub fn tiny_cases(model: &str) -> Vec<(Vec<u32>, Vec<u32>)> {
    cases(&fixture(model).join("reference.json"), "greedy_16")
}

/// The SmolLM2-135M-Instruct reference (`smollm2-135m-instruct/reference.json`).
pub fn smollm2_reference() -> Value {
    read_json(&fixtures().join("smollm2-135m-instruct/reference.json"))
}

/// (prompt_ids, greedy_32_ids) of the SmolLM2 reference cases.
pub fn smollm2_cases() -> Vec<(Vec<u32>, Vec<u32>)> {
    cases(
        &fixtures().join("smollm2-135m-instruct/reference.json"),
        "greedy_32_ids",
    )
}

/// The SmolLM2 GGUF named by `ARBOR_SMOLLM2_GGUF` (`./scripts/test.sh` sets it), or
/// `None` after saying that the calling test is skipped.
pub fn smollm2() -> Option<PathBuf> {
    match std::env::var_os("ARBOR_SMOLLM2_GGUF") {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ => {
            println!(
                "skipped: set ARBOR_SMOLLM2_GGUF to the SmolLM2 GGUF (./scripts/fetch-smollm2.sh)"
            );
            None
        }
    }
}

fn cases(path: &Path, greedy_field: &str) -> Vec<(Vec<u32>, Vec<u32>)> {
    let reference = read_json(path);
    let cases = reference["cases"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: no cases", path.display()));
    cases
        .iter()
        .map(|c| (ids(&c["prompt_ids"]), ids(&c[greedy_field])))
        .collect()
}
