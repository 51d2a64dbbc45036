"""Packed prompt groups give every completion token the logits it has in its own row."""
from __future__ import annotations

import pytest
import torch

from rlcore import prompt_sharing
from rlcore.batch import build_batch
from rlcore.tiny_model import build_tiny_model
from rollout.model_io import load_causal_lm


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("sharing") / "qwen2", seed=4))


def rows():
    a, b = [5, 6, 7, 8, 9], [10, 11]
    prompts = [a, a, b, a, b]
    completions = [[20, 21, 22], [23], [24, 25, 26, 27], [28, 29], [30]]
    return prompts, completions, build_batch(prompts, completions, pad_id=0)


def test_layout_groups_rows_by_prompt_and_restarts_positions():
    prompts, completions, batch = rows()
    t = {k: torch.from_numpy(v) for k, v in batch.items()}
    packed = prompt_sharing.pack(t["input_ids"], t["attention_mask"], t["prompt_len"])
    assert packed is not None and packed.lengths == [5 + 3 + 1 + 2, 2 + 4 + 1]
    assert packed.input_ids[0, :11].tolist() == [5, 6, 7, 8, 9, 20, 21, 22, 23, 28, 29]
    assert packed.position_ids[0, :11].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 5, 5, 6]
    m = packed.attention_mask[0, 0]
    assert m[8, :5].all() and not m[8, 5:8].any() and m[8, 8]  # completion 2 sees the prompt, not completion 1
    assert not m[9, 8] and m[10, 9]
    pad = packed.attention_mask[1, 0]
    assert pad[8, 8] and not pad[8, :8].any()  # padding sees only itself (no NaN rows)
    # Every scored token once: row b's positions prompt_len - 1 .. length - 2.
    assert len(packed.targets) == sum(len(c) for c in completions)
    single = build_batch([[5, 6], [7, 8]], [[1], [2]], pad_id=0)
    s = {k: torch.from_numpy(v) for k, v in single.items()}
    assert prompt_sharing.pack(s["input_ids"], s["attention_mask"], s["prompt_len"]) is None


def test_groups_too_long_to_pack_run_as_rows(monkeypatch):
    _, _, batch = rows()
    t = {k: torch.from_numpy(v) for k, v in batch.items()}
    monkeypatch.setattr(prompt_sharing, "MAX_PACKED_TOKENS", 10)  # the first group packs to 11
    assert prompt_sharing.pack(t["input_ids"], t["attention_mask"], t["prompt_len"]) is None
    monkeypatch.setattr(prompt_sharing, "MAX_PACKED_TOKENS", 11)
    assert prompt_sharing.pack(t["input_ids"], t["attention_mask"], t["prompt_len"]) is not None


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logits_and_gradients_equal_the_rows(model_dir, attn):
    model, _ = load_causal_lm(model_dir, "float32", "cpu", attn)
    _, _, batch = rows()
    t = {k: torch.from_numpy(v) for k, v in batch.items()}
    packed = prompt_sharing.pack(t["input_ids"], t["attention_mask"], t["prompt_len"])

    def logp_of(logits, targets):
        return torch.log_softmax(logits.float(), -1).gather(-1, targets[:, None])[:, 0]

    model.zero_grad()
    logits = model(input_ids=packed.input_ids, attention_mask=prompt_sharing.model_mask(packed, model),
                   position_ids=packed.position_ids, use_cache=False).logits[:, packed.keep_from:]
    ours = prompt_sharing.unpack(logp_of(prompt_sharing.select(logits, packed), packed.targets), packed)
    ours.sum().backward()
    ours_grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    full = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"], use_cache=False).logits[:, :-1]
    ref = torch.log_softmax(full.float(), -1).gather(-1, t["input_ids"][:, 1:, None])[..., 0] * t["loss_mask"]
    ref.sum().backward()
    torch.testing.assert_close(ours * t["loss_mask"], ref, rtol=1e-5, atol=1e-5)
    assert (ours[t["loss_mask"] == 0] == 0).all()
    for n, p in model.named_parameters():
        torch.testing.assert_close(ours_grads[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_only_attention_that_takes_the_mask_whole_is_packed(model_dir):
    model, _ = load_causal_lm(model_dir, "float32", "cpu", "sdpa")
    assert prompt_sharing.supported(model)
    model.config.layer_types = ["full_attention", "sliding_attention"] * 2
    assert not prompt_sharing.supported(model)
    model.config.layer_types = None
    model.config.sliding_window, model.config.use_sliding_window = 512, True
    assert not prompt_sharing.supported(model)
    model.config.use_sliding_window = False  # Qwen2 with the window switched off
    assert prompt_sharing.supported(model)
