"""The batch engine on its own thread, fed by the HTTP handlers: requests join and leave between steps.

Handlers never touch the engine: they send commands (submit, cancel) through a queue that the engine
thread applies before every step, and receive events on their own asyncio queue: ``("started",)``
when the request's first tokens exist, ``("text", delta)`` as text is produced, then ``("done",
output)`` or ``("error", APIError)``. A request that waits longer than ``max_wait_seconds`` for room
(the batch or the KV pool is full) or finds ``max_waiting`` requests already queued gets a 503; a
cancelled one (a client gone) frees its sequence and pages before the next step.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field

from pyspec.decoding.engine import BatchEngine
from pyspec.sampling import SamplingParams
from pyspec.serve.metrics import ServerMetrics
from pyspec.serve.protocol import APIError

log = logging.getLogger("pyspec.serve")


@dataclass(eq=False)
class Handle:
    """One HTTP request's link to the engine: the events it receives and its timing."""

    loop: asyncio.AbstractEventLoop
    prompt_tokens: int = 0
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    rid: int | None = None
    submitted: float = 0.0
    last_token: float | None = None
    started: bool = False

    def push(self, *event) -> None:
        """Delivers an event from the engine thread to the handler's event loop."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the handler's event loop is closed: nobody listens any more
            pass


class EngineLoop:
    """Runs ``engine`` until :meth:`stop`: in the calling thread (:meth:`run`, what ``pyspec serve``
    does: the main thread, the one whose OpenMP threads torch has already started; a second thread
    computing would make OpenMP throttle its spin-waits and halve the speed on a small machine), or on
    a daemon thread (:meth:`start`, the app's lifespan does it when ``own_thread``).

    Example:
        >>> engine = BatchEngine(model, policy, max_batch=8)  # doctest: +SKIP
        >>> loop = EngineLoop(engine, ServerMetrics("smollm2"))  # doctest: +SKIP
        >>> loop.start()  # doctest: +SKIP
    """

    def __init__(
        self,
        engine: BatchEngine,
        metrics: ServerMetrics,
        max_wait_seconds: float = 30.0,
        max_waiting: int = 256,
        own_thread: bool = True,
    ) -> None:
        self.engine, self.metrics, self.own_thread = engine, metrics, own_thread
        self.max_wait_seconds, self.max_waiting = max_wait_seconds, max_waiting
        self._commands: queue.Queue = queue.Queue()
        self._handles: dict[int, Handle] = {}
        self._thread = threading.Thread(target=self.run, name="pyspec-engine", daemon=True)
        self._running = threading.Event()
        self._stopping = threading.Event()

    # Handlers' side ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Runs the loop on its own daemon thread."""
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._running.is_set() and not self._stopping.is_set()

    def submit(
        self,
        handle: Handle,
        prompt: Sequence[int],
        sampling: SamplingParams,
        max_tokens: int,
        stop: Sequence[str],
    ) -> None:
        """Queues a request; its events arrive on ``handle.events``."""
        handle.prompt_tokens, handle.submitted = len(prompt), time.perf_counter()
        if not self.alive:
            handle.push("error", APIError(503, "the server is shutting down", code="shutting_down"))
            return
        self._commands.put(("submit", handle, list(prompt), sampling, max_tokens, tuple(stop)))

    def cancel(self, handle: Handle) -> None:
        """Ends the request (its client went away) and frees its pages before the next step."""
        self._commands.put(("cancel", handle))

    def stop(self, timeout: float = 10.0) -> None:
        """Ends the loop; requests still in the engine are cancelled (a handler still waiting gets a 503)."""
        self._stopping.set()
        self._commands.put(("wake",))
        if self._thread.is_alive():
            self._thread.join(timeout)

    # The engine thread --------------------------------------------------------------------------------

    def run(self, keep_going=lambda: True) -> None:
        """Steps the engine in this thread until :meth:`stop` (or ``keep_going()`` turns false)."""
        engine = self.engine
        self.metrics.observe_queue(engine)
        self._running.set()
        while not self._stopping.is_set() and keep_going():
            busy = bool(engine.waiting or engine.running)
            self._apply_commands(block=not busy)
            if self._stopping.is_set():
                break
            for rid in engine.expire(self.max_wait_seconds):
                self._fail(rid, 503, "overloaded")
            if not (engine.waiting or engine.running):
                continue
            try:
                self._step()
            except Exception:  # a bug: fail what is running, keep serving the next requests
                log.error("engine step failed:\n%s", traceback.format_exc())
                for rid in [r.key for r in [*engine.running, *engine.waiting]]:
                    engine.cancel(rid)
                    engine.pop(rid)
                    self._finish_error(
                        rid, APIError(500, "the engine failed on this step; see the server log")
                    )
        for rid in [r.key for r in [*engine.running, *engine.waiting]]:
            engine.cancel(rid)
            engine.pop(rid)
            self._finish_error(rid, APIError(503, "the server is shutting down", code="shutting_down"))
        self.metrics.observe_queue(engine)
        self._running.clear()

    def _apply_commands(self, block: bool) -> None:
        try:
            command = self._commands.get(timeout=0.5) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            self._apply(command)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _apply(self, command: tuple) -> None:
        kind, *args = command
        if kind == "submit":
            handle, prompt, sampling, max_tokens, stop = args
            if len(self.engine.waiting) >= self.max_waiting:
                self.metrics.failed.labels(self.metrics.model, "queue_full").inc()
                handle.push(
                    "error",
                    APIError(503, f"{self.max_waiting} requests are already waiting", code="overloaded"),
                )
                return
            try:
                rid = self.engine.submit(prompt, sampling, max_tokens, stop, stream=self._stream)
            except ValueError as e:
                self.metrics.failed.labels(self.metrics.model, "invalid").inc()
                handle.push("error", APIError(400, str(e), param="prompt"))
                return
            handle.rid = rid
            self._handles[rid] = handle
            self.metrics.prompt_tokens.labels(self.metrics.model).inc(len(prompt))
            if rid in self.engine.done:  # nothing to generate (no room left in the context)
                self._finish(rid)
        elif kind == "cancel":
            (handle,) = args
            if handle.rid is not None and self.engine.cancel(handle.rid):
                self.engine.pop(handle.rid)
                self._handles.pop(handle.rid, None)
                self.metrics.failed.labels(self.metrics.model, "cancelled").inc()

    def _stream(self, rid: int, text: str) -> None:
        handle = self._handles.get(rid)
        if handle is not None:
            handle.push("text", text)

    def _step(self) -> None:
        engine, m = self.engine, self.metrics
        before = {r.key: len(r.text.tokens) for r in [*engine.running, *engine.waiting]}
        start = time.perf_counter()
        finished = engine.step()
        now = time.perf_counter()
        for r in [*engine.running, *(engine.done[rid] for rid in finished)]:
            new = len(r.text.tokens) - before.get(r.key, 0)
            handle = self._handles.get(r.key)
            if new <= 0 or handle is None:
                continue
            m.generation_tokens.labels(m.model).inc(new)
            if not handle.started:
                handle.started = True
                m.ttft.labels(m.model).observe(now - handle.submitted)
                handle.push("started")
                new -= 1
            gap = now - (handle.last_token or start)
            for _ in range(new):
                m.itl.labels(m.model).observe(gap / max(new, 1))
            handle.last_token = now
        for rid in finished:
            self._finish(rid)
        m.after_step(engine)

    def _finish(self, rid: int) -> None:
        out = self.engine.pop(rid)
        handle = self._handles.pop(rid, None)
        if handle is None:
            return
        if out.finish_reason in ("eos", "stop", "length"):
            self.metrics.success.labels(self.metrics.model, out.finish_reason).inc()
            self.metrics.e2e.labels(self.metrics.model).observe(time.perf_counter() - handle.submitted)
            handle.push("done", out)
        else:
            reason = out.stats.error or out.finish_reason
            handle.push(
                "error", APIError(503, f"the request was {out.finish_reason}: {reason}", code="overloaded")
            )

    def _fail(self, rid: int, status: int, code: str) -> None:
        out = self.engine.pop(rid)
        self.metrics.failed.labels(self.metrics.model, "queue_timeout").inc()
        self._finish_error(rid, APIError(status, f"the server is busy: {out.stats.error or ''}", code=code))

    def _finish_error(self, rid: int, error: APIError) -> None:
        handle = self._handles.pop(rid, None)
        if handle is not None:
            handle.push("error", error)
