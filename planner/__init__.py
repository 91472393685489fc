"""pyspec's planner: pure Python (no torch import) that turns profiled latencies and acceptance rates
into the fastest decoding plan for the hardware.

- :mod:`planner.latency`: forward-pass cost curves from measurements (scipy interpolation and fits).
- :mod:`planner.hierarchy`: expected time per token of a draft hierarchy, the optimal hierarchy by
  dynamic programming, brute force and Monte-Carlo checks.
- :mod:`planner.tree`: the draft-tree shape minimising time per token under a node budget.
"""
