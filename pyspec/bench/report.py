"""The benchmark suite's report (:mod:`pyspec.bench.suite`): markdown tables, matplotlib plots, the JSON file
and the README's generated results section."""

from __future__ import annotations

import json
import os
from pathlib import Path

README_BEGIN, README_END = "<!-- bench:begin -->", "<!-- bench:end -->"


def _spread_cell(spread: dict | None) -> str:
    return "" if spread is None else "{median:.2f}x ({q1:.2f}-{q3:.2f})".format(**spread)


def _hf_settings(report: dict) -> str:
    """Which settings HF's speculative modes ran with, and what they were chosen from."""
    parts = []
    for mode, t in report["hf_tuning"].items():
        tried = ", ".join(f"{v}: {sec:.1f} s" for v, sec in t["seconds"].items())
        draft = f" with assistant `{report['assistant']}`" if mode == "hf-assisted" else ""
        parts.append(
            f"`{mode}`{draft} ran `{t['setting']}={t['chosen']}`, the fastest on the calibration "
            f"prompts ({tried})"
        )
    return "HF settings: " + "; ".join(parts) + "."


def markdown(report: dict) -> str:
    """The report as markdown: one table per dataset (categories x modes: tokens/s and speed-up over
    pyspec's autoregressive decoding), MAT, per-prompt speed-up over each baseline (median and
    quartiles), and identity."""
    days = report.get("days") or [report["date"]]
    when = days[0] if len(days) == 1 else f"runs of {', '.join(days)} (resumed from a journal)"
    lines = [
        f"**{report['model']}** on {report['machine']}, {when}; greedy fp32, batch 1, "
        f"{report['max_new_tokens']} new tokens, {report['repeats']} repeat(s), modes interleaved"
        + (f"; plan: `{report['plan']}`" if report.get("plan") else "")
        + ".",
        "",
    ]
    lines += [_hf_settings(report), ""] if report.get("hf_tuning") else []
    for dataset, cats in report["summary"].items():
        names = list(cats["all"])
        lines += [
            f"{dataset} ({cats['all'][names[0]]['prompts']} prompts): tokens/s (speed-up over pyspec `ar`)",
            "",
            "| category | " + " | ".join(names) + " |",
            "|---|" + "---:|" * len(names),
        ]
        for cat in ["all"] + sorted(c for c in cats if c != "all"):
            cells = [
                f"{cats[cat][n]['tokens_per_second']:.1f} ({cats[cat][n]['speedup_vs_ar']:.2f}x)"
                for n in names
            ]
            lines.append(f"| {'**all**' if cat == 'all' else cat} | " + " | ".join(cells) + " |")
        alls = cats["all"]
        lines.append(
            "| MAT | " + " | ".join(f"{alls[n]['mat']:.2f}" if alls[n]["mat"] else "" for n in names) + " |"
        )
        for base in alls[names[0]]["per_prompt_speedup"]:
            cells = [
                _spread_cell(alls[n]["per_prompt_speedup"].get(base)) if n != base else "" for n in names
            ]
            lines.append(f"| per prompt vs `{base}` | " + " | ".join(cells) + " |")
        if report["repeats"] > 1:
            lines.append(
                "| tok/s range over repeats | "
                + " | ".join("{:.1f}-{:.1f}".format(*alls[n]["tokens_per_second_range"]) for n in names)
                + " |"
            )
        lines.append(
            "| identical | " + " | ".join("yes" if alls[n]["identical"] else "**NO**" for n in names) + " |"
        )
        lines.append("")
    lines.append(
        'tokens/s is total new tokens over total time; "per prompt vs `b`": the median (quartiles) '
        "over prompts of `b`'s time divided by the mode's time on the same prompt."
    )
    if report.get("hf_agrees_with_ar") is not None:
        agree, total = report["hf_agrees_with_ar"]
        lines.append(
            f"Each pyspec mode is checked against pyspec `ar`, each HF mode against HF `generate()`; "
            f"the two plain decoders agree on {agree}/{total} prompts (fp32 near-ties can break "
            "differently in two implementations)."
        )
    return "\n".join(lines) + "\n"


def plots(report: dict, out: Path) -> list[Path]:
    """Speed-up per category per mode; the target's latency profile; planner prediction against
    measurement (when a plan was profiled). PNG files in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, path: Path) -> Path:
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    files = []
    for dataset, cats in report["summary"].items():
        names = [n for n in cats["all"] if n != "ar"]
        categories = ["all"] + sorted(c for c in cats if c != "all")
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(categories) + 2), 4))
        width = 0.8 / max(len(names), 1)
        for j, name in enumerate(names):
            xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(categories))]
            ax.bar(xs, [cats[c][name]["speedup_vs_ar"] for c in categories], width, label=name)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
        ax.set_ylabel("speed-up over pyspec ar")
        ax.set_title(f"{report['model']}: {dataset}")
        ax.legend(fontsize=8)
        files.append(save(fig, out / f"speedup_{report['model_key']}_{dataset}.png"))
    if report.get("latency"):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for label, curve in report["latency"].items():
            ax.plot(curve["sizes"], [s * 1e3 for s in curve["seconds"]], marker="o", label=label)
        ax.set_xlabel("tokens verified per step")
        ax.set_ylabel("ms per step")
        ax.set_title(f"{report['model']}: latency profile")
        ax.legend(fontsize=8)
        files.append(save(fig, out / f"latency_{report['model_key']}.png"))
    if report.get("predictions"):
        fig, ax = plt.subplots(figsize=(4.5, 4))
        pts = report["predictions"]
        for p in pts:
            ax.scatter(p["predicted"], p["measured"])
            ax.annotate(f"{p['mode']} {p['dataset']}", (p["predicted"], p["measured"]), fontsize=7)
        top = max(max(p["predicted"], p["measured"]) for p in pts) * 1.1
        ax.plot([0, top], [0, top], color="gray", linewidth=0.8)
        ax.set_xlabel("planner's prediction (tokens/s, decoding)")
        ax.set_ylabel("measured (tokens/s, decoding)")
        ax.set_title("planner prediction against measurement")
        files.append(save(fig, out / f"planner_{report['model_key']}.png"))
    return files


def write_report(report: dict, out: str | os.PathLike, readme: str | os.PathLike | None = None) -> list[Path]:
    """Writes ``bench_<model>.json``, ``bench_<model>.md`` and the plots into ``out``; with ``readme``,
    regenerates its results section (between ``<!-- bench:begin -->`` and ``<!-- bench:end -->``)
    from every ``bench_*.md`` in ``out``. Returns the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    key = report["model_key"]
    files = [out / f"bench_{key}.json", out / f"bench_{key}.md"]
    files[0].write_text(json.dumps(report, indent=1) + "\n")
    files[1].write_text(markdown(report))
    files += plots(report, out)
    if readme is not None:
        update_readme(Path(readme), out)
        files.append(Path(readme))
    return files


def update_readme(readme: Path, out: Path) -> None:
    """Replaces the README's results section with the latest reports in ``out`` and links the plots."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(f"{readme} has no {README_BEGIN} ... {README_END} section to fill")
    parts = [f"Generated by `pyspec bench` from `{out}/bench_*.json`; do not edit by hand.", ""]
    for md in sorted(out.glob("bench_*.md")):
        parts.append(md.read_text())
    pngs = sorted(out.glob("*.png"))
    if pngs:
        parts.append("Plots: " + ", ".join(f"[{p.stem}]({p.as_posix()})" for p in pngs) + ".")
    head, rest = text.split(README_BEGIN, 1)
    tail = rest.split(README_END, 1)[1]
    readme.write_text(head + README_BEGIN + "\n" + "\n".join(parts) + "\n" + README_END + tail)
