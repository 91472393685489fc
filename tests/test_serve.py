"""``pyspec serve`` on the real SmolLM2-135M-Instruct, started by the test as its own process on
127.0.0.1 and driven with the real ``openai`` client: chat and completions, streamed and not, greedy
output identical to :func:`pyspec.generate`, seeded sampling reproducible, OpenAI-style errors, a
bounded load test with cancelled streams (every completed output checked, KV pages back to zero, RSS
flat), a 503 when the server is full, and a clean shutdown with a stream in flight.

The server's plan speculates (n-gram, block 4) while at most 2 sequences run and decodes plainly
above, so the load test crosses the switch many times.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2
import openai
import psutil
import pytest

import pyspec
from planner.plan import Choice, Plan
from pyspec.data import held_out, humaneval, mtbench
from pyspec.hardware import hardware

MODEL = "smollm2-135m-instruct"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m pyspec serve`` in a child process; ``url`` once it answers /health."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-m",
            "pyspec",
            "--threads",
            "1",
            "serve",
            "--model",
            MODEL,
            "--port",
            str(self.port),
        ]
        self.proc = subprocess.Popen(
            [*cmd, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.time() + 120
        while time.time() < deadline:
            assert self.proc.poll() is None, "the server exited:\n" + "".join(self.log)
            try:
                if httpx2.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx2.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError("the server did not start:\n" + "".join(self.log))

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.log.append(line)

    def client(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, **kw)

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, summed over labels, by metric name."""
        out: dict[str, float] = {}
        for line in httpx2.get(self.url + "/metrics").text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                name = name.split("{")[0]
                out[name] = out.get(name, 0.0) + float(value)
        return out

    def stop(self, sig=signal.SIGINT, timeout: float = 30) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("the server did not shut down:\n" + "".join(self.log)) from None


@pytest.fixture(scope="module")
def model():
    return pyspec.load_model(MODEL, progress=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory, model):
    """Plan: n-gram block 4 for 1-2 running sequences, plain decoding from 3 on."""
    spec = Choice((("ngram", 4),), 0.02, 0.03)
    plain = Choice((), 0.01, 0.01)
    plan = Plan(MODEL, hardware(), "float32", {"1": spec, "2": spec, "3": plain, "8": plain})
    path = tmp_path_factory.mktemp("serve") / "plan.json"
    path.write_text(plan.to_json())
    s = Server("--plan", str(path), "--max-batch", "8", "--max-length", "1024")
    yield s
    assert s.stop() == 0, "".join(s.log)


def chat(client, text, **kw):
    kw = {"temperature": 0, "max_tokens": 24} | kw
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}], **kw)


def test_models_health_and_metrics(server):
    assert [m.id for m in server.client().models.list()] == [MODEL]
    assert httpx2.get(server.url + "/health").json() == {"status": "ok"}
    names = server.metrics()
    for name in (
        "pyspec:num_requests_running",
        "pyspec:kv_cache_pages_used",
        "pyspec:time_to_first_token_seconds_count",
    ):
        assert name in names


def test_chat_and_completion_equal_generate(server, model):
    client = server.client()
    question = mtbench()[5].text
    reply = chat(client, question, max_tokens=40)
    ours = pyspec.generate(model, question, max_new_tokens=40)[0]
    assert reply.choices[0].message.content == ours.text
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage.completion_tokens == len(ours.tokens)
    assert reply.usage.prompt_tokens == ours.stats.prompt_tokens
    assert reply.choices[0].finish_reason == {"length": "length", "eos": "stop"}[ours.finish_reason]

    code = humaneval()[7].text
    done = client.completions.create(model=MODEL, prompt=code, max_tokens=40, temperature=0)
    ours = pyspec.generate(model, code, max_new_tokens=40, chat=False)[0]
    assert done.choices[0].text == ours.text and done.usage.completion_tokens == len(ours.tokens)

    ids = model.tokenizer(code).input_ids  # a prompt as token ids
    assert (
        client.completions.create(model=MODEL, prompt=ids, max_tokens=40, temperature=0).choices[0].text
        == ours.text
    )


def test_streams_equal_whole_replies(server):
    client = server.client()
    question = mtbench()[12].text
    whole = chat(client, question, max_tokens=32)
    chunks = list(chat(client, question, max_tokens=32, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # it streamed

    code = humaneval()[3].text
    pieces = list(
        client.completions.create(model=MODEL, prompt=code, max_tokens=24, temperature=0, stream=True)
    )
    whole = client.completions.create(model=MODEL, prompt=code, max_tokens=24, temperature=0)
    assert "".join(p.choices[0].text for p in pieces) == whole.choices[0].text


def test_stop_strings_and_sampling(server, model):
    client = server.client()
    question = "List five fruits, one per line."
    full = chat(client, question, max_tokens=40).choices[0].message.content
    stop = full.split("\n")[1][:3]
    stopped = chat(client, question, max_tokens=40, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == full[: full.index(stop)]

    kw = dict(temperature=0.9, top_p=0.95, seed=7, max_tokens=32)
    first = chat(client, question, **kw).choices[0].message.content
    assert chat(client, question, **kw).choices[0].message.content == first  # a seeded request repeats
    alone = pyspec.generate(
        model,
        question,
        drafts=["ngram"],
        block_sizes=[4],
        temperature=0.9,
        top_p=0.95,
        seed=7,
        max_new_tokens=32,
    )[0].text
    assert first == alone  # a seeded request runs the plan's batch-1 choice: its single-request output
    topk = chat(client, question, temperature=1.0, seed=3, max_tokens=16, extra_body={"top_k": 1})
    assert topk.choices[0].message.content == chat(client, question, max_tokens=16).choices[0].message.content


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(model="gpt-4"), "not served here"),
        (dict(temperature=5), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(n=2), "n is not supported"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(stop=["a", "b", "c", "d", "e"]), "at most 4"),
        (dict(messages=[{"role": "user", "content": "x" * 30000}]), "context"),
        (dict(messages=[]), "messages"),
        (dict(messages=[{"role": "wizard", "content": "hi"}]), "role"),
    ],
)
def test_bad_requests_get_400(server, kw, match):
    args = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4} | kw
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(**args)
    assert e.value.status_code == 400
    assert match in e.value.body["message"] and e.value.body["type"] == "invalid_request_error"
    assert chat(server.client(), "Hi", max_tokens=2).choices  # the server still serves


def test_malformed_bodies_get_400(server):
    for body in (b"{not json", b"[1, 2]", json.dumps({"model": MODEL}).encode()):
        r = httpx2.post(
            server.url + "/v1/completions", content=body, headers={"content-type": "application/json"}
        )
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text
    r = httpx2.post(server.url + "/v1/completions", content=b'{"model": "x"}')  # no content type
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
    surrogate = b'{"model": "%s", "messages": [{"role": "user", "content": "tea \\ud83d"}]}' % MODEL.encode()
    r = httpx2.post(
        server.url + "/v1/chat/completions", content=surrogate, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "lone surrogate" in r.json()["error"]["message"], r.text
    r = httpx2.post(server.url + "/v1/completions", json={"model": MODEL, "prompt": [10**9], "max_tokens": 2})
    assert r.status_code == 400 and "vocabulary" in r.json()["error"]["message"]
    assert httpx2.get(server.url + "/v2/nothing").status_code == 404


def test_load_with_cancellations(server, model):
    """64 requests, 8 at a time, prompts of mixed lengths and 4 to 40 new tokens, every 8th a stream the
    client drops after its first chunk, every 16th a whole reply the client stops waiting for: every
    completed reply equals its greedy reference, nothing is left running and every KV page comes
    back; RSS stays flat over a second round."""
    questions = [p.text for p in held_out(mtbench(), 4)[:8]] + [p.text for p in held_out(humaneval(), 4)[:8]]
    refs = pyspec.generate(model, questions, max_new_tokens=40)  # one ragged batch: row-invariant
    client = server.client(timeout=300)
    impatient = server.client(timeout=0.5)

    def one(i: int) -> bool:
        q, n = i % len(questions), 4 + (i * 7) % 37
        if i % 16 == 3:
            with pytest.raises(openai.APITimeoutError):
                chat(impatient, questions[q], max_tokens=400)
            return True
        if i % 8 == 7:
            stream = chat(client, questions[q], max_tokens=n, stream=True)
            next(iter(stream))
            stream.close()
            return True
        reply = chat(client, questions[q], max_tokens=n)
        expected = model.tokenizer.decode(refs[q].tokens[:n], skip_special_tokens=True)
        assert reply.choices[0].message.content == expected, (i, q, n)
        return True

    rss = []
    for _ in range(2):
        with ThreadPoolExecutor(8) as pool:
            assert all(pool.map(one, range(64)))
        deadline = time.time() + 10
        while (m := server.metrics())["pyspec:num_requests_running"] and time.time() < deadline:
            time.sleep(0.2)
        assert m["pyspec:num_requests_running"] == 0 and m["pyspec:num_requests_waiting"] == 0
        assert m["pyspec:kv_cache_pages_used"] == 0
        rss.append(psutil.Process(server.proc.pid).memory_info().rss)
    assert rss[1] < rss[0] * 1.05 + 20e6, rss
    assert m["pyspec:request_failure_total"] >= 24  # the dropped streams and replies were cancelled
    assert m["pyspec:spec_decode_num_drafts_total"] > 0 and m["pyspec:spec_decode_choice_steps_total"] > 0
    text = httpx2.get(server.url + "/metrics").text
    assert 'choice="autoregressive"' in text and 'choice="ngram:4"' in text  # the plan switched with load


def test_full_server_answers_503_then_shuts_down_cleanly(model):
    s = Server(
        "--speculation", "off", "--max-batch", "1", "--max-wait", "1", "--max-length", "512", "--drain", "120"
    )
    try:
        client = s.client(timeout=120)
        long = chat(client, "Write a long story about a lighthouse.", max_tokens=300, stream=True)
        first = next(iter(long))
        assert first.choices[0].delta.role == "assistant"
        with pytest.raises(openai.APIStatusError) as e:
            chat(client, "Hi", max_tokens=4)
        assert e.value.status_code == 503 and "busy" in e.value.body["message"]
        os.kill(s.proc.pid, signal.SIGINT)  # shutdown with a stream in flight: it drains
        rest = "".join(c.choices[0].delta.content or "" for c in long if c.choices)
        assert rest
        code = s.proc.wait(60)
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
    assert code == 0, "".join(s.log)
