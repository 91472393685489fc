"""Runs llama.cpp (``llama-cpp-python``) for benchmarks/llamacpp.py, inside its own environment
(``.venv-llamacpp``, ``make llamacpp``). Reads one JSON request on stdin, writes one JSON answer on stdout:

request: ``{"model": gguf path, "threads": n, "prompts": [[token ids]], "max_new_tokens": n,
"eos": [ids], "lookup_tokens": n, "repeats": r}``
answer: ``{"system_info": str, "version": str, "runs": [{"mode": "plain" | "lookup", "prompt": i,
"repeat": r, "tokens": [...], "prefill_seconds": s, "decode_seconds": s}]}``

Greedy (temperature 0, no repetition penalty). Prefill is the time to the first new token; decode
the time from it to the last. ``lookup`` is llama-cpp-python's prompt-lookup speculative decoding
(``LlamaPromptLookupDecoding``).
"""

import json
import sys
import time

import llama_cpp
from llama_cpp.llama_speculative import LlamaPromptLookupDecoding


def run(llm, ids, max_new, eos):
    tokens, first = [], None
    llm.reset()  # evaluate the whole prompt: no KV reuse from the previous run (also a fair prefill)
    start = time.perf_counter()
    for tok in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        if first is None:
            first = time.perf_counter()
        tokens.append(int(tok))
        if tok in eos or len(tokens) >= max_new:
            break
    end = time.perf_counter()
    return tokens, first - start, end - first


def main():
    req = json.load(sys.stdin)
    common = dict(
        model_path=req["model"],
        n_ctx=4096,
        n_batch=512,
        n_threads=req["threads"],
        n_threads_batch=req["threads"],
        verbose=False,
        logits_all=False,
    )
    models = {
        "plain": llama_cpp.Llama(**common),
        "lookup": llama_cpp.Llama(
            **common, draft_model=LlamaPromptLookupDecoding(num_pred_tokens=req["lookup_tokens"])
        ),
    }
    eos = set(req["eos"])
    runs = []
    for llm in models.values():  # warm-up
        run(llm, req["prompts"][0], 4, eos)
    for r in range(req["repeats"]):
        for i, ids in enumerate(req["prompts"]):
            for mode in ("plain", "lookup") if (i + r) % 2 == 0 else ("lookup", "plain"):
                tokens, prefill, decode = run(models[mode], ids, req["max_new_tokens"], eos)
                runs.append(
                    {
                        "mode": mode,
                        "prompt": i,
                        "repeat": r,
                        "tokens": tokens,
                        "prefill_seconds": prefill,
                        "decode_seconds": decode,
                    }
                )
    info = llama_cpp.llama_print_system_info()
    json.dump(
        {
            "system_info": info.decode() if isinstance(info, bytes) else str(info),
            "version": llama_cpp.__version__,
            "runs": runs,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
