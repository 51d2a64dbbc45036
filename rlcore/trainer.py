"""The driver: one RL step is allocate -> generate -> score -> advantages -> update -> sync -> log.

Everything that must survive a restart (step, data cursor, RNG, counters) lives here and goes
into trainer_state.json; the workers hold only what their checkpoints restore.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import ray

from algorithms import get_algorithm
from algorithms.allocators import get_allocator
from rewards import RewardInput, RewardPool, reward_from_config
from rlcore import checkpoint as ckpt
from rlcore import topology
from rlcore.batch import build_batch
from rlcore.config import ExperimentConfig, save_config
from rlcore.data.source import PromptSource
from rlcore.engine_sync import EngineSync, WorkerDiedError
from rlcore.groups import LearnerGroup, RolloutGroup
from rlcore.plugins import plugin_file
from rlcore.progress import Progress
from rlcore.rollout_pipeline import Rollout, RolloutPipeline
from rlcore.prompts import PromptRenderer, load_datasets
from rlcore.sampling import GroupSampler, is_accepted
from rlcore.sft import run_sft
from rlcore.tracking import Tracker, plot_learning_curve
from rlcore.tools import ToolRunner
from rlcore.update import UpdateBuilder, uses_reference
from rollout.tool_rollout import tool_metrics
from rollout.engine import Request, SamplingConfig, request_seed


def policy_lr(step: int, cfg: ExperimentConfig) -> float:
    """The policy lr at RL step `step` (1-based): linear warm-up over learner.warmup_steps, then
    flat or a cosine decay to min_lr_ratio * lr at trainer.total_steps."""
    lc, warmup = cfg.learner, cfg.learner.warmup_steps
    if warmup > 0 and step < warmup:
        return lc.lr * step / warmup
    if lc.lr_schedule == "constant":
        return lc.lr
    progress = min(1.0, (step - warmup) / max(1, cfg.trainer.total_steps - warmup))
    return lc.lr * (lc.min_lr_ratio + (1 - lc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class Trainer:
    def __init__(self, cfg: ExperimentConfig, reward=None):
        """Everything that can fail on bad input fails here, before any worker starts."""
        self.cfg = cfg
        self.run_dir = cfg.run_dir
        self.algorithm = get_algorithm(cfg.algorithm.name)
        # fn, or the composition (weighted components + length shaping); resolved now, so a typo
        # fails before workers start
        self.reward = reward_from_config(cfg.reward, override=reward)
        self._prepare_model()
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.renderer = PromptRenderer(self.tokenizer, cfg.data)
        self.train_records, self.eval_records = load_datasets(cfg)
        self.eval_records = self.eval_records[: cfg.eval.num_prompts]
        self.source = PromptSource(self.train_records, cfg.rollout.prompts_per_step, seed=cfg.seed, drop_last=True)
        self.allocator = get_allocator(cfg.allocation.name)(cfg.allocation.options, cfg.rollout.n_samples)
        self.sampler = GroupSampler(self.allocator, self.source, self.renderer, cfg.rollout.prompts_per_step,
                                    cfg.rollout.n_samples, every=cfg.allocation.every)
        self.update = UpdateBuilder(cfg, self.algorithm, self.pad_id)
        self.critic = None
        self.tools = None
        self.resume_from = self._find_resume()
        self.step = 0
        self.samples_generated = 0
        self.wall_time_before = 0.0
        self.eval_history: list[dict] = []
        self.engines: EngineSync | None = None  # weights on the engines (version), restarts
        self.pipeline = RolloutPipeline(self._rollout, cfg.rollout.max_staleness, cfg.trainer.total_steps)
        self._restored_rollouts: list[Rollout] = []
        self._saved_step: int | None = None  # step of the last checkpoint this run wrote
        self._last_save = time.monotonic()

    # ------------------------------------------------------------------ setup

    def _prepare_model(self) -> None:
        m = self.cfg.model
        if m.build_tiny:
            from rlcore.tiny_model import ensure_tiny_model

            ensure_tiny_model(m.path, hidden_size=m.tiny_hidden_size, num_layers=m.tiny_num_layers)
        elif m.source:
            from rlcore.convert_model import ConvertError, ensure_converted

            try:
                ensure_converted(m.path, m.source)
            except ConvertError as e:
                raise FileNotFoundError(f"model.source: {e}") from e
        elif not Path(m.path).exists() and "/" not in m.path.strip("/"):
            raise FileNotFoundError(f"model.path: {m.path} does not exist (set model.build_tiny: true for a tiny model)")

    def _find_resume(self) -> Path | None:
        if not self.cfg.resume:
            existing = ckpt.list_checkpoints(self.run_dir)
            if existing and not self.cfg.overwrite:
                raise FileExistsError(
                    f"{self.run_dir} already has checkpoints ({existing[-1].name}); continue it with "
                    f"resume=latest, start over with overwrite=true, or pick another name=..."
                )
            return None
        path = ckpt.resolve_checkpoint(self.run_dir, self.cfg.resume)
        # before run() overwrites run_dir/config.yaml (the fallback for checkpoints without their own)
        ckpt.check_resume_compatible(path, self.cfg, self.run_dir)
        return path

    def _start_workers(self) -> None:
        topology.connect(self.cfg)
        # Both groups load their model concurrently; actor creation does not block.
        rollout_workers = topology.create_rollout_group(self.cfg)
        # assigned first: _close must release it
        self.rollout = RolloutGroup(rollout_workers)
        self.learners = LearnerGroup(*topology.create_learner_group(self.cfg))
        self.engines = EngineSync(self.cfg, self.learners, self.rollout, probe=self._probe_sequences,
                                  note=lambda msg: self.progress.note(f"step {self.step}: {msg}"),
                                  resume_hint=self._resume_hint)
        if self.algorithm.needs_critic:
            self.critic = LearnerGroup(*topology.create_learner_group(self.cfg, role="critic"))
        algorithm_file = plugin_file(self.cfg.algorithm.name)  # the learners load it too
        topology.check_shared_filesystem(
            {"rollout worker": self.rollout.workers, "learner rank": self.learners.workers,
             **({"critic rank": self.critic.workers} if self.critic is not None else {})},
            self.run_dir, self.cfg.model.path, {"algorithm.name": algorithm_file} if algorithm_file else None)
        self.tools = ToolRunner(self.cfg.tools, self.rollout.generate, self.tokenizer) if self.cfg.tools.enabled else None
        self.pool = RewardPool(
            self.reward, num_workers=self.cfg.reward.num_workers,
            timeout_s=self.cfg.reward.timeout_s, failure_score=self.cfg.reward.failure_score,
            batch_size=self.cfg.reward.batch_size,
        )

    # ------------------------------------------------------------------- run

    def run(self) -> dict:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.resume_from is None and cfg.overwrite:
            shutil.rmtree(self.run_dir / "checkpoints", ignore_errors=True)
        save_config(cfg, self.run_dir / "config.yaml")
        start = time.perf_counter()
        resume_step = None
        self.progress = Progress(enabled=cfg.tracking.progress)
        try:
            self._start_workers()  # inside the try: workers started before a failure are released
            with self.progress:
                if self.resume_from is not None:
                    resume_step = self._restore(self.resume_from)
                else:
                    self._warm_up()
                self.tracker = Tracker(self.run_dir, cfg.tracking, cfg.to_dict(), resume_step)
                self._sync_weights(self._probe_sequences())
                if resume_step is None and self.evaluates:
                    self._log(0, self._evaluate(), start)
                self.progress.start_rl(cfg.trainer.total_steps, self.step)
                self.pipeline.start(self.step + 1, self._restored_rollouts)
                self._last_save = time.monotonic()  # checkpoint_every_minutes counts from here
                while self.step < cfg.trainer.total_steps:
                    if cfg.trainer.max_wall_time_s and self._elapsed(start) > cfg.trainer.max_wall_time_s:
                        self.progress.note(f"max_wall_time_s reached after step {self.step}; stopping")
                        break
                    if cfg.trainer.max_samples and self.samples_generated >= cfg.trainer.max_samples:
                        self.progress.note(f"sample budget of {cfg.trainer.max_samples} spent after step {self.step}")
                        break
                    self.step += 1
                    metrics = self._train_step()
                    last = self.step == cfg.trainer.total_steps
                    if self.evaluates and ((cfg.eval.every and self.step % cfg.eval.every == 0) or last):
                        metrics.update(self._evaluate())
                    self._log(self.step, metrics, start)
                    if ckpt.checkpoint_due(self.step, cfg.trainer.checkpoint_every,
                                           cfg.trainer.checkpoint_every_minutes, time.monotonic() - self._last_save):
                        self._save(start)
                    self.pipeline.after_push(self.step)  # evals and saves see an idle engine
                if self.evaluates and (not self.eval_history or self.eval_history[-1]["step"] != self.step):
                    self._log(self.step, self._evaluate(), start)
                    self._saved_step = None  # eval_history changed after the last save
                if self._saved_step != self.step:  # else the last step's periodic save is the final one
                    self._save(start)
            return self._finish(start)
        except ray.exceptions.RayActorError as e:
            # Engines are replaced where they are called (RolloutGroup); what reaches here is a
            # learner or critic rank, whose sharded state cannot be rebuilt from the others.
            raise WorkerDiedError(f"step {self.step}: a worker died ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}). {self._resume_hint()}") from e
        finally:
            self._close()

    def _elapsed(self, start: float) -> float:
        return self.wall_time_before + time.perf_counter() - start

    def _warm_up(self) -> None:
        cfg = self.cfg
        if cfg.sft.steps > 0:
            self.progress.start_sft(cfg.sft.steps)
            run_sft(cfg, self.learners, self.renderer, self.train_records, self.pad_id, self.progress.sft_step)
            self.learners.call("reset_optimizer", cfg.learner.lr)
        if uses_reference(self.cfg):
            # The reference is the post-SFT policy; keep it on disk so a resumed run uses it too.
            self.learners.call("save_hf_model", str(self.reference_dir))
            self.learners.call("enable_reference", str(self.reference_dir))

    @property
    def reference_dir(self) -> Path:
        return self.run_dir / "reference_model"

    def _restore(self, path: Path) -> int:
        state = ckpt.load_trainer_state(path)
        if uses_reference(self.cfg):
            if not (self.reference_dir / "config.json").is_file():
                raise FileNotFoundError(f"{self.reference_dir}: KL reference model missing; cannot resume exactly")
            self.learners.call("enable_reference", str(self.reference_dir))
        self.learners.call("load_checkpoint", str(path))
        if self.critic is not None:
            self.critic.call("load_checkpoint", str(path))
        self.source.load_state_dict(state["source"])
        self.allocator.load_state_dict(state["allocator"])
        self.sampler.load_state_dict(state.get("sampler", {}))
        ckpt.restore_rng(state["rng"])
        self.step = state["step"]
        self.samples_generated = state["samples_generated"]
        self.engines.restarts = state.get("rollout_restarts", 0)
        self.wall_time_before = state["wall_time_s"]
        self.eval_history = state["eval_history"]
        self._restored_rollouts = ckpt.load_rollouts_ahead(path)
        k = self.cfg.rollout.max_staleness
        if k and not self._restored_rollouts and self.step < self.cfg.trainer.total_steps:
            # A checkpoint written at a run's end has no batches ahead: the next k steps are
            # generated by the restored policy instead of older ones (fresher, not bit-identical).
            self.progress.note(f"{path.name} holds no batches generated ahead; steps {self.step + 1}.."
                               f"{self.step + k} are sampled by the restored policy")
        self.progress.note(f"resumed from {path} at step {self.step}")
        return self.step

    # ------------------------------------------------------------------ step

    def _sample_seed(self, step: int, prompt_index: int, sample_index: int) -> int:
        """Per-sample seeds make generation reproducible across restarts and worker counts."""
        return request_seed(self.cfg.seed, step, prompt_index, sample_index)

    def generate(self, requests, sampling: SamplingConfig) -> list:
        """The engines, or the engines driven through the interpreter loop when tools are on."""
        if self.tools is not None:
            return self.tools.generate(requests, sampling)
        return self.rollout.generate(requests, sampling)

    def _sampling(self, temperature: float) -> SamplingConfig:
        return SamplingConfig(
            max_new_tokens=self.cfg.rollout.max_new_tokens, temperature=temperature,
            top_p=self.cfg.rollout.top_p, stop_token_ids=[self.tokenizer.eos_token_id],
        )

    def _rollout(self, step: int) -> Rollout:
        """Generate and score step `step`'s groups (in the background with rollout.max_staleness)."""
        rc = self.cfg.rollout
        timings = {"time/generate_s": 0.0, "time/reward_s": 0.0}
        completions: list = []  # everything generated this step, kept or not

        def generate(requests):
            t = time.perf_counter()
            out = self.generate(requests, self._sampling(rc.temperature))
            timings["time/generate_s"] += time.perf_counter() - t
            return out

        def score(records, outs):
            t = time.perf_counter()
            scored = self._score(records, outs)
            if self.tools is not None:
                self.tools.apply_penalty(outs, scored)
            timings["time/reward_s"] += time.perf_counter() - t
            completions.extend(outs)
            return scored

        version = self.engines.version  # stable while this runs: the next push waits for this batch
        t = time.perf_counter()
        groups, sample_metrics = self.sampler.sample(
            lambda p, j: self._sample_seed(step, p, j), generate, score, self._likelihood_grad_norms
        )
        timings["time/allocate_s"] = time.perf_counter() - t - timings["time/generate_s"] - timings["time/reward_s"]
        return Rollout(step, version, groups, sample_metrics, timings, self.pool.pop_metrics(), completions)

    def _train_step(self) -> dict:
        cfg = self.cfg
        t_step = time.perf_counter()
        rollout = self.pipeline.take(self.step)
        wait_s = time.perf_counter() - t_step
        groups, sample_metrics, timings = rollout.groups, rollout.sample_metrics, dict(rollout.timings)
        self.samples_generated += sample_metrics["samples/step_generated"]
        staleness = self.step - 1 - rollout.version  # updates the batch's policy is behind the learner's
        if staleness > cfg.rollout.max_staleness:
            raise RuntimeError(f"step {self.step}: batch is {staleness} policy versions old, more than "
                               f"rollout.max_staleness={cfg.rollout.max_staleness} (was the checkpoint written "
                               f"with a larger max_staleness?)")

        t = time.perf_counter()
        batch, update_metrics = self.update.build(groups, self.learners, self.critic)
        timings["time/logprob_s"] = time.perf_counter() - t

        t = time.perf_counter()
        train_metrics: dict = {}
        if batch is not None:
            settings = self.update.settings(lr=policy_lr(self.step, cfg))
            if self.critic is not None:
                train_metrics.update(self.critic.train_values(batch, replace(settings, lr=cfg.critic.lr)))
            if self.critic is None or self.step > cfg.critic.warmup_steps:
                train_metrics.update(self.learners.train(batch, "policy", settings))
                train_metrics["train/lr"] = settings.lr
        timings["time/update_s"] = time.perf_counter() - t

        t = time.perf_counter()
        self.pipeline.before_push(self.step)
        wait_s += time.perf_counter() - t
        t = time.perf_counter()
        samples = [(g.prompt_ids, c) for g in groups for c in g.completions]
        check = [p + c.token_ids for p, c in samples[: cfg.trainer.logprob_check_sequences]]
        mismatch = self._sync_weights(check)
        timings["time/sync_s"] = time.perf_counter() - t  # push and the log-prob check
        timings.update(self.engines.last_timings)  # the push's own phases: time/sync_gather_s, ..._load_s, ..._total_s
        timings["time/step_s"] = time.perf_counter() - t_step
        if cfg.rollout.max_staleness:
            # The background batch's phases overlap the update; what the trainer waited for is the cost.
            timings["time/rollout_wait_s"] = wait_s
            timings["async/staleness"] = staleness
        step_completions = rollout.completions

        results = [r for g in groups for r in g.results]
        rewards = np.array([float(r.score) for r in results]) if results else np.zeros(1)
        lengths = np.array([c.length for _, c in samples]) if samples else np.zeros(1)
        metrics = {
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std(ddof=1)) if len(rewards) > 1 else 0.0,
            "reward/accuracy": float(np.mean([is_accepted(r) for r in results])) if results else 0.0,
            "reward/failures": sum(r.failed for r in results),
            "response/length_mean": float(lengths.mean()),
            "response/length_max": int(lengths.max()),
            "response/truncated_frac": float(np.mean([c.finish_reason == "length" for _, c in samples])) if samples else 0.0,
            "sync/logprob_diff_max": mismatch,
            "throughput/gen_tokens_per_s": float(lengths.sum() / max(timings["time/generate_s"], 1e-9)),
            "samples/generated": self.samples_generated,
            "fault/rollout_restarts": self.engines.restarts,
            **sample_metrics, **update_metrics, **self.allocator.metrics(),
            **train_metrics, **timings, **rollout.reward_metrics,
            **(tool_metrics(step_completions) if self.tools is not None else {}),
        }
        on_path = ("time/logprob_s", "time/update_s", "time/sync_s") + (
            ("time/rollout_wait_s",) if cfg.rollout.max_staleness else ("time/generate_s", "time/reward_s", "time/allocate_s"))
        metrics["time/overhead_frac"] = 1.0 - sum(timings[k] for k in on_path) / timings["time/step_s"]
        self._write_samples(groups)
        return metrics

    def _likelihood_grad_norms(self, prompt_ids: list[list[int]], accepted: list[list]) -> list[float]:
        """GVM's G_i for each group, computed on the policy learners."""
        prompts = [p for p, comps in zip(prompt_ids, accepted) for _ in comps]
        owners = [i for i, comps in enumerate(accepted) for _ in comps]
        batch = build_batch(prompts, [c.token_ids for comps in accepted for c in comps], self.pad_id)
        return self.learners.call("likelihood_grad_norms", batch, owners)[0]

    def _score(self, records: list[dict], completions) -> list:
        items = [
            RewardInput(
                prompt=r["prompt"], completion=self.tokenizer.decode(c.token_ids, skip_special_tokens=True),
                ground_truth=str(r["answer"]), metadata=r.get("metadata") or {},
                num_tokens=len(c.token_ids), max_tokens=self.cfg.rollout.max_new_tokens,
            )
            for r, c in zip(records, completions)
        ]
        return self.pool.score(items)

    def _sync_weights(self, sequences: list[list[int]]) -> float | None:
        """Push the learner's weights (policy version = this step) to every engine and check
        their log-probs on `sequences`."""
        return self.engines.push(self.step, sequences)

    def _probe_sequences(self) -> list[list[int]]:
        """Prompts for the log-prob check of the first sync, before anything was generated."""
        n = self.cfg.trainer.logprob_check_sequences
        return [self.renderer.ids(r) for r in (self.train_records or self.eval_records)[:n]]

    def _resume_hint(self) -> str:
        done = ckpt.list_checkpoints(self.run_dir)
        where = f"the last complete checkpoint is {done[-1]}" if done else "no checkpoint was written yet"
        return (f"The run stopped; {where}. Continue it with: rlcore train --resume {self.run_dir}"
                if done else f"The run stopped; {where} (trainer.checkpoint_every and "
                                                     "trainer.checkpoint_every_minutes set how often).")

    # ------------------------------------------------------------------ eval

    @property
    def evaluates(self) -> bool:
        """Whether there is anything to evaluate on: an eval set or shipped benchmarks. Without
        one, no eval/ metrics are logged at all (rather than an accuracy of NaN)."""
        return bool(self.eval_records) or bool(self.cfg.eval.benchmarks)

    def _evaluate(self) -> dict:
        t = time.perf_counter()
        records = self.eval_records
        metrics, bench = {}, {}
        if self.cfg.eval.benchmarks:  # shipped benchmarks, same rollout group and reward pool
            from rlcore.evaluate import trainer_benchmarks

            metrics, bench = trainer_benchmarks(self)
        if not records and bench:  # no eval set: the first benchmark is the headline number
            first = next(iter(bench.values()))
            metrics["eval/accuracy"] = float(first.get("accuracy", 0.0))
        prompt_ids = [self.renderer.ids(r) for r in records]
        requests = [Request(ids, 0) for ids in prompt_ids]  # greedy: the seed is unused
        completions = self.generate(requests, self._sampling(self.cfg.eval.temperature)) if records else []
        results = self._score(records, completions) if records else []
        correct = np.array([is_accepted(r) for r in results], dtype=float)
        if records:
            metrics.update({"eval/accuracy": float(correct.mean()), "eval/num_prompts": len(records)})
        in_train = [(rec.get("metadata") or {}).get("in_train") for rec in records]
        by_level: dict[str, list[float]] = {}
        for rec, ok in zip(records, correct):
            level = rec.get("difficulty")
            if level is not None:
                by_level.setdefault(str(level), []).append(ok)
        for level, values in sorted(by_level.items()):
            metrics[f"eval/accuracy_d{level}"] = float(np.mean(values))
        unseen = [ok for ok, seen in zip(correct, in_train) if seen is False]
        if unseen:  # problems that never occur in the training set
            metrics["eval/accuracy_unseen"] = float(np.mean(unseen))
            metrics["eval/num_unseen"] = len(unseen)
        if self.cfg.eval.sampled_k and records:
            metrics.update(self._evaluate_sampled(records, prompt_ids, in_train))
        metrics["time/eval_s"] = time.perf_counter() - t
        self.eval_history.append({
            "step": self.step, "accuracy": metrics.get("eval/accuracy"),
            "accuracy_unseen": metrics.get("eval/accuracy_unseen"),
            "accuracy_sampled": metrics.get("eval/accuracy_sampled"),
        })
        self.progress.eval_done(self.step, metrics.get("eval/accuracy", float("nan")))
        self.pool.pop_metrics()  # eval scoring is not training reward throughput
        return metrics

    def _evaluate_sampled(self, records: list[dict], prompt_ids: list[list[int]], in_train: list) -> dict:
        """Mean accuracy over eval.sampled_k samples per prompt at the training temperature.

        The seeds depend only on (seed, prompt, sample), not on the step, so every evaluation
        draws with the same random numbers and differences between them come from the policy.
        """
        k = self.cfg.eval.sampled_k
        requests = [Request(ids, request_seed(self.cfg.seed, 0x5EED, i, j)) for i, ids in enumerate(prompt_ids) for j in range(k)]
        completions = self.generate(requests, self._sampling(self.cfg.rollout.temperature))
        results = self._score([r for r in records for _ in range(k)], completions)
        per_prompt = np.array([is_accepted(x) for x in results], dtype=float).reshape(len(records), k).mean(axis=1)
        out = {"eval/accuracy_sampled": float(per_prompt.mean()), "eval/sampled_k": k}
        unseen = [acc for acc, seen in zip(per_prompt, in_train) if seen is False]
        if unseen:
            out["eval/accuracy_sampled_unseen"] = float(np.mean(unseen))
        return out

    # --------------------------------------------------------------- logging

    def _log(self, step: int, metrics: dict, start: float) -> None:
        metrics["time/wall_s"] = self._elapsed(start)
        self.tracker.log(step, metrics)
        self.progress.step_done(step, metrics)

    def _write_samples(self, groups) -> None:
        k = self.cfg.trainer.log_samples
        if k <= 0:
            return
        out = self.run_dir / "samples"
        out.mkdir(exist_ok=True)
        rows = [(g.record, c, r) for g in groups for c, r in zip(g.completions, g.results)][:k]
        with (out / f"step_{self.step}.jsonl").open("w") as f:
            for rec, completion, res in rows:
                f.write(json.dumps({
                    "prompt": rec["prompt"], "answer": rec["answer"],
                    "completion": self.tokenizer.decode(completion.token_ids),
                    "score": res.score, "failed": res.failed, "reason": res.reason,
                }) + "\n")

    def _save(self, start: float) -> None:
        state = {
            "step": self.step, "source": self.source.state_dict(), "rng": ckpt.capture_rng(),
            "samples_generated": self.samples_generated, "wall_time_s": self._elapsed(start),
            "rollout_restarts": self.engines.restarts, "eval_history": self.eval_history, "allocator": self.allocator.state_dict(),
            "sampler": self.sampler.state_dict(),
        }

        ahead = self.pipeline.ahead()  # batches generated for later steps: a resume trains on them

        def save_workers(tmp: Path) -> None:
            self.learners.call("save_checkpoint", str(tmp))
            if self.critic is not None:
                self.critic.call("save_checkpoint", str(tmp))
            ckpt.save_rollouts_ahead(tmp, ahead)

        ckpt.save_checkpoint(self.run_dir, self.step, state, save_workers, self.cfg.trainer.keep_last,
                             config=self.cfg.to_dict())
        self._saved_step, self._last_save = self.step, time.monotonic()

    def _finish(self, start: float) -> dict:
        evals = self.eval_history
        summary = {
            "name": self.cfg.name, "steps": self.step, "wall_time_s": round(self._elapsed(start), 2),
            "samples_generated": self.samples_generated,
            "eval_accuracy_first": evals[0]["accuracy"] if evals else None,
            "eval_accuracy_last": evals[-1]["accuracy"] if evals else None,
            "eval_accuracy_best": max(e["accuracy"] for e in evals) if evals else None,
            "eval_accuracy_unseen_first": evals[0].get("accuracy_unseen") if evals else None,
            "eval_accuracy_unseen_last": evals[-1].get("accuracy_unseen") if evals else None,
            "eval_accuracy_sampled_first": evals[0].get("accuracy_sampled") if evals else None,
            "eval_accuracy_sampled_last": evals[-1].get("accuracy_sampled") if evals else None,
            "run_dir": str(self.run_dir),
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        plot_learning_curve(self.run_dir)
        self.tracker.close()
        self.progress.summary(summary)
        return summary

    def _close(self) -> None:
        self.pipeline.close()  # no generation may start on engines that are shutting down
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.close()
        if getattr(self, "tools", None) is not None:
            self.tools.close()
        for group in ("rollout", "learners", "critic"):
            handle = getattr(self, group, None)
            if handle is not None:
                topology.shutdown_group(handle.workers, handle.placement)
