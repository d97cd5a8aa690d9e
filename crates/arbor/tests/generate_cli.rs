//! `arbor generate` run as a process, on the tiny random models of `tests/fixtures` and
//! on SmolLM2-135M-Instruct when `ARBOR_SMOLLM2_GGUF` names its GGUF. Outputs are
//! checked against the fixtures' greedy ids, which `transformers` computed, and a
//! prompts file is checked against each of its prompts run alone.

#[path = "../../../tests/support/fixtures.rs"]
mod fixtures;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fixtures::{fixture, ids, smollm2, smollm2_reference, tiny_cases};
use serde_json::Value;

const TINY_MODELS: [&str; 3] = ["tiny-llama3", "tiny-qwen2", "tiny-qwen2-tied"];

#[test]
fn prompt_ids_give_the_reference_greedy_ids_on_every_tiny_model() {
    for model in TINY_MODELS {
        for (prompt_ids, greedy) in tiny_cases(model) {
            let out = generate_json(&fixture(model), &prompt_ids, &["--max-tokens", "16"]);
            assert_eq!(ids(&out["prompt_ids"]), prompt_ids, "{model}");
            assert_eq!(
                ids(&out["output_ids"]),
                greedy,
                "{model}, prompt {prompt_ids:?}"
            );
            assert_eq!(out["finish_reason"], "length");
            assert!(out["tokens_per_s"].as_f64().is_some(), "{out}");
        }
    }
}

#[test]
fn a_prompts_file_gives_each_prompt_the_output_it_gets_alone() {
    let model = fixture("tiny-llama3");
    let cases = tiny_cases("tiny-llama3");
    // A prompt extending another by its first two output tokens, a duplicate, and a
    // short max_tokens: the batch must still give each the output it gets alone.
    let (first_prompt, first_greedy) = &cases[1];
    let extended = [first_prompt.clone(), first_greedy[..2].to_vec()].concat();
    let alone = ids(&generate_json(&model, &extended, &["--max-tokens", "16"])["output_ids"]);
    let mut lines: Vec<String> = cases
        .iter()
        .map(|(p, _)| format!(r#"{{"prompt_ids": {p:?}}}"#))
        .collect();
    lines.push(format!(r#"{{"prompt_ids": {extended:?}}}"#));
    lines.push(format!(
        r#"{{"prompt_ids": {first_prompt:?}, "max_tokens": 5}}"#
    ));
    let file = write_temp("batch.jsonl", &lines.join("\n"));

    let args = [
        "--prompts-file",
        path_str(&file),
        "--max-tokens",
        "16",
        "--ignore-eos",
    ];
    let out = arbor_ok(&model, &args);
    let rows = json_lines(&out);
    assert_eq!(
        rows.len(),
        lines.len() + 1,
        "one line per prompt, then the stats"
    );
    for (index, (prompt, greedy)) in cases.iter().enumerate() {
        assert_eq!(rows[index]["index"], index);
        assert_eq!(ids(&rows[index]["prompt_ids"]), *prompt);
        assert_eq!(ids(&rows[index]["output_ids"]), *greedy, "prompt {index}");
    }
    assert_eq!(ids(&rows[3]["output_ids"]), alone);
    assert_eq!(ids(&rows[4]["output_ids"]), first_greedy[..5].to_vec());
    assert_eq!(rows[4]["finish_reason"], "length");

    let stats = &rows[5]["stats"];
    let n_prompt: usize =
        cases.iter().map(|(p, _)| p.len()).sum::<usize>() + extended.len() + first_prompt.len();
    assert_eq!(stats["prompt_tokens"], n_prompt);
    assert_eq!(stats["output_tokens"], 16 * 4 + 5);
    for key in [
        "cached_prompt_tokens",
        "preemptions",
        "elapsed_s",
        "output_tokens_per_s",
    ] {
        assert!(stats[key].is_number(), "{key} missing from {stats}");
    }
}

#[test]
fn a_kv_cache_too_small_for_all_prompts_preempts_and_outputs_stay_the_same() {
    let model = fixture("tiny-llama3");
    let cases = tiny_cases("tiny-llama3");
    let lines: Vec<String> = cases
        .iter()
        .map(|(p, _)| format!(r#"{{"prompt_ids": {p:?}}}"#))
        .collect();
    let file = write_temp("preempt.jsonl", &lines.join("\n"));
    // tiny-llama3 keeps 512 bytes of f32 K and V per token (2 layers, 2 KV heads of 16),
    // so 72 pages of 4 tokens: the 257-token prompt plus 16 tokens needs 69 of them.
    let kv_bytes = (72 * 4 * 512).to_string();
    let args = [
        "--prompts-file",
        path_str(&file),
        "--max-tokens",
        "16",
        "--ignore-eos",
        "--page-size",
        "4",
        "--kv-cache-memory",
        &kv_bytes,
    ];
    let out = arbor_ok(&model, &args);
    let rows = json_lines(&out);
    for (index, (_, greedy)) in cases.iter().enumerate() {
        assert_eq!(ids(&rows[index]["output_ids"]), *greedy, "prompt {index}");
    }
    let preemptions = rows[cases.len()]["stats"]["preemptions"].as_u64().unwrap();
    assert!(preemptions > 0, "{}", rows[cases.len()]);
}

#[test]
fn a_bf16_kv_cache_doubles_the_tokens_a_budget_holds() {
    let model = fixture("tiny-llama3");
    let (prompt, _) = tiny_cases("tiny-llama3").remove(0);
    let file = write_temp(
        "kv-dtype.jsonl",
        &format!(r#"{{"prompt_ids": {prompt:?}}}"#),
    );
    let capacity = |kv_dtype: &str| {
        let args = [
            "--prompts-file",
            path_str(&file),
            "--max-tokens",
            "4",
            "--kv-cache-dtype",
            kv_dtype,
        ];
        let rows = json_lines(&arbor_ok(&model, &args));
        rows[1]["stats"]["kv_capacity_tokens"].as_u64().unwrap()
    };
    let (f32_tokens, bf16_tokens) = (capacity("f32"), capacity("bf16"));
    // 64 MiB of f32 K and V at 512 bytes per token (see the preemption test above).
    assert_eq!(f32_tokens, (64 << 20) / 512);
    assert_eq!(bf16_tokens, 2 * f32_tokens);

    let stderr = arbor_fails(&[
        "generate",
        "--model",
        path_str(&model),
        "--prompt-ids",
        "1",
        "--kv-cache-dtype",
        "fp8",
    ]);
    assert!(stderr.contains("unknown dtype \"fp8\""), "{stderr}");
}

#[test]
fn a_missing_model_fails_with_its_path_in_the_message() {
    let stderr = arbor_fails(&[
        "generate",
        "--model",
        "/no/such/model-dir",
        "--prompt-ids",
        "1",
    ]);
    assert!(
        stderr.contains("/no/such/model-dir") && stderr.contains("does not exist"),
        "{stderr}"
    );
}

#[test]
fn a_bad_prompts_file_line_fails_naming_the_line() {
    let model = fixture("tiny-llama3");
    let file = write_temp(
        "bad.jsonl",
        "{\"prompt_ids\": [1, 2]}\n\n{\"prompt_ids\": \"1 2\"}\n",
    );
    let stderr = arbor_fails(&[
        "generate",
        "--model",
        path_str(&model),
        "--prompts-file",
        path_str(&file),
    ]);
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(
        stderr.contains("`prompt_ids` must be an array of token ids"),
        "{stderr}"
    );

    let file = write_temp("two_prompts.jsonl", r#"{"prompt": "a", "prompt_ids": [1]}"#);
    let out = arbor(&[
        "generate",
        "--model",
        path_str(&model),
        "--prompts-file",
        path_str(&file),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 1") && stderr.contains("exactly one of"),
        "{stderr}"
    );
}

#[test]
fn a_text_prompt_on_a_model_without_tokenizer_asks_for_token_ids() {
    let model = fixture("tiny-qwen2");
    let stderr = arbor_fails(&["generate", "--model", path_str(&model), "--prompt", "hello"]);
    assert!(
        stderr.contains("no tokenizer") && stderr.contains("--prompt-ids"),
        "{stderr}"
    );
}

#[test]
fn exactly_one_prompt_source_is_required() {
    let model = fixture("tiny-qwen2");
    let none = arbor(&["generate", "--model", path_str(&model)]);
    assert!(!none.status.success());
    let two = arbor(&[
        "generate",
        "--model",
        path_str(&model),
        "--prompt",
        "a",
        "--prompt-ids",
        "1",
    ]);
    assert!(!two.status.success());
    assert!(String::from_utf8_lossy(&two.stderr).contains("cannot be used with"));
}

#[test]
fn smollm2_chat_gives_the_reference_prompt_and_greedy_answer() {
    let Some(gguf) = smollm2() else { return };
    let reference = smollm2_reference();
    let case = &reference["cases"][0];
    let question = case["messages"][0]["content"].as_str().unwrap();
    let args = [
        "--chat",
        question,
        "--max-tokens",
        "32",
        "--dtype",
        "f32",
        "--json",
    ];
    let out = json_lines(&arbor_ok(&gguf, &args)).remove(0);
    assert_eq!(ids(&out["prompt_ids"]), ids(&case["prompt_ids"]));
    assert_eq!(ids(&out["output_ids"]), ids(&case["greedy_32_ids"]));
    assert_eq!(out["finish_reason"], "stop");
    let text = case["greedy_32_text"]
        .as_str()
        .unwrap()
        .replace("<|im_end|>", "");
    assert_eq!(out["text"], text);
}

#[test]
fn smollm2_prompts_file_answers_every_reference_case_at_once() {
    let Some(gguf) = smollm2() else { return };
    let reference = smollm2_reference();
    let cases = reference["cases"].as_array().unwrap();
    // One user message goes in as `chat`, plain text as `prompt`, and the case with a
    // system message as the reference's own prompt ids.
    let lines: Vec<String> = cases
        .iter()
        .map(
            |case| match (case["messages"].as_array(), case["text"].as_str()) {
                (Some(messages), _) if messages.len() == 1 => {
                    serde_json::json!({ "chat": messages[0]["content"] }).to_string()
                }
                (None, Some(text)) => serde_json::json!({ "prompt": text }).to_string(),
                _ => serde_json::json!({ "prompt_ids": case["prompt_ids"] }).to_string(),
            },
        )
        .collect();
    let file = write_temp("smollm2.jsonl", &lines.join("\n"));
    let args = [
        "--prompts-file",
        path_str(&file),
        "--max-tokens",
        "32",
        "--dtype",
        "f32",
    ];
    let rows = json_lines(&arbor_ok(&gguf, &args));
    assert_eq!(rows.len(), cases.len() + 1);
    for (index, case) in cases.iter().enumerate() {
        assert_eq!(
            ids(&rows[index]["prompt_ids"]),
            ids(&case["prompt_ids"]),
            "case {index}"
        );
        assert_eq!(
            ids(&rows[index]["output_ids"]),
            ids(&case["greedy_32_ids"]),
            "case {index}"
        );
    }
    let stats = &rows[cases.len()]["stats"];
    let n_output: usize = cases
        .iter()
        .map(|case| ids(&case["greedy_32_ids"]).len())
        .sum();
    assert_eq!(stats["output_tokens"], n_output);
}

/// Runs the binary, which must fail; returns its stderr.
fn arbor_fails(args: &[&str]) -> String {
    let out = arbor(args);
    assert!(!out.status.success(), "arbor {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs the binary; RUST_BACKTRACE is cleared so that stderr holds only the message.
fn arbor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .expect("the arbor binary runs")
}

/// Runs `arbor generate --model <model> <args>` (with a 64 MiB KV cache unless `args`
/// size it); panics on failure with its stderr.
fn arbor_ok(model: &Path, args: &[&str]) -> String {
    let mut all = vec!["generate", "--model", path_str(model)];
    if !args.contains(&"--kv-cache-memory") {
        all.extend(["--kv-cache-memory", "64MiB"]);
    }
    all.extend(args);
    let out = arbor(&all);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "arbor generate {args:?} failed: {stderr}"
    );
    String::from_utf8(out.stdout).expect("stdout is UTF-8")
}

fn generate_json(model: &Path, prompt_ids: &[u32], args: &[&str]) -> Value {
    let list: Vec<String> = prompt_ids.iter().map(u32::to_string).collect();
    let list = list.join(",");
    let base = ["--prompt-ids", list.as_str(), "--json", "--ignore-eos"];
    json_lines(&arbor_ok(model, &[&base[..], args].concat())).remove(0)
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

fn write_temp(name: &str, contents: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("generate_cli_{name}"));
    std::fs::write(&path, contents).unwrap();
    path
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}
