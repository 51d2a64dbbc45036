"""`rlcore compare`: spec validation, override assembly, the report's numbers, and the driver (fake train)."""
import json
import math
from pathlib import Path

import pytest
import yaml

import rlcore
from rlcore import report
from rlcore.cli import main
from rlcore.compare import SHARED, SpecError, load_spec, parse_spec, run_compare, run_overrides, shared_start_overrides

BASE = "name: base\nmodel:\n  path: some/model\n"


def write_spec(tmp_path: Path, **extra) -> Path:
    (tmp_path / "base.yaml").write_text(BASE)
    data = {"name": "cmp", "output_dir": str(tmp_path / "out"), "base": "base.yaml",
            "runs": [{"name": "grpo", "overrides": {"algorithm.name": "grpo"}},
                     {"name": "dapo", "overrides": ["algorithm.clip_high=0.28"]}]}
    data.update(extra)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def spec_error(tmp_path, data) -> str:
    (tmp_path / "base.yaml").write_text(BASE)
    with pytest.raises(SpecError) as e:
        parse_spec(data, "s.yaml", spec_dir=tmp_path)
    return str(e.value)


# ------------------------------------------------------------------------------ spec


def test_spec_defaults_and_mapping_overrides(tmp_path):
    spec = load_spec(write_spec(tmp_path, overrides={"rollout": {"prompts_per_step": 32}, "data.fields": {"q": "x"},
                                                     "tracking.wandb": False, "algorithm.name": "1"}))
    assert spec.base == str(tmp_path / "base.yaml")  # resolved against the spec's directory
    assert spec.seeds == [0] and spec.metric == "eval/accuracy" and spec.shared_start is True
    assert spec.budget_samples is None and spec.target_accuracy is None
    assert spec.overrides == ["rollout.prompts_per_step=32", "data.fields.q=x", "tracking.wandb=false",
                              'algorithm.name="1"']  # a string that looks like a number stays a string
    assert [r.name for r in spec.runs] == ["grpo", "dapo"]
    assert spec.runs[0].overrides == ["algorithm.name=grpo"]
    assert spec.out_dir == tmp_path / "out" / "cmp"


@pytest.mark.parametrize("data, key", [
    ({"name": "x", "base": "base.yaml", "runs": [{"name": "a"}], "budget": 5}, "budget"),
    ({"name": "x", "base": "base.yaml", "runs": [{"name": "a", "override": []}]}, "runs[0].override"),
    ({"name": "x", "base": "base.yaml"}, "runs"),
    ({"name": "x", "base": "base.yaml", "runs": []}, "runs"),
    ({"name": "x", "base": "base.yaml", "runs": [{"overrides": []}]}, "runs[0].name"),
    ({"name": "x", "base": "base.yaml", "runs": [{"name": "a"}, {"name": "a"}]}, "runs[1].name"),
    ({"name": "x", "base": "base.yaml", "runs": [{"name": "a"}], "seeds": 0}, "seeds"),
    ({"name": "x", "base": "base.yaml", "runs": [{"name": "a"}], "seeds": ["0"]}, "seeds"),
    ({"name": "x", "base": "base.yaml", "runs": [{"name": "a"}], "budget_samples": -1}, "budget_samples"),
    ({"name": "x", "base": "base.yaml", "runs": [{"name": "a"}], "target_accuracy": 1.5}, "target_accuracy"),
    ({"name": "x", "base": "base.yaml", "runs": [{"name": "a"}], "shared_start": "yes"}, "shared_start"),
    ({"name": "x", "base": "base.yaml", "runs": [{"name": "a", "overrides": ["noequals"]}]}, "runs[0].overrides[0]"),
    ({"name": "x", "base": "base.yaml", "runs": [{"name": "a", "overrides": 3}]}, "runs[0].overrides"),
    ({"name": "x", "base": "nope.yaml", "runs": [{"name": "a"}]}, "base"),
    ({"name": "a/b", "base": "base.yaml", "runs": [{"name": "a"}]}, "name"),
    ({"base": "base.yaml", "runs": [{"name": "a"}]}, "name"),
])
def test_spec_errors_name_the_key(tmp_path, data, key):
    msg = spec_error(tmp_path, data)
    assert msg.startswith(f"s.yaml: {key}:"), msg


def test_run_overrides_order_and_shared_start(tmp_path):
    spec = load_spec(write_spec(tmp_path, overrides=["rollout.prompts_per_step=32"], seeds=[3, 4],
                                budget_samples=20000))
    model = (tmp_path / "out" / "cmp" / "runs" / SHARED / "checkpoints" / "step_0" / "model").resolve()
    runs_dir = tmp_path / "out" / "cmp" / "runs"
    assert run_overrides(spec, spec.runs[1], 4) == [
        "rollout.prompts_per_step=32", f"model.path={model}", "model.build_tiny=false", "sft.steps=0",
        "algorithm.clip_high=0.28", "name=dapo-s4", f"output_dir={runs_dir}", "seed=4", "overwrite=true",
        "trainer.max_samples=20000", "trainer.total_steps=100000",
    ]
    assert shared_start_overrides(spec) == [
        "rollout.prompts_per_step=32", f"name={SHARED}", f"output_dir={runs_dir}", "seed=3", "overwrite=true",
        "trainer.total_steps=0",
    ]
    spec.shared_start, spec.budget_samples = False, None
    assert run_overrides(spec, spec.runs[0], 3) == [
        "rollout.prompts_per_step=32", "algorithm.name=grpo", "name=grpo-s3", f"output_dir={runs_dir}", "seed=3",
        "overwrite=true",
    ]


def test_overrides_load_into_a_config(tmp_path):
    from rlcore.config import load_config

    spec = load_spec(write_spec(tmp_path, budget_samples=5000))
    cfg = load_config(spec.base, run_overrides(spec, spec.runs[1], 0))
    assert cfg.trainer.max_samples == 5000 and cfg.algorithm.clip_high == 0.28 and cfg.name == "dapo-s0"
    assert cfg.sft.steps == 0 and cfg.model.build_tiny is False and cfg.model.path.endswith("step_0/model")


# ---------------------------------------------------------------------------- report


def make_run(run_dir: Path, evals, final_samples):
    """evals: [(step, samples, wall_s, acc)]; the step-0 row has no samples/generated, like the trainer's."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for step, samples, wall_s, acc in evals:
        if step > 1:  # a training row without eval in between
            rows.append({"step": step - 1, "samples/generated": samples - 128, "time/wall_s": wall_s - 1})
        row = {"step": step, "eval/accuracy": acc, "eval/num_prompts": 200, "time/wall_s": wall_s}
        if step:
            row["samples/generated"] = samples
        rows.append(row)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"samples_generated": final_samples, "wall_time_s": evals[-1][2]}
    (run_dir / "summary.json").write_text(json.dumps(summary))


def synthetic(tmp_path, st):
    runs = tmp_path / "runs"
    make_run(runs / "a-s0", [(0, 0, 10, 0.2), (2, 512, 60, 0.55), (4, 1024, 120, 0.6)], 1024)
    make_run(runs / "a-s1", [(0, 0, 10, 0.2), (2, 512, 60, 0.4), (4, 1024, 120, 0.64)], 1024)
    make_run(runs / "b-s0", [(0, 0, 10, 0.2), (2, 512, 90, 0.3), (4, 1024, 180, 0.45)], 1100)
    make_run(runs / "b-s1", [(0, 0, 10, 0.2)], 0)  # leftovers of a run that then failed
    return [{"name": n, "runs": [{"seed": s, "run_dir": str(runs / f"{n}-s{s}"), "status": st.get((n, s))}
                                for s in (0, 1)]} for n in ("a", "b", "c")]


def table_row(md: str, name: str) -> list[str]:
    line = next(l for l in md.splitlines() if l.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip("|").split(" | ")]


def test_report_numbers(tmp_path):
    configs = synthetic(tmp_path, {("b", 1): {"status": "failed", "error": "RuntimeError: boom"}})
    meta = {"name": "cmp", "base": "base.yaml", "seeds": [0, 1], "budget_samples": 1024, "target_accuracy": 0.5,
            "metric": "eval/accuracy", "shared_start": True}
    rep = report.build(configs, meta)
    a, b, c = rep["configs"]
    # a: two seeds -> mean ± t(df=1) interval: mean 0.62, sd 0.02*sqrt2, se 0.02, t=12.706
    assert a["final_accuracy"] == pytest.approx(0.62) and a["ci_method"] == "t(2 seeds)"
    assert a["ci_low"] == pytest.approx(0.62 - 12.706 * 0.02) and a["ci_high"] == pytest.approx(0.62 + 12.706 * 0.02)
    assert a["samples_to_target"] == 768 and a["wall_s_to_target"] == 90  # 512 (s0) and 1024 (s1)
    assert a["start_accuracy"] == pytest.approx(0.2) and a["status"] == "ok"
    # b: one finished seed -> Wilson on 0.45 * 200 = 90 of 200, by hand
    p, n, z = 0.45, 200, 1.959964
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert b["ci_method"] == "wilson"
    assert (b["ci_low"], b["ci_high"]) == (pytest.approx(center - half), pytest.approx(center + half))
    assert (round(b["ci_low"], 3), round(b["ci_high"], 3)) == (0.383, 0.519)
    assert b["samples_to_target"] is None and b["samples_generated"] == 1100
    assert b["status"] == "failed (1/2): s1: RuntimeError: boom"
    assert c["final_accuracy"] is None and c["status"].startswith("missing (2/2)")

    md_path = report.write(tmp_path / "rep", rep)
    md = md_path.read_text()
    # Last 3 evals: a = mean((.2+.55+.6)/3, (.2+.4+.64)/3) = 0.4317; b = (.2+.3+.45)/3 = 0.3167
    assert table_row(md, "a") == ["a", "0.620 [0.366, 0.874]", "0.432", "0.200", "1,024", "2.0 min", "768", "1.5 min",
                                  "ok"]
    assert table_row(md, "b") == ["b", "0.450 [0.383, 0.519]", "0.317", "0.200", "1,100", "3.0 min", "not reached",
                                  "not reached", "failed (1/2): s1: RuntimeError: boom"]
    assert table_row(md, "c")[1:8] == ["—"] * 7
    assert "Budget: 1,024 samples per run · seeds: 0, 1 · base: `base.yaml`" in md
    assert "Wilson score interval on accuracy × eval/num_prompts (b)" in md and "over seeds (a)" in md
    png = tmp_path / "rep" / "report.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["configs"][0]["samples_to_target"] == 768


def test_eval_points_carry_counters_and_partial_target():
    rows = [{"step": 0, "eval/accuracy": 0.1, "time/wall_s": 5.0},
            {"step": 1, "samples/generated": 100, "time/wall_s": 9.0},
            {"step": 1, "eval/accuracy": 0.7}]  # a final eval logged on its own row
    pts = report.eval_points(rows, "eval/accuracy")
    assert [(p["samples"], p["wall_s"]) for p in pts] == [(0, 5.0), (100, 9.0)]
    runs = [{"seed": 0, "status": "ok", "error": "", "final_accuracy": 0.7, "num_prompts": 10, "start_accuracy": 0.1,
             "samples_generated": 100, "wall_time_s": 9, "samples_to_target": 100, "wall_s_to_target": 9},
            {"seed": 1, "status": "ok", "error": "", "final_accuracy": 0.3, "num_prompts": 10, "start_accuracy": 0.1,
             "samples_generated": 100, "wall_time_s": 9, "samples_to_target": None, "wall_s_to_target": None}]
    row = report.aggregate("x", runs, 0.5)
    md = report.render_markdown({"meta": {"target_accuracy": 0.5, "seeds": [0, 1]}, "configs": [row]})
    assert table_row(md, "x")[6] == "100 (1/2 seeds)"
    xs, ys = zip(*report.mean_curve([[(0, 0.0), (10, 1.0)], [(0, 0.2), (5, 0.2), (20, 0.2)]]))
    assert xs == (0, 5, 10) and ys == pytest.approx((0.1, 0.35, 0.6))  # only where every seed has data


# ---------------------------------------------------------------------------- driver


@pytest.fixture
def fake_train(monkeypatch):
    calls = []

    def train(config, overrides):
        kv = dict(o.split("=", 1) for o in overrides)  # later overrides win, as in load_config
        calls.append(kv)
        if kv["name"].startswith("bad"):
            raise RuntimeError("boom\ntraceback detail")
        run_dir = Path(kv["output_dir"]) / kv["name"]
        run_dir.mkdir(parents=True, exist_ok=True)
        if kv.get("trainer.total_steps") == "0":
            (run_dir / "checkpoints" / "step_0" / "model").mkdir(parents=True)
        seed = int(kv["seed"])
        rows = [{"step": 0, "eval/accuracy": 0.3, "eval/num_prompts": 100, "time/wall_s": 1.0},
                {"step": 1, "samples/generated": 256, "time/wall_s": 4.0, "eval/accuracy": 0.5 + 0.1 * seed,
                 "eval/num_prompts": 100}]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (run_dir / "summary.json").write_text(json.dumps({"samples_generated": 256, "wall_time_s": 4.0}))
        from rlcore.config import load_config, save_config

        save_config(load_config(config, overrides), run_dir / "config.yaml")
        return {}

    monkeypatch.setattr(rlcore, "train", train)
    return calls


def test_driver_runs_in_order_shares_start_and_survives_failure(tmp_path, fake_train):
    path = write_spec(tmp_path, seeds=[0, 1], target_accuracy=0.55,
                      runs=[{"name": "bad"}, {"name": "grpo", "overrides": {"algorithm.clip_high": 0.3}}])
    spec = load_spec(path)
    md = run_compare(spec, check=False)
    assert [c["name"] for c in fake_train] == [SHARED, "bad-s0", "bad-s1", "grpo-s0", "grpo-s1"]
    shared = fake_train[0]
    assert shared["trainer.total_steps"] == "0" and "model.path" not in shared
    model = str((spec.runs_dir / SHARED / "checkpoints" / "step_0" / "model").resolve())
    for kv in fake_train[1:]:
        assert kv["model.path"] == model and kv["model.build_tiny"] == "false" and kv["sft.steps"] == "0"
    assert fake_train[3]["algorithm.clip_high"] == "0.3" and fake_train[4]["seed"] == "1"
    text = md.read_text()
    assert table_row(text, "bad")[-1] == "failed (2/2): s0: RuntimeError: boom; s1: RuntimeError: boom"
    assert table_row(text, "grpo")[1].startswith("0.550 ") and table_row(text, "grpo")[6] == "256 (1/2 seeds)"
    assert (spec.out_dir / "report.png").is_file() and (spec.out_dir / "report.json").is_file()

    # --report-only trains nothing; --skip-done skips finished runs whose config matches (and the shared start)
    fake_train.clear()
    assert run_compare(spec, report_only=True) == md and fake_train == []
    run_compare(spec, skip_done=True, check=False)
    assert [c["name"] for c in fake_train] == ["bad-s0", "bad-s1"]
    fake_train.clear()
    run_compare(spec, only=["grpo"], check=False)  # --only reuses the matching shared start
    assert [c["name"] for c in fake_train] == ["grpo-s0", "grpo-s1"]


def test_failed_shared_start_fails_every_run(tmp_path, fake_train, monkeypatch):
    spec = load_spec(write_spec(tmp_path))
    monkeypatch.setattr("rlcore.compare.SHARED", "bad_shared")
    md = run_compare(spec, check=False)
    assert [c["name"] for c in fake_train] == ["bad_shared"]
    assert table_row(md.read_text(), "grpo")[-1] == "failed (1/1): s0: shared start failed: RuntimeError: boom"


def test_config_errors_stop_before_training(tmp_path, fake_train):
    spec = load_spec(write_spec(tmp_path, runs=[{"name": "a"}, {"name": "typo", "overrides": ["rollout.n_sampels=4"]}]))
    with pytest.raises(SpecError, match="run typo-s0: .*rollout.n_sampels"):
        run_compare(spec)
    with pytest.raises(SpecError, match="--only: unknown run nope"):
        run_compare(spec, only=["nope"])
    assert fake_train == []


def test_cli(tmp_path, fake_train, capsys):
    path = write_spec(tmp_path, shared_start=False)
    assert main(["compare", str(path), "--only", "grpo"]) == 0
    assert [c["name"] for c in fake_train] == ["grpo-s0"]
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert out == str(tmp_path / "out" / "cmp" / "report.md")
    assert table_row(Path(out).read_text(), "dapo")[-1] == "missing (1/1): s0: not run"
    (tmp_path / "bad.yaml").write_text("name: x\nbase: base.yaml\nruns: [{name: a}]\nbudget_sample: 3\n")
    assert main(["compare", str(tmp_path / "bad.yaml"), "--report-only"]) == 2
    assert "budget_sample: unknown key" in capsys.readouterr().err


def test_a_run_may_name_its_own_base_config(tmp_path, monkeypatch):
    """tool vs no-tool runs differ in their SFT format, so each brings its own experiment file."""
    (tmp_path / "other.yaml").write_text("name: other\nmodel:\n  path: other/model\n")
    path = write_spec(tmp_path, shared_start=False,
                      runs=[{"name": "plain"}, {"name": "own", "base": "other.yaml"}])
    spec = load_spec(path)
    assert spec.runs[1].base == str(tmp_path / "other.yaml") and spec.runs[0].base is None
    bases = []

    def train(config, overrides):
        bases.append(Path(config).name)
        raise RuntimeError("stop")

    monkeypatch.setattr("rlcore.train", train)
    run_compare(spec)  # check_configs loads each run with its own base
    assert bases == ["base.yaml", "other.yaml"]
    with pytest.raises(SpecError, match="missing.yaml not found"):
        load_spec(write_spec(tmp_path, runs=[{"name": "x", "base": "missing.yaml"}]))
