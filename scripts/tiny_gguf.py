#!/usr/bin/env python3
"""Writes a Q8_0 GGUF of a tiny Qwen2 fixture (tests/fixtures/tiny-qwen2), with only the
standard library, so that scripts/gpu_check.py can run Arbor's quantized GGUF path on a
GPU machine that has no GGUF file and no GGUF writer.

    python3 scripts/tiny_gguf.py tests/fixtures/tiny-qwen2 OUT.gguf

Matrices are stored as Q8_0 (blocks of 32: an f16 scale, then 32 signed bytes), vectors
as f32, under llama.cpp's tensor names (Qwen2 keeps the Hugging Face q/k row order).
The tokenizer metadata is a byte-level BPE with no merges, enough for `--prompt-ids`.
"""

import json
import os
import struct
import sys

ALIGNMENT = 32
GGUF_F32, GGUF_Q8_0 = 0, 8
UINT32, FLOAT32, STRING, ARRAY = 4, 6, 8, 9

LAYER_PARTS = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
FIXED = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def gguf_name(hf):
    if hf in FIXED:
        return FIXED[hf]
    layer, part = hf.removeprefix("model.layers.").split(".", 1)
    module, suffix = part.rsplit(".", 1)
    return f"blk.{layer}.{LAYER_PARTS[module]}.{suffix}"


def read_safetensors(path):
    """{name: (shape, [float])} of an f32/bf16/f16 safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = data[start:end]
        if info["dtype"] == "F32":
            values = list(struct.unpack(f"<{len(raw) // 4}f", raw))
        elif info["dtype"] == "BF16":
            halves = struct.unpack(f"<{len(raw) // 2}H", raw)
            values = list(struct.unpack(f"<{len(halves)}f",
                                        struct.pack(f"<{len(halves)}I", *(h << 16 for h in halves))))
        elif info["dtype"] == "F16":
            values = list(struct.unpack(f"<{len(raw) // 2}e", raw))
        else:
            raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}")
        tensors[name] = (info["shape"], values)
    return tensors


def q8_0(values):
    """llama.cpp's Q8_0 blocks of `values` (a multiple of 32 long)."""
    out = bytearray()
    for i in range(0, len(values), 32):
        block = values[i:i + 32]
        amax = max(abs(v) for v in block)
        d = amax / 127.0
        inv = 1.0 / d if d else 0.0
        out += struct.pack("<e", d)
        out += struct.pack("<32b", *(max(-127, min(127, round(v * inv))) for v in block))
    return bytes(out)


def gguf_string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key, kind, value):
    out = gguf_string(key) + struct.pack("<I", kind)
    if kind == UINT32:
        return out + struct.pack("<I", value)
    if kind == FLOAT32:
        return out + struct.pack("<f", value)
    if kind == STRING:
        return out + gguf_string(value)
    if kind == ARRAY:  # of strings
        return out + struct.pack("<IQ", STRING, len(value)) + b"".join(map(gguf_string, value))
    raise ValueError(kind)


def byte_level_tokens(vocab_size):
    """GPT-2's printable stand-ins for the 256 bytes, then filler tokens."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    tokens = [chars[b] for b in range(256)]
    return tokens + [f"<t{i}>" for i in range(256, vocab_size)]


def write(model_dir, out_path):
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    if config["model_type"] != "qwen2":
        raise ValueError(f"{model_dir}: only qwen2 fixtures (llama needs q/k permuted)")
    tensors = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    meta = [
        kv("general.architecture", STRING, "qwen2"),
        kv("qwen2.block_count", UINT32, config["num_hidden_layers"]),
        kv("qwen2.context_length", UINT32, config["max_position_embeddings"]),
        kv("qwen2.embedding_length", UINT32, config["hidden_size"]),
        kv("qwen2.feed_forward_length", UINT32, config["intermediate_size"]),
        kv("qwen2.attention.head_count", UINT32, config["num_attention_heads"]),
        kv("qwen2.attention.head_count_kv", UINT32, config["num_key_value_heads"]),
        kv("qwen2.attention.layer_norm_rms_epsilon", FLOAT32, config["rms_norm_eps"]),
        kv("qwen2.rope.freq_base", FLOAT32, config["rope_theta"]),
        kv("tokenizer.ggml.model", STRING, "gpt2"),
        kv("tokenizer.ggml.pre", STRING, "qwen2"),
        kv("tokenizer.ggml.tokens", ARRAY, byte_level_tokens(config["vocab_size"])),
        kv("tokenizer.ggml.merges", ARRAY, []),
        kv("tokenizer.ggml.bos_token_id", UINT32, config["bos_token_id"]),
        kv("tokenizer.ggml.eos_token_id", UINT32, config["eos_token_id"]),
    ]
    infos, blobs, offset = [], [], 0
    for hf_name in sorted(tensors):
        shape, values = tensors[hf_name]
        if len(shape) == 2 and shape[1] % 32 == 0:
            kind, blob = GGUF_Q8_0, q8_0(values)
        else:
            kind, blob = GGUF_F32, struct.pack(f"<{len(values)}f", *values)
        dims = list(reversed(shape))  # ggml lists the innermost dimension first
        infos.append(gguf_string(gguf_name(hf_name)) + struct.pack("<I", len(dims))
                     + struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", kind, offset))
        blob += b"\0" * (-len(blob) % ALIGNMENT)
        blobs.append(blob)
        offset += len(blob)
    header = struct.pack("<4sIQQ", b"GGUF", 3, len(infos), len(meta)) + b"".join(meta) \
        + b"".join(infos)
    header += b"\0" * (-len(header) % ALIGNMENT)
    with open(out_path, "wb") as f:
        f.write(header)
        for blob in blobs:
            f.write(blob)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    write(sys.argv[1], sys.argv[2])
