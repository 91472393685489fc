"""The ``pyspec`` command line: ``pyspec generate``, ``pyspec serve``, ``pyspec apar``, ``pyspec profile``,
``pyspec plan``, ``pyspec bench``."""

from __future__ import annotations

import argparse
import json
import sys

import torch


def _generate(args: argparse.Namespace) -> int:
    from pyspec.api import generate
    from pyspec.models.loading import load_model
    from pyspec.sampling import SamplingParams
    from pyspec.spec import SpecConfig, read_plan

    sampling = SamplingParams(args.temperature, args.top_k, args.top_p, args.seed)  # bad values fail first
    spec = SpecConfig.from_cli(args)  # bad draft names, block sizes or trees too
    plan = None
    if args.plan:
        if args.draft or args.tree:
            raise ValueError("give either drafts (and a tree) or a plan, not both")
        plan = read_plan(args.plan)
    packed = args.packed or args.compute == "q8" or (plan is not None and plan.weights == "packed")
    model = load_model(args.model, packed=packed, compute=args.compute)  # a plan's format: the same tokens
    kw = dict(max_new_tokens=args.max_new_tokens, sampling=sampling, stop=args.stop, chat=not args.no_chat)
    if plan is not None:
        spec = SpecConfig.from_plan(plan, 1, model)
    out = generate(
        model,
        args.prompt,
        stream=lambda _, text: print(text, end="", flush=True),
        drafts=spec.build(model),
        **kw,
    )[0]
    s = out.stats
    # the stack as given (names, bottom to top), or the plan's choice
    levels = [spec.label] if plan is not None else list(args.draft)
    mode = "autoregressive" if not spec.drafts else "speculative (" + " > ".join(levels + [args.model]) + ")"
    print(
        f"\n\n[{mode}: {s.new_tokens} tokens in {s.seconds:.2f} s, "
        f"{s.tokens_per_second:.1f} tokens/s, "
        f"{s.target_passes} target passes, {s.mat:.2f} tokens per pass, prompt {s.prompt_tokens} "
        f"tokens, finished by {out.finish_reason}]",
        file=sys.stderr,
    )
    if args.compare and spec.drafts:
        plain = generate(model, args.prompt, **kw)[0]
        p = plain.stats
        same = "identical" if plain.tokens == out.tokens else "DIFFERENT"
        print(
            f"[plain decoding: {p.new_tokens} tokens in {p.seconds:.2f} s, "
            f"{p.tokens_per_second:.1f} tokens/s; speculative is {p.seconds / s.seconds:.2f}x "
            f"faster; outputs {same}]",
            file=sys.stderr,
        )
        if plain.tokens != out.tokens and args.temperature == 0:
            return 1
    return 0


def _profile(args: argparse.Namespace) -> int:
    from pyspec.api import load_model, profile_model

    model = load_model(args.model)
    measured = profile_model(model, args.drafts, batch_sizes=args.batch_sizes, temperature=args.temperature)
    with open(args.out, "w") as f:
        json.dump(measured, f, indent=1)
    names = list(measured["candidates"]) + [measured["target"]]
    for j, name in enumerate(measured["candidates"]):
        rates = ", ".join(f"{names[i]} {measured['alpha'][j][i]:.2f}" for i in range(j + 1, len(names)))
        print(f"{name}: accepted by {rates}")
    for batch, curves in measured["latency"].items():
        target = curves[measured["target"]]
        print(
            f"batch {batch}: target "
            + ", ".join(
                f"{n} tokens {t * 1e3:.1f} ms"
                for n, t in zip(target["sizes"], target["seconds"], strict=True)
            )
        )
    print(f"profile written to {args.out}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from planner.plan import make_plan
    from pyspec.api import load_model, profile_model

    if args.profile:
        with open(args.profile) as f:
            measured = json.load(f)
    else:
        model = load_model(args.model)
        measured = profile_model(
            model, args.drafts, batch_sizes=args.batch_sizes, temperature=args.temperature
        )
    made = make_plan(measured, args.max_block, args.tree_budget, args.context)
    with open(args.out, "w") as f:
        f.write(made.to_json())
    for batch, choice in made.choices.items():
        print(
            f"batch {batch}: {choice.label}: predicted {choice.seconds_per_token * 1e3:.1f} ms/token "
            f"(plain decoding {choice.no_speculation_seconds * 1e3:.1f})"
        )
    print(f"plan written to {args.out}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import logging

    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ValueError(f"pyspec serve needs {e.name}: pip install 'pyspec[serve]'") from None
    from pyspec.models.loading import load_model
    from pyspec.serve import build_app, build_policy, run_server
    from pyspec.serve.server import auto_plan, plan_batch_sizes
    from pyspec.spec import SpecConfig, read_plan

    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    if args.draft and args.speculation != "fixed":
        raise ValueError("--draft sets a fixed speculation: add --speculation fixed (or give a --plan)")
    if args.plan != "auto" and args.speculation != "plan":
        raise ValueError(f"--plan is for --speculation plan, not {args.speculation!r}")
    SpecConfig.from_cli(args)  # bad draft names or block sizes fail before loading
    if args.max_batch < 1 or args.max_length < 2:
        raise ValueError("--max-batch must be >= 1 and --max-length >= 2")
    plan = None
    if args.speculation == "plan" and args.plan != "auto":
        plan = read_plan(args.plan)
    packed = args.packed or args.compute == "q8" or (plan is not None and plan.weights == "packed")
    model = load_model(args.model, packed=packed, compute=args.compute)
    if args.speculation == "plan" and plan is None:
        plan = auto_plan(model, args.max_batch)
        if plan.weights != model.weights_format and plan.weights == "packed":
            model = load_model(args.model, packed=True)  # the plan's format: the same tokens, faster here
    policy = build_policy(
        model, args.speculation, plan, args.draft or ["ngram"], args.block_size, args.max_batch, args.min_gain
    )
    if plan is not None:
        for batch, choice in sorted(plan.choices.items(), key=lambda c: int(c[0])):
            gain = 1 - choice.seconds_per_token / choice.no_speculation_seconds
            print(f"plan at {batch} running: {choice.label} (predicted {gain:.1%} faster)", file=sys.stderr)
    print(f"weights: {model.weights_format}", file=sys.stderr)
    for batch in plan_batch_sizes(args.max_batch):
        print(f"speculation at {batch} running: {policy.label(batch)}", file=sys.stderr)
    app = build_app(
        model,
        policy,
        args.served_model_name or args.model,
        max_batch=args.max_batch,
        max_length=args.max_length,
        num_pages=args.kv_pages,
        max_wait_seconds=args.max_wait,
        max_waiting=args.max_waiting,
        own_thread=False,
    )
    try:
        run_server(app, args.host, args.port, args.drain)
    except RuntimeError as e:
        print(f"pyspec: error: {e}", file=sys.stderr)
        return 1
    return 0


def _apar(args: argparse.Namespace) -> int:
    from pyspec.api import encode_prompts
    from pyspec.decoding.apar import generate_apar
    from pyspec.decoding.hierarchy import build_stack
    from pyspec.models.adapters import load_apar_model
    from pyspec.sampling import SamplingParams

    sampling = SamplingParams(args.temperature, seed=args.seed)
    model = load_apar_model(adapter=args.adapter)
    ids = encode_prompts(model, args.prompt)

    def decode(depth: int, draft: bool, show: bool):
        drafter = build_stack(model, ["ngram"], [4]) if draft else None
        stream = (lambda _, text: print(text, end="", flush=True)) if show else None
        kw = dict(
            max_new_tokens=args.max_new_tokens,
            max_child_tokens=args.max_child_tokens,
            sampling=sampling,
            max_streams=args.max_streams,
        )
        return generate_apar(model, ids, max_depth=depth, drafter=drafter, stream=stream, **kw)[0]

    out = decode(1, args.draft == "ngram", True)
    s = out.stats
    print(
        f"\n\n[APAR{' + n-gram drafts' if args.draft else ''}: {s.forks} forks, a {s.answer_tokens}-token "
        f"answer in {s.target_passes} steps and {s.seconds:.2f} s ({s.new_tokens} tokens generated, "
        f"{s.mat:.2f} per step), peak KV {s.peak_pages} pages, finished by {out.finish_reason}]",
        file=sys.stderr,
    )
    if args.compare:
        seq = decode(0, False, False).stats  # no forks
        print(
            f"[sequential decoding of the same model (forks banned): a {seq.answer_tokens}-token answer "
            f"in {seq.target_passes} steps and {seq.seconds:.2f} s, peak KV {seq.peak_pages} pages; APAR "
            f"took {s.seconds / seq.seconds:.2f}x the time]",
            file=sys.stderr,
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyspec", description="Fast, lossless LLM decoding.")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate a reply to one prompt, streamed")
    gen.add_argument("--model", default="smollm2-135m-instruct", help="registry name, GGUF file or HF folder")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    gen.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    gen.add_argument(
        "--draft",
        action="append",
        default=[],
        help="speculative decoding: a draft level, bottom to top (repeatable): 'ngram', 'early:N' "
        "(the target's first N layers), a trained 'draft-lm-1l' / 'draft-lm-3l', or a model (name, "
        ".gguf or folder, '@bf16' bfloat16, '@packed' GGUF blocks, '@q8' int8 activations; another "
        "tokenizer's drafts are re-tokenized); or "
        "'medusa' / 'hidden-transfer' alone (--tree: widths)",
    )
    gen.add_argument("--block-size", type=int, action="append", default=[], help="tokens per draft level")
    gen.add_argument(
        "--tree", default=None, help="a single draft model proposes a tree: widths per depth, e.g. 3,2,1"
    )
    gen.add_argument(
        "--compare",
        action="store_true",
        help="also decode without drafts: print the speed-up, check identity",
    )
    gen.add_argument("--plan", default=None, help="a plan file from `pyspec plan` (instead of --draft)")
    gen.add_argument(
        "--packed",
        action="store_true",
        help="keep a GGUF model's weights in their blocks (exact: the same tokens, less memory; a plan "
        "made for packed weights implies it)",
    )
    gen.add_argument(
        "--compute",
        choices=("exact", "q8"),
        default="exact",
        help="q8: packed weights with llama.cpp-style int8 activations (faster; a different target)",
    )
    gen.set_defaults(run=_generate)

    sv = sub.add_parser(
        "serve", help="an OpenAI-compatible HTTP server; speculation chosen per load from a plan"
    )
    sv.add_argument("--model", default="smollm2-135m-instruct", help="registry name, GGUF file or HF folder")
    sv.add_argument("--served-model-name", default=None, help="the name clients ask for (default --model)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument(
        "--speculation",
        choices=("plan", "fixed", "off"),
        default="plan",
        help="plan: the plan's choice for the running batch size, every step (default); fixed: --draft "
        "at every load; off: plain decoding",
    )
    sv.add_argument(
        "--plan",
        default="auto",
        help="a plan file from `pyspec plan` (batch sizes up to --max-batch); 'auto': this machine's, "
        "profiled once and cached (default)",
    )
    sv.add_argument(
        "--draft", action="append", default=[], help="--speculation fixed: a draft level (repeatable)"
    )
    sv.add_argument("--block-size", type=int, action="append", default=[], help="tokens per draft level")
    sv.add_argument(
        "--min-gain",
        type=float,
        default=0.05,
        help="speculate only where the plan predicts at least this fraction less time per token (0.05)",
    )
    sv.add_argument("--max-batch", type=int, default=8, help="sequences decoded together at most")
    sv.add_argument("--max-length", type=int, default=2048, help="prompt plus reply tokens at most")
    sv.add_argument(
        "--kv-pages",
        type=int,
        default=None,
        help="KV pool size in pages of 16 (default: room for a full batch)",
    )
    sv.add_argument("--max-wait", type=float, default=30.0, help="seconds a request may queue before a 503")
    sv.add_argument("--max-waiting", type=int, default=256, help="queued requests at most (more get a 503)")
    sv.add_argument("--drain", type=float, default=10.0, help="seconds requests in flight get on shutdown")
    sv.add_argument("--packed", action="store_true", help="keep a GGUF model's weights in their blocks")
    sv.add_argument("--compute", choices=("exact", "q8"), default="exact", help="see `pyspec generate`")
    sv.set_defaults(run=_serve)

    ap = sub.add_parser("apar", help="APAR: SmolLM2 fine-tuned to fork its answer into parallel streams")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--max-new-tokens", type=int, default=256, help="the whole answer's tokens at most")
    ap.add_argument("--max-child-tokens", type=int, default=None, help="per child (default: all)")
    ap.add_argument("--max-streams", type=int, default=8, help="streams running at once (more children wait)")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--draft", choices=["ngram"], default=None, help="each stream drafts (speculative APAR)")
    ap.add_argument("--adapter", default=None, help="an adapter folder (default: the shipped one)")
    ap.add_argument("--compare", action="store_true", help="also decode sequentially (forks banned)")
    ap.set_defaults(run=_apar)

    def measuring(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default="smollm2-135m-instruct")
        p.add_argument(
            "--drafts",
            nargs="+",
            default=["ngram"],
            help="candidates: 'ngram', 'early:N', 'draft-lm-1l', a model name (name@bf16: in bfloat16)",
        )
        p.add_argument("--batch-sizes", nargs="+", type=int, default=[1])
        p.add_argument("--temperature", type=float, default=0.0)

    pr = sub.add_parser("profile", help="measure latencies and acceptance on this machine, write JSON")
    measuring(pr)
    pr.add_argument("--out", default="profile.json")
    pr.set_defaults(run=_profile)
    pl = sub.add_parser(
        "plan", help="write the fastest plan per batch size (profiling first, or from --profile)"
    )
    measuring(pl)
    pl.add_argument("--profile", default=None, help="a profile from `pyspec profile` (skips measuring)")
    pl.add_argument("--max-block", type=int, default=16, help="largest block size per level")
    pl.add_argument("--tree-budget", type=int, default=32, help="most nodes in a draft tree")
    pl.add_argument("--context", type=int, default=None, help="typical context length (default 256)")
    pl.add_argument("--out", default="plan.json")
    pl.set_defaults(run=_plan)
    be = sub.add_parser(
        "bench", help="benchmark decoding modes against transformers generate() on MT-bench and HumanEval"
    )
    be.add_argument("--model", default="smollm2-135m-instruct")
    be.add_argument("--datasets", nargs="+", default=["mtbench", "humaneval"], help="mtbench, humaneval")
    be.add_argument(
        "--modes",
        nargs="+",
        default=["ar", "ngram", "plan", "hf", "hf-pld", "hf-assisted"],
        help="ar, ngram, plan, hidden-transfer (pyspec); hf, hf-pld, hf-assisted (transformers generate())",
    )
    be.add_argument(
        "--limit", type=int, default=None, help="prompts per dataset, spread evenly (default all)"
    )
    be.add_argument("--max-new-tokens", type=int, default=128)
    be.add_argument("--repeats", type=int, default=1)
    be.add_argument("--block", type=int, default=5, help="n-gram block size of mode 'ngram'")
    be.add_argument(
        "--assistant",
        default=None,
        help="hf-assisted's assistant, a draft name: 'draft-lm-1l' (default when the target has it), "
        "'early:N' (the target's first N layers) or another model",
    )
    be.add_argument(
        "--heads-tree",
        nargs="+",
        type=int,
        default=[1, 1, 1],
        help="mode 'hidden-transfer': candidates per depth (default a chain of 3)",
    )
    be.add_argument(
        "--tune-prompts",
        type=int,
        default=2,
        help="calibration prompts per dataset that choose HF's prompt_lookup_num_tokens and "
        "num_assistant_tokens (the fastest of a small set)",
    )
    be.add_argument("--profile", default=None, help="a profile from `pyspec profile` for mode 'plan'")
    be.add_argument(
        "--random-weights",
        action="store_true",
        help="no weights here (a GPU without network): time the model's real shapes with random "
        "weights and combine with --profile's acceptance; prints labelled estimates",
    )
    be.add_argument("--device", default=None, help="--random-weights: cpu or cuda (default: cuda if present)")
    be.add_argument("--batch-sizes", nargs="+", type=int, default=[1], help="--random-weights: batch sizes")
    be.add_argument("--out", default="results", help="folder for the JSON, markdown and plots")
    be.add_argument("--readme", default=None, help="regenerate this README's results section")
    be.add_argument(
        "--journal",
        default=None,
        help="JSON-lines file of finished runs: a stopped suite goes on where it stopped (same settings)",
    )

    def _bench(args: argparse.Namespace) -> int:
        from pyspec.bench import run_cli

        return run_cli(args)

    be.set_defaults(run=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pyspec`` command; errors in the input are one line on stderr, exit code 2."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"pyspec: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
