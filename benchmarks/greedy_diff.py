"""Where two checkpoints' greedy answers differ on a config's held-out set.

Used to see *what* RL broke when greedy accuracy fell while sampled reward held (BENCHMARKS.md,
"RL on a policy that composes"): it prints the problems the first model solves and the second
does not, with both completions.

    .venv/bin/python benchmarks/greedy_diff.py experiments/arith_base.yaml BEFORE_MODEL AFTER_MODEL \
        --set data.arith_answer_format=steps --set rollout.max_new_tokens=40
"""
from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlcore.config import load_config
from rlcore.prompts import PromptRenderer, load_datasets
from rewards import get_reward


def greedy_texts(model_dir: str, renderer: PromptRenderer, tok, records: list[dict], max_new_tokens: int) -> list[str]:
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    texts = []
    for rec in records:
        ids = torch.tensor([renderer.ids(rec)])
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=renderer.eos_id, pad_token_id=renderer.eos_id)
        texts.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("-n", type=int, default=200, help="held-out problems to decode")
    ap.add_argument("--show", type=int, default=25, help="regressions to print")
    args = ap.parse_args()

    cfg = load_config(args.config, args.set)
    _, evals = load_datasets(cfg)
    evals = evals[: args.n]
    tok = AutoTokenizer.from_pretrained(args.before)
    renderer = PromptRenderer(tok, cfg.data)
    reward = get_reward(cfg.reward.fn)
    before, after = (greedy_texts(m, renderer, tok, evals, cfg.rollout.max_new_tokens) for m in (args.before, args.after))

    def correct(rec, text) -> bool:
        out = reward(rec["prompt"], text, str(rec["answer"]), rec.get("metadata", {}))
        return float(out["score"] if isinstance(out, dict) else out) > 0.5

    ok_before = [correct(r, t) for r, t in zip(evals, before)]
    ok_after = [correct(r, t) for r, t in zip(evals, after)]
    print(f"greedy accuracy on {len(evals)} held-out problems: before {sum(ok_before) / len(evals):.3f}, "
          f"after {sum(ok_after) / len(evals):.3f}; lost {sum(a and not b for a, b in zip(ok_before, ok_after))}, "
          f"gained {sum(b and not a for a, b in zip(ok_before, ok_after))}")
    shown = 0
    for rec, a, b, x, y in zip(evals, ok_before, ok_after, before, after):
        if a and not b and shown < args.show:
            print(f"{rec['prompt']!r}: {x!r} -> {y!r}")
            shown += 1


if __name__ == "__main__":
    main()
