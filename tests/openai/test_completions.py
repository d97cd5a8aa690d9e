"""`/v1/completions` through the real openai client: text in, text out, streamed the
same way, with logprobs and echo."""

import pytest

PROMPT = "The capital of France is"


def complete(client, model, **kwargs):
    args = dict(model=model, prompt=PROMPT, temperature=0, max_tokens=8)
    args.update(kwargs)
    return client.completions.create(**args)


@pytest.fixture(scope="module")
def expected(client, model):
    """The greedy 8-token completion of PROMPT that several tests compare against."""
    return complete(client, model)


def test_greedy_completion_continues_the_prompt(expected):
    response = expected
    assert response.object == "text_completion"
    assert response.choices[0].text.startswith(" Paris")
    assert response.usage.completion_tokens <= 8
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_completion_without_max_tokens_stops_at_sixteen_tokens_as_openai_does(client, model):
    response = client.completions.create(
        model=model, prompt=PROMPT, temperature=1, seed=3, extra_body={"ignore_eos": True}
    )
    assert response.usage.completion_tokens == 16
    assert response.choices[0].finish_reason == "length"


def test_streamed_completion_matches_the_non_streamed_text(client, model, expected):
    chunks = list(complete(client, model, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == expected.choices[0].text
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == expected.usage.completion_tokens


def test_completion_logprobs_line_up_with_the_text(client, model):
    response = complete(client, model, logprobs=2, max_tokens=5)
    choice = response.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset == sorted(lp.text_offset)
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert logprob <= 0
        # The chosen token plus up to two alternatives; greedy picks the best one.
        assert 2 <= len(top) <= 3
        assert max(top.values()) == top[token]


def test_echo_puts_the_prompt_before_the_completion(client, model, expected):
    plain = expected.choices[0].text
    echoed = complete(client, model, echo=True).choices[0].text
    assert echoed == PROMPT + plain


def test_completions_and_sglang_generate_agree_on_greedy_text(http, expected):
    body = {"text": PROMPT, "sampling_params": {"max_new_tokens": 8, "temperature": 0}}
    response = http.post("/generate", body)
    assert response.status == 200
    assert response.json()["text"] == expected.choices[0].text


OTHER_PROMPT = "The largest planet in the solar system is"


def test_a_list_of_prompts_numbers_choices_prompt_by_prompt(client, model, expected):
    other = complete(client, model, prompt=OTHER_PROMPT)
    response = complete(client, model, prompt=[PROMPT, OTHER_PROMPT], n=2)
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    # Greedy: both choices of a prompt are its single-prompt completion.
    texts = [c.text for c in response.choices]
    assert texts == [expected.choices[0].text] * 2 + [other.choices[0].text] * 2
    # Each prompt counts once; the completions of all four choices add up.
    assert response.usage.prompt_tokens == expected.usage.prompt_tokens + other.usage.prompt_tokens
    assert response.usage.completion_tokens == 2 * (
        expected.usage.completion_tokens + other.usage.completion_tokens
    )


def test_a_list_of_token_id_prompts_streams_every_choice_to_its_end(client, model, http, expected):
    ids = http.post("/tokenize", {"prompt": PROMPT, "add_special_tokens": True}).json()["tokens"]
    chunks = list(complete(client, model, prompt=[ids, ids[:3]], stream=True,
                           stream_options={"include_usage": True}))
    texts, finished = {}, set()
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.finish_reason:
                finished.add(choice.index)
    assert finished == {0, 1}
    assert texts[0] == expected.choices[0].text
    assert chunks[-1].usage.prompt_tokens == len(ids) + 3


def test_an_empty_list_of_prompts_is_a_bad_request(client, model):
    import openai

    with pytest.raises(openai.BadRequestError) as err:
        complete(client, model, prompt=[])
    assert "prompt must not be empty" in str(err.value)
