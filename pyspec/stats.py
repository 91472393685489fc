"""Statistics of a generation: per request (:class:`RequestStats`) and per level of a speculative stack."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class LevelStats:
    """What one level of a speculative stack did during a generation.

    ``passes`` and ``seconds`` count the level's own work only (its forward passes or n-gram lookups,
    and the verification it ran), never the levels below it. For a level that verifies the drafts of
    the level below, ``accepted_hist[k]`` counts verification steps that accepted exactly k draft
    tokens (each step also emits one recovered or bonus token).
    """

    name: str
    passes: int = 0
    seconds: float = 0.0
    verify_steps: int = 0
    drafted: int = 0
    accepted_hist: list[int] = field(default_factory=list)
    padding: int = 0  # padding tokens fed and discarded (padded batching, for comparison)

    def record(self, num_drafted: int, num_accepted: int) -> None:
        """Counts one verification step of one sequence."""
        self.verify_steps += 1
        self.drafted += num_drafted
        if len(self.accepted_hist) <= num_accepted:
            self.accepted_hist.extend([0] * (num_accepted + 1 - len(self.accepted_hist)))
        self.accepted_hist[num_accepted] += 1

    @property
    def accepted(self) -> int:
        return sum(k * n for k, n in enumerate(self.accepted_hist))

    def as_dict(self) -> dict:
        """Summary: MAT (tokens emitted per verification), acceptance rate of draft tokens, and the
        acceptance per depth ``P(depth d accepted | depth d - 1 accepted)``."""
        out = {"name": self.name, "passes": self.passes, "seconds": round(self.seconds, 4)}
        if self.padding:
            out["padding"] = self.padding
        if self.verify_steps:
            reached = [sum(self.accepted_hist[d:]) for d in range(len(self.accepted_hist))]
            out |= {
                "verify_steps": self.verify_steps,
                "drafted": self.drafted,
                "accepted": self.accepted,
                "mat": (self.accepted + self.verify_steps) / self.verify_steps,
                "acceptance": self.accepted / self.drafted if self.drafted else 0.0,
                "acceptance_per_depth": [reached[d] / reached[d - 1] for d in range(1, len(reached))],
            }
        return out


@dataclass
class LevelCounts:
    """Speculation at one verifying level, summed over steps and sequences (vLLM's ``spec_decode``):
    verifications of a non-empty draft, draft tokens proposed to it, and how many it accepted."""

    drafts: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0

    @property
    def mean_accepted_per_pass(self) -> float:
        """Tokens emitted per verification of a draft: accepted ones plus the verifier's own."""
        return 1 + self.accepted_tokens / self.drafts if self.drafts else 0.0


@dataclass
class RequestStats:
    """One request's statistics, the same fields in every decoding loop.

    ``target_passes``: the target's passes while the request ran (its steps); ``seconds``: from its
    submission (a batch's start) to its end; ``ttft_seconds``: to the end of its first step (the
    prompt's prefill), after which it held ``first_tokens`` tokens. ``levels``: per level of the
    speculative stack, bottom first (the target last), its passes, time and acceptance
    (:meth:`LevelStats.as_dict`; empty for plain decoding). ``peak_pages``: the most target KV pages
    in use after a step of the batch it ran in. APAR answers also count ``forks``,
    ``max_live_streams`` and ``answer_tokens`` (the reassembled answer's tokens, at most
    ``max_new_tokens``); ``new_tokens`` then counts every token its streams generated.

    Example:
        >>> s = RequestStats(prompt_tokens=5, new_tokens=12, target_passes=4, seconds=2.0,
        ...                  ttft_seconds=0.5, first_tokens=3)
        >>> s.mat, s.tokens_per_second, s.decode_tokens_per_second
        (3.0, 6.0, 6.0)
    """

    prompt_tokens: int
    new_tokens: int
    target_passes: int
    seconds: float
    ttft_seconds: float
    first_tokens: int = 0
    preemptions: int = 0
    error: str | None = None  # why a rejected request was rejected
    levels: list[dict] = field(default_factory=list)
    peak_pages: int = 0
    forks: int = 0
    max_live_streams: int = 1
    answer_tokens: int = 0

    @property
    def mat(self) -> float:
        """Mean accepted tokens: new tokens per target pass."""
        return self.new_tokens / self.target_passes if self.target_passes else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        """Tokens per second after the first step (the prompt's prefill excluded)."""
        after = self.seconds - self.ttft_seconds
        return (self.new_tokens - self.first_tokens) / after if after > 0 else 0.0

    def as_dict(self) -> dict:
        """The fields and the derived rates, for JSON."""
        out = asdict(self)
        out |= {
            "mat": self.mat,
            "tokens_per_second": self.tokens_per_second,
            "decode_tokens_per_second": self.decode_tokens_per_second,
        }
        return out
