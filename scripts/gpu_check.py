#!/usr/bin/env python3
"""Arbor's check on a real GPU, run by scripts/gpu-check.sh (read that first).

Two parts, both through the `arbor` binary built with `--features cuda`:

1. fixtures: the tiny random models of tests/fixtures on CUDA and on the CPU through
   `arbor generate`: greedy ids must agree with each other and, in f32, with the
   `greedy_16` that transformers produced; bf16 agreement is reported. Then the 12 GB
   mode's path: tiny-qwen2 as a Q8_0 GGUF (written here by tiny_gguf.py) with a bf16
   KV cache, agreement reported.
2. throughput: random-weight models in the real DeepSeek-R1-Distill-Qwen-7B and
   Llama-8B configurations (tests/fixtures/models.json), generated here with
   transformers (no downloads), at batch 1, 16, 64 and 256: prefill tokens/s, decode
   tokens/s and the fraction of the HBM roofline (weight bytes read per decode step x
   steps/s / copy bandwidth measured with torch).

The main process never imports torch: model generation and the bandwidth probe run in
child processes (`bandwidth`, `random-model` subcommands), so their GPU memory is
returned before arbor runs. Only the standard library is needed otherwise.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
TINY_MODELS = ["tiny-qwen2", "tiny-qwen2-tied", "tiny-llama3"]
BIG_MODELS = [
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
]
BATCHES = [1, 16, 64, 256]
# Prompt tokens per sequence of the prefill runs: long prompts at small batches, and
# at most 16k prompt tokens per run so that batch 256 stays quick.
PREFILL_LEN = {1: 1024, 16: 512, 64: 256, 256: 64}
# New tokens per sequence of the decode runs (prompts of DECODE_PROMPT_LEN tokens).
DECODE_LEN = {1: 128, 16: 96, 64: 64, 256: 48}
DECODE_PROMPT_LEN = 16
# KV cache for the throughput runs, when `arbor generate` has --kv-cache-memory.
KV_MEMORY = "16GiB"
# The same for a dry run on the CPU, where the pool is allocated (and zeroed) up front.
DRY_RUN_KV_MEMORY = "256MiB"
# What arbor's engine sizes the KV cache to when not told (EngineConfig's default).
DEFAULT_KV_BYTES = 1 << 30


class CheckError(Exception):
    """A step of the check failed; the message says which and why."""


class Clock:
    """The time left of the check's budget."""

    def __init__(self, budget_s):
        self.deadline = time.monotonic() + budget_s

    def left(self):
        return self.deadline - time.monotonic()


def log(message):
    print(message, flush=True)


def json_objects(text):
    """Every top-level JSON value in `text` (one pretty object, or JSON lines), skipping
    anything else."""
    decoder = json.JSONDecoder()
    objects, pos = [], 0
    while pos < len(text):
        start = text.find("{", pos)
        if start < 0:
            break
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            pos = start + 1
            continue
        objects.append(value)
        pos = end
    return objects


def run_generate(binary, model, flags, timeout_s):
    """Runs `arbor generate --model MODEL FLAGS...`; returns its JSON objects."""
    cmd = [binary, "generate", "--model", model] + flags
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise CheckError(f"timed out after {timeout_s:.0f} s: {' '.join(cmd)}")
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise CheckError(f"exit {proc.returncode}: {' '.join(cmd)}\n{tail}")
    return json_objects(proc.stdout)


def write_prompts(path, prompts, max_tokens):
    with open(path, "w") as f:
        for ids in prompts:
            line = {"prompt_ids": ids, "max_tokens": max_tokens, "ignore_eos": True}
            f.write(json.dumps(line) + "\n")


def results_and_stats(objects):
    """The per-prompt results (by `index`) and the `stats` of a --prompts-file run."""
    stats = next((o["stats"] for o in objects if "stats" in o), None)
    results = sorted((o for o in objects if "output_ids" in o), key=lambda o: o.get("index", 0))
    if stats is None:
        raise CheckError("no {\"stats\": ...} line in the output of --prompts-file")
    return results, stats


# ---------------------------------------------------------------- part 1: fixtures


def fixture_ids(binary, model_dir, cases, dtype, device, work, extra=()):
    """Greedy 16 ids per case of one tiny model, all cases in one batched run."""
    path = os.path.join(work, f"{os.path.basename(model_dir)}-{dtype}-{device}.jsonl")
    write_prompts(path, [c["prompt_ids"] for c in cases], 16)
    flags = ["--prompts-file", path, "--max-tokens", "16", "--temperature", "0",
             "--ignore-eos", "--dtype", dtype, "--device", device] + list(extra)
    results, _ = results_and_stats(run_generate(binary, model_dir, flags, 120))
    if len(results) != len(cases):
        raise CheckError(f"{model_dir}: {len(results)} results for {len(cases)} prompts")
    return [r["output_ids"] for r in results]


def single_prompt_ids(binary, model_dir, prompt_ids, device):
    """Greedy 16 ids of one prompt through `--prompt-ids ... --json`."""
    flags = ["--prompt-ids", ",".join(map(str, prompt_ids)), "--max-tokens", "16",
             "--temperature", "0", "--ignore-eos", "--dtype", "f32", "--json",
             "--device", device]
    objects = [o for o in run_generate(binary, model_dir, flags, 120) if "output_ids" in o]
    if not objects:
        raise CheckError(f"{model_dir}: no output_ids in the --json output")
    return objects[0]["output_ids"]


def common_prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def check_fixtures(binary, work, report, device="cuda"):
    """Part 1; returns whether every f32 comparison passed. `device` other than cuda
    only dry-runs this script (CPU against itself)."""
    ok = True
    for name in TINY_MODELS:
        model_dir = os.path.join(FIXTURES, name)
        with open(os.path.join(model_dir, "reference.json")) as f:
            cases = json.load(f)["cases"]
        single = single_prompt_ids(binary, model_dir, cases[0]["prompt_ids"], device)
        single_ok = single == cases[0]["greedy_16"]
        ok &= single_ok
        log(f"  {name} --prompt-ids on {device}: {'ok' if single_ok else 'MISMATCH'}")
        for dtype in ["f32", "bf16"]:
            cuda = fixture_ids(binary, model_dir, cases, dtype, device, work)
            cpu = fixture_ids(binary, model_dir, cases, dtype, "cpu", work)
            for idx, case in enumerate(cases):
                agree = common_prefix(cuda[idx], cpu[idx])
                ref = common_prefix(cuda[idx], case["greedy_16"])
                row = {"model": name, "case": idx, "dtype": dtype,
                       "cuda_vs_cpu_tokens": agree, "cuda_vs_transformers_tokens": ref}
                report["fixtures"].append(row)
                passed = dtype != "f32" or (agree == 16 and ref == 16)
                ok &= passed
                log(f"  {name} case {idx} {dtype}: cuda=cpu for {agree}/16 tokens, "
                    f"cuda=transformers for {ref}/16{'' if passed else '  FAIL'}")
    return ok


def check_gguf(binary, work, report, device="cuda"):
    """Part 1b, the 12 GB mode's path: tiny-qwen2 written as a Q8_0 GGUF here
    (scripts/tiny_gguf.py), quantized matmuls with f32 activations over a bf16 KV cache,
    on the device and on the CPU. Agreement is reported (the device's quantized matmul
    may round differently); a run that fails fails the check."""
    import tiny_gguf

    model_dir = os.path.join(FIXTURES, "tiny-qwen2")
    with open(os.path.join(model_dir, "reference.json")) as f:
        cases = json.load(f)["cases"]
    path = os.path.join(work, "tiny-qwen2.q8_0.gguf")
    tiny_gguf.write(model_dir, path)
    extra = ["--kv-cache-dtype", "bf16"]
    dev = fixture_ids(binary, path, cases, "auto", device, work, extra)
    cpu = fixture_ids(binary, path, cases, "auto", "cpu", work, extra)
    for idx, case in enumerate(cases):
        agree = common_prefix(dev[idx], cpu[idx])
        ref = common_prefix(dev[idx], case["greedy_16"])
        report["fixtures"].append({"model": "tiny-qwen2 q8_0 gguf", "case": idx,
                                   "dtype": "q8_0, bf16 kv", "cuda_vs_cpu_tokens": agree,
                                   "cuda_vs_transformers_tokens": ref})
        log(f"  tiny-qwen2 Q8_0 GGUF case {idx}, bf16 KV: {device}=cpu for {agree}/16 "
            f"tokens, {device}=transformers for {ref}/16")
    return True


# -------------------------------------------------------------- part 2: throughput


def child(args, timeout_s):
    """Runs this script's subcommand in a child Python; returns its last JSON object."""
    cmd = [sys.executable, os.path.abspath(__file__)] + args
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise CheckError(f"timed out after {timeout_s:.0f} s: {' '.join(args)}")
    if proc.returncode != 0:
        raise CheckError(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return json_objects(proc.stdout)[-1]


def generate_flags(binary, device):
    """The KV flag to pass, if `arbor generate` has one, and its KV bytes."""
    help_text = subprocess.run([binary, "generate", "--help"], capture_output=True,
                               text=True).stdout
    if "--kv-cache-memory" in help_text:
        if device != "cuda":
            return ["--kv-cache-memory", DRY_RUN_KV_MEMORY], 256 << 20
        return ["--kv-cache-memory", KV_MEMORY], 16 << 30
    log(f"  note: arbor generate has no --kv-cache-memory; runs sized for its default "
        f"{DEFAULT_KV_BYTES >> 30} GiB KV cache")
    return [], DEFAULT_KV_BYTES


def kv_bytes_per_token(config):
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    return 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * 2


def fit_lengths(batch, prompt_len, new_len, kv_tokens):
    """Shrinks a run so that `batch` sequences fit the KV cache without preemption
    (16-token pages, one page of slack per sequence)."""
    per_seq = kv_tokens // batch - 16
    if prompt_len + new_len <= per_seq:
        return prompt_len, new_len
    new_len = max(4, min(new_len, per_seq // 2))
    return max(4, min(prompt_len, per_seq - new_len)), new_len


def timed_run(binary, model_dir, batch, prompt_len, new_len, vocab, flags, work, clock):
    # Ids away from both ends of the vocabulary, where special tokens live.
    margin = min(1000, vocab // 4)
    prompts = [[random.randrange(margin, vocab - margin) for _ in range(prompt_len)]
               for _ in range(batch)]
    path = os.path.join(work, f"b{batch}-p{prompt_len}-n{new_len}.jsonl")
    write_prompts(path, prompts, new_len)
    timeout = max(30.0, min(180.0, clock.left()))
    objects = run_generate(binary, model_dir, ["--prompts-file", path, "--max-tokens",
                                               str(new_len), "--temperature", "0",
                                               "--ignore-eos", "--dtype", "bf16"] + flags,
                           timeout)
    results, stats = results_and_stats(objects)
    output_tokens = stats.get("output_tokens", sum(len(r["output_ids"]) for r in results))
    return stats["prompt_tokens"], output_tokens, stats["elapsed_s"]


def throughput(binary, work, bandwidth, report, clock, device="cuda"):
    """Part 2. `device` other than cuda dry-runs it on tiny-llama3 (no torch needed)."""
    with open(os.path.join(FIXTURES, "models.json")) as f:
        configs = json.load(f)["models"]
    flags, kv_bytes = generate_flags(binary, device)
    flags = flags + ["--device", device]
    for name in BIG_MODELS if device == "cuda" else ["tiny-llama3"]:
        if clock.left() < 90:
            log(f"  {name}: skipped, out of time")
            continue
        if device == "cuda":
            model_dir = os.path.join(work, name.split("/")[1])
            started = time.monotonic()
            made = child(["random-model", name, model_dir], min(240.0, clock.left()))
            log(f"  {name}: random bf16 weights, {made['weights_bytes'] / 1e9:.2f} GB, "
                f"made in {time.monotonic() - started:.0f} s")
            config = configs[name]
        else:
            model_dir = os.path.join(FIXTURES, name)
            with open(os.path.join(model_dir, "config.json")) as f:
                config = json.load(f)
            # Weights are f32 on disk, bf16 when loaded.
            made = {"weights_bytes": os.path.getsize(
                os.path.join(model_dir, "model.safetensors")) // 2}
        kv_tokens = kv_bytes // kv_bytes_per_token(config)
        for batch in BATCHES:
            if clock.left() < 30:
                log(f"  {name} batch {batch}: skipped, out of time")
                continue
            row = measure(binary, model_dir, batch, config, kv_tokens, flags, work, clock)
            steps_per_s = row["decode_tok_s"] / batch
            row.update(model=name if "/" in name else "-/" + name, batch=batch,
                       hbm_fraction=made["weights_bytes"] * steps_per_s / bandwidth)
            report["throughput"].append(row)
            log(f"  {name} batch {batch}: prefill {row['prefill_tok_s']:.0f} tok/s, "
                f"decode {row['decode_tok_s']:.0f} tok/s, "
                f"HBM roofline {100 * row['hbm_fraction']:.1f}%")
        if device == "cuda":
            shutil.rmtree(model_dir, ignore_errors=True)


def measure(binary, model_dir, batch, config, kv_tokens, flags, work, clock):
    """Prefill tokens/s from a run of long prompts and one new token each, then decode
    tokens/s from a run of short prompts and many new tokens, less the prefill time
    (at the rate just measured) and the first token it yields."""
    vocab = config["vocab_size"]
    prompt_len, _ = fit_lengths(batch, PREFILL_LEN[batch], 1, kv_tokens)
    n_prompt, _, elapsed = timed_run(binary, model_dir, batch, prompt_len, 1, vocab,
                                     flags, work, clock)
    prefill_tok_s = n_prompt / elapsed
    prompt_len, new_len = fit_lengths(batch, DECODE_PROMPT_LEN, DECODE_LEN[batch], kv_tokens)
    n_prompt, n_output, elapsed = timed_run(binary, model_dir, batch, prompt_len, new_len,
                                            vocab, flags, work, clock)
    decode_s = max(1e-9, elapsed - n_prompt / prefill_tok_s)
    return {"prefill_tokens": n_prompt, "prefill_tok_s": prefill_tok_s,
            "decode_tokens": n_output - batch, "new_tokens_per_seq": new_len,
            "decode_tok_s": (n_output - batch) / decode_s}


# ------------------------------------------------------------------ child commands


def cmd_bandwidth():
    """Device-to-device copy bandwidth (read + write bytes per second) with torch."""
    import torch

    src = torch.empty(1 << 29, dtype=torch.float32, device="cuda")  # 2 GiB
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    iters = 20
    start.record()
    for _ in range(iters):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1e3
    moved = 2 * src.numel() * src.element_size() * iters
    print(json.dumps({"bandwidth_bytes_per_s": moved / seconds,
                      "device": torch.cuda.get_device_name()}))


def cmd_random_model(name, out_dir):
    """A random bf16 checkpoint of `name`'s published configuration, in `out_dir`."""
    import torch
    import transformers

    with open(os.path.join(FIXTURES, "models.json")) as f:
        fields = dict(json.load(f)["models"][name])
    model_type = fields.pop("model_type")
    fields.pop("torch_dtype", None)
    config = transformers.AutoConfig.for_model(model_type, **fields)
    torch.manual_seed(0)
    with torch.device("cuda"):
        try:
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        except TypeError:
            model = transformers.AutoModelForCausalLM.from_config(
                config, torch_dtype=torch.bfloat16)
    weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    model.save_pretrained(out_dir, max_shard_size="100GB")
    # The DeepSeek-R1-Distill-Qwen tokenizer, so that output decodes; its ids (<151665)
    # are fine for either vocabulary, since only generated ids are decoded.
    shutil.copy(os.path.join(FIXTURES, "deepseek-r1-distill-qwen", "tokenizer.json"), out_dir)
    print(json.dumps({"weights_bytes": weights_bytes}))


# --------------------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="both parts; exits 1 if a comparison fails")
    run.add_argument("--bin", required=True, help="the arbor binary (cuda build)")
    run.add_argument("--out", required=True, help="folder for the report and scratch files")
    run.add_argument("--budget-s", type=float, default=450.0)
    run.add_argument("--skip-throughput", action="store_true")
    run.add_argument("--device", default="cuda",
                     help="cpu only dry-runs part 1 of this script on a machine without a GPU")
    sub.add_parser("bandwidth")
    model = sub.add_parser("random-model")
    model.add_argument("name")
    model.add_argument("out_dir")
    args = parser.parse_args()

    if args.command == "bandwidth":
        return cmd_bandwidth()
    if args.command == "random-model":
        return cmd_random_model(args.name, args.out_dir)
    return cmd_run(args)


def cmd_run(args):
    clock = Clock(args.budget_s)
    work = os.path.join(os.path.abspath(args.out), "work")
    os.makedirs(work, exist_ok=True)
    random.seed(0)
    report = {"fixtures": [], "throughput": []}
    failed = []

    log("==> part 1: tiny fixtures, CUDA vs CPU vs transformers")
    try:
        if not check_fixtures(args.bin, work, report, args.device):
            failed.append("fixtures")
        check_gguf(args.bin, work, report, args.device)
    except CheckError as err:
        log(f"  FAILED: {err}")
        failed.append("fixtures")

    if not args.skip_throughput:
        log("==> part 2: throughput with random weights in real configurations")
        try:
            if args.device == "cuda":
                probe = child(["bandwidth"], 120)
            else:  # a dry run: a nominal bandwidth, no torch
                probe = {"bandwidth_bytes_per_s": 1e10, "device": f"{args.device} (dry run)"}
            bandwidth = probe["bandwidth_bytes_per_s"]
            report.update(device=probe["device"], bandwidth_bytes_per_s=bandwidth)
            log(f"  {probe['device']}: copy bandwidth {bandwidth / 1e12:.2f} TB/s")
            throughput(args.bin, work, bandwidth, report, clock, args.device)
        except CheckError as err:
            log(f"  FAILED: {err}")
            failed.append("throughput")

    write_report(args.out, report)
    shutil.rmtree(work, ignore_errors=True)
    log(f"==> {'FAILED: ' + ', '.join(failed) if failed else 'gpu check passed'}")
    return 1 if failed else 0


def write_report(out, report):
    with open(os.path.join(out, "gpu-check.json"), "w") as f:
        json.dump(report, f, indent=1)
    lines = ["| model | batch | prefill tok/s | decode tok/s | HBM roofline |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for row in report["throughput"]:
        lines.append(f"| {row['model'].split('/')[1]} | {row['batch']} | "
                     f"{row['prefill_tok_s']:.0f} | {row['decode_tok_s']:.0f} | "
                     f"{100 * row['hbm_fraction']:.1f}% |")
    table = "\n".join(lines)
    with open(os.path.join(out, "gpu-check.md"), "w") as f:
        f.write(f"{report.get('device', 'GPU')}, copy bandwidth "
                f"{report.get('bandwidth_bytes_per_s', 0) / 1e12:.2f} TB/s\n\n{table}\n")
    log(table)


if __name__ == "__main__":
    sys.exit(main())
