"""Tool calling through the real openai client. The main server runs with
`--tool-call-parser hermes`; a few worked examples in the conversation make
SmolLM2-135M-Instruct answer with a `<tool_call>` block, which the server must hand back
as `tool_calls` (whole or streamed) with `finish_reason: "tool_calls"`. A forced call
(`tool_choice: "required"` or a named function) is written by constrained decoding
even where the model, left alone, answers in prose."""

import json

import openai
import pytest

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def tool_call_text(city):
    return '<tool_call>{"name": "get_weather", "arguments": {"city": "%s"}}</tool_call>' % city


def conversation(city):
    """Three worked examples, then the question about `city`."""
    messages = [{"role": "system", "content": "You call tools. Answer only with a tool call."}]
    for known in ["Paris", "London", "Berlin"]:
        messages.append({"role": "user", "content": f"Weather in {known}?"})
        messages.append({"role": "assistant", "content": tool_call_text(known)})
    messages.append({"role": "user", "content": f"Weather in {city}?"})
    return messages


def ask(client, model, city, **kwargs):
    return client.chat.completions.create(
        model=model, messages=conversation(city), temperature=0, max_tokens=40, **kwargs
    )


def test_a_tool_call_comes_back_as_tool_calls(client, model):
    choice = ask(client, model, "Rome", tools=TOOLS).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Rome"}


def test_a_streamed_tool_call_matches_the_whole_answer(client, model):
    whole = ask(client, model, "Madrid", tools=TOOLS).choices[0].message.tool_calls
    chunks = list(ask(client, model, "Madrid", tools=TOOLS, stream=True))
    calls = [c for chunk in chunks for c in (chunk.choices[0].delta.tool_calls or [])]
    reasons = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices[0].finish_reason]
    assert reasons == ["tool_calls"]
    # Ids are unique per request, so only their form is compared.
    assert [(c.index, c.function.name, c.function.arguments) for c in calls] == [
        (0, whole[0].function.name, whole[0].function.arguments)
    ]
    assert calls[0].id.startswith("call_") and calls[0].id != whole[0].id
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == ""


def test_tool_choice_none_leaves_the_call_in_the_text(client, model):
    choice = ask(client, model, "Rome", tools=TOOLS, tool_choice="none").choices[0]
    assert choice.finish_reason == "stop"
    assert not choice.message.tool_calls
    assert '"get_weather"' in choice.message.content and "<tool_call>" in choice.message.content


def test_the_answer_to_a_call_renders_as_the_next_turn(client, model):
    first = ask(client, model, "Rome", tools=TOOLS).choices[0].message
    messages = conversation("Rome") + [
        first.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "Sunny, 24 C"},
    ]
    reply = client.chat.completions.create(
        model=model, messages=messages, tools=TOOLS, temperature=0, max_tokens=8
    )
    assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert reply.usage.prompt_tokens > ask(client, model, "Rome").usage.prompt_tokens


@pytest.mark.parametrize(
    "tool_choice",
    ["required", {"type": "function", "function": {"name": "get_weather"}}],
)
def test_a_forced_call_is_written_even_without_examples(client, model, tool_choice):
    # No worked examples: left alone the model answers in prose; forced, the output is
    # constrained to a hermes call of get_weather with a JSON object of arguments.
    messages = [{"role": "user", "content": "What is the weather like in Rome today?"}]
    free = client.chat.completions.create(
        model=model, messages=messages, tools=TOOLS, temperature=0, max_tokens=40
    ).choices[0]
    assert not free.message.tool_calls
    forced = client.chat.completions.create(
        model=model, messages=messages, tools=TOOLS, tool_choice=tool_choice, temperature=0,
        max_tokens=200,
    ).choices[0]
    assert forced.finish_reason == "tool_calls", forced
    (call,) = forced.message.tool_calls
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments), dict)


def test_required_with_several_tools_calls_one_of_them(client, model):
    clock = {"type": "function", "function": {"name": "get_time", "parameters": {}}}
    messages = [{"role": "user", "content": "What is the weather like in Rome today?"}]
    choice = client.chat.completions.create(
        model=model, messages=messages, tools=TOOLS + [clock], tool_choice="required",
        temperature=0, max_tokens=200,
    ).choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls
    assert call.function.name in ("get_weather", "get_time")
    assert isinstance(json.loads(call.function.arguments), dict)


def test_forced_calls_that_cannot_be_honoured_are_refused(client, model):
    unknown = {"type": "function", "function": {"name": "unknown"}}
    with pytest.raises(openai.BadRequestError) as refused:
        ask(client, model, "Rome", tools=TOOLS, tool_choice=unknown)
    assert "not among the tools" in str(refused.value)
    with pytest.raises(openai.BadRequestError) as refused:
        ask(client, model, "Rome", tools=TOOLS, tool_choice="required",
            response_format={"type": "json_object"})
    assert refused.value.body["param"] == "response_format"


def test_a_malformed_tool_is_refused_naming_it(client, model):
    with pytest.raises(openai.BadRequestError) as refused:
        ask(client, model, "Rome", tools=TOOLS + [{"type": "function", "function": {}}])
    assert refused.value.body["param"] == "tools[1]"
