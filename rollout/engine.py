"""The engine interface every rollout backend implements (vLLM, transformers).

Prompts go in as token ids and completions come out as token ids with the log-probs they were
sampled with: the learner trains on exactly these ids, so nothing is ever re-tokenized.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np


@dataclass
class SamplingConfig:
    max_new_tokens: int = 32
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    stop_token_ids: list[int] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)  # stop strings (kept in the output)


@dataclass
class Request:
    """One completion to sample: a prompt and the seed that makes this sample reproducible."""

    prompt_ids: list[int]
    seed: int


def request_seed(*keys: int) -> int:
    """A request's seed from integer keys (run seed, step, prompt, sample, ...): the same keys
    give the same sample whatever the batching or the number of workers."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0] >> 1)


@dataclass
class Completion:
    token_ids: list[int]
    logprobs: list[float]  # log-prob of each generated token under the sampling distribution
    finish_reason: str  # "stop" | "length"

    @property
    def length(self) -> int:
        return len(self.token_ids)


class WeightValidationError(ValueError):
    """Pushed weights do not match the model; raised before the engine is touched."""


class Engine(abc.ABC):
    @abc.abstractmethod
    def generate(self, requests: list[Request], sampling: SamplingConfig) -> list[Completion]:
        """One completion per request, in request order."""

    @abc.abstractmethod
    def load_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Replace all weights in place (names and shapes as in the HF state dict)."""

    @abc.abstractmethod
    def sequence_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        """Log-prob of tokens 1..L-1 of each sequence given its prefix (for the sync check)."""

    def shutdown(self) -> None:  # pragma: no cover - default no-op
        pass


def validate_weights(
    weights: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], tied_lm_head: bool
) -> None:
    """Check names and shapes before a reload: a failed reload leaves vLLM unusable."""
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if tied_lm_head and "lm_head.weight" not in weights:
        # vLLM CPU keeps a packed copy of the LM head: without it logits are silently wrong.
        missing.append("lm_head.weight")
    if missing or unexpected:
        raise WeightValidationError(
            f"weight names differ from the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for name, shape in expected.items():
        if tuple(weights[name].shape) != tuple(shape):
            raise WeightValidationError(
                f"weight {name}: shape {tuple(weights[name].shape)} != model's {tuple(shape)}"
            )
