"""vLLM's per-reload "<Layer>: Failed to load weights" warning: once for computed-only layers,
always for layers with real weights (rollout/vllm_engine.py)."""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import torch

from rollout.vllm_engine import (
    RELOAD_LOGGER,
    RELOAD_MESSAGE,
    ReloadLogFilter,
    computed_only_layer_classes,
    install_reload_log_filter,
)


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def logger():
    """A fresh logger shaped like vLLM's: its own handler, no propagation."""
    log = logging.getLogger(f"{RELOAD_LOGGER}.test")
    log.filters.clear()
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.DEBUG)
    capture = _Capture()
    log.addHandler(capture)
    yield log, capture
    log.filters.clear()
    log.handlers.clear()


def _reload(log, layers):
    """What vLLM's finalize_layerwise_processing logs on one in-place reload."""
    for layer in layers:
        log.warning(RELOAD_MESSAGE, layer)


def test_computed_only_layer_warns_once_real_layers_every_time(logger):
    log, capture = logger
    filt = install_reload_log_filter({"RotaryEmbedding"}, logger_name=log.name)
    for _ in range(81):
        _reload(log, ["RotaryEmbedding"])
    _reload(log, ["QKVParallelLinear", "QKVParallelLinear"])
    log.warning("Following weights were not loaded from checkpoint: %s", {"lm_head.weight"})
    log.warning("RotaryEmbedding: Failed to load weights")  # not vLLM's exact form: untouched

    rotary = [line for line in capture.lines if line.startswith("RotaryEmbedding: Failed")]
    assert len(rotary) == 2 and "harmless" in rotary[0] and "harmless" not in rotary[1]
    assert capture.lines.count("QKVParallelLinear: Failed to load weights") == 2
    assert any(line.startswith("Following weights were not loaded") for line in capture.lines)
    assert filt.suppressed == 80


def test_install_is_idempotent_per_process(logger):
    log, capture = logger
    first = install_reload_log_filter({"RotaryEmbedding"}, logger_name=log.name)
    second = install_reload_log_filter({"Llama3RotaryEmbedding"}, logger_name=log.name)
    assert first is second and len(log.filters) == 1
    _reload(log, ["RotaryEmbedding", "Llama3RotaryEmbedding"] * 3)
    assert len(capture.lines) == 2 and first.suppressed == 4


def test_filter_without_computed_layers_hides_nothing(logger):
    log, capture = logger
    log.addFilter(ReloadLogFilter(set()))
    _reload(log, ["RotaryEmbedding"] * 3)
    assert len(capture.lines) == 3


class _Rotary(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("cos_sin_cache", torch.zeros(4, 2), persistent=False)


class _FourierRotary(torch.nn.Module):  # learnable coefficients: a real weight
    def __init__(self):
        super().__init__()
        self.register_buffer("cos_sin_cache", torch.zeros(4, 2), persistent=False)
        self.coef = torch.nn.Parameter(torch.zeros(2))


class _Stats(torch.nn.Module):  # a persistent buffer is in checkpoints: it can be loaded
    def __init__(self):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(2))


class _Mixed(torch.nn.Module):  # one instance computed-only, one with a persistent buffer
    def __init__(self, persistent):
        super().__init__()
        self.register_buffer("table", torch.zeros(2), persistent=persistent)


def test_computed_only_layer_classes():
    model = torch.nn.ModuleList([
        torch.nn.Linear(2, 2), _Rotary(), _Rotary(), _FourierRotary(), _Stats(),
        _Mixed(False), _Mixed(True), torch.nn.ReLU(),
    ])
    assert computed_only_layer_classes(model) == {"_Rotary"}


def test_message_and_logger_match_installed_vllm():
    """If vLLM renames the logger or rewords the message, the filter silently stops working."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:
        pytest.skip("vllm not installed")
    source = Path(spec.origin).parent / Path(*RELOAD_LOGGER.split(".")[1:]).with_suffix(".py")
    text = source.read_text()
    assert f'"{RELOAD_MESSAGE}"' in text and "init_logger(__name__)" in text
    rotary = (Path(spec.origin).parent / "model_executor/layers/rotary_embedding/base.py").read_text()
    assert 'register_buffer("cos_sin_cache", cache, persistent=False)' in rotary
