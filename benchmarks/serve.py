"""``pyspec serve`` under load: throughput and latency against concurrency, planned speculation against
speculation off and a fixed speculation setting.

Three servers of SmolLM2-135M-Instruct (fp32, greedy requests) run side by side as their own processes,
started with the real CLI, each with ``--threads`` threads; only one is driven at a time, the others
idle. ``plan``: this machine's plan (``--plan auto``: profiled once at batch sizes 1, 2, 4, 8, 16 and
cached), whose choice for the running batch size applies every step; ``off``: plain decoding;
``fixed``: the plan's batch-1 choice at every load (even where ``--min-gain`` leaves it off in
``plan``). Clients: the real ``openai`` client, ``c``
threads each sending its requests one after another; prompts are held-out MT-bench questions (chat)
and HumanEval prompts (completions), alternating. Every reply of ``plan`` and ``fixed`` is checked
against ``off``'s reply to the same request (greedy: identical text).

Per concurrency and mode: tokens/s (completion tokens of all requests over the wall time) and request
latency p50/p99; each cell runs ``--repeats`` times, modes in turn (reversed every other repeat); the
table shows the median and the range.

    python benchmarks/serve.py            # concurrency 1, 2, 4, 8, 16; 4c requests (at least 16) x 64 tokens
    python benchmarks/serve.py --quick    # concurrency 1 and 8, 8 requests x 32 tokens (a few minutes)

Last line JSON: ``{"plan_over_off_c1", "plan_vs_best": {c: plan / max(off, fixed)},
"worst_plan_vs_best", "tokens_per_second": {mode: {c: median}}, "failed", "mismatched"}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _path  # noqa: F401  (first: keeps benchmarks/planner.py from shadowing the planner package)
import httpx2
import openai

from pyspec.data import held_out, humaneval, mtbench

MODEL = "smollm2-135m-instruct"
ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        return next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        return platform.processor()


class Server:
    def __init__(self, port: int, threads: int, max_batch: int, *args: str) -> None:
        self.url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "pyspec", "--threads", str(threads), "serve", "--model", MODEL]
        cmd += ["--port", str(port), "--max-batch", str(max_batch), "--max-length", "1024", *args]
        self.log = open(f"/tmp/pyspec-serve-{port}.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)

    def wait(self, timeout: float = 1800) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server {self.url} exited; see {self.log.name}")
            try:
                if httpx2.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx2.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"server {self.url} did not start; see {self.log.name}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def requests_for(n: int) -> list[tuple[str, str]]:
    """``n`` requests alternating held-out MT-bench questions (chat) and HumanEval prompts (completion)."""
    chats = [("chat", p.text) for p in held_out(mtbench(), 4)]
    codes = [("completion", p.text) for p in held_out(humaneval(), 4)]
    mixed = [x for pair in zip(chats, codes, strict=False) for x in pair]
    return [mixed[i % len(mixed)] for i in range(n)]


def drive(url: str, requests: list[tuple[str, str]], concurrency: int, max_tokens: int) -> dict:
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)

    def one(req: tuple[str, str]) -> tuple[str | None, int, float]:
        kind, text = req
        start = time.perf_counter()
        try:
            if kind == "chat":
                r = client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": text}],
                    max_tokens=max_tokens,
                    temperature=0,
                )
                out = r.choices[0].message.content
            else:
                r = client.completions.create(model=MODEL, prompt=text, max_tokens=max_tokens, temperature=0)
                out = r.choices[0].text
            return out, r.usage.completion_tokens, time.perf_counter() - start
        except openai.APIError as e:
            print(f"request failed: {e}", flush=True)
            return None, 0, time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, requests))
    seconds = time.perf_counter() - start
    latencies = sorted(r[2] for r in results)
    return {
        "texts": [r[0] for r in results],
        "throughput": sum(r[1] for r in results) / seconds,
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
        "failed": sum(r[0] is None for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="concurrency 1 and 8, 8 requests x 32 tokens")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None, help="runs per cell (default 3; --quick 1)")
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--port", type=int, default=8311, help="first of three ports")
    parser.add_argument("--levels", type=int, nargs="+", default=None, help="concurrency levels (at most 16)")
    args = parser.parse_args()
    levels = args.levels or ([1, 8] if args.quick else [1, 2, 4, 8, 16])
    if max(levels) > 16 or min(levels) < 1:
        parser.error("--levels must be between 1 and 16 (the servers' --max-batch)")
    max_tokens = args.max_tokens or (32 if args.quick else 64)
    repeats = args.repeats or (1 if args.quick else 3)
    max_batch = 16

    plan_server = Server(args.port, args.threads, max_batch, "--plan", "auto")
    print("plan server: profiling for its plan if this machine has none cached (a few minutes)", flush=True)
    plan_server.wait()  # alone: profiling must not share the CPU
    log = Path(plan_server.log.name).read_text()
    labels = [line.split(": ", 1)[1] for line in log.splitlines() if line.startswith("speculation at ")]
    planned = [
        line.split(": ", 1)[1].split(" (")[0] for line in log.splitlines() if line.startswith("plan at ")
    ]
    weights = ["--packed"] if "weights: packed" in log else []  # every server in the plan's format
    fixed_args = ["--speculation", "fixed", *weights]
    batch1 = (
        planned[0] if planned and planned[0] != "autoregressive" else "ngram:4"
    )  # the plan's batch-1 drafts
    for level in batch1.split(" > ") if batch1 != "autoregressive" else []:
        name, _, block = level.rpartition(":")
        fixed_args += ["--draft", name, "--block-size", block]
    servers = {
        "plan": plan_server,
        "off": Server(args.port + 1, args.threads, max_batch, "--speculation", "off", *weights),
        "fixed": Server(args.port + 2, args.threads, max_batch, *fixed_args),
    }
    for s in servers.values():
        s.wait()
    print(f"plan: {', '.join(labels)}; fixed: {batch1}", flush=True)

    results: dict[tuple[int, str], dict] = {}
    mismatched = failed = 0
    try:
        for c in levels:
            reqs = requests_for(8 if args.quick else max(16, 4 * c))
            for repeat in range(repeats):
                order = list(servers) if repeat % 2 == 0 else list(servers)[::-1]
                runs = {}
                for mode in order:
                    runs[mode] = drive(servers[mode].url, reqs, c, max_tokens)
                for mode, r in runs.items():
                    failed += r["failed"]
                    if mode != "off":
                        bad = sum(a != b for a, b in zip(r["texts"], runs["off"]["texts"], strict=True))
                        mismatched += bad
                        if bad:
                            print(f"MISMATCH: {bad} replies of {mode} at concurrency {c}", flush=True)
                    cell = results.setdefault((c, mode), {})
                    for key in ("throughput", "p50", "p99"):
                        cell.setdefault(key, []).append(r[key])
            print(f"concurrency {c} done", flush=True)
    finally:
        for s in servers.values():
            s.stop()

    def med(c, mode, key):
        return statistics.median(results[(c, mode)][key])

    def cell(c, mode, key, fmt):
        values = results[(c, mode)][key]
        spread = f" ({fmt.format(min(values))}-{fmt.format(max(values))})" if len(values) > 1 else ""
        return fmt.format(statistics.median(values)) + spread

    print(
        f"\n{MODEL}, fp32, greedy, {max_tokens} tokens per request, held-out MT-bench (chat) + HumanEval "
        f"(completions); {args.threads} threads per server; {cpu_model()}; {repeats} repeat(s), "
        "median (range)"
    )
    print(f"plan: {', '.join(labels)}; fixed: {batch1}\n")
    print("| concurrency | mode | tokens/s | p50 latency s | p99 latency s | vs off |")
    print("|---:|---|---:|---:|---:|---:|")
    plan_vs_best = {}
    for c in levels:
        for mode in servers:
            ratio = med(c, mode, "throughput") / med(c, "off", "throughput")
            tps, p50, p99 = (
                cell(c, mode, k, f)
                for k, f in [("throughput", "{:.1f}"), ("p50", "{:.2f}"), ("p99", "{:.2f}")]
            )
            print(f"| {c} | {mode} | {tps} | {p50} | {p99} | {ratio:.2f}x |")
        best = max(med(c, "off", "throughput"), med(c, "fixed", "throughput"))
        plan_vs_best[str(c)] = round(med(c, "plan", "throughput") / best, 3)
    print(f"\nfailed requests: {failed}; replies differing from speculation off: {mismatched}")
    headline = {
        "plan_over_off_c1": (
            round(med(1, "plan", "throughput") / med(1, "off", "throughput"), 3) if 1 in levels else None
        ),
        "plan_vs_best": plan_vs_best,
        "worst_plan_vs_best": min(plan_vs_best.values()),
        "tokens_per_second": {
            m: {str(c): round(med(c, m, "throughput"), 2) for c in levels} for m in servers
        },
        "plan": labels,
        "failed": failed,
        "mismatched": mismatched,
        "cpu": cpu_model(),
    }
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
