#!/usr/bin/env python3
"""llama.cpp peer for `tandem bench ide`: answers code completions read as JSON lines on stdin,
one JSON line each on stdout, with llama.cpp's prompt cache on (the longest common prefix with
the previous prompt is kept, as llama.cpp's server does with `cache_prompt`).

Each request: {"input_prefix", "prompt", "input_suffix", "n_predict", "stop"}. The prompt is laid
out as llama.cpp's server lays out /infill (repository name, the current file's separator, the
prefix's last 1536 tokens + the typed text, the suffix's first 512 - 2 - typed tokens, middle)
and completed greedily. Answer: {"content", "ms", "prompt_tokens", "prompt_n"}.

Dependency: llama-cpp-python, built as benches/llama_cpp_peer.py says. Benchmark only.
Run by `tandem bench ide`; set TANDEM_LLAMA_PYTHON to its python.
"""

import argparse
import json
import sys
import time

import llama_cpp
from llama_cpp import Llama


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    llm = Llama(model_path=args.model, n_ctx=4096, n_batch=512, n_threads=args.threads,
                n_threads_batch=args.threads, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)

    def is_eog(tok: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(vocab, tok))


    def special(text: str) -> int:
        ids = llm.tokenize(text.encode(), add_bos=False, special=True)
        assert len(ids) == 1, (text, ids)
        return ids[0]

    def text(t: str) -> list:
        return llm.tokenize(t.encode(), add_bos=False, special=False) if t else []

    pre, suf, mid = special("<|fim_prefix|>"), special("<|fim_suffix|>"), special("<|fim_middle|>")
    rep, sep = special("<|repo_name|>"), special("<|file_sep|>")
    header = [rep] + text("myproject\n") + [sep] + text("filename\n")
    previous: list = []
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        started = time.perf_counter()
        prefix = text(req["input_prefix"])[-1536:]
        typed = text(req.get("prompt", ""))
        suffix = text(req["input_suffix"])[: max(0, 512 - 2 - len(typed))]
        tokens = header + [pre] + prefix + typed + [suf] + suffix + [mid]
        common = 0
        for a, b in zip(previous, tokens):
            if a != b:
                break
            common += 1
        # llama-cpp-python keeps the longest common prefix of its last input (the prompt cache);
        # the last prompt token is always evaluated again for its logits.
        common = min(common, len(tokens) - 1)
        out = []
        content = ""
        for tok in llm.generate(tokens, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, reset=True):
            if is_eog(tok):
                break
            out.append(tok)
            content = llm.detokenize(out).decode("utf-8", errors="ignore")
            stop = next((s for s in req.get("stop", []) if s in content), None)
            if stop is not None:
                content = content[: content.index(stop)]
                break
            if len(out) >= req["n_predict"]:
                break
        ms = (time.perf_counter() - started) * 1000.0
        previous = tokens + out
        print(json.dumps({"content": content, "ms": ms, "prompt_tokens": len(tokens),
                          "prompt_n": len(tokens) - common}), flush=True)


if __name__ == "__main__":
    main()
