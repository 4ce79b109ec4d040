#!/usr/bin/env python3
"""llama.cpp peer for `tandem bench local`: prefill, decode, TTFT and RSS of a GGUF model as JSON.

Dependency (once, about 10 minutes on 2 cores; AMX must stay off, it crashes on these machines):
  python3 -m venv /work/venv-llama
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
    -DGGML_AVX512=ON -DGGML_AVX_VNNI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DLLAMA_CURL=OFF" \
    /work/venv-llama/bin/pip install llama-cpp-python==0.3.36
On a CPU without AVX-VNNI (e.g. AMD Zen 4, which has AVX-512 VNNI instead) that build dies with
SIGILL; build for the host instead (still with AMX off):
  CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF" \
    /work/venv-llama/bin/pip install --force-reinstall --no-deps llama-cpp-python==0.3.36

Run: /work/venv-llama/bin/python benches/llama_cpp_peer.py [--model PATH] [--threads 2]
Benchmark only; never run in CI.
"""

import argparse
import json
import os
import sys
import time


def default_model() -> str:
    root = os.environ.get("TANDEM_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "tandem")
    return os.path.join(root, "smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf")


def rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def prompt_tokens(llm, n: int) -> list:
    text = (
        "The quick brown fox jumps over the lazy dog while the committee reviews quarterly "
        "reports on renewable energy, supply chains and the history of mathematics. "
    )
    toks = llm.tokenize(text.encode(), add_bos=False, special=False)
    out = []
    while len(out) < n:
        out.extend(toks)
    return out[:n]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=default_model())
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs per figure")
    args = ap.parse_args()
    if not os.path.exists(args.model):
        print(json.dumps({"error": f"model not found: {args.model} (run `tandem models fetch`)"}))
        return 1

    try:
        from llama_cpp import Llama, __version__
    except ImportError:
        print(json.dumps({"error": "llama_cpp not importable; see the install command at the top of this file"}))
        return 1

    t0 = time.perf_counter()
    llm = Llama(
        model_path=args.model,
        n_ctx=2048,
        n_batch=1024,
        n_ubatch=512,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    load_s = time.perf_counter() - t0
    rss_loaded = rss_mb("VmRSS")

    result = {
        "peer": "llama.cpp",
        "llama_cpp_python": __version__,
        "model": os.path.basename(args.model),
        "threads": args.threads,
        "load_ms": round(load_s * 1e3, 1),
        "prefill_tok_s": {},
    }

    for n in (256, 1024):
        toks = prompt_tokens(llm, n)
        best = float("inf")
        for _ in range(args.repeats):
            llm.reset()
            s = time.perf_counter()
            llm.eval(toks)
            best = min(best, time.perf_counter() - s)
        result["prefill_tok_s"][str(n)] = round(n / best, 1)

    # TTFT: a 256-token prompt evaluated and its first token chosen (greedy).
    toks = prompt_tokens(llm, 256)
    best = float("inf")
    for _ in range(args.repeats):
        llm.reset()
        s = time.perf_counter()
        next(llm.generate(toks, top_k=1, top_p=1.0, temp=0.0, reset=True))
        best = min(best, time.perf_counter() - s)
    result["ttft_ms"] = round(best * 1e3, 2)

    # Decode: greedy continuation of a 32-token prompt; the first token (prefill) is not timed.
    toks = prompt_tokens(llm, 32)
    best = float("inf")
    for _ in range(args.repeats):
        llm.reset()
        gen = llm.generate(toks, top_k=1, top_p=1.0, temp=0.0, reset=True)
        next(gen)
        s = time.perf_counter()
        for _ in range(args.decode_tokens):
            next(gen)
        best = min(best, time.perf_counter() - s)
    result["decode_tok_s"] = round(args.decode_tokens / best, 1)

    result["rss_mb"] = round(rss_loaded, 1)
    result["peak_rss_mb"] = round(rss_mb("VmHWM"), 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
