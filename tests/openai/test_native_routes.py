"""The routes beside the OpenAI ones: vLLM's /tokenize and /detokenize, SGLang's
/generate and /flush_cache, plus /v1/models and /health."""

import json

from support import idle, user


def test_models_lists_the_served_model_with_its_context_length(client, http):
    models = client.models.list().data
    assert len(models) == 1
    assert models[0].object == "model"
    assert models[0].model_extra["max_model_len"] > 0
    raw = http.get("/v1/models").json()
    assert raw["object"] == "list"
    assert raw["data"][0]["id"] == models[0].id


def test_health_is_200(http):
    assert http.get("/health", auth=False).status == 200


def test_tokenize_and_detokenize_round_trip_a_prompt(http):
    text = "Hello world, this is Arbor."
    tokens = http.post("/tokenize", {"prompt": text, "add_special_tokens": False}).json()
    assert tokens["count"] == len(tokens["tokens"]) > 3
    assert tokens["max_model_len"] > 0
    back = http.post("/detokenize", {"tokens": tokens["tokens"]}).json()
    assert back["prompt"] == text


def test_tokenize_messages_counts_the_same_tokens_as_chat_usage(http, client, model):
    messages = user("What is the capital of France?")
    tokens = http.post("/tokenize", {"messages": messages, "model": model}).json()
    response = client.chat.completions.create(model=model, messages=messages, max_tokens=1)
    assert tokens["count"] == response.usage.prompt_tokens
    rendered = http.post("/detokenize", {"tokens": tokens["tokens"]}).json()["prompt"]
    assert "What is the capital of France?" in rendered
    # The generation prompt opens the assistant turn at the end.
    assert rendered.rstrip().endswith("assistant")


def test_tokenize_token_strs_name_each_token(http):
    body = http.post("/tokenize", {"prompt": "Hello world", "return_token_strs": True}).json()
    assert len(body["token_strs"]) == body["count"]


def test_generate_returns_text_ids_and_meta_info(http):
    body = {"text": "The capital of France is", "sampling_params": {"max_new_tokens": 6, "temperature": 0}}
    result = http.post("/generate", body).json()
    assert result["text"].startswith(" Paris")
    meta = result["meta_info"]
    assert meta["completion_tokens"] == len(result["output_ids"]) <= 6
    assert meta["prompt_tokens"] > 0
    assert meta["finish_reason"]["type"] in ("stop", "length")
    # The output ids decode to the text.
    assert http.post("/detokenize", {"tokens": result["output_ids"]}).json()["prompt"].startswith(result["text"])


def test_generate_accepts_input_ids(http):
    ids = http.post("/tokenize", {"prompt": "The capital of France is"}).json()["tokens"]
    by_text = http.post(
        "/generate", {"text": "The capital of France is", "sampling_params": {"max_new_tokens": 4, "temperature": 0}}
    ).json()
    by_ids = http.post("/generate", {"input_ids": ids, "sampling_params": {"max_new_tokens": 4, "temperature": 0}}).json()
    assert by_ids["output_ids"] == by_text["output_ids"]


def test_generate_with_a_list_of_prompts_returns_one_result_per_prompt_and_sample(http):
    prompts = ["The capital of France is", "The largest planet is"]
    params = {"max_new_tokens": 4, "temperature": 0}
    alone = [http.post("/generate", {"text": p, "sampling_params": params}).json() for p in prompts]
    batch = http.post("/generate", {"text": prompts, "sampling_params": dict(params, n=2)}).json()
    assert [r["index"] for r in batch] == [0, 1, 2, 3]
    # Greedy: both samples of a prompt are its single-prompt output.
    assert [r["output_ids"] for r in batch] == [alone[0]["output_ids"]] * 2 + [alone[1]["output_ids"]] * 2
    by_ids = http.post(
        "/generate", {"input_ids": [r["output_ids"] for r in alone], "sampling_params": params}
    ).json()
    assert len(by_ids) == 2 and all(len(r["output_ids"]) > 0 for r in by_ids)


def test_generate_with_an_empty_prompt_list_is_a_bad_request(http):
    response = http.post("/generate", {"text": [], "sampling_params": {"max_new_tokens": 2}})
    assert response.status == 400
    assert "prompt must not be empty" in response.body.decode()


def test_generate_streams_the_whole_text_so_far_then_done(http):
    body = {
        "text": "The capital of France is",
        "sampling_params": {"max_new_tokens": 6, "temperature": 0},
        "stream": True,
    }
    expected = http.post("/generate", dict(body, stream=False)).json()["text"]
    response = http.post("/generate", body)
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = [line.removeprefix("data: ") for line in response.body.decode().split("\n\n") if line]
    assert frames[-1] == "[DONE]"
    events = [json.loads(f) for f in frames[:-1]]
    texts = [e["text"] for e in events]
    # Each event carries the text so far, so every one extends the one before.
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    assert texts[-1] == expected


def test_flush_cache_empties_the_radix_cache(http, client, model):
    client.chat.completions.create(model=model, messages=user("Fill the cache a little."), max_tokens=2)
    filled = http.wait_for_metrics(idle, "no running requests")
    assert filled["num_kv_pages_cached"] > 0
    response = http.post("/flush_cache", {})
    assert response.status == 200
    flushed = http.metrics()
    assert flushed["num_kv_pages_cached"] == 0
    assert flushed["num_kv_pages_used"] == 0
