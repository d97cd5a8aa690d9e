//! The real DeepSeek-R1-Distill-Qwen tokenizer and chat template
//! (tests/fixtures/deepseek-r1-distill-qwen) against `tokenizer_cases.json`, which Hugging
//! Face `tokenizers` (ids, decoded text) and `transformers` `apply_chat_template`
//! (rendered prompts) produced.

mod common;

use std::path::Path;

use arbor_models::{ChatTemplate, RenderOptions, Tokenizer};
use common::*;
use serde_json::Value;

fn cases() -> Value {
    let path = fixture_dir("deepseek-r1-distill-qwen").join("tokenizer_cases.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_hf_dir(fixture_dir("deepseek-r1-distill-qwen")).unwrap()
}

/// The template as the published repository ships it: the `chat_template` field of
/// `tokenizer_config.json`.
fn template_from_config(tokenizer: &Tokenizer) -> ChatTemplate {
    let config = fixture_dir("deepseek-r1-distill-qwen").join("tokenizer_config.json");
    ChatTemplate::from_file(&config, tokenizer.special_tokens().clone()).unwrap()
}

fn render(template: &ChatTemplate, case: &Value) -> String {
    let messages = case["messages"].as_array().unwrap();
    let options = RenderOptions {
        add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap(),
        ..RenderOptions::default()
    };
    template.render(messages, &options).unwrap()
}

#[test]
fn every_encode_case_gives_the_reference_ids_and_decodes_back_to_the_reference_text() {
    let tokenizer = tokenizer();
    let cases = cases();
    let encode_cases = cases["encode"].as_array().unwrap();
    assert!(
        encode_cases.len() >= 12,
        "fixture has {} encode cases",
        encode_cases.len()
    );
    for (case_idx, case) in encode_cases.iter().enumerate() {
        let text = case["text"].as_str().unwrap();
        let expected = ids(&case["ids"]);
        let encoded = tokenizer.encode(text, false).unwrap();
        assert_eq!(encoded, expected, "encode case {case_idx}: {text:?}");
        let decoded = tokenizer.decode(&expected, false).unwrap();
        assert_eq!(
            decoded,
            case["decoded"].as_str().unwrap(),
            "decode case {case_idx}"
        );
    }
}

#[test]
fn special_token_ids_match_the_reference_and_encoding_with_specials_prepends_bos() {
    let tokenizer = tokenizer();
    let cases = cases();
    let bos = cases["bos_token_id"].as_u64().unwrap() as u32;
    let eos = cases["eos_token_id"].as_u64().unwrap() as u32;
    assert_eq!(tokenizer.bos_token_id(), Some(bos));
    assert_eq!(tokenizer.eos_token_id(), Some(eos));
    for (text, id) in [
        ("<｜begin▁of▁sentence｜>", 151646),
        ("<｜end▁of▁sentence｜>", 151643),
        ("<｜User｜>", 151644),
        ("<｜Assistant｜>", 151645),
        ("<think>", 151648),
        ("</think>", 151649),
    ] {
        assert_eq!(tokenizer.token_to_id(text), Some(id), "{text}");
    }
    // 151,643 byte-level BPE tokens plus 22 added tokens (fixtures README).
    assert_eq!(tokenizer.vocab_size(), 151_643 + 22);

    // tokenizer_config.json sets add_bos_token, and the tokenizer.json post-processor
    // prepends the BOS, as `transformers` does for `tokenizer(text)`.
    assert!(tokenizer.add_bos_token());
    let first = &cases["encode"][0];
    let mut expected = vec![bos];
    expected.extend(ids(&first["ids"]));
    assert_eq!(
        tokenizer
            .encode(first["text"].as_str().unwrap(), true)
            .unwrap(),
        expected
    );
}

#[test]
fn every_chat_case_renders_from_tokenizer_config_to_the_reference_text_and_ids() {
    let tokenizer = tokenizer();
    let template = template_from_config(&tokenizer);
    let cases = cases();
    let chat_cases = cases["chat"].as_array().unwrap();
    assert!(!chat_cases.is_empty());
    for (case_idx, case) in chat_cases.iter().enumerate() {
        let text = render(&template, case);
        assert_eq!(text, case["text"].as_str().unwrap(), "chat case {case_idx}");
        // The rendered prompt holds its special tokens as text, so it is encoded
        // without adding any, as `apply_chat_template(tokenize=True)` does.
        let encoded = tokenizer.encode(&text, false).unwrap();
        assert_eq!(encoded, ids(&case["ids"]), "chat case {case_idx} ids");
    }
}

#[test]
fn chat_template_jinja_and_tokenizer_config_give_the_same_template() {
    let dir = fixture_dir("deepseek-r1-distill-qwen");
    let tokenizer = tokenizer();
    let special = tokenizer.special_tokens().clone();
    // The directory loader prefers chat_template.jinja (newer transformers save it).
    let from_dir = ChatTemplate::from_hf_dir(&dir, special.clone())
        .unwrap()
        .unwrap();
    let from_jinja = ChatTemplate::from_file(dir.join("chat_template.jinja"), special).unwrap();
    let from_config = template_from_config(&tokenizer);
    assert_eq!(from_dir.source(), from_config.source());
    assert_eq!(from_jinja.source(), from_config.source());
    for case in cases()["chat"].as_array().unwrap() {
        assert_eq!(render(&from_dir, case), case["text"].as_str().unwrap());
    }
}

#[test]
fn a_directory_with_only_tokenizer_config_still_yields_its_template() {
    let dir = TempDir::new("deepseek-config-only");
    let fixture = fixture_dir("deepseek-r1-distill-qwen");
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture.join(file), dir.path().join(file)).unwrap();
    }
    let tokenizer = Tokenizer::from_hf_dir(dir.path()).unwrap();
    let template = ChatTemplate::from_hf_dir(dir.path(), tokenizer.special_tokens().clone())
        .unwrap()
        .expect("tokenizer_config.json holds a chat_template");
    for case in cases()["chat"].as_array().unwrap() {
        assert_eq!(render(&template, case), case["text"].as_str().unwrap());
    }
    assert!(!Path::new(&dir.path().join("chat_template.jinja")).exists());
}
