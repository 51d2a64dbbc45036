"""Model loading choices: the attention kernel for the compute dtype, and model.trust_remote_code
reaching every loader (HF engine, vLLM engine, learner/reference loads through load_causal_lm)."""
import sys
import types

import pytest
import torch

from rollout import model_io


def _flash_attn(monkeypatch, installed: bool) -> None:
    """`import flash_attn` succeeds (an empty stand-in module) or raises ImportError."""
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn") if installed else None)


@pytest.fixture
def flash_installed(monkeypatch):
    _flash_attn(monkeypatch, True)


@pytest.mark.parametrize("dtype, expected", [
    ("bfloat16", "flash_attention_2"), ("float16", "flash_attention_2"), ("float32", "sdpa"),
    (torch.bfloat16, "flash_attention_2"), (torch.float32, "sdpa"),
])
def test_auto_attention_needs_16_bit_for_flash_attention(flash_installed, dtype, expected):
    assert model_io.pick_attn_implementation("auto", "cuda", dtype) == expected
    assert model_io.pick_attn_implementation("auto", "cuda:0", dtype) == expected


def test_auto_attention_without_flash_attn_or_cuda(monkeypatch):
    _flash_attn(monkeypatch, True)
    assert model_io.pick_attn_implementation("auto", "cpu", "bfloat16") == "sdpa"
    _flash_attn(monkeypatch, False)
    assert model_io.pick_attn_implementation("auto", "cuda", "bfloat16") == "sdpa"
    assert model_io.pick_attn_implementation("auto", "cuda") == "sdpa"  # no dtype given: fp32


def test_an_explicit_attention_choice_is_kept(flash_installed):
    for name in ("sdpa", "eager", "flash_attention_2"):
        assert model_io.pick_attn_implementation(name, "cuda", "float32") == name


class _Recorder:
    def __init__(self, result):
        self.calls, self.result = [], result

    def from_pretrained(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.result


class _FakeModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(2, 2)
        self.config = types.SimpleNamespace(tie_word_embeddings=False)


def _patch_transformers(monkeypatch):
    import transformers

    model = _Recorder(_FakeModel())
    tokenizer = _Recorder(types.SimpleNamespace(pad_token_id=0, eos_token_id=1))
    monkeypatch.setattr(transformers, "AutoModelForCausalLM", model)
    monkeypatch.setattr(transformers, "AutoTokenizer", tokenizer)
    return model, tokenizer


def test_load_causal_lm_passes_trust_remote_code_and_the_compute_dtype_kernel(monkeypatch, flash_installed):
    model, tokenizer = _patch_transformers(monkeypatch)
    monkeypatch.setattr(_FakeModel, "to", lambda self, device: self)  # no CUDA here
    model_io.load_causal_lm("some/model", "float32", "cuda", "auto", True, compute_dtype="bfloat16")
    ((args, kwargs),) = model.calls
    assert args == ("some/model",) and kwargs["trust_remote_code"] is True
    assert kwargs["dtype"] is torch.float32 and kwargs["attn_implementation"] == "flash_attention_2"
    assert tokenizer.calls[0][1]["trust_remote_code"] is True
    model_io.load_causal_lm("some/model", "float32", "cuda", "auto")  # fp32 compute: SDPA, no remote code
    assert model.calls[1][1]["attn_implementation"] == "sdpa" and model.calls[1][1]["trust_remote_code"] is False


@pytest.mark.parametrize("dtype, expected", [("float32", "sdpa"), ("bfloat16", "flash_attention_2")])
def test_a_model_loaded_for_cuda_gets_flash_attention_only_in_16_bit(monkeypatch, flash_installed, dtype, expected):
    model, _ = _patch_transformers(monkeypatch)
    monkeypatch.setattr(_FakeModel, "to", lambda self, device: self)
    model_io.load_causal_lm("some/model", dtype, "cuda", "auto")
    assert model.calls[0][1]["attn_implementation"] == expected


@pytest.mark.parametrize("trust", [True, False])
def test_hf_engine_passes_trust_remote_code(monkeypatch, trust):
    model, tokenizer = _patch_transformers(monkeypatch)
    from rollout.worker import make_engine

    engine = make_engine("hf", "some/model", dtype="float32", seed=0, trust_remote_code=trust)
    assert model.calls[0][1]["trust_remote_code"] is trust and tokenizer.calls[0][1]["trust_remote_code"] is trust
    assert engine.expected == {"proj.weight": (2, 2), "proj.bias": (2,)}


def _fake_vllm(monkeypatch):
    made = []

    class LLM:
        def __init__(self, **kwargs):
            made.append(kwargs)

        def get_tokenizer(self):
            return types.SimpleNamespace(eos_token_id=1)

        def apply_model(self, fn):
            return []

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM))
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # restored after the test
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    return made


@pytest.mark.parametrize("trust, extra, expected", [
    (True, {}, True), (False, {}, False), (False, {"trust_remote_code": True}, True), (True, {"trust_remote_code": False}, True),
])
def test_vllm_engine_passes_trust_remote_code(monkeypatch, trust, extra, expected):
    made = _fake_vllm(monkeypatch)
    from rollout import vllm_engine
    from rollout.worker import make_engine

    shapes = []
    monkeypatch.setattr(vllm_engine, "_expected_shapes", lambda path, trust_remote_code=False: shapes.append(
        (path, trust_remote_code)) or ({}, False))
    monkeypatch.setattr(vllm_engine, "install_reload_log_filter", lambda layers: None)
    make_engine("vllm", "some/model", dtype="float32", seed=3, trust_remote_code=trust, extra=dict(extra))
    ((kwargs,),) = [made]
    assert kwargs["trust_remote_code"] is expected and kwargs["model"] == "some/model" and kwargs["seed"] == 3
    assert shapes == [("some/model", expected)]


def test_vllm_expected_shapes_config_load_trusts_remote_code(monkeypatch):
    import transformers

    from rollout import vllm_engine

    seen = {}

    class Config:
        tie_word_embeddings = True

    def from_pretrained(path, **kwargs):
        seen["config"] = kwargs
        return Config()

    def from_config(config, **kwargs):
        seen["model"] = kwargs
        return _FakeModel()

    monkeypatch.setattr(transformers, "AutoConfig", types.SimpleNamespace(from_pretrained=from_pretrained))
    monkeypatch.setattr(transformers, "AutoModelForCausalLM", types.SimpleNamespace(from_config=from_config))
    shapes, tied = vllm_engine._expected_shapes("some/model", True)
    assert seen == {"config": {"trust_remote_code": True}, "model": {"trust_remote_code": True}}
    assert tied and shapes["proj.weight"] == (2, 2)
