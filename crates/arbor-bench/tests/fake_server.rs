//! End-to-end: the benchmark client against a small in-process OpenAI-compatible
//! server (axum) that streams a fixed answer with known delays, counts what it
//! receives, and reports usage with cached tokens.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbor_bench::workload::{MultiTurnSpec, PromptKind, RandomSpec};
use arbor_bench::{
    Api, Backend, BenchError, BenchSpec, CharTokenizer, LoadSpec, TargetSpec, WorkloadSpec, report,
    run_benchmark,
};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{Value, json};

/// Delay before the first chunk and between chunks of the fake server.
const FIRST_CHUNK_DELAY: Duration = Duration::from_millis(20);
const CHUNK_DELAY: Duration = Duration::from_millis(4);
/// Every streamed chunk carries this text: 2 characters, so 2 toy tokens.
const CHUNK_TEXT: &str = "ab";
/// The fake server claims this many of every prompt's tokens were cached.
const CACHED_TOKENS: usize = 3;

#[derive(Default)]
struct Seen {
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    flushes: AtomicUsize,
    bodies: Mutex<Vec<Value>>,
}

/// Starts the fake server on a free loopback port; returns its base URL.
async fn start(seen: Arc<Seen>, fail_generation: bool) -> String {
    let router = Router::new()
        .route(
            "/v1/models",
            get(|| async { Json(json!({"data": [{"id": "fake-model"}]})) }),
        )
        .route("/flush_cache", post(flush))
        .route(
            "/v1/completions",
            post(move |state, body| generate(state, body, fail_generation)),
        )
        .route(
            "/v1/chat/completions",
            post(move |state, body| generate(state, body, fail_generation)),
        )
        .with_state(seen);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    // Without TCP_NODELAY, Nagle's algorithm and delayed ACKs hold small SSE chunks
    // back by ~40 ms on loopback, and every chunk would arrive at once.
    let listener = listener.tap_io(|tcp| {
        tcp.set_nodelay(true)
            .expect("loopback sockets accept TCP_NODELAY");
    });
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{address}/v1")
}

async fn flush(State(seen): State<Arc<Seen>>) -> StatusCode {
    seen.flushes.fetch_add(1, Ordering::SeqCst);
    StatusCode::OK
}

/// Streams `max_tokens` chunks, then a usage chunk and `[DONE]`.
async fn generate(State(seen): State<Arc<Seen>>, Json(body): Json<Value>, fail: bool) -> Response {
    if fail {
        return (StatusCode::INTERNAL_SERVER_ERROR, "model exploded").into_response();
    }
    seen.bodies.lock().unwrap().push(body.clone());
    let n_now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    seen.max_in_flight.fetch_max(n_now, Ordering::SeqCst);

    let chat = body.get("messages").is_some();
    let prompt_chars: usize = match (&body["prompt"], &body["messages"]) {
        (Value::String(text), _) => text.chars().count(),
        (Value::Array(ids), _) => ids.len(),
        (_, Value::Array(messages)) => messages
            .iter()
            .map(|m| m["content"].as_str().unwrap().chars().count())
            .sum(),
        _ => 0,
    };
    let n_tokens = body["max_tokens"].as_u64().unwrap() as usize;
    let mut events: Vec<(Duration, String)> = (0..n_tokens)
        .map(|i| {
            let delay = if i == 0 {
                FIRST_CHUNK_DELAY
            } else {
                CHUNK_DELAY
            };
            let chunk = if chat {
                json!({"choices": [{"delta": {"content": CHUNK_TEXT}}]})
            } else {
                json!({"choices": [{"text": CHUNK_TEXT}]})
            };
            (delay, chunk.to_string())
        })
        .collect();
    let usage = json!({"choices": [], "usage": {
        "prompt_tokens": prompt_chars,
        "completion_tokens": n_tokens,
        "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS},
    }});
    events.push((Duration::ZERO, usage.to_string()));
    events.push((Duration::ZERO, "[DONE]".to_string()));

    let stream = futures::stream::iter(events).then(move |(delay, data)| {
        let seen = Arc::clone(&seen);
        async move {
            tokio::time::sleep(delay).await;
            // The usage chunk is the last one a client needs: it may drop the connection
            // before `[DONE]`, so the request stops counting as in flight here.
            if data.contains("\"usage\"") {
                seen.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
            Ok::<_, Infallible>(Event::default().data(data))
        }
    });
    Sse::new(stream).into_response()
}

fn random_spec(base_url: String) -> BenchSpec {
    BenchSpec {
        label: Some("fake".to_string()),
        note: None,
        target: TargetSpec::new(base_url, Backend::Arbor),
        workload: WorkloadSpec::Random(RandomSpec {
            num_prompts: 8,
            random_input_len: 40,
            random_output_len: 6,
            random_range_ratio: 0.5,
            random_prompt: PromptKind::Text,
        }),
        load: LoadSpec {
            max_concurrency: Some(2),
            ..LoadSpec::default()
        },
        flush_cache: true,
        progress: false,
        tokenizer: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_run_produces_a_record_with_sglang_metric_keys() {
    let seen = Arc::new(Seen::default());
    let url = start(Arc::clone(&seen), false).await;
    let spec = random_spec(url);

    let record = run_benchmark(&spec, Arc::new(CharTokenizer)).await.unwrap();

    // One warmup request plus eight measured ones; the cache was reset once, after
    // warmup, and the concurrency cap held.
    assert_eq!(seen.bodies.lock().unwrap().len(), 9);
    assert_eq!(seen.flushes.load(Ordering::SeqCst), 1);
    assert_eq!(seen.max_in_flight.load(Ordering::SeqCst), 2);
    let bodies = seen.bodies.lock().unwrap().clone();
    assert!(
        bodies
            .iter()
            .all(|b| b["ignore_eos"] == true && b["model"] == "fake-model")
    );
    // The warmup request repeats one of the workload's requests (the measured ones reach
    // the server in any order under concurrency 2).
    assert!(
        bodies[1..]
            .iter()
            .any(|b| b["max_tokens"] == bodies[0]["max_tokens"]
                && b["prompt"] == bodies[0]["prompt"])
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.jsonl");
    record.append_to(&path).unwrap();
    record.append_to(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 2);
    let json: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();

    // Totals: what the server was asked for is what it reported and streamed.
    let asked_output: u64 = bodies[1..]
        .iter()
        .map(|b| b["max_tokens"].as_u64().unwrap())
        .sum();
    let sent_input: u64 = bodies[1..]
        .iter()
        .map(|b| b["prompt"].as_str().unwrap().chars().count() as u64)
        .sum();
    assert_eq!(json["completed"], 8);
    assert_eq!(json["failed"], 0);
    assert_eq!(json["short_outputs"], 0);
    assert_eq!(json["total_output_tokens"].as_u64().unwrap(), asked_output);
    assert_eq!(
        json["total_output_tokens_retokenized"].as_u64().unwrap(),
        2 * asked_output
    );
    assert_eq!(json["total_input_tokens"].as_u64().unwrap(), sent_input);
    assert_eq!(
        json["total_input_tokens_server"].as_u64().unwrap(),
        sent_input
    );
    assert_eq!(
        json["total_cached_tokens"].as_u64().unwrap(),
        8 * CACHED_TOKENS as u64
    );

    // Throughputs are totals over the duration.
    let duration = json["duration"].as_f64().unwrap();
    let close = |a: f64, b: f64| (a - b).abs() < 1e-6 * b.max(1.0);
    assert!(close(
        json["request_throughput"].as_f64().unwrap(),
        8.0 / duration
    ));
    assert!(close(
        json["output_throughput"].as_f64().unwrap(),
        asked_output as f64 / duration
    ));

    // Latencies reflect the server's delays: 20 ms to the first chunk, 4 ms apart.
    let ms = |key: &str| {
        json[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing"))
    };
    assert!(
        ms("mean_ttft_ms") >= 19.0 && ms("mean_ttft_ms") < 500.0,
        "{}",
        ms("mean_ttft_ms")
    );
    assert!(
        ms("median_itl_ms") >= 2.0 && ms("median_itl_ms") < 100.0,
        "{}",
        ms("median_itl_ms")
    );
    assert!(
        ms("mean_tpot_ms") >= 2.0 && ms("mean_tpot_ms") < 100.0,
        "{}",
        ms("mean_tpot_ms")
    );
    assert!(ms("mean_e2e_latency_ms") > ms("mean_ttft_ms"));
    for key in [
        "p99_ttft_ms",
        "p90_ttft_ms",
        "p99_itl_ms",
        "median_ttft_ms",
        "p99_e2e_latency_ms",
    ] {
        ms(key);
    }

    // The configuration travels with the metrics.
    assert_eq!(json["label"], "fake");
    assert_eq!(json["dataset_name"], "random");
    assert_eq!(json["random_input_len"], 40);
    assert_eq!(json["max_concurrency"], 2);
    assert_eq!(json["request_rate"], "inf");
    assert_eq!(json["model"], "fake-model");
    assert_eq!(json["cache_reset"], true);

    let runs = report::load_runs(&path).unwrap();
    assert_eq!(runs.len(), 2);
    assert!(report::runs_table(&runs).contains("fake"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_turn_chat_sends_growing_histories_with_the_real_answers() {
    let seen = Arc::new(Seen::default());
    let url = start(Arc::clone(&seen), false).await;
    let mut spec = random_spec(url);
    spec.target.api = Some(Api::Chat);
    spec.load.warmup_requests = 0;
    spec.workload = WorkloadSpec::MultiTurn(MultiTurnSpec {
        mt_num_conversations: 2,
        mt_num_turns: 3,
        mt_first_turn_len: 30,
        mt_turn_len: 5,
        mt_output_len: 4,
    });

    let record = run_benchmark(&spec, Arc::new(CharTokenizer)).await.unwrap();
    assert_eq!(record.metrics.completed, 6);

    let bodies = seen.bodies.lock().unwrap().clone();
    let mut n_messages: Vec<usize> = bodies
        .iter()
        .map(|b| b["messages"].as_array().unwrap().len())
        .collect();
    n_messages.sort();
    assert_eq!(n_messages, vec![1, 1, 3, 3, 5, 5]);
    let last = bodies
        .iter()
        .find(|b| b["messages"].as_array().unwrap().len() == 5)
        .unwrap();
    assert_eq!(last["messages"][1]["role"], "assistant");
    assert_eq!(last["messages"][1]["content"], CHUNK_TEXT.repeat(4));
    // Turn prompts are 30, 30+8+5 and 30+8+5+8+5 characters of message content.
    assert_eq!(record.metrics.total_input_tokens, 2 * (30 + 43 + 56));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_server_fails_the_warmup_with_its_message() {
    let seen = Arc::new(Seen::default());
    let url = start(seen, true).await;
    let err = run_benchmark(&random_spec(url), Arc::new(CharTokenizer))
        .await
        .unwrap_err();
    match err {
        BenchError::WarmupFailed { first_error, .. } => {
            assert!(
                first_error.contains("500") && first_error.contains("model exploded"),
                "{first_error}"
            )
        }
        other => panic!("expected a warmup failure, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_warmup_failed_requests_are_counted_and_all_failing_is_an_error() {
    let seen = Arc::new(Seen::default());
    let url = start(seen, true).await;
    let mut spec = random_spec(url);
    spec.load.warmup_requests = 0;
    let err = run_benchmark(&spec, Arc::new(CharTokenizer))
        .await
        .unwrap_err();
    assert!(
        matches!(err, BenchError::AllFailed(ref e) if e.contains("500")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_clear_error() {
    // Port 9 (discard) on loopback has nothing listening in the test environment.
    let spec = random_spec("http://127.0.0.1:9".to_string());
    let err = run_benchmark(&spec, Arc::new(CharTokenizer))
        .await
        .unwrap_err();
    assert!(matches!(err, BenchError::Http { .. }), "{err}");
}
