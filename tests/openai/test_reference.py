"""Greedy output through the whole server against an independent reference: the
transformers fixture (tests/fixtures/smollm2-135m-instruct/reference.json, made with the
GGUF dequantized to float32).

Arbor keeps the weights in Q4_1, so a case whose top two logits lie within ~0.1 of each
other may pick the other token; only the cases with clear margins are compared, over a
prefix of their output that stays clear of later near-ties."""

import json
import pathlib

import pytest

FIXTURE = pathlib.Path(__file__).parents[1] / "fixtures/smollm2-135m-instruct/reference.json"


@pytest.fixture(scope="module")
def cases():
    return {
        case.get("text") or case["messages"][-1]["content"]: case
        for case in json.loads(FIXTURE.read_text())["cases"]
    }


def test_chat_greedy_answer_matches_transformers(client, model, http, cases):
    case = cases["Why is the sky blue?"]
    n_tokens = 16
    expected = http.post("/detokenize", {"tokens": case["greedy_32_ids"][:n_tokens]}).json()["prompt"]
    response = client.chat.completions.create(
        model=model, messages=case["messages"], temperature=0, max_tokens=n_tokens
    )
    assert response.usage.prompt_tokens == len(case["prompt_ids"])
    assert response.choices[0].message.content == expected


def test_completion_greedy_text_matches_transformers(client, model, http, cases):
    case = cases["Once upon a time, in a small village,"]
    n_tokens = 12
    expected = http.post("/detokenize", {"tokens": case["greedy_32_ids"][:n_tokens]}).json()["prompt"]
    response = client.completions.create(
        model=model, prompt=case["prompt_ids"], temperature=0, max_tokens=n_tokens
    )
    assert response.choices[0].text == expected


def test_tokenize_matches_the_reference_prompt_ids(http, cases):
    for case in cases.values():
        if "messages" in case:
            body = {"messages": case["messages"]}
        else:
            body = {"prompt": case["text"], "add_special_tokens": False}
        assert http.post("/tokenize", body).json()["tokens"] == case["prompt_ids"]
