"""``pyspec serve``: an OpenAI-compatible HTTP server over the continuous-batching engine, choosing
speculation per load from a plan (:mod:`pyspec.serve.server`), with Prometheus metrics."""

from pyspec.serve.server import build_app, build_policy, run_server

__all__ = ["build_app", "build_policy", "run_server"]
