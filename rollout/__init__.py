"""Rollout: engines (vLLM, transformers) behind one interface, and the Ray worker around them."""
from rollout.engine import Completion, Engine, Request, SamplingConfig, WeightValidationError

__all__ = ["Completion", "Engine", "Request", "SamplingConfig", "WeightValidationError"]
