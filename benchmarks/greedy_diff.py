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
from rlcore.sampling import is_accepted
from rewards import RewardInput, get_reward
from rewards.registry import call_reward


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


def greedy_diff(config: str, before: str, after: str, overrides: list[str] = (), n: int = 200) -> dict:
    """Greedy completions of both models on the first `n` held-out problems, and which flipped."""
    cfg = load_config(config, list(overrides))
    _, evals = load_datasets(cfg)
    evals = evals[:n]
    tok = AutoTokenizer.from_pretrained(before)
    renderer = PromptRenderer(tok, cfg.data)
    reward = get_reward(cfg.reward.fn)

    def correct(rec, text) -> bool:
        item = RewardInput(prompt=rec["prompt"], completion=text, ground_truth=str(rec["answer"]),
                           metadata=rec.get("metadata", {}))
        return is_accepted(call_reward(reward, item, cfg.reward.failure_score))

    texts = {name: greedy_texts(path, renderer, tok, evals, cfg.rollout.max_new_tokens)
             for name, path in (("before", before), ("after", after))}
    ok = {name: [correct(r, t) for r, t in zip(evals, texts[name])] for name in texts}
    lost = [i for i in range(len(evals)) if ok["before"][i] and not ok["after"][i]]
    gained = [i for i in range(len(evals)) if ok["after"][i] and not ok["before"][i]]
    return {
        "n": len(evals), "accuracy_before": sum(ok["before"]) / max(1, len(evals)),
        "accuracy_after": sum(ok["after"]) / max(1, len(evals)), "lost": lost, "gained": gained,
        "prompts": [r["prompt"] for r in evals], "before": texts["before"], "after": texts["after"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("-n", type=int, default=200, help="held-out problems to decode")
    ap.add_argument("--show", type=int, default=25, help="regressions to print")
    args = ap.parse_args()
    res = greedy_diff(args.config, args.before, args.after, args.set, args.n)
    print(f"greedy accuracy on {res['n']} held-out problems: before {res['accuracy_before']:.3f}, "
          f"after {res['accuracy_after']:.3f}; lost {len(res['lost'])}, gained {len(res['gained'])}")
    for i in res["lost"][: args.show]:
        print(f"{res['prompts'][i]!r}: {res['before'][i]!r} -> {res['after'][i]!r}")


if __name__ == "__main__":
    main()
