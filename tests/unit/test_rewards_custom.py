"""Custom rewards: the three ways to name one, async and batched rewards, composition from the
config (values computed by hand), the README example run for real, and what the trainer passes."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from rewards import ComposedReward, RewardError, RewardInput, RewardPool, get_reward, reward_from_config
from rewards import registry
from rewards.compose import Component, LengthPenalty, Overlong, format_boxed, format_regex
from rewards.registry import call_batched, call_reward
from rewards.serialization import make_payload
from rlcore.config import ConfigError, RewardConfig, config_from_dict, load_config, save_config

REPO_ROOT = Path(__file__).resolve().parents[2]


def cfg_with(reward: dict, **rest):
    return config_from_dict({"model": {"path": "m"}, "reward": reward, **rest})


def item(completion="c", gt="1", n=None, limit=None, **metadata) -> RewardInput:
    return RewardInput("p", completion, gt, metadata, num_tokens=n, max_tokens=limit)


@pytest.fixture
def clean_registry(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_ENTRY_POINTS", {})


# ----------------------------------------------------------------------------- reward functions


def one(prompt, completion, ground_truth, metadata):
    return 1.0


def seen_tokens(prompt, completion, ground_truth, metadata):
    return {"score": 0.0, "n": metadata.get("num_tokens"), "limit": metadata.get("max_tokens"), "pid": os.getpid()}


async def async_len(prompt, completion, ground_truth, metadata):
    await asyncio.sleep(0.001)
    return {"score": float(len(completion)), "correct": completion == ground_truth}


def chunk_sizes(prompts, completions, ground_truths, metadatas):
    """Batched: reports how many items each call got."""
    return [{"score": float(c), "chunk": len(completions), "pid": os.getpid()} for c in completions]


chunk_sizes.batched = True


async def async_batched(prompts, completions, ground_truths, metadatas):
    await asyncio.sleep(0.001)
    return [float(c == g) for c, g in zip(completions, ground_truths)]


async_batched.batched = True


def raises(prompt, completion, ground_truth, metadata):
    raise ValueError("boom")


# ----------------------------------------------------------------------------- the three ways


def test_registered_name_via_imports(tmp_path, monkeypatch, clean_registry):
    (tmp_path / "custom_reg_mod.py").write_text(textwrap.dedent("""
        from rewards import register_reward

        @register_reward("tmp_custom_reg")
        def fn(prompt, completion, ground_truth, metadata):
            return {"score": 0.5, "correct": completion == ground_truth}

        @register_reward("tmp_custom_batched", batched=True)
        def many(prompts, completions, ground_truths, metadatas):
            return [1.0 for _ in completions]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RewardError, match="unknown reward 'tmp_custom_reg'"):
        reward_from_config(cfg_with({"fn": "tmp_custom_reg"}).reward)
    cfg = cfg_with({"fn": "tmp_custom_reg", "imports": ["custom_reg_mod"]})
    spec = reward_from_config(cfg.reward)
    assert spec == "tmp_custom_reg"
    assert call_reward(get_reward(spec), item("1")).correct is True
    assert registry.is_batched(get_reward("tmp_custom_batched")) and not registry.is_batched(get_reward(spec))
    sys.modules.pop("custom_reg_mod", None)


def test_module_and_file_specs(tmp_path, monkeypatch):
    (tmp_path / "custom_spec_mod.py").write_text("def fn(prompt, completion, ground_truth, metadata):\n    return 2.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert call_reward(get_reward("custom_spec_mod:fn"), item()).score == 2.0
    assert call_reward(get_reward(f"{tmp_path / 'custom_spec_mod.py'}:fn"), item()).score == 2.0
    assert reward_from_config(cfg_with({"fn": "custom_spec_mod:fn"}).reward) == "custom_spec_mod:fn"
    sys.modules.pop("custom_spec_mod", None)


def _install_plugin(root: Path, name: str = "tmp_plugin_reward", target: str = "tmp_plugin_mod:score") -> None:
    """A fake installed distribution: what `pip install` of a package with the entry point leaves."""
    (root / "tmp_plugin_mod.py").write_text(
        "def score(prompt, completion, ground_truth, metadata):\n"
        "    return {'score': 3.0, 'correct': True, 'from': 'plugin'}\n"
    )
    dist = root / "tmp_rlcore_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tmp-rlcore-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[rlcore.rewards]\n{name} = {target}\n")


def test_entry_point_plugin(tmp_path, monkeypatch, clean_registry):
    with pytest.raises(RewardError, match="unknown reward 'tmp_plugin_reward'"):
        get_reward("tmp_plugin_reward")
    _install_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = get_reward("tmp_plugin_reward")
    assert fn.__module__ == "tmp_plugin_mod" and get_reward("tmp_plugin_reward") is fn
    assert "tmp_plugin_reward" in registry.entry_point_rewards()
    assert make_payload("tmp_plugin_reward") == ("spec", "tmp_plugin_reward")  # the worker looks it up too
    # Through the pool: the spawned worker finds the plug-in on its own (it inherits sys.path).
    with RewardPool("tmp_plugin_reward", num_workers=1) as pool:
        (res,) = pool.score([item()])
    assert (res.score, res.correct, res.info) == (3.0, True, {"from": "plugin"})
    sys.modules.pop("tmp_plugin_mod", None)


def test_broken_entry_point_is_a_clear_error(tmp_path, monkeypatch, clean_registry):
    _install_plugin(tmp_path, name="tmp_broken_plugin", target="tmp_plugin_mod:missing")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RewardError, match="cannot load entry point tmp_broken_plugin"):
        get_reward("tmp_broken_plugin")
    sys.modules.pop("tmp_plugin_mod", None)


# ----------------------------------------------------------------------------- async and batched


def test_async_and_batched_in_process():
    assert call_reward(async_len, item("abc", "abc")).score == 3.0
    assert [r.score for r in call_batched(async_batched, [item("1", "1"), item("2", "1")])] == [1.0, 0.0]
    # A batched call that raises is retried item by item, so only the culprit fails.
    def picky(prompts, completions, ground_truths, metadatas):
        if "bad" in completions:
            raise ValueError("bad item")
        return [1.0] * len(completions)

    fallbacks = []
    results = call_batched(picky, [item("a"), item("bad"), item("c")], -1.0, on_fallback=lambda: fallbacks.append(1))
    assert [r.score for r in results] == [1.0, -1.0, 1.0] and fallbacks == [1]
    assert results[1].reason == "exception: ValueError: bad item"
    assert [r.score for r in call_batched(lambda *cols: [1.0], [item(), item()])] == [1.0, 1.0]  # wrong length: singly
    (junk,) = call_batched(lambda *cols: {"score": 1.0}, [item()])
    assert junk.failed and junk.reason.startswith("bad return type: batched reward returned dict")


def test_async_and_batched_through_the_pool():
    with RewardPool(async_len, num_workers=1, timeout_s=5.0) as pool:
        results = pool.score([item("ab", "ab"), item("abc", "x")])
    assert [(r.score, r.correct) for r in results] == [(2.0, True), (3.0, False)]
    with RewardPool(chunk_sizes, num_workers=1, batch_size=4) as pool:
        results = pool.score([item(str(i)) for i in range(10)])
        metrics = pool.pop_metrics()
    assert [r.score for r in results] == [float(i) for i in range(10)]
    assert [r.info["chunk"] for r in results] == [4] * 8 + [2] * 2  # chunks of batch_size, one call each
    assert metrics["reward/round_trips"] == 3 and metrics["reward/num_scored"] == 10
    assert metrics["reward/throughput_per_s"] > 0


# ----------------------------------------------------------------------------- composition by hand


def composed(*components, overlong=None, penalty=None) -> ComposedReward:
    return ComposedReward([Component(*c) if isinstance(c, tuple) else c for c in components], overlong, penalty)


def test_weighted_sum_correct_and_info():
    reward = composed(("math_answer", 1.0), ("format_boxed", 0.2), Component("format_regex", -0.5, "think", {"pattern": "<think>"}))
    res = call_reward(reward, item(r"<think>x</think> \boxed{4}", "4"))
    assert res.score == pytest.approx(1.0 + 0.2 - 0.5) and res.correct is True
    assert res.info == {"extracted": "4", "score/math_answer": 1.0, "score/format_boxed": 1.0, "score/think": 1.0}
    res = call_reward(reward, item(r"\boxed{5", "4"))  # unbalanced box: no answer, no format credit
    assert res.score == 0.0 and res.correct is False
    # A primary that returns only a score: correct is its score > 0.5.
    assert call_reward(composed((one, 0.1), ("format_boxed", 1.0)), item("x")).correct is True
    assert composed(("format_boxed", 1.0), ("format_boxed", 1.0)).names == ["format_boxed", "format_boxed_2"]


def test_format_rewards():
    assert format_boxed("", r"so \boxed{\frac{1}{2}}.", "", {}) == 1.0
    assert format_boxed("", r"\boxed{\frac{1}{2}", "", {}) == 0.0
    assert format_boxed("", "42", "", {}) == 0.0
    assert format_regex("", "<think>a\nb</think>42", "", {}, pattern=r"<think>.*</think>\d+", fullmatch=True) == 1.0
    assert format_regex("", "42", "", {}, pattern=r"<think>") == 0.0


@pytest.mark.parametrize("n, expected", [(0, 0.0), (48, 0.0), (52, -0.25), (56, -0.5), (64, -1.0), (65, -1.0), (500, -1.0)])
def test_overlong_regimes(n, expected):
    # L_max = 64, L_cache = 16: free up to 48 tokens, linear to -1 at 64, -1 beyond.
    assert Overlong(cache_tokens=16, max_tokens=64)(n, None) == pytest.approx(expected)
    assert Overlong(cache_tokens=16)(n, 64) == pytest.approx(expected)  # L_max from the generation limit
    reward = composed((one, 1.0), overlong=Overlong(cache_tokens=16, weight=2.0))
    res = call_reward(reward, item(n=n, limit=64))
    assert res.score == pytest.approx(1.0 + 2.0 * expected) and res.info["overlong"] == pytest.approx(expected)


def test_length_penalty_and_both_shapings():
    assert LengthPenalty(0.01, 10)(5) == 0.0 and LengthPenalty(0.01, 10)(30) == pytest.approx(-0.2)
    reward = composed((one, 0.5), overlong=Overlong(cache_tokens=10, max_tokens=40), penalty=LengthPenalty(0.01, 20))
    res = call_reward(reward, item(n=35))
    assert res.score == pytest.approx(0.5 + (30 - 35) / 10 - 0.01 * 15)
    assert res.info == {"score/one": 1.0, "overlong": -0.5, "length_penalty": pytest.approx(-0.15)}
    missing = call_reward(reward, item(n=None))
    assert missing.failed and "num_tokens" in missing.reason


def test_component_failures_cost_only_that_item():
    reward = composed((one, 1.0), (raises, 1.0))
    res = call_reward(reward, item(), failure_score=-2.0)
    assert res.failed and res.score == -2.0 and res.reason == "exception: ValueError: boom (component raises)"
    bad = composed((one, 1.0), (lambda *a: "junk", 1.0))
    assert call_reward(bad, item()).reason.startswith("bad return type: score is str")


def test_composition_kinds_async_and_batched():
    sync = composed((one, 1.0))
    assert not sync.batched and sync("p", "c", "g", {}).score == 1.0
    mixed = composed((async_len, 1.0), (chunk_sizes, 0.5), (one, 1.0))
    assert mixed.batched
    results = call_batched(mixed, [item("12", "12"), item("3", "x")])
    assert [r.score for r in results] == [2.0 + 6.0 + 1.0, 1.0 + 1.5 + 1.0]
    assert [r.correct for r in results] == [True, False]
    single_async = composed((async_len, 1.0), (one, 1.0))
    assert asyncio.iscoroutine(coro := single_async("p", "ab", "ab", {}))
    assert asyncio.run(coro).score == 3.0


def test_composition_validates_in_the_driver():
    with pytest.raises(RewardError, match="unknown reward 'nope'"):
        composed(("nope", 1.0))
    with pytest.raises(RewardError, match="args .* do not fit format_regex"):
        composed(Component("format_regex", 1.0, args={}))  # pattern missing
    with pytest.raises(RewardError, match="weight must be a finite number"):
        composed(("format_boxed", float("nan")))
    with pytest.raises(RewardError, match="at least one component"):
        ComposedReward([])


def test_composition_pickles_small_and_runs_in_pool():
    reward = composed((seen_tokens, 1.0), ("format_boxed", 0.5), overlong=Overlong(cache_tokens=4))
    kind, data = make_payload(reward)
    assert kind == "pickle" and len(data) < 20000  # a spec, not a process snapshot
    with RewardPool(reward, num_workers=1, batch_size=8) as pool:
        results = pool.score([item(r"\boxed{1}", n=13, limit=12), item("x", n=10, limit=12)])
    assert [r.score for r in results] == [0.5 - 1.0, (8 - 10) / 4]
    assert (results[0].info["n"], results[0].info["limit"]) == (13, 12)


# ----------------------------------------------------------------------------- config


def test_config_sections_and_defaults(tmp_path):
    rc = RewardConfig()
    assert (rc.fn, rc.components, rc.overlong, rc.length_penalty, rc.batch_size) == ("math_answer", [], None, None, 16)
    cfg = cfg_with({
        "components": [{"fn": "math_answer"}, {"fn": "format_regex", "weight": 0.1, "args": {"pattern": "x"}}],
        "overlong": {"cache_tokens": 8}, "length_penalty": {"coef": 0.01, "target_tokens": 4},
    }, rollout={"max_new_tokens": 32})
    assert cfg.reward.components[1].args == {"pattern": "x"} and cfg.reward.components[0].weight == 1.0
    assert cfg.reward.overlong.max_tokens == 0 and cfg.reward.overlong.weight == 1.0
    save_config(cfg, tmp_path / "config.yaml")  # what a run directory keeps, and --resume reads
    assert load_config(tmp_path / "config.yaml").reward == cfg.reward
    assert load_config(None, ["model.path=m"]).reward == RewardConfig()
    reward = reward_from_config(cfg.reward)
    assert isinstance(reward, ComposedReward) and reward.names == ["math_answer", "format_regex"]
    assert reward.overlong == Overlong(cache_tokens=8) and reward.length_penalty == LengthPenalty(0.01, 4)
    # fn alone plus shaping: a one-component composition.
    only = reward_from_config(cfg_with({"fn": "format_boxed", "overlong": {"cache_tokens": 8}}).reward)
    assert only.names == ["format_boxed"] and only.weights == [1.0]
    with pytest.raises(RewardError, match="cannot be combined with reward.components"):
        reward_from_config(cfg.reward, override=one)
    assert reward_from_config(cfg_with({}).reward, override=one) is one


@pytest.mark.parametrize("reward, message", [
    ({"components": [{"fn": "math_answer", "wieght": 1}]}, re.escape("unknown key 'reward.components[0].wieght'")),
    ({"overlong": {"cache_tokens": 8, "max_len": 3}}, "unknown key 'reward.overlong.max_len'"),
    ({"fn": "format_boxed", "components": [{"fn": "math_answer"}]}, "reward.fn: set either"),
    ({"components": [{"weight": 1.0}]}, r"reward.components\[0\].fn: required"),
    ({"overlong": {"cache_tokens": 0}}, "reward.overlong.cache_tokens: need 0 < cache_tokens"),
    ({"overlong": {"cache_tokens": 64}}, r"cache_tokens <= max_tokens \(32\)"),  # rollout.max_new_tokens
    ({"length_penalty": {"coef": -1.0}}, "reward.length_penalty: coef"),
    ({"batch_size": 0}, "reward.batch_size: must be >= 1"),
])
def test_config_errors(reward, message):
    with pytest.raises(ConfigError, match=message):
        cfg_with(reward, rollout={"max_new_tokens": 32})


# ----------------------------------------------------------------------------- README example


def _readme_blocks() -> tuple[str, str]:
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("\n## Custom rewards\n", 1)[1].split("\n## ", 1)[0]
    python = re.findall(r"```python\n(.*?)```", section, re.S)
    yaml_blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(python) == 1 and len(yaml_blocks) == 1, "the README's custom-reward example changed shape"
    return python[0], yaml_blocks[0]


def test_readme_custom_reward_example_runs(tmp_path, monkeypatch, clean_registry):
    code, config_text = _readme_blocks()
    filename = code.splitlines()[0].lstrip("# ").strip()
    assert filename.endswith(".py")
    (tmp_path / filename).write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    exp = tmp_path / "exp.yaml"
    exp.write_text("model:\n  path: m\nrollout:\n  max_new_tokens: 64\n" + config_text)
    cfg = load_config(exp)  # the typed loader: the README's keys all exist
    reward = reward_from_config(cfg.reward)
    rc = cfg.reward
    with RewardPool(reward, num_workers=rc.num_workers, timeout_s=rc.timeout_s, failure_score=rc.failure_score,
                    batch_size=rc.batch_size) as pool:
        results = pool.score([
            RewardInput("2+40?", "so the answer is 42", "42", num_tokens=40, max_tokens=64),
            RewardInput("2+40?", "a\nb\nc\nd\ne\nf\nthe answer is 41", "42", num_tokens=56, max_tokens=64),
            RewardInput("2+40?", "42", "42", num_tokens=70, max_tokens=64),
        ])
        metrics = pool.pop_metrics()
    # last_number + 0.1 few_lines + 0.1 "answer is" + overlong + length penalty, by hand:
    assert results[0].score == pytest.approx(1.0 + 0.1 + 0.1 + 0.0 - 0.001 * 8)
    assert results[1].score == pytest.approx(0.0 + 0.0 + 0.1 + (48 - 56) / 16 - 0.001 * 24)
    assert results[2].score == pytest.approx(1.0 + 0.1 + 0.0 - 1.0 - 0.001 * 38)
    assert [r.correct for r in results] == [True, False, True]
    assert results[0].info == {"extracted": "42", "score/last_number": 1.0, "score/few_lines": 1.0,
                               "score/format_regex": 1.0, "overlong": 0.0, "length_penalty": pytest.approx(-0.008)}
    assert metrics["reward/num_failed"] == 0 and metrics["reward/num_scored"] == 3
    sys.modules.pop(filename[:-3], None)


# ----------------------------------------------------------------------------- trainer


def test_trainer_passes_token_counts():
    from rlcore.trainer import Trainer

    scored = []
    trainer = Trainer.__new__(Trainer)
    trainer.cfg = SimpleNamespace(rollout=SimpleNamespace(max_new_tokens=64))
    trainer.tokenizer = SimpleNamespace(decode=lambda ids, skip_special_tokens: " ".join(map(str, ids)))
    trainer.pool = SimpleNamespace(score=lambda items: scored.extend(items) or items)
    completions = [SimpleNamespace(token_ids=[1, 2, 3]), SimpleNamespace(token_ids=[7])]
    records = [{"prompt": "p", "answer": 6, "metadata": {"k": 1}}, {"prompt": "q", "answer": "7"}]
    trainer._score(records, completions)
    assert [(x.completion, x.num_tokens, x.max_tokens, x.ground_truth) for x in scored] == [
        ("1 2 3", 3, 64, "6"), ("7", 1, 64, "7")]
    assert scored[0].reward_metadata() == {"k": 1, "num_tokens": 3, "max_tokens": 64}
    assert scored[0].metadata == {"k": 1}  # the record's metadata is not modified
