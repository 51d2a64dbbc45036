"""Benchmark metrics (pass@k, maj@k, CI), the evaluation pipeline without an engine, model-path
resolution and the `rlcore eval` argument handling."""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest

from rlcore.eval_metrics import answer_key, default_ks, maj_at_k, majority_correct, mean_ci, pass_at_k, summarize


# ------------------------------------------------------------------------------------ pass@k


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_matches_enumeration_over_subsets(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_special_cases_and_stability():
    assert pass_at_k(16, 0, 16) == 0.0
    assert pass_at_k(16, 1, 16) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the plain accuracy
    # Large n: no huge binomials, no overflow, matches the closed form.
    exact = 1 - math.comb(9000, 300) / math.comb(10000, 300)
    assert pass_at_k(10000, 1000, 300) == pytest.approx(exact, rel=1e-9)
    assert pass_at_k(100000, 1, 1) == pytest.approx(1e-5)
    for bad in [(4, 5, 1), (4, 1, 0), (4, 1, 5), (4, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


# ------------------------------------------------------------------------------------ maj@k


def test_answer_key_groups_equal_values():
    assert answer_key("0.5") == answer_key("\\frac{1}{2}") == answer_key("1/2") == answer_key("\\dfrac12")
    assert answer_key("1,000") == answer_key("1000")
    assert answer_key("x+1") == answer_key(" x + 1 ")
    assert answer_key(None) is None and answer_key("") is None


def test_majority_vote_rules():
    assert majority_correct(["a", "a", "b"], [True, True, False]) == 1.0
    assert majority_correct(["a", "b", "b"], [True, False, False]) == 0.0
    # Tie: expected score of a random tie-break among the top answers.
    assert majority_correct(["a", "b"], [True, False]) == 0.5
    assert majority_correct(["a", "b", "c", "c", "a"], [True, False, False, False, True]) == 0.5
    # No answer does not vote; nothing at all is wrong.
    assert majority_correct([None, None, "a"], [False, False, True]) == 1.0
    assert majority_correct([None, None], [False, False]) == 0.0


def test_maj_at_k_uses_disjoint_blocks():
    keys = ["a", "a", "b", "b", "b", "c", "x", "y"]
    ok = [True, True, False, False, False, False, True, False]
    assert maj_at_k(keys, ok, 8) == 0.0  # b wins overall
    assert maj_at_k(keys, ok, 4) == pytest.approx((0.5 + 0.25) / 2)  # [a a b b]: a/b tie; [b c x y]: 4-way tie
    assert maj_at_k(keys, ok, 2) == pytest.approx((1.0 + 0.0 + 0.0 + 0.5) / 4)
    assert maj_at_k(keys, ok, 1) == pytest.approx(sum(ok) / 8)  # maj@1 = accuracy
    assert maj_at_k(keys, ok, 3) == pytest.approx((1.0 + 0.0) / 2)  # blocks [a a b], [b b c]; leftovers unused
    with pytest.raises(ValueError):
        maj_at_k(keys, ok, 9)


def test_maj_at_k_tie_in_block():
    # First block of 4 is a tie between a (correct) and b (wrong).
    assert maj_at_k(["a", "a", "b", "b"], [True, True, False, False], 4) == 0.5


# ------------------------------------------------------------------------------------ CI and summary


def test_mean_ci_normal_approximation_over_problems():
    values = [1.0, 0.0, 1.0, 0.0]
    mean, ci, se = mean_ci(values)
    sd = math.sqrt(sum((v - 0.5) ** 2 for v in values) / 3)
    assert mean == 0.5 and se == pytest.approx(sd / 2)
    assert ci == pytest.approx([max(0.0, 0.5 - 1.96 * se), min(1.0, 0.5 + 1.96 * se)])
    assert mean_ci([0.7]) == (0.7, None, None)
    assert mean_ci([1.0, 1.0, 1.0]) == (1.0, [1.0, 1.0], 0.0)
    _, ci, _ = mean_ci([0.0, 0.0, 0.0, 1.0])
    assert ci[0] == 0.0  # clipped
    with pytest.raises(ValueError):
        mean_ci([])


def test_default_ks():
    assert default_ks(1) == [1]
    assert default_ks(16) == [1, 2, 4, 8, 16]
    assert default_ks(6) == [1, 2, 4, 6]


def _problem(correct, keys=None, group=None):
    return {"correct": correct, "keys": keys or [("a" if c else "b") for c in correct],
            "lengths": [10] * len(correct), "truncated": [False] * len(correct), "group": group}


def test_summarize_is_consistent():
    problems = [_problem([True, False, False, False], group="1"), _problem([True, True, True, False], group="1"),
                _problem([False] * 4, group="2")]
    m = summarize(problems, [1, 2, 4])
    assert m["num_problems"] == 3 and m["n"] == 4
    assert m["accuracy"] == pytest.approx((0.25 + 0.75 + 0.0) / 3)
    assert m["pass@k"]["1"] == pytest.approx(m["accuracy"])
    assert m["pass@k"]["1"] <= m["pass@k"]["2"] <= m["pass@k"]["4"] == pytest.approx(2 / 3)
    assert m["maj@k"]["4"] == pytest.approx(1 / 3)  # only the 3/4 problem has a correct majority
    assert m["accuracy_by_group"] == {"1": 0.5, "2": 0.0}
    assert m["response_length_mean"] == 10
    lo, hi = m["accuracy_ci95"]
    assert 0.0 <= lo <= m["accuracy"] <= hi <= 1.0
    with pytest.raises(ValueError):
        summarize([_problem([True]), _problem([True, False])], [1])


# ------------------------------------------------------------------------------------ pipeline


@pytest.fixture(scope="module")
def tokenizer():
    from rlcore.tiny_model import build_tokenizer

    return build_tokenizer()


def test_run_benchmarks_with_a_fake_engine(tokenizer, tmp_path):
    """The whole path minus the engine: prompts, seeds, scoring with math_answer, metrics, report."""
    from rewards import get_reward
    from rewards.registry import call_reward
    from rlcore.data import benchmarks as bm
    from rlcore.data.benchmarks import get_benchmark, load_benchmark
    from rlcore.evaluate import EvalSettings, flat_metrics, markdown_table, run_benchmarks, write_report
    from rollout.engine import Completion

    gold = {r["prompt"]: r["answer"] for r in load_benchmark("gsm8k", limit=3)}
    seen = []

    def generate(requests, sampling):
        seen.extend(requests)
        out = []
        for i, r in enumerate(requests):
            text = tokenizer.decode(r.prompt_ids)
            answer = next(a for p, a in gold.items() if p in text) if i % 2 == 0 else "-1"
            ids = tokenizer(f"so \\boxed{{{answer}}}", add_special_tokens=False)["input_ids"]
            out.append(Completion(ids + [tokenizer.eos_token_id], [0.0] * (len(ids) + 1), "stop"))
        return out

    def score_for(name):
        fn = get_reward(name)
        return lambda items: [call_reward(fn, it) for it in items]

    settings = EvalSettings(n=2, limit=3, temperature=0.6, max_new_tokens=8, seed=3)
    results, samples = run_benchmarks([get_benchmark("gsm8k")], tokenizer=tokenizer, generate=generate,
                                      score_for=score_for, settings=settings)
    m = results["gsm8k"]
    assert len(seen) == 6 and len({r.seed for r in seen}) == 6  # one request and seed per sample
    assert m["num_problems"] == 3 and m["accuracy"] == 0.5 and m["pass@k"]["2"] == 1.0
    assert m["maj@k"]["2"] == 0.5 and m["maj@k"]["1"] == 0.5  # 1-1 tie between right and "-1"
    assert m["reward"] == bm.pick_reward(get_benchmark("gsm8k")) and m["num_skipped_too_long"] == 0
    assert "\\boxed{}" in m["example_prompt"] and "<|im_start|>assistant" in m["example_prompt"]
    assert [s["correct"] for s in samples["gsm8k"]] == [True, False] * 3
    again, _ = run_benchmarks([get_benchmark("gsm8k")], tokenizer=tokenizer, generate=generate,
                              score_for=score_for, settings=settings)
    assert [r.seed for r in seen[:6]] == [r.seed for r in seen[6:]]  # reproducible seeds
    flat = flat_metrics(results)
    assert flat["eval/gsm8k/accuracy"] == 0.5 and flat["eval/gsm8k/pass@2"] == 1.0 and "eval/gsm8k/maj@1" in flat
    write_report(tmp_path, results, samples, {"model": "fake", "settings": {"n": 2}})
    doc = json.loads((tmp_path / "eval.json").read_text())
    assert doc["benchmarks"]["gsm8k"]["accuracy"] == 0.5 and "pass@k" in doc["definitions"]
    assert "| gsm8k | 3 | 2 |" in (tmp_path / "eval.md").read_text()
    assert len((tmp_path / "samples" / "gsm8k.jsonl").read_text().splitlines()) == 6
    assert "pass@2" in markdown_table(results)
    # Prompts longer than the context budget are skipped and counted, not sent to the engine.
    short = EvalSettings(n=1, limit=3, max_prompt_tokens=5)
    res, _ = run_benchmarks([get_benchmark("gsm8k")], tokenizer=tokenizer, generate=generate,
                            score_for=score_for, settings=short)
    assert res["gsm8k"] == {"num_problems": 0, "num_skipped_too_long": 3}


# ------------------------------------------------------------------------------------ model paths


def _model_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_resolve_model_path(tmp_path):
    from rlcore.evaluate import resolve_model_path

    hf = _model_dir(tmp_path / "hf")
    assert resolve_model_path(str(hf)) == str(hf)
    run = tmp_path / "run"
    for step in (2, 10):
        ck = run / "checkpoints" / f"step_{step}"
        _model_dir(ck / "model")
        (ck / "trainer_state.json").write_text("{}")
    (run / "checkpoints" / ".tmp-step_12").mkdir()  # an unfinished save is ignored
    assert resolve_model_path(str(run)) == str(run / "checkpoints" / "step_10" / "model")
    assert resolve_model_path(str(run / "checkpoints")) == str(run / "checkpoints" / "step_10" / "model")
    assert resolve_model_path(str(run / "checkpoints" / "step_2")) == str(run / "checkpoints" / "step_2" / "model")
    assert resolve_model_path("Qwen/Qwen2.5-Math-1.5B") == "Qwen/Qwen2.5-Math-1.5B"  # hub id
    (tmp_path / "empty_run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resolve_model_path(str(tmp_path / "empty_run"))
    for bad in (tmp_path / "missing", "./nope/x", "a/b/c"):
        with pytest.raises(FileNotFoundError):
            resolve_model_path(str(bad))


def test_cli_eval_arguments(capsys):
    from rlcore.cli import main

    assert main(["eval", "--list"]) == 0
    assert "math500" in capsys.readouterr().out
    assert main(["eval", "--model", "x/y", "--benchmarks", "math5000"]) == 2
    assert "unknown benchmark 'math5000'" in capsys.readouterr().err
    assert main(["eval", "--model", "x/y", "--n", "2", "--k", "1,4"]) == 2
    assert "--k" in capsys.readouterr().err
    assert main(["eval", "--benchmarks", "math500"]) == 2
