//! Resolving a Hugging Face repo id when the hub cannot be reached: the endpoint is
//! `http://127.0.0.1:1`, where nothing listens, so the connection is refused at once
//! and the tests need no network. The cache is an empty temp dir.

mod common;

use arbor_models::source::{DemoOptions, HubOptions};
use arbor_models::{ModelSpec, ResolveOptions, SourceError};
use common::*;

fn options(cache: &TempDir, offline: bool) -> ResolveOptions {
    ResolveOptions {
        hub: HubOptions {
            cache_dir: cache.path().to_path_buf(),
            endpoint: Some("http://127.0.0.1:1".into()),
            token: None,
            offline,
            progress: false,
        },
        demo: DemoOptions::from_env(),
    }
}

#[test]
fn unreachable_hub_gives_a_download_error_naming_repo_file_and_endpoint() {
    let cache = TempDir::new("hub-cache");
    let spec = ModelSpec::parse("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B").unwrap();
    let err = spec.resolve(&options(&cache, false)).unwrap_err();
    let message = err.to_string();
    println!("{message}");
    assert!(matches!(err, SourceError::Download { .. }), "{err:?}");
    for part in [
        "config.json",
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
        "http://127.0.0.1:1",
        "HF_HUB_OFFLINE",
    ] {
        assert!(message.contains(part), "no `{part}` in: {message}");
    }
    assert!(!message.contains('\n'), "one line expected: {message}");
}

#[test]
fn unreachable_hub_for_one_gguf_names_that_file() {
    let cache = TempDir::new("hub-cache");
    let spec = ModelSpec::parse("owner/model-GGUF:model.Q4_K_M.gguf").unwrap();
    let err = spec.resolve(&options(&cache, false)).unwrap_err();
    println!("{err}");
    assert!(
        matches!(err, SourceError::Download { ref file, .. } if file == "model.Q4_K_M.gguf"),
        "{err:?}"
    );
}

#[test]
fn offline_mode_with_an_empty_cache_names_the_file_and_the_cache() {
    let cache = TempDir::new("hub-cache");
    let spec = ModelSpec::parse("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B").unwrap();
    let err = spec.resolve(&options(&cache, true)).unwrap_err();
    let message = err.to_string();
    println!("{message}");
    assert!(matches!(err, SourceError::NotCached { .. }), "{err:?}");
    assert!(message.contains("config.json"), "{message}");
    assert!(
        message.contains(&cache.path().display().to_string()),
        "{message}"
    );
}
