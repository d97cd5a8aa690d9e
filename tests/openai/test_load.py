"""Many clients at once, clients that leave mid-stream, and a full queue: the server
keeps its answers, frees what a departed client held, and refuses work it cannot
queue with 503 and Retry-After."""

import asyncio
import threading

import openai

from support import Http, idle, user

# Four prompts, each asked by eight clients at once: 32 concurrent streams.
PROMPTS = [
    "Name three primary colors.",
    "What do bees make?",
    "Why is the sky blue?",
    "Translate 'good morning' into Spanish.",
]
N_CLIENTS_PER_PROMPT = 8
MAX_TOKENS = 8


def wait_for_content(stream, n_chunks):
    """Reads `stream` until `n_chunks` chunks with content arrived: the request is then
    running (the role chunk alone comes before admission). The stream stays open."""
    seen = 0
    while seen < n_chunks:
        chunk = next(stream)
        if chunk.choices and chunk.choices[0].delta.content:
            seen += 1


def test_32_concurrent_streams_each_match_their_sequential_greedy_answer(client, async_client, model):
    expected = {
        prompt: client.chat.completions.create(
            model=model, messages=user(prompt), temperature=0, max_tokens=MAX_TOKENS
        ).choices[0].message.content
        for prompt in PROMPTS
    }

    async def stream_one(prompt):
        stream = await async_client.chat.completions.create(
            model=model, messages=user(prompt), temperature=0, max_tokens=MAX_TOKENS, stream=True
        )
        parts = []
        async for chunk in stream:
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
        return prompt, "".join(parts)

    async def all_streams():
        jobs = [stream_one(p) for p in PROMPTS for _ in range(N_CLIENTS_PER_PROMPT)]
        return await asyncio.gather(*jobs)

    results = asyncio.run(all_streams())
    assert len(results) == 32
    mismatches = [(p, text, expected[p]) for p, text in results if text != expected[p]]
    assert mismatches == []


def test_client_leaving_mid_stream_frees_its_pages(client, model, http):
    before = http.wait_for_metrics(idle, "no running or waiting requests")
    stream = client.chat.completions.create(
        model=model,
        messages=user("Tell me a very long story about a dragon."),
        temperature=0,
        max_tokens=400,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    wait_for_content(stream, n_chunks=3)
    running = http.metrics()
    assert running["num_requests_running"] == 1
    assert running["num_kv_pages_used"] > running["num_kv_pages_cached"]
    stream.close()

    after = http.wait_for_metrics(idle, "no running or waiting requests after the client left")
    assert after["num_kv_pages_locked"] == 0
    # Every page still in use belongs to the radix cache, none to a sequence.
    assert after["num_kv_pages_used"] == after["num_kv_pages_cached"]
    assert after["request_success_total:abort"] == before["request_success_total:abort"] + 1


def test_full_queue_is_503_with_retry_after(queue_url, model):
    # The queue server runs one sequence and lets one wait.
    queue = Http(queue_url)
    queue_client = openai.OpenAI(base_url=f"{queue_url}/v1", api_key="unused", max_retries=0, timeout=300)
    queue.wait_for_metrics(idle, "an idle queue server")

    # The first request runs (its first chunk came back)...
    running = queue_client.chat.completions.create(
        model=model, messages=user("Tell me a long story."), max_tokens=300, stream=True,
        extra_body={"ignore_eos": True},
    )
    wait_for_content(running, n_chunks=1)
    # ...the second waits behind it...
    waiting_result = {}

    def wait_in_queue():
        waiting_result["response"] = queue_client.chat.completions.create(
            model=model, messages=user("Hi"), max_tokens=2
        )

    waiter = threading.Thread(target=wait_in_queue)
    waiter.start()
    queue.wait_for_metrics(lambda m: m["num_requests_waiting"] == 1, "one waiting request")

    # ...so a third finds the queue full.
    try:
        queue_client.chat.completions.create(model=model, messages=user("Hi"), max_tokens=2)
        raise AssertionError("a request past the queue limit was accepted")
    except openai.InternalServerError as err:
        assert err.status_code == 503
        assert err.type == "overloaded_error"
        assert int(err.response.headers["retry-after"]) >= 1

    # Once the running client leaves, the waiting one is served.
    running.close()
    waiter.join()
    assert waiting_result["response"].usage.completion_tokens >= 1
    queue.wait_for_metrics(idle, "an idle queue server after the test")
