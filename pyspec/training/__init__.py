"""Training drafts for a target: ShareGPT data, the teacher's distributions, and the training loops
(draft language models, Medusa heads, hidden-transfer layers). Run ``python -m pyspec.training``."""
