//! End to end: the built `arbor` binary serves a tiny random-weight Llama
//! (`tests/fixtures/tiny-llama3`) on a free port, `arbor bench` measures it with
//! token-id prompts and appends its records to a JSONL file, and `arbor bench report`
//! tables and plots them.
//!
//! The fixture has no tokenizer, and a server without one streams no text, so the
//! test gives the model directory a word-level `tokenizer.json` of exactly the model's
//! 1024 ids (`<unk>`, `<s>`, `</s>`, then `w3` .. `w1023`). Every id decodes to one
//! word and every word encodes back to its id, so the client's own count of the
//! streamed text must equal the server's `usage.completion_tokens`.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

const N_PROMPTS: usize = 4;
const INPUT_LEN: usize = 24;
const OUTPUT_LEN: usize = 8;
/// The fixture's `vocab_size`.
const VOCAB_SIZE: usize = 1024;
/// Loading a model in a debug build on a busy machine can be slow; this only bounds a
/// hang, it asserts nothing about speed.
const SERVER_START_LIMIT: Duration = Duration::from_secs(180);

/// The metric keys SGLang's bench_serving writes, which the record must carry.
const SGLANG_KEYS: [&str; 22] = [
    "duration",
    "completed",
    "total_input_tokens",
    "total_output_tokens",
    "total_output_tokens_retokenized",
    "request_throughput",
    "input_throughput",
    "output_throughput",
    "mean_ttft_ms",
    "median_ttft_ms",
    "std_ttft_ms",
    "p99_ttft_ms",
    "mean_tpot_ms",
    "median_tpot_ms",
    "p99_tpot_ms",
    "mean_itl_ms",
    "median_itl_ms",
    "p95_itl_ms",
    "p99_itl_ms",
    "mean_e2e_latency_ms",
    "median_e2e_latency_ms",
    "concurrency",
];

/// The `arbor serve` child; killed when dropped, so a failing assertion cannot leave
/// it running.
struct Server {
    child: Child,
    base_url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory under Cargo's target tmp dir, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("bench_e2e-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn arbor() -> Command {
    Command::new(env!("CARGO_BIN_EXE_arbor"))
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama3")
}

/// A copy of the tiny model with a word-level tokenizer beside it.
fn model_dir_with_tokenizer(root: &Path) -> PathBuf {
    let dir = root.join("tiny-llama3");
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["config.json", "generation_config.json", "model.safetensors"] {
        std::fs::copy(fixture_dir().join(file), dir.join(file)).unwrap();
    }
    std::fs::write(
        dir.join("tokenizer.json"),
        word_level_tokenizer().to_string(),
    )
    .unwrap();
    dir
}

/// A Hugging Face `tokenizer.json`: whitespace-split words, one id each. The first
/// three are added tokens, so their text also encodes back to one id.
fn word_level_tokenizer() -> Value {
    let names: Vec<String> = ["<unk>", "<s>", "</s>"]
        .into_iter()
        .map(str::to_string)
        .chain((3..VOCAB_SIZE).map(|id| format!("w{id}")))
        .collect();
    let vocab: Map<String, Value> = names
        .iter()
        .enumerate()
        .map(|(id, name)| (name.clone(), json!(id)))
        .collect();
    let added: Vec<Value> = names[..3]
        .iter()
        .enumerate()
        .map(|(id, name)| {
            json!({"id": id, "content": name, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": false})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `arbor serve` and waits until it accepts connections (it binds only after
/// the model is loaded).
fn start_server(model_dir: &Path, log_path: &Path) -> Server {
    let port = free_port();
    let log = std::fs::File::create(log_path).unwrap();
    let child = arbor()
        .args(["serve", "--model"])
        .arg(model_dir)
        .args(["--port", &port.to_string(), "--dtype", "f32"])
        .args(["--kv-cache-memory", "64MiB"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("arbor serve starts");
    let mut server = Server {
        child,
        base_url: format!("http://127.0.0.1:{port}"),
    };

    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = server.child.try_wait().unwrap() {
            panic!(
                "arbor serve exited with {status}:\n{}",
                std::fs::read_to_string(log_path).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < SERVER_START_LIMIT,
            "arbor serve did not listen within {SERVER_START_LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}

fn run_ok(command: &mut Command) -> Output {
    let output = command.output().expect("arbor runs");
    assert!(
        output.status.success(),
        "{command:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn bench(server: &Server, model_dir: &Path, max_concurrency: usize, jsonl: &Path) -> Output {
    run_ok(
        arbor()
            .args([
                "bench",
                "--backend",
                "arbor",
                "--base-url",
                &server.base_url,
            ])
            .arg("--model")
            .arg(model_dir)
            .args(["--dataset-name", "random", "--random-prompt", "ids"])
            .args(["--random-input-len", &INPUT_LEN.to_string()])
            .args(["--random-output-len", &OUTPUT_LEN.to_string()])
            .args(["--random-range-ratio", "1", "--seed", "7"])
            .args(["--num-prompts", &N_PROMPTS.to_string()])
            .args(["--max-concurrency", &max_concurrency.to_string()])
            .args(["--label", "arbor-tiny", "--disable-progress", "--output"])
            .arg(jsonl),
    )
}

fn number(record: &Value, key: &str) -> f64 {
    record[key]
        .as_f64()
        .unwrap_or_else(|| panic!("record has no number {key}: {record}"))
}

fn check_record(record: &Value, max_concurrency: usize) {
    for key in SGLANG_KEYS {
        assert!(record[key].is_number(), "metric {key} missing in {record}");
    }
    assert_eq!(record["completed"], N_PROMPTS);
    assert_eq!(record["failed"], 0);
    assert_eq!(record["max_concurrency"], max_concurrency);
    assert_eq!(record["dataset_name"], "random");
    assert_eq!(record["backend"], "arbor");
    assert!(record.get("git_revision").is_some(), "no git_revision key");
    assert_eq!(record["cache_reset"], true, "arbor has /flush_cache");

    // Token-id prompts have exact lengths, and the server counted the same.
    assert_eq!(record["total_input_tokens"], N_PROMPTS * INPUT_LEN);
    assert_eq!(record["total_input_tokens_server"], N_PROMPTS * INPUT_LEN);
    // ignore_eos makes every request generate exactly max_tokens, by the server's
    // usage and by the client's own count of the streamed text.
    assert_eq!(record["total_output_tokens"], N_PROMPTS * OUTPUT_LEN);
    assert_eq!(
        record["total_output_tokens_retokenized"],
        N_PROMPTS * OUTPUT_LEN
    );
    assert_eq!(record["short_outputs"], 0);

    for key in [
        "request_throughput",
        "input_throughput",
        "output_throughput",
        "mean_ttft_ms",
        "mean_tpot_ms",
        "mean_itl_ms",
        "mean_e2e_latency_ms",
    ] {
        assert!(number(record, key) > 0.0, "{key} is not positive: {record}");
    }
    assert!(number(record, "mean_e2e_latency_ms") >= number(record, "mean_ttft_ms"));
    assert!(number(record, "p99_ttft_ms") >= number(record, "median_ttft_ms"));
    assert!(
        record["total_cached_tokens"].is_number(),
        "arbor reports cached tokens"
    );
}

#[test]
fn bench_measures_arbor_serve_and_report_plots_the_runs() {
    let tmp = Scratch::new();
    let model_dir = model_dir_with_tokenizer(tmp.path());
    let server = start_server(&model_dir, &tmp.path().join("serve.log"));
    let jsonl = tmp.path().join("runs.jsonl");

    let first = bench(&server, &model_dir, 1, &jsonl);
    let summary = String::from_utf8_lossy(&first.stdout);
    assert!(summary.contains("Output throughput"), "{summary}");
    bench(&server, &model_dir, 2, &jsonl);
    drop(server);

    let text = std::fs::read_to_string(&jsonl).unwrap();
    let records: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "one JSON line per run");
    check_record(&records[0], 1);
    check_record(&records[1], 2);

    let png = tmp.path().join("runs.png");
    let report = run_ok(
        arbor()
            .args(["bench", "report"])
            .arg(&jsonl)
            .arg("--plot")
            .arg(&png),
    );
    let table = String::from_utf8_lossy(&report.stdout);
    assert_eq!(
        table
            .lines()
            .filter(|l| l.starts_with("arbor-tiny"))
            .count(),
        2,
        "a table row per run:\n{table}"
    );
    let image = std::fs::read(&png).unwrap();
    assert!(image.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(image.len() > 10_000, "the plot is suspiciously small");
}
