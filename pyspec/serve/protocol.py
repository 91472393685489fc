"""The OpenAI request and response shapes ``pyspec serve`` speaks, validated (pydantic), and its errors.

Requests follow the OpenAI API: ``/v1/completions`` takes a ``prompt`` (a text, or token ids),
``/v1/chat/completions`` ``messages`` (the model's chat template is applied). Sampling: ``temperature``
(default 1, as OpenAI; 0 = greedy), ``top_p``, ``top_k`` (an extension, as vLLM's), ``seed``,
``stop`` (up to 4 strings), ``max_tokens``. Unsupported options (``n`` > 1, ``logprobs``, ``echo``,
penalties, ``logit_bias``, ``suffix``) are refused with a 400 rather than ignored.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pyspec.decoding.output import GenerationOutput
from pyspec.sampling import SamplingParams

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}  # pyspec's -> OpenAI's


class APIError(Exception):
    """An error answered with an OpenAI-style body: ``{"error": {"message", "type", "param", "code"}}``.

    Example:
        >>> APIError(400, "temperature must be <= 2", param="temperature").body()["error"]["type"]
        'invalid_request_error'
    """

    def __init__(
        self,
        status: int,
        message: str,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Sampling(BaseModel):
    """Fields every generation request shares."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=-1)  # -1 or 0: no top-k cut
    seed: int | None = None
    stop: str | list[str] | None = Field(default=None, validate_default=True)
    stream: bool = False
    stream_options: dict | None = None
    n: int = Field(default=1, ge=1)
    logprobs: bool | int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("a stop sequence must not be empty")
        return stops

    @model_validator(mode="after")
    def _supported(self):
        unsupported = {
            "n": self.n != 1,
            "logprobs": bool(self.logprobs),
            "presence_penalty": self.presence_penalty != 0,
            "frequency_penalty": self.frequency_penalty != 0,
            "logit_bias": bool(self.logit_bias),
        }
        for name, given in unsupported.items():
            if given:
                raise ValueError(
                    f"{name} is not supported by pyspec serve (lossless decoding of the model's own "
                    "distribution, one choice per request)"
                )
        return self

    def sampling(self) -> SamplingParams:
        return SamplingParams(self.temperature, max(self.top_k, 0), self.top_p, self.seed)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.get("include_usage"))


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: one prompt, a text or token ids."""

    prompt: str | list[str] | list[int]
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _one_prompt(self):
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str):
            if len(self.prompt) != 1:
                raise ValueError("one prompt per request (send the others as their own requests)")
            self.prompt = self.prompt[0]
        if self.echo or self.suffix is not None or (self.best_of or 1) != 1:
            raise ValueError("echo, suffix and best_of are not supported by pyspec serve")
        return self


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict] | None = None

    def text(self) -> str:
        """The content as one text (text parts joined; other parts refused)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(
                    400, f"content parts of type {part.get('type')!r} are not supported", param="messages"
                )
            parts.append(part["text"])
        return "".join(parts)


class ChatRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


def completion_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, output: GenerationOutput) -> dict:
    n = len(output.tokens)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}


def response(chat: bool, rid: str, model: str, prompt_tokens: int, output: GenerationOutput) -> dict:
    """A whole (non-streamed) completion."""
    finish = FINISH_REASONS[output.finish_reason]
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": output.text}, "logprobs": None}
    else:
        choice = {"index": 0, "text": output.text, "logprobs": None}
    return {
        "id": rid,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice | {"finish_reason": finish}],
        "usage": usage(prompt_tokens, output),
    }


def chunk(
    chat: bool, rid: str, model: str, text: str | None, finish: str | None = None, role: bool = False
) -> dict:
    """One server-sent event of a stream: new text, or the last one with the finish reason."""
    if chat:
        delta = ({"role": "assistant"} if role else {}) | ({"content": text} if text is not None else {})
        choice = {"index": 0, "delta": delta, "logprobs": None}
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None}
    return {
        "id": rid,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice | {"finish_reason": finish}],
    }
