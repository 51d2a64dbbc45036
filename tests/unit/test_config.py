"""Config errors must name the key and the file (and line) before any worker starts."""
import subprocess
import sys
from pathlib import Path

import re

import pytest

from rlcore.config import ConfigError, load_config

GOOD = """\
name: t
model:
  path: some/model
rollout:
  n_samples: 4
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_good_config_and_overrides(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), ["rollout.temperature=0.7", "learner.lr=3e-4", "data.fields={prompt: q}"])
    assert cfg.rollout.n_samples == 4
    assert cfg.rollout.temperature == 0.7
    assert cfg.learner.lr == pytest.approx(3e-4)
    assert cfg.data.fields == {"prompt": "q"}
    assert cfg.run_dir == Path("runs/t")


def test_unknown_key_names_key_file_and_line(tmp_path):
    path = write(tmp_path, GOOD + "  n_sampels: 8\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "rollout.n_sampels" in msg and f"{path}:6" in msg and "n_samples" in msg


def test_wrong_type_names_key_and_line(tmp_path):
    path = write(tmp_path, GOOD.replace("n_samples: 4", "n_samples: four"))
    with pytest.raises(ConfigError, match=r"exp.yaml:5: rollout.n_samples: expected an integer"):
        load_config(path)


def test_bool_is_not_an_int_and_literal_choices(tmp_path):
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(write(tmp_path, GOOD), ["rollout.n_samples=true"])
    with pytest.raises(ConfigError, match="rollout.engine: expected one of 'vllm', 'hf'"):
        load_config(write(tmp_path, GOOD), ["rollout.engine=sglang"])


def test_missing_required_model_path(tmp_path):
    with pytest.raises(ConfigError, match="model.path: required"):
        load_config(write(tmp_path, "name: t\n"))


def test_override_errors_say_override(tmp_path):
    with pytest.raises(ConfigError, match="command-line override learner.lrr"):
        load_config(write(tmp_path, GOOD), ["learner.lrr=1"])
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_config(write(tmp_path, GOOD), ["learner.lr"])


def test_cross_field_validation(tmp_path):
    with pytest.raises(ConfigError, match="does not split evenly"):
        load_config(write(tmp_path, GOOD), ["learner.num_ranks=3"])
    with pytest.raises(ConfigError, match="algorithm.name"):
        load_config(write(tmp_path, GOOD), ["algorithm.name=nope"])
    with pytest.raises(ConfigError, match="resume"):
        load_config(write(tmp_path, GOOD), ["resume=yesterday"])


def test_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(write(tmp_path, "model: [unclosed\n"))


def test_shipped_experiments_load():
    from rlcore.compare import check_configs, load_spec

    for path in sorted(Path("experiments").glob("*.yaml")):
        if path.name.startswith("compare_"):  # comparison specs: every run's config must load
            spec = load_spec(path)
            check_configs(spec, spec.runs)
        else:
            load_config(path)


def test_cli_reports_config_error_and_exits_2(tmp_path):
    path = write(tmp_path, GOOD + "  bogus: 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "rlcore.cli", "train", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert f"{path}:6" in proc.stderr and "rollout.bogus" in proc.stderr


@pytest.mark.parametrize("overrides, key", [
    (["allocation.name=gvmm"], "allocation.name: unknown allocator 'gvmm'"),
    (["allocation.name=gvm", "allocation.options.min_samples=2"], "allocation.options.min_samples: must be >= presample_n"),
    (["allocation.name=gvm", "allocation.options.max_samples=3"], "allocation.options.min_samples: need 0 <= min_samples"),
    (["allocation.name=difficulty", "rollout.n_samples=64"], "allocation.options.max_samples: the per-prompt budget"),
    (["allocation.name=dapo_filter", "allocation.options.min_samples=2"], "unknown key 'allocation.options.min_samples'"),
    (["allocation.every=0"], "allocation.every: must be >= 1"),
    (["allocation.name=dapo_filter", "allocation.every=4"], "allocation.every: allocator 'dapo_filter' refills"),
    (["allocation.name=gvm", "allocation.every=4"], "allocation.options.reuse_presamples: must be false"),
    (["allocation.name=nope"], "allocation.name: unknown allocator 'nope'"),
    (["algorithm.name=nft", "algorithm.options.weight_mode=3"], "algorithm.options.weight_mode: expected one of 0, 1, 2"),
    (["algorithm.kl_mode=penalty"], "algorithm.kl_mode: expected one of 'loss', 'reward'"),
    (["critic.lr=0"], "critic.lr: must be > 0"),
    (["trainer.max_samples=-1"], "trainer.max_samples: must be >= 0"),
])
def test_algorithm_allocation_and_critic_sections_are_validated(tmp_path, overrides, key):
    with pytest.raises(ConfigError, match=key.replace("(", r"\(")):
        load_config(write(tmp_path, GOOD), overrides)


@pytest.mark.parametrize(
    "overrides, expected",
    [([], 0.05), (["model.dtype=bfloat16"], 1.0), (["model.dtype=float16"], 1.0),
     (["model.dtype=bfloat16", "trainer.logprob_mismatch_threshold=0.3"], 0.3)],
)
def test_logprob_mismatch_threshold_follows_the_model_dtype(tmp_path, overrides, expected):
    # bf16 rounding alone moves log-probs by ~0.1 (measured on an H100), so the fp32 default
    # would stop every 16-bit run at its first weight sync.
    from rlcore.engine_sync import logprob_mismatch_threshold

    cfg = load_config(write(tmp_path, GOOD), overrides)
    assert logprob_mismatch_threshold(cfg) == expected


def test_policy_lr_cosine_decays_to_the_floor_at_the_last_step(tmp_path):
    from rlcore.trainer import policy_lr

    cfg = load_config(write(tmp_path, GOOD), ["trainer.total_steps=12", "learner.lr=1e-4", "learner.warmup_steps=2",
                                              "learner.lr_schedule=cosine", "learner.min_lr_ratio=0.1"])
    lrs = [policy_lr(s, cfg) for s in range(1, 13)]
    assert lrs[0] == pytest.approx(5e-5)  # warm-up
    assert lrs[1] == pytest.approx(1e-4)  # the peak right after it
    assert lrs[6] == pytest.approx(1e-4 * (0.1 + 0.9 * 0.5))  # halfway through the decay
    assert lrs[-1] == pytest.approx(1e-5)  # the floor at trainer.total_steps
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))
    with pytest.raises(ConfigError, match="learner.min_lr_ratio"):
        load_config(write(tmp_path, GOOD), ["learner.min_lr_ratio=1.5"])


def test_policy_lr_warms_up_linearly_then_stays_flat(tmp_path):
    from rlcore.trainer import policy_lr

    cfg = load_config(write(tmp_path, GOOD), ["learner.lr=1e-4", "learner.warmup_steps=4"])
    assert [policy_lr(s, cfg) for s in (1, 2, 4, 5, 100)] == pytest.approx([2.5e-5, 5e-5, 1e-4, 1e-4, 1e-4])
    flat = load_config(write(tmp_path, GOOD), ["learner.lr=1e-4"])
    assert policy_lr(1, flat) == 1e-4


def test_negative_policy_warmup_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="learner.warmup_steps"):
        load_config(write(tmp_path, GOOD), ["learner.warmup_steps=-1"])


def test_asynchronous_rollout_settings_checked_at_load(tmp_path):
    path = write(tmp_path, GOOD)
    assert load_config(path, ["rollout.max_staleness=1"]).rollout.max_staleness == 1
    with pytest.raises(ConfigError, match="rollout.max_staleness: must be >= 0"):
        load_config(path, ["rollout.max_staleness=-1"])
    with pytest.raises(ConfigError, match="rollout.tis_cap: must be > 0"):
        load_config(path, ["rollout.max_staleness=1", "rollout.tis_cap=0"])
    with pytest.raises(ConfigError, match="rollout.max_staleness: allocation.name 'gvm' computes gradient norms"):
        load_config(path, ["rollout.max_staleness=1", "allocation.name=gvm"])
    with pytest.raises(ConfigError, match="rollout.max_staleness: algorithm 'nft'"):
        load_config(path, ["rollout.max_staleness=1", "algorithm.name=nft"])
    assert load_config(path, ["algorithm.name=nft"]).algorithm.name == "nft"  # synchronous NFT is fine


@pytest.mark.parametrize("key, value, message", [
    ("algorithm.dual_clip_c", "1.0", "must be > 1"),
    ("algorithm.dual_clip_c", "0.5", "must be > 1"),
    ("algorithm.kl_coef", "-0.1", "must be >= 0"),
    ("algorithm.kl_coef", ".nan", "must be >= 0"),
    ("algorithm.clip_low", "1.0", r"must be in \[0, 1\)"),
    ("algorithm.clip_low", "-0.1", r"must be in \[0, 1\)"),
    ("algorithm.clip_high", "-0.2", "must be >= 0"),
    ("critic.value_clip", "-0.5", "must be >= 0"),
    ("algorithm.options.eps_neg", "1.0", r"must be in \(0, 1\)"),
    ("algorithm.options.eps_neg", "0", r"must be in \(0, 1\)"),
    ("algorithm.options.log_ratio_clamp", "0", "must be > 0"),
    ("algorithm.options.log_ratio_clamp", "-3", "must be > 0"),
    ("algorithm.options.r_clamp", "0.5", r"must be in \(0, 0.5\)"),
    ("algorithm.options.weight_mode", "3", "expected one of 0, 1, 2"),
    ("algorithm.options.no_such_option", "3", "unknown key 'algorithm.options.no_such_option'"),
])
def test_loss_settings_fail_at_load_with_key_file_and_line(tmp_path, key, value, message):
    # The losses check these again in the workers, but only after SFT and the first generation.
    section, *rest = key.split(".")
    nested = "".join(f"\n{'  ' * (i + 1)}{part}:" for i, part in enumerate(rest))
    text = GOOD + ("algorithm:\n  name: nft\n" if section == "algorithm" else f"algorithm:\n  name: nft\n{section}:")
    if section == "algorithm" and rest[0] == "options":
        text += "  options:" + "".join(f"\n{'  ' * (i + 2)}{p}:" for i, p in enumerate(rest[1:])) + f" {value}\n"
        line = 9
    elif section == "algorithm":
        text += f"  {rest[0]}: {value}\n"
        line = 8
    else:
        text += nested + f" {value}\n"
        line = 9
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"exp\.yaml:{line}: .*{message}") as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}:{line}: ")
    with pytest.raises(ConfigError, match=rf"command-line override {re.escape(key)}: .*{message}"):
        load_config(write(tmp_path, GOOD), ["algorithm.name=nft", f"{key}={value}"])


def test_loss_settings_at_their_limits_load(tmp_path):
    limits = ["algorithm.dual_clip_c=1.01", "algorithm.clip_low=0", "algorithm.clip_high=0", "algorithm.kl_coef=0",
              "critic.value_clip=null", "algorithm.options.eps_neg=0.999", "algorithm.options.log_ratio_clamp=0.01"]
    cfg = load_config(write(tmp_path, GOOD), ["algorithm.name=nft", *limits])
    assert cfg.algorithm.dual_clip_c == 1.01 and cfg.critic.value_clip is None
    assert cfg.algorithm.options.eps_neg == 0.999 and cfg.algorithm.options.log_ratio_clamp == 0.01


def test_cross_field_errors_name_the_line(tmp_path):
    path = write(tmp_path, GOOD.replace("n_samples: 4", "n_samples: 0"))
    with pytest.raises(ConfigError, match=r"exp\.yaml:5: rollout\.n_samples: must be > 0"):
        load_config(path)


@pytest.mark.parametrize("key,value", [("trainer.max_actor_restarts", -1), ("trainer.checkpoint_every_minutes", -5)])
def test_negative_fault_and_checkpoint_budgets_are_refused(tmp_path, key, value):
    path = tmp_path / "exp.yaml"
    path.write_text("model:\n  path: x\n")
    with pytest.raises(ConfigError, match=rf"{key}: must be >= 0"):
        load_config(path, [f"{key}={value}"])
