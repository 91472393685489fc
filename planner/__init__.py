"""pyspec's planner: pure Python (no torch import) that turns profiled latencies and acceptance rates
into the fastest decoding plan for the hardware. Filled in by the planner issue."""
