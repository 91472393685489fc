"""The ``pyspec`` command line: ``pyspec generate --model NAME --prompt TEXT``."""

from __future__ import annotations

import argparse
import sys

import torch


def _generate(args: argparse.Namespace) -> int:
    from pyspec.api import generate, load_model
    from pyspec.sampling import SamplingParams

    SamplingParams(args.temperature, args.top_k, args.top_p, args.seed)  # bad values fail before loading
    model = load_model(args.model)
    out = generate(
        model,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop,
        chat=not args.no_chat,
        stream=lambda _, text: print(text, end="", flush=True),
    )[0]
    s = out.stats
    print(
        f"\n\n[{s['new_tokens']} tokens in {s['seconds']:.2f} s, {s['tokens_per_second']:.1f} tokens/s, "
        f"prompt {s['prompt_tokens']} tokens, {s['target_passes']} forward passes, "
        f"finished by {out.finish_reason}]",
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
    gen.set_defaults(run=_generate)
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
