"""benchmarks/greedy_diff.py: the diagnostic behind BENCHMARKS' "what RL broke" must count flips right."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("greedy_diff", ROOT / "benchmarks" / "greedy_diff.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flips_are_counted_against_the_reward(tiny_model, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    greedy_diff = _load()
    # "after" is the tiny model with its output layer scrambled: different greedy text.
    after = tmp_path / "after"
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        model.lm_head.weight.copy_(torch.randn_like(model.lm_head.weight))
    model.save_pretrained(after)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(after)
    # "before" answers the even problems right (a faked decoder): an untrained model scores 0 on
    # both sides, which would leave the lost/gained bookkeeping untested.
    real = greedy_diff.greedy_texts

    def fake(path, renderer, tok, records, max_new_tokens):
        if Path(path) == Path(tiny_model):
            return [f"\\boxed{{{r['answer']}}}" if i % 2 == 0 else "no answer" for i, r in enumerate(records)]
        return real(path, renderer, tok, records, max_new_tokens)

    monkeypatch.setattr(greedy_diff, "greedy_texts", fake)
    res = greedy_diff.greedy_diff(str(ROOT / "experiments" / "arith_base.yaml"), tiny_model, str(after),
                                  ["data.n_train=50", "data.n_eval=6"], n=6)
    assert res["n"] == 6 and res["accuracy_before"] == 0.5
    assert len(res["after"]) == 6 and all(isinstance(t, str) for t in res["after"])
    # The scrambled model answers nothing right: it loses exactly the problems "before" solved.
    assert res["lost"] == [0, 2, 4] and res["gained"] == [] and res["accuracy_after"] == 0.0
