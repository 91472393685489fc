"""Imported first by every benchmark script. ``python benchmarks/NAME.py`` puts this folder first on
``sys.path``, where ``planner.py`` (the planner benchmark) would shadow the ``planner`` package."""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
