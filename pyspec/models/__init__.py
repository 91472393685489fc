"""Real models on pyspec's ops: configuration, GGUF conversion, loading and the Llama-family decoder."""

from pyspec.models.config import ModelConfig
from pyspec.models.llama import ForwardOutput, LlamaModel

__all__ = ["ModelConfig", "LlamaModel", "ForwardOutput"]
