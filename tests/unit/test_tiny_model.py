"""Tiny model + tokenizer: build, save, reload through the Auto classes, token-level checks."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rlcore.tiny_model import (  # noqa: E402
    BUILD_INFO_FILE,
    build_tiny_model,
    build_tokenizer,
    count_parameters,
    ensure_tiny_model,
    main,
)

SMALL = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
             max_position_embeddings=128)

TEXTS = [
    "3+4+5=",
    "What is 123+45? Put the final answer in \\boxed{}.",
    "\\boxed{168}",
    "  multiple   spaces\n\n\nnewlines\t tab",
    "café naïve — “quotes” 日本語 🙂",
    "I'm sure we'll get 1000000 - 5 = 999995.",
    "<|im_start|>user\n9-8=<|im_end|>\n<|im_start|>assistant\n\\boxed{1}<|im_end|>",
]


@pytest.fixture(scope="module")
def trained_tok():
    return build_tokenizer(seed=0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen2", seed=0, **SMALL)


@pytest.fixture(scope="module")
def auto_tok(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def auto_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir)


def test_files_written(model_dir):
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", BUILD_INFO_FILE} <= names
    tc = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert tc["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tc["padding_side"] == "left"


def test_vocab_and_special_tokens(auto_tok):
    assert 300 <= len(auto_tok) <= 400
    assert auto_tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]) == [0, 1, 2, 3]
    assert auto_tok.eos_token == "<|im_end|>" and auto_tok.eos_token_id == 2
    assert auto_tok.pad_token == "<|pad|>" and auto_tok.pad_token_id == 3
    assert auto_tok.padding_side == "left"


@pytest.mark.parametrize("text", TEXTS)
def test_ids_round_trip_after_reload(trained_tok, auto_tok, text):
    ids = auto_tok(text).input_ids
    assert ids == trained_tok(text).input_ids
    assert auto_tok.decode(ids) == text


def test_digits_are_single_tokens(auto_tok):
    for n in ["0", "7", "12", "999", "1234567890"]:
        toks = auto_tok.convert_ids_to_tokens(auto_tok(n).input_ids)
        assert toks == list(n)
    # also inside context (no merge with a preceding space or operator)
    toks = auto_tok.convert_ids_to_tokens(auto_tok("x 42+17=59").input_ids)
    assert [t for t in toks if any(c.isdigit() for c in t)] == list("421759")
    vocab = auto_tok.get_vocab()
    assert not [t for t in vocab if sum(c.isdigit() for c in t) > 1]


def test_chat_template(auto_tok):
    msgs = [{"role": "user", "content": "3+4+5="}]
    text = auto_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\n3+4+5=<|im_end|>\n<|im_start|>assistant\n"
    ids = auto_tok(text, add_special_tokens=False).input_ids
    toks = auto_tok.convert_ids_to_tokens(ids)
    assert toks == ["<|im_start|>", "user", "Ċ", "3", "+", "4", "+", "5", "=", "<|im_end|>", "Ċ",
                    "<|im_start|>", "assistant", "Ċ"]
    # no BOS is prepended by plain encoding
    assert auto_tok(text).input_ids == ids
    # without generation prompt; with a system message
    text2 = auto_tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}] + msgs, tokenize=False, add_generation_prompt=False
    )
    assert text2 == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n3+4+5=<|im_end|>\n"
    # a completion ends with eos
    full = auto_tok.apply_chat_template(
        msgs + [{"role": "assistant", "content": "\\boxed{12}"}], tokenize=False
    )
    assert full.endswith("\\boxed{12}<|im_end|>\n")
    comp = auto_tok("\\boxed{12}<|im_end|>").input_ids
    assert comp[-1] == auto_tok.eos_token_id and len(comp) == 6


def test_left_padding(auto_tok):
    batch = auto_tok(["1+2=", "11+22+33="], padding=True)
    assert batch.input_ids[0][0] == auto_tok.pad_token_id
    assert batch.attention_mask[0][0] == 0 and batch.attention_mask[1][0] == 1


def test_model_config_and_tied_embeddings(auto_model, auto_tok):
    m = auto_model
    assert type(m).__name__ == "Qwen2ForCausalLM"
    assert m.dtype == torch.float32
    cfg = m.config
    assert cfg.tie_word_embeddings is True
    assert m.get_output_embeddings().weight.data_ptr() == m.get_input_embeddings().weight.data_ptr()
    assert cfg.vocab_size == len(auto_tok)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.intermediate_size) == (64, 2, 4, 2, 128)
    assert (cfg.eos_token_id, cfg.pad_token_id, cfg.bos_token_id) == (2, 3, 0)
    gc = m.generation_config
    assert (gc.eos_token_id, gc.pad_token_id, gc.bos_token_id) == (2, 3, 0)


def test_forward_and_generate(auto_model, auto_tok):
    m = auto_model
    enc = auto_tok(["1+2=", "11+22+33="], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = m(**enc)
    assert out.logits.shape == (2, enc.input_ids.shape[1], len(auto_tok))
    assert torch.isfinite(out.logits).all()
    with torch.no_grad():
        gen = m.generate(**enc, max_new_tokens=4, do_sample=False)
    assert gen.shape[0] == 2 and gen.shape[1] <= enc.input_ids.shape[1] + 4


def test_build_is_deterministic_and_keeps_global_rng(tmp_path, model_dir):
    from safetensors.torch import load_file

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    p = build_tiny_model(tmp_path / "again", seed=0, **SMALL)
    assert torch.equal(torch.rand(3), expected)  # global RNG untouched
    a, b = load_file(model_dir / "model.safetensors"), load_file(p / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (p / "tokenizer.json").read_text() == (model_dir / "tokenizer.json").read_text()
    p2 = build_tiny_model(tmp_path / "other", seed=1, **SMALL)
    c = load_file(p2 / "model.safetensors")
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])


@pytest.mark.parametrize("arch,cls", [("llama", "LlamaForCausalLM"), ("qwen3", "Qwen3ForCausalLM")])
def test_other_archs(tmp_path, trained_tok, arch, cls):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = build_tiny_model(tmp_path / arch, arch=arch, **SMALL)
    m = AutoModelForCausalLM.from_pretrained(p)
    tok = AutoTokenizer.from_pretrained(p)
    assert type(m).__name__ == cls
    assert m.config.tie_word_embeddings is True
    for t in TEXTS:
        assert tok(t).input_ids == trained_tok(t).input_ids
    ids = torch.tensor([tok("1+2=").input_ids])
    with torch.no_grad():
        assert torch.isfinite(m(ids).logits).all()


def test_bad_arch(tmp_path):
    with pytest.raises(ValueError, match="arch"):
        build_tiny_model(tmp_path / "x", arch="gpt9", **SMALL)


def test_ensure_is_idempotent_and_atomic(tmp_path, monkeypatch):
    out = tmp_path / "m"
    p = ensure_tiny_model(out, **SMALL)
    assert p == out and (out / "config.json").exists()
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    import rlcore.tiny_model as tm

    def boom(*a, **k):
        raise AssertionError("should not rebuild")

    monkeypatch.setattr(tm, "build_tiny_model", boom)
    assert ensure_tiny_model(out, **SMALL) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="hidden_size"):
        ensure_tiny_model(out, **{**SMALL, "hidden_size": 32})
    # a crash mid-build leaves nothing behind
    def crash(out_dir, **k):
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("crash")

    monkeypatch.setattr(tm, "build_tiny_model", crash)
    with pytest.raises(RuntimeError):
        ensure_tiny_model(tmp_path / "m2", **SMALL)
    assert not (tmp_path / "m2").exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m"]


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main([str(out), "--hidden-size", "32", "--num-layers", "1", "--intermediate-size", "64"]) == 0
    line = capsys.readouterr().out
    assert str(out) in line and "params=" in line
    from transformers import AutoModelForCausalLM

    n = count_parameters(AutoModelForCausalLM.from_pretrained(out))
    assert f"params={n:,}" in line
