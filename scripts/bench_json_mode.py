#!/usr/bin/env python3
"""JSON mode's cost: the same greedy chat request with and without
`response_format: {"type": "json_object"}`, interleaved, against a running server.
Prints output tokens per second (wall clock, one request at a time) for each mode and
whether the two answers were the same text (a prompt that already answers in JSON gives
the same tokens, so only the masking differs).

    arbor serve --model smollm2 --port 30000 &
    python3 scripts/bench_json_mode.py --url http://127.0.0.1:30000 --rounds 4
"""

import argparse
import json
import statistics
import time
import urllib.request

PROMPT = 'Give the capital of France as JSON with the key "capital".'


def chat(url, max_tokens, json_mode):
    body = {
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0,
        "max_tokens": max_tokens,
    }
    if json_mode:
        body["response_format"] = {"type": "json_object"}
    request = urllib.request.Request(
        f"{url}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request) as response:
        reply = json.load(response)
    elapsed = time.perf_counter() - start
    return reply["usage"]["completion_tokens"] / elapsed, reply["choices"][0]["message"]["content"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:30000")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=200)
    args = parser.parse_args()
    chat(args.url, 2, True)  # warm-up: decodes the vocabulary for the mask once
    rates = {False: [], True: []}
    texts = {}
    for _ in range(args.rounds):
        for json_mode in (False, True):
            rate, texts[json_mode] = chat(args.url, args.max_tokens, json_mode)
            rates[json_mode].append(rate)
    for json_mode, label in ((False, "free"), (True, "json_object")):
        values = " / ".join(f"{r:.1f}" for r in rates[json_mode])
        print(f"{label:>11}: {values} tok/s (median {statistics.median(rates[json_mode]):.1f})")
    ratio = statistics.median(rates[True]) / statistics.median(rates[False])
    print(f"json_object / free: {ratio:.2f}; same text: {texts[False] == texts[True]}")


if __name__ == "__main__":
    main()
