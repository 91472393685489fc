"""``pyspec serve``: a model, its speculation policy and the HTTP app, run by uvicorn.

Speculation is one of:

- ``plan`` (the default): a plan file from ``pyspec plan``, or ``"auto"``: the plan made on this
  machine for this target, profiled once (a few minutes, at batch sizes 1, 2, 4, ... up to
  ``max_batch``) and cached under ``<cache>/plans/``. Every step runs the plan's choice for the
  number of running sequences, where the plan predicts it at least ``min_gain`` (5%) faster than
  plain decoding (the planner's predictions are within about 10% of measured, so a predicted tie
  is plain decoding);
- ``fixed``: the same draft stack at every load (``drafts`` and ``block_sizes``);
- ``off``: plain decoding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

from planner.plan import Plan
from pyspec.decoding.draft_policy import DraftPolicy
from pyspec.decoding.engine import BatchEngine
from pyspec.hardware import hardware
from pyspec.models.llama import LlamaModel
from pyspec.serve.engine_loop import EngineLoop
from pyspec.serve.metrics import ServerMetrics
from pyspec.spec import SpecConfig, read_plan

log = logging.getLogger("pyspec.serve")
SPECULATION = ("plan", "fixed", "off")
MIN_GAIN = 0.05  # speculate where the plan predicts at least 5% less time per token than plain decoding


def plan_batch_sizes(max_batch: int) -> list[int]:
    """Powers of two up to ``max_batch``, and ``max_batch``.

    Example:
        >>> plan_batch_sizes(12)
        [1, 2, 4, 8, 12]
    """
    sizes = [1]
    while sizes[-1] * 2 <= max_batch:
        sizes.append(sizes[-1] * 2)
    return sizes + ([max_batch] if sizes[-1] != max_batch else [])


def auto_plan(model: LlamaModel, max_batch: int, drafts: Sequence[str] = ("ngram",)) -> Plan:
    """This machine's plan for ``model`` up to ``max_batch`` sequences: read from the cache, or
    profiled and planned now (progress bars on stderr) and cached. The cache key holds the model, its
    weights format, the hardware, the candidates, the batch sizes, pyspec's version and the compiled
    extension's size and time: a rebuilt extension (kernels that may cost differently) profiles again.

    Example:
        >>> auto_plan(pyspec.load_model("smollm2-135m-instruct"), max_batch=8).choices  # doctest: +SKIP
    """
    import pyspec
    from pyspec import _C
    from pyspec.api import plan as make_plan
    from pyspec.models.loading import cache_root

    sizes = plan_batch_sizes(max_batch)
    built = Path(_C.__file__).stat()
    key = json.dumps(
        [model.name, model.weights_format, hardware(), list(drafts), sizes, pyspec.__version__]
        + [built.st_size, built.st_mtime_ns],
        sort_keys=True,
    )
    path = Path(cache_root()) / "plans" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if path.exists():
        log.info("plan from %s", path)
        return read_plan(path)
    log.warning(
        "profiling %s on this machine for a plan (batch sizes %s; once, then cached)", model.name, sizes
    )
    made = make_plan(model, drafts=list(drafts), batch_sizes=sizes, max_block=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(made.to_json())
    tmp.replace(path)
    return made


def build_policy(
    model: LlamaModel,
    speculation: str = "plan",
    plan: Plan | str | None = "auto",
    drafts: Sequence[str] = ("ngram",),
    block_sizes: Sequence[int] | None = None,
    max_batch: int = 8,
    min_gain: float = MIN_GAIN,
) -> DraftPolicy:
    """The speculation policy of a server (see the module docstring).

    Example:
        >>> build_policy(model, "fixed", drafts=["ngram"], block_sizes=[4]).label(8)  # doctest: +SKIP
        'ngram(block=4)'
    """
    from pyspec.api import policy_from_plan

    if speculation not in SPECULATION:
        raise ValueError(f"speculation must be one of {SPECULATION}, got {speculation!r}")
    if speculation == "off":
        return DraftPolicy.fixed(None)
    if speculation == "fixed":
        return DraftPolicy.fixed(SpecConfig.from_names(drafts, block_sizes or None).build(model))
    if plan is None or plan == "auto":
        plan = auto_plan(model, max_batch, drafts)
    elif isinstance(plan, str):
        plan = read_plan(plan)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        policy = policy_from_plan(model, plan, max_batch, min_gain)
    for w in caught:
        log.warning("%s", w.message)
    return policy


def build_app(
    model: LlamaModel,
    policy: DraftPolicy,
    model_name: str | None = None,
    max_batch: int = 8,
    max_length: int = 2048,
    num_pages: int | None = None,
    max_wait_seconds: float = 30.0,
    max_waiting: int = 256,
    own_thread: bool = True,
):
    """The ASGI app serving ``model`` with ``policy``. ``own_thread``: the engine runs on a thread the
    app starts and stops (for embedding the app; slower on a small CPU, see
    :class:`~pyspec.serve.engine_loop.EngineLoop`); else :func:`run_server` runs it in the main thread.

    Example:
        >>> app = build_app(model, build_policy(model, "off"), own_thread=False)  # doctest: +SKIP
        >>> run_server(app, port=8000)  # doctest: +SKIP
    """
    from pyspec.serve.app import create_app

    name = model_name or model.name
    engine = BatchEngine(model, policy, max_batch=max_batch, max_length=max_length, num_pages=num_pages)
    loop = EngineLoop(engine, ServerMetrics(name), max_wait_seconds, max_waiting, own_thread)
    return create_app(loop, name)


def run_server(app, host: str = "127.0.0.1", port: int = 8000, drain_seconds: float = 10.0) -> None:
    """Serves ``app`` until SIGINT or SIGTERM: HTTP (uvicorn) on a thread, the engine in this one
    (unless the app runs its own). On shutdown, requests in flight get ``drain_seconds`` to finish,
    then the remaining connections are closed and their sequences cancelled; a second signal exits
    at once. Raises
    RuntimeError when the HTTP server cannot start (the port is taken, say)."""
    import signal
    import threading

    import uvicorn

    loop = app.state.engine_loop
    config = uvicorn.Config(
        app, host=host, port=port, timeout_graceful_shutdown=drain_seconds, log_level="info"
    )
    server = uvicorn.Server(config)

    def on_signal(_signum, _frame) -> None:
        server.force_exit = server.should_exit
        server.should_exit = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    web = threading.Thread(target=server.run, name="pyspec-http", daemon=True)
    web.start()
    if loop.own_thread:
        web.join()
    else:
        loop.run(keep_going=web.is_alive)  # until the app's shutdown stops it, or uvicorn ends
        web.join(drain_seconds + 10)
    if not server.started:
        raise RuntimeError(f"the HTTP server could not start on {host}:{port} (see its log above)")
