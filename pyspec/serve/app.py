"""The HTTP application of ``pyspec serve`` (FastAPI on uvicorn): OpenAI-compatible endpoints over the
batch engine.

``POST /v1/completions``, ``POST /v1/chat/completions`` (streamed as server-sent events with
``"stream": true``), ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus). Every error is
an OpenAI-style body (:class:`~pyspec.serve.protocol.APIError`): 400 for bad input, 503 when the
server is full or shutting down, 500 for a bug; a client that disconnects frees its sequence at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from pyspec.prompts import check_text
from pyspec.serve.engine_loop import EngineLoop, Handle
from pyspec.serve.protocol import (
    FINISH_REASONS,
    APIError,
    ChatRequest,
    CompletionRequest,
    chunk,
    completion_id,
    response,
    usage,
)

POLL_SECONDS = 0.5  # how often a waiting handler checks that its client is still there


def create_app(loop: EngineLoop, model_name: str) -> FastAPI:
    """The ASGI app serving ``loop``'s engine under the model name ``model_name``; the engine thread
    starts and stops with the app (its lifespan).

    Example:
        >>> loop = EngineLoop(BatchEngine(model, policy), ServerMetrics(name))  # doctest: +SKIP
        >>> app = create_app(loop, name)  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    engine = loop.engine
    tokenizer = engine.target.tokenizer
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_app):
        if loop.own_thread:
            loop.start()
        yield
        loop.stop()

    app = FastAPI(title="pyspec", lifespan=lifespan)
    app.state.engine_loop = loop

    @app.exception_handler(APIError)
    async def _api_error(_request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, e: RequestValidationError):
        first = e.errors()[0]
        where = [str(x) for x in first.get("loc", ()) if x != "body"]
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            message = f"the body is not valid JSON: {first.get('ctx', {}).get('error', message)}"
        elif not where and first.get("type") in ("model_attributes_type", "dict_type", "model_type"):
            message = "the body must be a JSON object (sent with Content-Type: application/json)"
        elif where:
            message = f"{'.'.join(where)}: {message}"
        message = message.removeprefix("Value error, ")
        return JSONResponse(APIError(400, message, param=".".join(where) or None).body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(_request, e: HTTPException):
        return JSONResponse(APIError(e.status_code, str(e.detail)).body(), status_code=e.status_code)

    @app.get("/health")
    async def health():
        if not loop.alive:
            raise APIError(503, "the engine is not running", code="unavailable")
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "pyspec"}],
        }

    @app.get("/metrics")
    async def metrics():
        loop.metrics.observe_queue(engine)
        return Response(loop.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    def check_model(name: str) -> None:
        if name != model_name:
            raise APIError(
                400,
                f"model {name!r} is not served here; this server serves {model_name!r}",
                param="model",
                code="model_not_found",
            )

    def room(prompt: list[int], asked: int | None) -> int:
        left = engine.max_length - len(prompt)
        if left < 1:
            raise APIError(
                400,
                f"the prompt has {len(prompt)} tokens; this server's context is {engine.max_length} tokens",
                param="prompt",
                code="context_length_exceeded",
            )
        return left if asked is None else asked

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        check_model(body.model)
        if isinstance(body.prompt, str):
            _valid(body.prompt)
            if not body.prompt.strip():
                raise APIError(400, "the prompt is empty", param="prompt")
            prompt = tokenizer(body.prompt).input_ids
        else:
            prompt = list(body.prompt)
        return await _generate(request, False, body, prompt, room(prompt, body.max_tokens))

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        check_model(body.model)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        for i, m in enumerate(messages):
            _valid(m["content"], f"messages.{i}.content")
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # the template's own checks (roles, order), raised by jinja
            raise APIError(400, f"the chat template refused these messages: {e}", param="messages") from None
        prompt = tokenizer(text, add_special_tokens=False).input_ids
        return await _generate(request, True, body, prompt, room(prompt, body.limit))

    async def _generate(request: Request, is_chat: bool, body, prompt: list[int], max_tokens: int):
        try:
            sampling = body.sampling()
        except ValueError as e:
            raise APIError(400, str(e)) from None
        for i, s in enumerate(body.stop):
            _valid(s, f"stop.{i}")
        handle = Handle(asyncio.get_running_loop())
        loop.submit(handle, prompt, sampling, max_tokens, body.stop)
        rid = completion_id(is_chat)
        if not body.stream:
            while True:  # text events are skipped: the output holds the whole text
                event = await _next(handle, request)
                if event[0] == "error":
                    raise event[1]
                if event[0] == "done":
                    return response(is_chat, rid, model_name, handle.prompt_tokens, event[1])
        first = await _next(handle, request)  # hold the headers until it runs: errors keep their status
        if first[0] == "error":
            raise first[1]
        return StreamingResponse(
            _events(handle, request, is_chat, rid, body.include_usage, [first]),
            media_type="text/event-stream",
        )

    async def _next(handle: Handle, request: Request) -> tuple:
        """The handle's next event; cancels the request if the client disconnected meanwhile."""
        while True:
            try:
                return await asyncio.wait_for(handle.events.get(), POLL_SECONDS)
            except TimeoutError:
                if await request.is_disconnected():
                    loop.cancel(handle)
                    raise asyncio.CancelledError from None

    async def _events(handle, request, is_chat, rid, include_usage, pending) -> AsyncIterator[str]:
        def sse(obj) -> str:
            return f"data: {json.dumps(obj)}\n\n"

        done = False
        try:
            if is_chat:
                yield sse(chunk(True, rid, model_name, "", role=True))
            while True:
                event = pending.pop(0) if pending else await _next(handle, request)
                if event[0] == "text":
                    yield sse(chunk(is_chat, rid, model_name, event[1]))
                elif event[0] == "error":
                    yield sse(event[1].body())
                    break
                elif event[0] == "done":
                    out = event[1]
                    yield sse(chunk(is_chat, rid, model_name, None, FINISH_REASONS[out.finish_reason]))
                    if include_usage:
                        final = chunk(is_chat, rid, model_name, None) | {
                            "choices": [],
                            "usage": usage(handle.prompt_tokens, out),
                        }
                        yield sse(final)
                    break
            done = True
            yield "data: [DONE]\n\n"
        finally:
            if not done:  # the client went away (or the stream was cancelled): free its sequence now
                loop.cancel(handle)

    return app


def _valid(text: str, what: str = "prompt") -> bool:
    """Raises a 400 for text that is not valid Unicode (a lone surrogate sent as a JSON escape)."""
    try:
        check_text(text, what)
    except ValueError as e:
        raise APIError(400, str(e), param=what) from None
    return True
