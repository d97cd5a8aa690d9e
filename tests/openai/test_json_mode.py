"""JSON mode (`response_format: {"type": "json_object"}`) through the real openai
client: the answer is a JSON object (checked by Python's json module) where the free
answer is prose, streamed or not; unsupported formats are refused."""

import json

import openai
import pytest

from support import user

JSON_OBJECT = {"type": "json_object"}
PROMPTS = [
    "What is 2+2?",
    'Give the capital of France as JSON with the key "capital".',
    "Describe a cat in JSON.",
]


def ask(client, model, prompt, **kwargs):
    return client.chat.completions.create(
        model=model, messages=user(prompt), temperature=0, max_tokens=60, **kwargs
    )


def test_answers_are_json_objects_or_cut_prefixes_of_one(client, model):
    n_complete = 0
    for prompt in PROMPTS:
        choice = ask(client, model, prompt, response_format=JSON_OBJECT).choices[0]
        text = choice.message.content
        assert text.lstrip().startswith("{"), (prompt, text)
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(text), dict), (prompt, text)
            n_complete += 1
        else:
            assert choice.finish_reason == "length"
            with pytest.raises(json.JSONDecodeError):
                json.loads(text)
    assert n_complete > 0


def test_json_mode_changes_a_prose_answer(client, model):
    free = ask(client, model, PROMPTS[0]).choices[0].message.content
    with pytest.raises(json.JSONDecodeError):
        json.loads(free)
    constrained = ask(client, model, PROMPTS[0], response_format=JSON_OBJECT).choices[0]
    assert isinstance(json.loads(constrained.message.content), dict)


def test_a_streamed_json_answer_matches_the_whole_one(client, model):
    whole = ask(client, model, PROMPTS[1], response_format=JSON_OBJECT).choices[0]
    chunks = list(ask(client, model, PROMPTS[1], response_format=JSON_OBJECT, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == [
        whole.finish_reason
    ]


def test_text_completions_take_json_mode_too(client, model):
    response = client.completions.create(
        model=model,
        prompt="The weather today, as JSON:",
        temperature=0,
        max_tokens=40,
        extra_body={"response_format": JSON_OBJECT},
    )
    assert response.choices[0].text.lstrip().startswith("{")


@pytest.mark.parametrize(
    "response_format, words",
    [
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}, "not supported"),
        ({"type": "yaml"}, "must be"),
    ],
)
def test_unsupported_response_formats_are_refused(client, model, response_format, words):
    with pytest.raises(openai.BadRequestError) as refused:
        ask(client, model, PROMPTS[0], response_format=response_format)
    assert refused.value.body["param"] == "response_format"
    assert words in str(refused.value)
