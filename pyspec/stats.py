"""Per-level statistics of a speculative generation: passes, time, drafts verified and accepted."""

from __future__ import annotations

from dataclasses import dataclass, field


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
