//! The real SmolLM2-135M-Instruct GGUF (Llama architecture, Q4_1 matrices, Q8_0 tied
//! embedding) against `transformers`' greedy continuations of the dequantized file
//! (tests/fixtures/smollm2-135m-instruct/reference.json).
//!
//! The file comes from `ARBOR_SMOLLM2_GGUF` (`scripts/fetch-smollm2.sh` fetches it and
//! prints its path); without it the tests print why and pass, so that an offline
//! checkout still tests the rest.

mod common;

use std::path::PathBuf;

use arbor_models::{LogitsWanted, Model, ModelAssets, ModelSource, RenderOptions, WeightMode};
use candle_core::{DType, Device};
use common::*;
use serde_json::Value;

const EOS: u32 = 2;

/// Path of the GGUF from `ARBOR_SMOLLM2_GGUF`, or `None` (with a printed reason) when
/// the variable is unset. A set variable naming no file is a test failure.
fn gguf_path() -> Option<PathBuf> {
    let Some(path) = std::env::var_os("ARBOR_SMOLLM2_GGUF").filter(|p| !p.is_empty()) else {
        println!(
            "skipping: ARBOR_SMOLLM2_GGUF is unset; `scripts/fetch-smollm2.sh` fetches the \
             file and prints its path"
        );
        return None;
    };
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "ARBOR_SMOLLM2_GGUF={} is not a file",
        path.display()
    );
    Some(path)
}

struct Case {
    /// The chat messages of a chat case; `None` for a plain-text case.
    messages: Option<Value>,
    /// The prompt text: the rendered chat, or the plain text.
    prompt: String,
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
}

fn cases() -> Vec<Case> {
    let path = fixture_dir("smollm2-135m-instruct").join("reference.json");
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            messages: c.get("messages").cloned(),
            prompt: c["prompt"].as_str().unwrap().to_owned(),
            prompt_ids: ids(&c["prompt_ids"]),
            greedy_ids: ids(&c["greedy_32_ids"]),
        })
        .collect()
}

#[test]
fn dequantized_f32_greedy_ids_match_transformers_for_every_prompt() {
    let Some(path) = gguf_path() else { return };
    let model = Model::load_gguf(&path, WeightMode::Dequantized(DType::F32), &Device::Cpu).unwrap();
    assert_eq!(model.config().vocab_size, 49152);
    assert!(model.config().tie_word_embeddings);
    for (case_idx, case) in cases().iter().enumerate() {
        let mut kv = model.new_kv_cache(8, 16, DType::F32).unwrap();
        let mut ids = greedy(&model, &mut kv, &case.prompt_ids, case.greedy_ids.len());
        // The reference stops at end-of-sequence; so do we.
        if let Some(eos_at) = ids.iter().position(|&t| t == EOS) {
            ids.truncate(eos_at + 1);
        }
        assert_eq!(ids, case.greedy_ids, "case {case_idx}");
    }
}

/// Teacher-forced along the reference continuation: at each position after the prompt,
/// does the quantized model's top token equal the reference's next token? With the KV
/// cache in f32 and in bf16 (what a GPU uses for quantized weights).
#[test]
fn q4_1_quantized_weights_agree_with_most_reference_next_tokens() {
    let Some(path) = gguf_path() else { return };
    let model = Model::load_gguf(&path, WeightMode::Quantized, &Device::Cpu).unwrap();
    for kv_dtype in [DType::F32, DType::BF16] {
        let (mut agree, mut total) = (0, 0);
        for case in cases() {
            let mut kv = model.new_kv_cache(8, 16, kv_dtype).unwrap();
            let mut dealer = PageDealer::new(8);
            let mut seq = TestSeq::new();
            let n_prompt = case.prompt_ids.len();
            let mut tokens = case.prompt_ids.clone();
            tokens.extend_from_slice(&case.greedy_ids[..case.greedy_ids.len() - 1]);
            let logits = forward_one(
                &model,
                &mut kv,
                &mut seq,
                &mut dealer,
                &tokens,
                LogitsWanted::All,
            );
            let predicted = &argmax_rows(&logits)[n_prompt - 1..];
            total += predicted.len();
            agree += predicted
                .iter()
                .zip(&case.greedy_ids)
                .filter(|(a, b)| a == b)
                .count();
        }
        println!(
            "Q4_1 quantized, {kv_dtype:?} KV: {agree}/{total} teacher-forced next tokens agree \
             with the reference"
        );
        // The fixtures README expects a Q4_1 implementation to "agree on most next
        // tokens"; that is the bound asserted. Arbor measured 130/136 with Candle's
        // Q8_1-activation matmul and 136/136 with its own f32-activation kernel
        // (kernels/src/quantized_matmul.rs); a tighter floor would only encode those
        // observations.
        assert!(
            agree * 2 > total,
            "{kv_dtype:?} KV: only {agree}/{total} agree"
        );
    }
}

#[test]
fn gguf_tokenizer_encodes_every_reference_prompt_to_the_reference_ids() {
    let Some(path) = gguf_path() else { return };
    let assets = ModelAssets::load(&ModelSource::Gguf(path)).unwrap();
    let tokenizer = &assets.tokenizer;
    assert_eq!(tokenizer.bos_token_id(), Some(1));
    assert_eq!(tokenizer.eos_token_id(), Some(EOS));
    assert!(assets.generation.eos_token_ids.contains(&EOS));
    for (case_idx, case) in cases().iter().enumerate() {
        let encoded = tokenizer.encode(&case.prompt, false).unwrap();
        assert_eq!(
            encoded, case.prompt_ids,
            "case {case_idx}: {:?}",
            case.prompt
        );
        let decoded = tokenizer.decode(&case.prompt_ids, false).unwrap();
        assert_eq!(decoded, case.prompt, "case {case_idx} decoded");
        if case.messages.is_none() {
            // `tokenizer(text)` in transformers adds no BOS for this model.
            assert_eq!(
                tokenizer.encode(&case.prompt, true).unwrap(),
                case.prompt_ids
            );
        }
    }
}

#[test]
fn chatml_template_from_gguf_metadata_renders_every_chat_case_to_the_reference_prompt() {
    let Some(path) = gguf_path() else { return };
    let assets = ModelAssets::load(&ModelSource::Gguf(path)).unwrap();
    let template = assets
        .chat_template
        .expect("the GGUF holds tokenizer.chat_template");
    let options = RenderOptions {
        add_generation_prompt: true,
        ..RenderOptions::default()
    };
    let chat_cases: Vec<Case> = cases()
        .into_iter()
        .filter(|c| c.messages.is_some())
        .collect();
    assert_eq!(chat_cases.len(), 3);
    for (case_idx, case) in chat_cases.iter().enumerate() {
        let messages = case.messages.as_ref().unwrap().as_array().unwrap();
        let text = template.render(messages, &options).unwrap();
        assert_eq!(text, case.prompt, "chat case {case_idx}");
    }
}
