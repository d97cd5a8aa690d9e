"""Refused requests: each gets the HTTP status and error `type` OpenAI (or vLLM, where
OpenAI has no such case) answers with, as the openai client reads them."""

import openai
import pytest

from support import Http, user

HI = user("Hi")


def refused(call, error_class):
    """Runs `call`, expecting the openai client to raise `error_class`; returns it."""
    with pytest.raises(error_class) as caught:
        call()
    return caught.value


def test_malformed_json_is_400_invalid_request_error(http):
    response = http.post("/v1/chat/completions", '{"messages": [{"role": "user", ')
    assert response.status == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_json"


def test_wrong_typed_field_is_400_naming_the_field(client, model):
    err = refused(
        lambda: client.chat.completions.create(model=model, messages=HI, temperature="hot"),
        openai.BadRequestError,
    )
    assert err.status_code == 400
    assert err.type == "invalid_request_error"
    assert err.code == "invalid_type"
    assert err.param == "temperature"


def test_messages_of_the_wrong_type_are_400(http, model):
    response = http.post("/v1/chat/completions", {"model": model, "messages": "Hi"})
    assert response.status == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_unknown_model_is_404_model_not_found(client):
    err = refused(
        lambda: client.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=1),
        openai.NotFoundError,
    )
    assert err.status_code == 404
    assert err.type == "invalid_request_error"
    assert err.code == "model_not_found"
    err = refused(
        lambda: client.completions.create(model="gpt-4o", prompt="Hi", max_tokens=1),
        openai.NotFoundError,
    )
    assert err.code == "model_not_found"


def test_prompt_longer_than_the_context_is_400_context_length_exceeded(client, model):
    n_context = client.models.list().data[0].model_extra["max_model_len"]
    # Each repetition is at least two tokens.
    long_text = "hello world " * n_context
    err = refused(
        lambda: client.chat.completions.create(model=model, messages=user(long_text), max_tokens=1),
        openai.BadRequestError,
    )
    assert err.type == "invalid_request_error"
    assert err.code == "context_length_exceeded"
    err = refused(
        lambda: client.completions.create(model=model, prompt=long_text, max_tokens=1),
        openai.BadRequestError,
    )
    assert err.code == "context_length_exceeded"


@pytest.mark.parametrize("max_tokens", [0, 10**7])
def test_max_tokens_out_of_range_is_400(client, model, max_tokens):
    err = refused(
        lambda: client.chat.completions.create(model=model, messages=HI, max_tokens=max_tokens),
        openai.BadRequestError,
    )
    assert err.type == "invalid_request_error"
    assert err.param == "max_tokens"


def test_negative_max_tokens_is_400(client, model):
    err = refused(
        lambda: client.completions.create(model=model, prompt="Hi", max_tokens=-1),
        openai.BadRequestError,
    )
    assert err.type == "invalid_request_error"
    assert err.param == "max_tokens"


@pytest.mark.parametrize(
    "field, value",
    [
        ("temperature", -0.5),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("frequency_penalty", 2.5),
        ("top_k", -2),
        ("min_p", 1.5),
    ],
)
def test_invalid_sampling_values_are_400_naming_the_field(client, model, field, value):
    err = refused(
        lambda: client.chat.completions.create(
            model=model, messages=HI, max_tokens=1, extra_body={field: value}
        ),
        openai.BadRequestError,
    )
    assert err.type == "invalid_request_error"
    assert err.param == field


def test_top_logprobs_above_twenty_is_400(client, model):
    err = refused(
        lambda: client.chat.completions.create(
            model=model, messages=HI, max_tokens=1, logprobs=True, top_logprobs=21
        ),
        openai.BadRequestError,
    )
    assert err.param == "top_logprobs"


def test_body_over_the_limit_is_413(http, max_body_bytes):
    body = '{"prompt": "' + "a" * max_body_bytes + '"}'
    response = http.post("/v1/completions", body)
    assert response.status == 413
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_missing_or_wrong_api_key_is_401(base_url, model):
    for key in (None, "sk-wrong"):
        bare = Http(base_url, key)
        response = bare.post("/v1/chat/completions", {"model": model, "messages": HI, "max_tokens": 1})
        assert response.status == 401
        assert response.json()["error"]["type"] == "authentication_error"
        assert bare.post("/tokenize", {"prompt": "Hi"}).status == 401
    wrong = openai.OpenAI(base_url=f"{base_url}/v1", api_key="sk-wrong", max_retries=0)
    err = refused(lambda: wrong.models.list(), openai.AuthenticationError)
    assert err.status_code == 401
    assert err.type == "authentication_error"


def test_health_and_metrics_need_no_api_key(base_url):
    bare = Http(base_url)
    assert bare.get("/health").status == 200
    metrics = bare.get("/metrics")
    assert metrics.status == 200
    assert b"arbor:num_requests_running" in metrics.body


def test_unknown_route_is_404_and_wrong_method_is_405(http):
    response = http.get("/v1/engines")
    assert response.status == 404
    assert response.json()["error"]["type"] == "not_found_error"
    response = http.get("/v1/chat/completions")
    assert response.status == 405
    assert response.json()["error"]["type"] == "invalid_request_error"
