#!/usr/bin/env python3
"""ONNX Runtime (Python) peer for `tandem bench embeddings`: the same MiniLM-L6-v2 int8 ONNX file
and tokenizer.json, the same 256-token truncation, mean pooling and L2 normalization, on one
session with `--threads` intra-op threads; inputs per second at batch 1 and 32, as JSON.

Dependencies (the bench installs them into its own venv; never CI):
  python3 -m venv VENV && VENV/bin/pip install onnxruntime tokenizers numpy
Run: VENV/bin/python benches/embeddings_peer.py --model M --tokenizer T [--threads 2] [--seconds 5]
"""

import argparse
import json
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def texts(n):
    topics = ["cats", "taxes", "compilers", "rain", "football", "bread", "satellites", "jazz"]
    return [
        f"Sentence number {i} talks about {topics[i % len(topics)]} and how it relates to "
        f"everyday life in a small town by the sea."
        for i in range(n)
    ]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=5.0)
    a = p.parse_args()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(a.model, opts, providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_file(a.tokenizer)
    tok.enable_truncation(256)
    tok.enable_padding()

    def embed(batch):
        enc = tok.encode_batch(batch)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        out = session.run(
            ["last_hidden_state"],
            {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
        )[0]
        m = mask[..., None].astype(np.float32)
        v = (out * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    pool = texts(64)
    result = {"runtime": f"onnxruntime {ort.__version__}", "threads": a.threads}
    for size in (1, 32):
        embed(pool[:size])
        done, i, start = 0, 0, time.perf_counter()
        while time.perf_counter() - start < a.seconds:
            batch = [pool[(i + k) % len(pool)] for k in range(size)]
            embed(batch)
            done += size
            i += size
        result[f"batch_{size}"] = done / (time.perf_counter() - start)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
