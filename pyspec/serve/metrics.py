"""Prometheus metrics of ``pyspec serve`` (``GET /metrics``), named after vLLM's where one exists.

Requests and tokens, time to first token, inter-token latency, end-to-end latency, queue depth and
KV pages in use; and speculation per verifying level (the target, or a level inside a hierarchy):
drafts verified, draft tokens, accepted tokens and mean accepted tokens per pass (vLLM's
``spec_decode`` counters), plus the steps each speculation choice ran (the plan at work).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from pyspec.decoding.engine import BatchEngine

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5, 10, 20, 60)


class ServerMetrics:
    """All metrics of one server, in their own registry (several servers can live in one process)."""

    def __init__(self, model: str) -> None:
        self.registry = r = CollectorRegistry()
        self.model = model
        labels = ["model_name"]
        self.running = Gauge(
            "pyspec:num_requests_running", "Requests in the running batch.", labels, registry=r
        )
        self.waiting = Gauge("pyspec:num_requests_waiting", "Requests queued for room.", labels, registry=r)
        self.pages_used = Gauge(
            "pyspec:kv_cache_pages_used", "KV pages held by sequences.", labels, registry=r
        )
        self.pages_total = Gauge("pyspec:kv_cache_pages_total", "KV pages in the pool.", labels, registry=r)
        self.usage = Gauge(
            "pyspec:kv_cache_usage_perc", "Fraction of the KV pool in use.", labels, registry=r
        )
        self.success = Counter(
            "pyspec:request_success", "Finished requests.", labels + ["finished_reason"], registry=r
        )
        self.failed = Counter(
            "pyspec:request_failure", "Requests refused or ended early.", labels + ["reason"], registry=r
        )
        self.prompt_tokens = Counter(
            "pyspec:prompt_tokens", "Prompt tokens of admitted requests.", labels, registry=r
        )
        self.generation_tokens = Counter("pyspec:generation_tokens", "Tokens generated.", labels, registry=r)
        self.ttft = Histogram(
            "pyspec:time_to_first_token_seconds",
            "Submission to first token.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "pyspec:inter_token_latency_seconds",
            "Time between a request's tokens (a step's gap over its tokens).",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "pyspec:e2e_request_latency_seconds",
            "Submission to finish.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.steps = Counter("pyspec:engine_steps", "Engine steps.", labels, registry=r)
        self.choice_steps = Counter(
            "pyspec:spec_decode_choice_steps",
            "Steps run per speculation choice (the plan's, by batch size).",
            labels + ["choice"],
            registry=r,
        )
        level = labels + ["level"]
        self.drafts = Counter("pyspec:spec_decode_num_drafts", "Verifications of a draft.", level, registry=r)
        self.draft_tokens = Counter(
            "pyspec:spec_decode_num_draft_tokens", "Draft tokens verified.", level, registry=r
        )
        self.accepted = Counter(
            "pyspec:spec_decode_num_accepted_tokens", "Draft tokens accepted.", level, registry=r
        )
        self.mean_accepted = Gauge(
            "pyspec:spec_decode_mean_accepted_tokens_per_pass",
            "Tokens emitted per verification of a draft (accepted + 1), since start.",
            level,
            registry=r,
        )
        self._seen_levels: dict[str, tuple[int, int, int]] = {}
        self._seen_choices: dict[str, int] = {}
        for metric in (self.prompt_tokens, self.generation_tokens, self.ttft, self.itl, self.e2e, self.steps):
            metric.labels(model)  # exported from the start, at zero

    def after_step(self, engine: BatchEngine) -> None:
        """Reads the engine's state after a step (called by the engine thread)."""
        m = self.model
        self.steps.labels(m).inc()
        self.observe_queue(engine)
        for label, n in engine.choices.items():
            self.choice_steps.labels(m, label).inc(n - self._seen_choices.get(label, 0))
            self._seen_choices[label] = n
        for name, c in engine.levels.items():
            seen = self._seen_levels.get(name, (0, 0, 0))
            self.drafts.labels(m, name).inc(c.drafts - seen[0])
            self.draft_tokens.labels(m, name).inc(c.draft_tokens - seen[1])
            self.accepted.labels(m, name).inc(c.accepted_tokens - seen[2])
            self.mean_accepted.labels(m, name).set(c.mean_accepted_per_pass)
            self._seen_levels[name] = (c.drafts, c.draft_tokens, c.accepted_tokens)

    def observe_queue(self, engine: BatchEngine) -> None:
        m, pages = self.model, engine.cache.stats()
        self.running.labels(m).set(len(engine.running))
        self.waiting.labels(m).set(len(engine.waiting))
        self.pages_used.labels(m).set(pages["used_pages"])
        self.pages_total.labels(m).set(engine.num_pages)
        self.usage.labels(m).set(pages["used_pages"] / engine.num_pages)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
