"""The interpreter behind tool-integrated rollouts: a warm sandbox pool plus the rollout loop.

Kept apart from the trainer so a run without tools never imports or starts a sandbox.
"""
from __future__ import annotations

from dataclasses import replace

from rlcore.config import ToolsConfig
from rollout.tool_rollout import ToolRollout, all_calls_failed_penalty


class ToolRunner:
    def __init__(self, cfg: ToolsConfig, generate, tokenizer):
        from tools_sandbox import Limits, SandboxPool

        self.cfg = cfg
        # Fails at start, naming what is missing, if bubblewrap / namespaces are unavailable.
        self.sandbox = SandboxPool(max_workers=cfg.sandbox_workers, limits=Limits(memory_mb=cfg.sandbox_memory_mb))
        probe = self.sandbox.run("print(6 * 7)", timeout_s=30.0)
        if probe.status != "ok" or probe.stdout.strip() != "42":
            self.sandbox.close()
            raise RuntimeError(f"the code sandbox does not work here: {probe}")
        self.rollout = ToolRollout(generate, tokenizer, self.sandbox.new_session, cfg,
                                   eos_token_ids=[tokenizer.eos_token_id])

    def generate(self, requests, sampling):
        return self.rollout.generate(requests, sampling)

    def apply_penalty(self, completions, results) -> None:
        """CoRT's penalty for trajectories whose every code call failed, added to the reward."""
        if not self.cfg.all_failed_penalty:
            return
        for k, (c, r) in enumerate(zip(completions, results)):
            extra = all_calls_failed_penalty(c, self.cfg.all_failed_penalty)
            if extra:
                results[k] = replace(r, score=float(r.score) + extra)

    def close(self) -> None:
        self.sandbox.close()
