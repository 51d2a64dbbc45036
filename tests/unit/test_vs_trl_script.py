"""benchmarks/vs_trl.py: config building, TRL mapping, summaries, ratio and the agreement check.

Nothing here needs TRL: the module is loaded with `import trl` made to fail.
"""
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def vt():
    saved = sys.modules.get("trl", "absent")
    sys.modules["trl"] = None  # `import trl` raises ImportError while the module loads
    try:
        spec = importlib.util.spec_from_file_location("vs_trl", ROOT / "benchmarks" / "vs_trl.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved == "absent":
            del sys.modules["trl"]
        else:
            sys.modules["trl"] = saved
    return module


def _cfg(vt, preset: str, out: Path, extra=()):
    from rlcore.config import load_config

    p = vt.PRESETS[preset]
    return load_config(vt.repo_path(p.config), vt.rl_overrides(out, 3, 7, out / "start: model", 256, list(extra)))


@pytest.mark.parametrize("preset,batch,n,tokens,lr", [("tiny", 256, 8, 12, 1e-4), ("real", 32, 4, 32, 3e-5)])
def test_presets_map_to_one_trl_step_per_rl_step(vt, tmp_path, preset, batch, n, tokens, lr):
    out = tmp_path / "a dir with spaces"
    cfg = _cfg(vt, preset, out)
    # paths with spaces and ": " survive the override round trip
    assert cfg.model.path == str(out / "start: model") and cfg.output_dir == str(out / "runs")
    assert (cfg.seed, cfg.trainer.total_steps, cfg.sft.steps, cfg.model.source, cfg.model.build_tiny) == (3, 7, 0, "", False)
    assert (cfg.learner.warmup_steps, cfg.learner.lr_schedule, cfg.eval.every, cfg.trainer.max_wall_time_s) == (0, "constant", 0, 0)
    s = vt.trl_settings(cfg, 7, "o")
    assert s["per_device_train_batch_size"] == batch == cfg.rollout.prompts_per_step * cfg.rollout.n_samples
    assert (s["num_generations"], s["gradient_accumulation_steps"], s["num_iterations"]) == (n, 1, 1)
    assert (s["max_completion_length"], s["learning_rate"], s["max_steps"], s["seed"]) == (tokens, lr, 7, 3)
    assert (s["beta"], s["epsilon"], s["epsilon_high"], s["loss_type"], s["temperature"]) == (0.0, 0.2, 0.2, "dapo", 1.0)
    assert (s["lr_scheduler_type"], s["warmup_steps"], s["max_grad_norm"], s["optim"]) == ("constant", 0, 1.0, "adamw_torch")
    assert (s["bf16"], s["gradient_checkpointing"], s["shuffle_dataset"], s["logging_steps"]) == (False, False, False, 1)
    # generation_batch_size / steps_per_generation stay unset: TRL derives batch and 1 from the above
    assert "generation_batch_size" not in s and "steps_per_generation" not in s


def test_mapping_refuses_what_trl_cannot_mirror(vt, tmp_path):
    from rlcore.config import load_config

    raw = load_config(ROOT / "experiments" / "real_model.yaml")  # its lr warm-up and cosine decay
    with pytest.raises(vt.MappingError, match=r"learner.warmup_steps=3.*learner.lr_schedule='cosine'"):
        vt.trl_settings(raw, 5, "o")
    cfg = _cfg(vt, "tiny", tmp_path, ["algorithm.kl_coef=0.1", "learner.mini_batches=2"])
    with pytest.raises(vt.MappingError, match=r"algorithm.kl_coef=0.1.*learner.mini_batches=2"):
        vt.trl_settings(cfg, 5, "o")


def test_sft_overrides_save_a_step_0_model(vt, tmp_path):
    from rlcore.config import load_config

    ov = vt.sft_overrides(tmp_path / "o u t", 0, tmp_path / "tiny model", 17)
    cfg = load_config(ROOT / "experiments" / "quickstart.yaml", ov)
    assert (cfg.trainer.total_steps, cfg.sft.steps, cfg.name, cfg.model.build_tiny) == (0, 17, "sft_start", True)
    assert cfg.model.path == str(tmp_path / "tiny model") and cfg.eval.num_prompts == 1 and cfg.eval.sampled_k == 0


def _metrics_row(step, reward, grad=0.5, adv=0.2):
    return {"step": step, "reward/mean": reward, "reward/std": 0.3, "train/grad_norm": grad, "advantage/abs_mean": adv,
            "time/generate_s": 1.0, "time/reward_s": 0.1, "time/logprob_s": 0.0, "time/update_s": 2.0,
            "time/sync_s": 0.5, "time/step_s": 3.8 + step / 10}


def test_ours_rows_and_summary_drop_eval_row_and_warmup(vt):
    metrics = [{"step": 0, "eval/accuracy": 0.1}] + [_metrics_row(s, 0.1 * s) for s in range(1, 6)]
    rows = vt.ours_rows(metrics)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["other_s"] == pytest.approx(3.9 - 3.6)
    s = vt.summarize(rows, warmup=2)
    assert s["step"]["n"] == 3 and s["step"]["median"] == pytest.approx(4.2)
    assert (s["step"]["min"], s["step"]["max"]) == (pytest.approx(4.1), pytest.approx(4.3))
    assert s["update"]["median"] == 2.0 and s["logprob"]["median"] == 0.0
    assert vt.ratio(4.2, 2.1) == pytest.approx(2.0) and vt.ratio(1.0, 0.0) is None and vt.ratio(None, 1.0) is None


def test_phase_clock_derives_update_and_splits(vt):
    clock = vt.PhaseClock()
    clock.add("generate", 1.0)  # outside a step: ignored
    clock.begin(1)
    for phase, seconds in (("rollout", 0.5), ("generate", 0.3), ("reward", 0.1), ("training_step", 0.9),
                           ("prepare_inputs", 0.5), ("loss_forward", 0.15)):
        clock.add(phase, seconds)
    clock.end()
    (row,) = clock.rows
    assert row["step"] == 1 and row["generate_s"] == 0.3 and row["sync_s"] == 0.0
    assert row["other_s"] == pytest.approx(0.1) and row["backward_s"] == pytest.approx(0.25)
    assert row["update_s"] == pytest.approx(row["step_s"] - 0.5)
    assert row["optimizer_s"] == pytest.approx(row["step_s"] - 0.9)


def test_intervals(vt):
    p = vt.paired_interval([1.0, 2.0, 3.0], [0.0, 1.0, 1.0])  # diffs 1, 1, 2
    assert p["diff"] == pytest.approx(4 / 3)
    half = 4.303 * math.sqrt(1 / 3) / math.sqrt(3)  # t(2) * sd / sqrt(n)
    assert (p["lo"], p["hi"]) == (pytest.approx(4 / 3 - half, abs=1e-3), pytest.approx(4 / 3 + half, abs=1e-3))
    w = vt.welch_interval([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0])
    assert w["diff"] == 0 and w["lo"] < 0 < w["hi"]
    assert math.isnan(vt.paired_interval([1.0], [0.0])["lo"])
    lo, hi = vt.bootstrap_interval([1.0, 2.0, 3.0], [0.0, 1.0, 1.0], paired=True)
    assert 1.0 <= lo <= hi <= 2.0
    assert vt.halves(5) == [(0, 2), (2, 5)] and vt.halves(1) == [(0, 1)]


def test_agreement_verdicts(vt):
    import numpy as np

    rng = np.random.default_rng(0)
    curve = np.linspace(0.2, 0.5, 40)
    ours = list(curve + rng.normal(0, 0.03, 40))
    trl = list(curve + rng.normal(0, 0.03, 40))
    a = vt.agreement(ours, trl, paired=True)
    assert a["verdict"] == "agree" and [h["steps"] for h in a["halves"]] == [[1, 20], [21, 40]]
    assert a["ours_gain"] == pytest.approx(np.mean(ours[20:]) - np.mean(ours[:20]))
    worse = list(np.array(trl) - 0.15)
    b = vt.agreement(ours, worse, paired=True)
    assert b["verdict"] == "DIFFER" and all(h["verdict"] == "DIFFER" for h in b["halves"])
    assert vt.agreement(ours, worse, paired=False)["verdict"] == "DIFFER"
    assert vt.agreement([0.1, 0.2, 0.3], [0.1, 0.2, 0.3], paired=True)["verdict"] == "n/a"  # a 1-step half


def test_update_check_and_prompt_order(vt, tmp_path):
    ours = [{"adv_abs_mean": 0.2, "grad_norm": 0.5}, {"adv_abs_mean": 0.0, "grad_norm": None},
            {"adv_abs_mean": 0.1, "grad_norm": 0.3}]
    trl = [{"grad_norm": 0.4, "reward_std": 0.3}, {"grad_norm": 0.0, "reward_std": 0.0}]
    u = vt.update_check(ours, trl)
    assert (u["ours_updated"], u["trl_updated"], u["ok"]) == (2, 1, True)
    assert not vt.update_check(ours, trl, min_frac=0.75)["ok"]
    samples = tmp_path / "samples"
    samples.mkdir()
    for step, prompts in ((1, ["a", "b"]), (2, ["c", "c"])):
        rows = [{"prompt": p, "score": 0.0} for p in prompts for _ in range(3)]
        (samples / f"step_{step}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = vt.read_samples_prompts(tmp_path, 2, 3)
    assert got == [["a", "b"], ["c", "c"]] and vt.read_samples_prompts(tmp_path, 3, 3) is None
    assert vt.prompts_match(got, [["a", "b"], ["c", "c"]], [["a", "b"], ["c", "c"]])["same"]
    m = vt.prompts_match(got, [["a", "b"], ["c", "c"]], [["a", "b"], ["c", "d"]])
    assert (m["ours_same"], m["trl_same"], m["same"]) == (2, 1, False)


def test_report_table(vt):
    rows = [{"step": s, **{f"{p}_s": 1.0 for p in vt.PHASES}, "step_s": 6.0 + s} for s in range(1, 5)]
    trl_rows = [{**r, "step_s": r["step_s"] / 2, "loss_forward_s": 0.5, "backward_s": 1.0, "optimizer_s": 0.1}
                for r in rows]
    so, st = vt.summarize(rows, 1), vt.summarize(trl_rows, 1, vt.PHASES + ("step",) + vt.TRL_DETAIL)
    result = {
        "preset": "tiny", "steps": 4, "warmup": 1,
        "batch": {"prompts_per_step": 32, "n_samples": 8, "max_new_tokens": 12, "lr": 1e-4},
        "summary": {"ours": so, "trl": st},
        "step_ratio": {"median": vt.ratio(so["step"]["median"], st["step"]["median"]),
                       "mean": vt.ratio(so["step"]["mean"], st["step"]["mean"])},
        "process_wall_s": {"ours": 70.0, "trl": 30.0},
        "update_check": vt.update_check([{"adv_abs_mean": 1, "grad_norm": 1}], [{"grad_norm": 1, "reward_std": 1}]),
        "prompts": {"steps": 4, "ours_same": 4, "trl_same": 4, "same": True}, "trl_prompt_ids_equal": "1024/1024",
        "agreement": vt.agreement([0.1, 0.2, 0.3, 0.4], [0.1, 0.21, 0.29, 0.4], paired=True),
        "machine": {"cpu": "x", "cores": 2, "cpu_capability": "AVX2", "load": [0.1, 0.1, 0.1]},
    }
    text = vt.format_report(result)
    assert "step total" in text and "2.00x" in text  # medians 9 s and 4.5 s
    assert "ours 7.00-10.00 s, TRL 3.50-5.00 s" not in text  # warm-up step dropped from the ranges
    assert "ours 8.00-10.00 s, TRL 4.00-5.00 s" in text
    assert "TRL update: clip + AdamW" in text and "1024/1024" in text and "reward curves: agree" in text


def _seed_result(seed: int, ours: list[float], trl: list[float], ratio: float = 0.9) -> dict:
    return {"seed": seed, "step_ratio": {"median": ratio}, "agreement": {"verdict": "agree"},
            "per_step": {"ours": [{"reward_mean": r} for r in ours], "trl": [{"reward_mean": r} for r in trl]}}


def test_across_seeds_pairs_each_seed_and_judges_over_seeds(vt, tmp_path):
    # seed-level differences +0.1, -0.05, +0.02: scattered around 0 -> agree
    runs = [_seed_result(0, [0.2, 0.4], [0.1, 0.3]), _seed_result(1, [0.5, 0.5], [0.55, 0.55], 0.8),
            _seed_result(2, [0.3, 0.32, 0.9], [0.3, 0.3, 0.86], 1.0)]
    s = vt.across_seeds(runs)
    assert [round(r["diff"], 6) for r in s["seeds"]] == [0.1, -0.05, 0.02]
    assert s["diff"]["diff"] == pytest.approx(0.07 / 3) and s["diff"]["n"] == 3
    assert s["verdict"] == "agree" and s["step_ratio"] == {"mean": pytest.approx(0.9), "min": 0.8, "max": 1.0}
    # a difference of the same sign and size on every seed is not noise
    biased = [_seed_result(i, [0.5 + 0.01 * i, 0.6], [0.4 + 0.01 * i, 0.5]) for i in range(3)]
    assert vt.across_seeds(biased)["verdict"] == "DIFFER"
    assert vt.across_seeds(runs[:1])["verdict"].startswith("n/a")  # one seed has no spread to judge by
    # results are found as files, as a directory's own vs_trl.json, or in its seed_N/ folders
    for r in runs:
        (tmp_path / f"seed_{r['seed']}").mkdir()
        (tmp_path / f"seed_{r['seed']}" / "vs_trl.json").write_text(json.dumps(r))
    assert [r["seed"] for r in vt.load_results([str(tmp_path)])] == [0, 1, 2]
    assert [r["seed"] for r in vt.load_results([str(tmp_path / "seed_1")])] == [1]
    text = vt.format_across(s)
    assert "reward curves across seeds: agree" in text and "+0.023" in text
    with pytest.raises(SystemExit, match="neither"):
        vt.load_results([str(tmp_path / "missing")])
