"""Cross-field checks of a run config: what the types in rlcore/config.py cannot express.

Every failure names the key and, when the config came from a file, its file and line (or the
command-line override), so a bad config fails before any worker starts.
"""
from __future__ import annotations

from rlcore.config import ConfigError, ExperimentConfig, RewardConfig, _where


def check(cfg: ExperimentConfig, source: str, lines: dict[str, int] | None = None) -> None:
    """Cross-field checks that types alone cannot express. `lines` maps key paths to their line
    in `source` (or -1 for a command-line override), so an error points where the key was set."""

    def fail(key: str, msg: str) -> None:
        raise ConfigError(f"{_where(source, lines or {}, key)}: {key}: {msg}")

    if not cfg.model.path:
        fail("model.path", "required (a Hugging Face model directory, or set model.build_tiny)")
    if cfg.model.source and cfg.model.build_tiny:
        fail("model.source", "set either model.source (convert a model into model.path) or model.build_tiny, not both")
    if cfg.data.task == "file" and not cfg.data.train_path:
        fail("data.train_path", "required when data.task is 'file'")
    positive = {
        "rollout.num_workers": cfg.rollout.num_workers,
        "rollout.prompts_per_step": cfg.rollout.prompts_per_step,
        "rollout.n_samples": cfg.rollout.n_samples,
        "rollout.max_new_tokens": cfg.rollout.max_new_tokens,
        "learner.num_ranks": cfg.learner.num_ranks,
        "learner.micro_batch_size": cfg.learner.micro_batch_size,
        "learner.mini_batches": cfg.learner.mini_batches,
        "learner.epochs": cfg.learner.epochs,
        "reward.num_workers": cfg.reward.num_workers,
        "eval.num_prompts": cfg.eval.num_prompts,
    }
    for key, value in positive.items():
        if value <= 0:
            fail(key, f"must be > 0, got {value}")
    for key in ("trainer.total_steps", "sft.steps", "trainer.checkpoint_every", "eval.every", "learner.warmup_steps"):
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) < 0:
            fail(key, "must be >= 0")
    if cfg.trainer.keep_last < 1:
        fail("trainer.keep_last", "must be >= 1")
    if cfg.rollout.temperature < 0:
        fail("rollout.temperature", "must be >= 0")
    if not 0.0 <= cfg.data.arith_teacher_slip_rate < 1.0:
        fail("data.arith_teacher_slip_rate", f"must be in [0, 1), got {cfg.data.arith_teacher_slip_rate}")
    if cfg.data.arith_operand_ranges and cfg.data.arith_eval_split == "disjoint":
        fail("data.arith_operand_ranges", "needs data.arith_eval_split: iid or unseen (the disjoint split "
             "enumerates the problems of one operand bound)")
    if any(r < 0 for r in cfg.data.arith_operand_ranges):
        fail("data.arith_operand_ranges", "bounds must be >= 0")
    if "{problem}" not in cfg.data.arith_prompt_template:
        fail("data.arith_prompt_template", "must contain '{problem}' (where the expression goes)")
    if cfg.eval.sampled_k < 0:
        fail("eval.sampled_k", "must be >= 0")
    if cfg.learner.lr <= 0:
        fail("learner.lr", "must be > 0")
    if not 0.0 <= cfg.learner.min_lr_ratio <= 1.0:
        fail("learner.min_lr_ratio", f"must be in [0, 1], got {cfg.learner.min_lr_ratio}")
    if len(cfg.learner.betas) != 2:
        fail("learner.betas", "must be a list of two floats")
    batch = cfg.rollout.prompts_per_step * cfg.rollout.n_samples
    if batch % (cfg.learner.num_ranks * cfg.learner.mini_batches) != 0:
        fail(
            "learner.mini_batches",
            f"batch of {batch} samples does not split evenly into {cfg.learner.num_ranks} ranks x "
            f"{cfg.learner.mini_batches} mini-batches",
        )
    if cfg.resume and cfg.resume != "latest" and not cfg.resume.startswith("step_"):
        fail("resume", f"expected '', 'latest' or 'step_N', got {cfg.resume!r}")
    _resolve_plugins(cfg, source, lines or {}, fail)
    _validate_rl_sections(cfg, fail)
    _validate_reward(cfg, fail)


def _validate_rl_sections(cfg: ExperimentConfig, fail) -> None:
    algo = cfg.algorithm
    if cfg.trainer.max_samples < 0:
        fail("trainer.max_samples", "must be >= 0")
    if cfg.trainer.max_actor_restarts < 0:
        fail("trainer.max_actor_restarts", "must be >= 0")
    if not cfg.trainer.checkpoint_every_minutes >= 0:
        fail("trainer.checkpoint_every_minutes", "must be >= 0 (0 = no time-based saves)")
    _validate_loss_settings(algo, fail)
    if cfg.critic.value_clip is not None and not cfg.critic.value_clip >= 0.0:
        fail("critic.value_clip", f"must be >= 0 (or null: no value clipping), got {cfg.critic.value_clip}")
    if cfg.critic.num_ranks < 1 or cfg.critic.micro_batch_size < 1:
        fail("critic.num_ranks", "critic.num_ranks and critic.micro_batch_size must be >= 1")
    if cfg.critic.lr <= 0:
        fail("critic.lr", "must be > 0")
    _validate_async(cfg, fail)
    if cfg.tools.enabled:
        if cfg.tools.max_tool_calls < 0 or cfg.tools.timeout_s <= 0:
            fail("tools.max_tool_calls", "need max_tool_calls >= 0 and timeout_s > 0")
        if "{output}" not in cfg.tools.output_template:
            fail("tools.output_template", "must contain '{output}'")


def _resolve_plugins(cfg: ExperimentConfig, source: str, lines: dict[str, int], fail) -> None:
    """The algorithm and the allocator, each a name or an import path, with typed options."""
    from algorithms import get_algorithm
    from algorithms.allocators import get_allocator
    from rlcore.plugins import OptionError

    _resolve_plugin("algorithm", cfg.algorithm, get_algorithm, lambda found: found.options, source, lines, fail)
    allocator = _resolve_plugin("allocation", cfg.allocation, get_allocator, lambda found: found.Options,
                                source, lines, fail)
    try:
        allocator.check_budget(cfg.allocation.options, cfg.rollout.n_samples)
    except OptionError as e:
        fail(f"allocation.options.{e.key}", e.message)
    if cfg.allocation.every != 1:
        from rlcore.sampling import chunk_plan_conflict

        conflict = chunk_plan_conflict(allocator(cfg.allocation.options, cfg.rollout.n_samples), cfg.allocation.every,
                                       cfg.allocation.name)
        if conflict:
            fail(*conflict)


def _resolve_plugin(section: str, settings, find, options_of, source: str, lines: dict[str, int], fail):
    """`find` the plug-in `settings.name` names (a relative file path anchored at the config
    file) and make `settings.options` its typed options; returns the plug-in."""
    from rlcore.plugins import PluginError

    settings.name = _anchor_plugin_path(settings.name, source, lines.get(f"{section}.name", 0))
    try:
        found = find(settings.name)
    except (KeyError, PluginError) as e:
        fail(f"{section}.name", str(e).strip("'\""))
    settings.options = _typed_options(section, options_of(found), settings.options, source, lines, fail)
    return found


def _typed_options(section: str, options_cls: type, raw, source: str, lines: dict[str, int], fail):
    """`section.options` built into the plug-in's options dataclass: unknown keys, wrong types
    and the OptionErrors of its `__post_init__` fail with the key under `section.options.` and
    its line."""
    import dataclasses

    from rlcore.config import _build
    from rlcore.plugins import OptionError

    if isinstance(raw, options_cls):
        return raw  # already typed (an ExperimentConfig built in code)
    if dataclasses.is_dataclass(raw):
        raw = dataclasses.asdict(raw)
    try:
        return _build(options_cls, raw if raw is not None else {}, f"{section}.options.", source, lines)
    except ConfigError:
        raise
    except OptionError as e:
        fail(f"{section}.options.{e.key}", e.message)
    except (TypeError, ValueError) as e:  # an options class that checks without OptionError
        fail(f"{section}.options", f"{type(e).__name__}: {e}")


def _anchor_plugin_path(spec: str, source: str, line: int) -> str:
    """A relative `file.py:ATTR` set in a config file is relative to that file (set on the command
    line: to the current directory); made absolute, so that workers with another working
    directory find the same file."""
    import os

    from rlcore.plugins import plugin_file

    path = plugin_file(spec)
    if path is None:
        return spec
    target, _, attr = spec.rpartition(":")
    if not os.path.isabs(target) and line > 0 and os.path.isfile(source):
        path = os.path.join(os.path.dirname(os.path.abspath(source)), target)
    return f"{path}:{attr}"


def _validate_loss_settings(algo, fail) -> None:
    """What the policy loss checks again in the workers (algorithms/policy_loss.py `_validate`),
    so that a bad value fails at load, not after SFT and the first generation. Written as
    `not (valid)` so NaN fails too."""
    if not 0.0 <= algo.clip_low < 1.0:
        fail("algorithm.clip_low", f"must be in [0, 1) (the ratio's floor is 1 - clip_low), got {algo.clip_low}")
    if not algo.clip_high >= 0.0:
        fail("algorithm.clip_high", f"must be >= 0, got {algo.clip_high}")
    if algo.dual_clip_c is not None and not algo.dual_clip_c > 1.0:
        fail("algorithm.dual_clip_c", f"must be > 1 (or null: no dual clip), got {algo.dual_clip_c}")
    if not algo.kl_coef >= 0.0:
        fail("algorithm.kl_coef", f"must be >= 0, got {algo.kl_coef}")


def _validate_async(cfg: ExperimentConfig, fail) -> None:
    from algorithms import get_algorithm
    from algorithms.allocators import get_allocator

    rc = cfg.rollout
    if rc.max_staleness < 0:
        fail("rollout.max_staleness", f"must be >= 0 (0 = synchronous), got {rc.max_staleness}")
    if not rc.tis_cap > 0:
        fail("rollout.tis_cap", f"must be > 0, got {rc.tis_cap}")
    if rc.max_staleness == 0:
        return
    if get_allocator(cfg.allocation.name).needs_grad_norm:
        fail("rollout.max_staleness", f"allocation.name {cfg.allocation.name!r} computes gradient norms on the "
             "learners while sampling, which would interleave with training; use max_staleness: 0")
    if not get_algorithm(cfg.algorithm.name).advantage_weighting_exact:
        fail("rollout.max_staleness", f"algorithm {cfg.algorithm.name!r}: its loss is not linear in the "
             "advantage, so importance weights cannot be applied through it; use max_staleness: 0")


def _validate_reward(cfg: ExperimentConfig, fail) -> None:
    import math

    rc = cfg.reward
    if rc.batch_size < 1:
        fail("reward.batch_size", "must be >= 1")
    if not rc.timeout_s > 0:
        fail("reward.timeout_s", "must be > 0")
    if not math.isfinite(rc.failure_score):
        fail("reward.failure_score", "must be finite")
    if rc.components and rc.fn != RewardConfig.fn:
        fail("reward.fn", "set either reward.fn or reward.components (list fn as the first component)")
    for i, c in enumerate(rc.components):
        if not c.fn.strip():
            fail(f"reward.components[{i}].fn", "required")
        if not math.isfinite(c.weight):
            fail(f"reward.components[{i}].weight", "must be finite")
    if rc.overlong is not None:
        if rc.overlong.max_tokens < 0:
            fail("reward.overlong.max_tokens", "must be >= 0 (0 = rollout.max_new_tokens)")
        limit = rc.overlong.max_tokens or cfg.rollout.max_new_tokens
        if not 0 < rc.overlong.cache_tokens <= limit:
            fail("reward.overlong.cache_tokens", f"need 0 < cache_tokens <= max_tokens ({limit}), "
                 f"got {rc.overlong.cache_tokens}")
    if rc.length_penalty is not None and (rc.length_penalty.coef < 0 or rc.length_penalty.target_tokens < 0):
        fail("reward.length_penalty", "coef and target_tokens must be >= 0")
