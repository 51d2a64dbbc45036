"""Tool-integrated rollout (CoRT / START style): the model may run Python mid-reasoning.

Generation stops at the end of a fenced python block; the block runs in the trajectory's own
sandbox session, its output is inserted as a fenced ``output`` block, and generation goes on.
The result is one completion whose token ids are the generated ids, verbatim, interleaved with
the tokenized inserted text; ``mask`` is 1 on generated and 0 on inserted tokens, so the
learner (rlcore/batch.py ``response_masks``) trains only on what the policy sampled.

Rounds are batched: each round sends every still-active trajectory to ``generate`` at once
(prompt = original prompt + everything so far) with a seed derived from the request's seed and
the round number, so a resumed run samples exactly the same trajectories.

Stop strategy. Code stops are ``ToolsConfig.code_stop`` (default ``"\\n```\\n"``: a closing
fence on its own line followed by a newline). The opening fence ``"```python\\n"`` never
contains it (the fence is followed by "python", not a newline). The code is the last closed
``"```python"`` block (fences at line starts) in the text generated since the last insertion,
so a stop on some other fenced block (no python block) just continues without running anything.
The stop is looked for in the decoded round and the round's ids are cut after the token that
completes it: vLLM has already stopped there; the HF engine ignores stop strings, and this
gives it the same behaviour. A closing fence directly followed by eos ends the trajectory.

Budget. ``max_total_new_tokens`` (0: ``sampling.max_new_tokens``) bounds all response tokens,
generated and inserted, because that is the sequence length the learner sees. An insertion
that does not fit ends the trajectory with finish_reason "length".

Hints (inserted, mask 0). ``prompt_hint`` (CoRT) opens the response, before the first round.
``answer_hint`` (START's hint-infer): when a round ends the trajectory (eos or a stop string)
and no code has run yet, the round is cut just before the first ``answer_marker`` (default
``\\boxed``) or, without one, before its final eos token; the hint is inserted and generation
continues, at most once per trajectory. The cut tokens are dropped (a prefix of the generated
ids is kept).
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable

from rlcore.config import ToolsConfig
from rollout.engine import Completion, Request, SamplingConfig
from rollout.tool_format import cut_after_stop, cut_before, last_code_block, output_block, render_result

GenerateFn = Callable[[list[Request], SamplingConfig], list[Completion]]
_MASK64 = (1 << 64) - 1


@dataclass
class ToolCompletion(Completion):
    mask: list[int] = field(default_factory=list)  # 1 generated, 0 inserted
    tool_calls: int = 0
    tool_errors: int = 0  # calls whose status was not "ok" (timeouts included)
    tool_timeouts: int = 0
    tool_time_s: float = 0.0
    all_calls_failed: bool = False  # at least one call and every call failed
    rounds: int = 0
    hints_inserted: int = 0


@dataclass
class _Failure:
    """Stands in for a sandbox result when the session itself raised."""

    stderr: str
    status: str = "error"
    stdout: str = ""
    duration_s: float = 0.0


@dataclass
class _Traj:
    request: Request
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    segment: str = ""  # text since the last tool insertion (where the next code block is)
    calls: int = 0
    errors: int = 0
    timeouts: int = 0
    time_s: float = 0.0
    rounds: int = 0
    hints: int = 0
    answer_hinted: bool = False
    finish: str | None = None
    session: object = None

    @property
    def done(self) -> bool:
        return self.finish is not None


def round_seed(seed: int, rnd: int) -> int:
    """Seed of round ``rnd``: the request's own seed for round 0, a splitmix64 hash after."""
    if rnd == 0:
        return int(seed)
    x = (int(seed) * 0x9E3779B97F4A7C15 + rnd * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) & 0x7FFFFFFF


class ToolRollout:
    """Engine-like: ``generate(requests, sampling) -> list[ToolCompletion]``.

    ``generate`` is any engine's generate; ``tokenizer`` needs ``encode(text,
    add_special_tokens=False)``, ``decode(ids, skip_special_tokens=False)`` and
    ``eos_token_id``; ``new_session()`` returns a sandbox session with
    ``run(code, timeout_s)`` (result: status, stdout, stderr, duration_s) and ``close()``.
    """

    def __init__(self, generate: GenerateFn, tokenizer, new_session: Callable[[], object],
                 config: ToolsConfig, eos_token_ids: list[int] | None = None):
        self._generate = generate
        self.tokenizer = tokenizer
        self.new_session = new_session
        self.cfg = config
        eos = tokenizer.eos_token_id if eos_token_ids is None else eos_token_ids
        self.eos = set([eos] if isinstance(eos, int) else (eos or []))
        self._encoded: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        if text not in self._encoded:
            if len(self._encoded) > 64:
                self._encoded.clear()
            self._encoded[text] = list(self.tokenizer.encode(text, add_special_tokens=False))
        return self._encoded[text]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def generate(self, requests: list[Request], sampling: SamplingConfig) -> list[ToolCompletion]:
        cfg = self.cfg
        if not cfg.enabled:
            return [ToolCompletion(list(c.token_ids), list(c.logprobs), c.finish_reason,
                                   mask=[1] * len(c.token_ids), rounds=1)
                    for c in self._generate(requests, sampling)]
        budget = cfg.max_total_new_tokens or sampling.max_new_tokens
        max_rounds = cfg.max_rounds or cfg.max_tool_calls + 4
        stop_ids = self.eos | set(sampling.stop_token_ids)
        trajs = [_Traj(r) for r in requests]
        try:
            if cfg.prompt_hint:
                for t in trajs:
                    t.hints += self._insert(t, cfg.prompt_hint, budget)
            for rnd in range(max_rounds):
                active = [t for t in trajs if not t.done]
                if not active:
                    break
                last = rnd == max_rounds - 1
                groups: dict[bool, list[_Traj]] = {True: [], False: []}
                for t in active:
                    groups[bool(cfg.code_stop) and not last and t.calls < cfg.max_tool_calls].append(t)
                pending = []
                for code_ok, group in groups.items():
                    if not group:
                        continue
                    # One call per stop set; per-trajectory budgets are enforced by cutting after.
                    params = replace(sampling, max_new_tokens=max(budget - len(t.ids) for t in group),
                                     stop=list(sampling.stop) + (list(cfg.code_stop) if code_ok else []))
                    reqs = [Request(list(t.request.prompt_ids) + t.ids, round_seed(t.request.seed, rnd))
                            for t in group]
                    outs = self._generate(reqs, params)
                    if len(outs) != len(reqs):
                        raise RuntimeError(f"engine returned {len(outs)} completions for {len(reqs)} requests")
                    for t, out in zip(group, outs):
                        code = self._absorb(t, out, code_ok, budget, stop_ids, last)
                        if code is not None:
                            pending.append((t, code))
                self._run_tools(pending, budget)
            for t in trajs:
                if not t.done:
                    t.finish = "length"  # out of rounds
        finally:
            for t in trajs:
                if t.session is not None:
                    try:
                        t.session.close()
                    except Exception:  # a broken session must not lose the batch
                        pass
        return [self._result(t) for t in trajs]

    def _absorb(self, t: _Traj, out: Completion, code_ok: bool, budget: int, stop_ids: set,
                last: bool) -> str | None:
        """Append one round's output; returns code to run, or None."""
        cfg = self.cfg
        t.rounds += 1
        ids, lps = list(out.token_ids), list(out.logprobs)
        if not lps and ids:
            lps = [0.0] * len(ids)
        if len(lps) != len(ids):
            raise ValueError(f"engine gave {len(lps)} log-probs for {len(ids)} tokens")
        hit_code = False
        if code_ok:
            k, hit_code = cut_after_stop(self.tokenizer, ids, cfg.code_stop)
            ids, lps = ids[:k], lps[:k]
        room = budget - len(t.ids)
        if len(ids) > room:
            ids, lps, hit_code = ids[:room], lps[:room], False
        ended = bool(ids) and ids[-1] in stop_ids
        if hit_code:
            self._append(t, ids, lps)
            code = last_code_block(t.segment)
            if code is None and len(t.ids) >= budget:
                t.finish = "length"
            return code
        if not ended and (out.finish_reason == "length" or len(ids) >= room):
            self._append(t, ids, lps)
            t.finish = "length"
            return None
        if (cfg.answer_hint and not t.answer_hinted and t.calls == 0 and not last
                and cfg.max_tool_calls > 0):
            k = cut_before(self.tokenizer, ids, cfg.answer_marker)
            if k is None:
                k = len(ids) - 1 if ended else len(ids)
            if len(t.ids) + k + len(self.encode(cfg.answer_hint)) < budget:  # else finish as is
                self._append(t, ids[:k], lps[:k])
                t.answer_hinted = True
                self._insert(t, cfg.answer_hint, budget)
                t.hints += 1
                return None
        self._append(t, ids, lps)
        t.finish = "stop"
        return None

    def _append(self, t: _Traj, ids: list[int], lps: list[float]) -> None:
        t.ids += ids
        t.logprobs += [float(x) for x in lps]
        t.mask += [1] * len(ids)
        t.segment += self.decode(ids)

    def _insert(self, t: _Traj, text: str, budget: int, new_segment: bool = False) -> bool:
        """Append inserted text (mask 0); False (and finish "length") when it does not fit."""
        ids = self.encode(text)
        if len(t.ids) + len(ids) > budget:
            t.finish = "length"
            return False
        t.ids += ids
        t.logprobs += [0.0] * len(ids)
        t.mask += [0] * len(ids)
        t.segment = text if new_segment else t.segment + text
        if len(t.ids) >= budget:  # nothing left to generate
            t.finish = "length"
        return True

    def _run_tools(self, pending: list[tuple[_Traj, str]], budget: int) -> None:
        if not pending:
            return
        cfg = self.cfg
        for t, _ in pending:  # sessions are made here, one thread: pools need not be thread-safe
            if t.session is None:
                try:
                    t.session = self.new_session()
                except Exception as exc:
                    t.session = exc

        def run(item):
            t, code = item
            start = time.perf_counter()
            if isinstance(t.session, Exception):
                return _Failure(f"sandbox unavailable: {type(t.session).__name__}: {t.session}"), 0.0
            try:
                result = t.session.run(code, cfg.timeout_s)
            except Exception as exc:
                result = _Failure(f"{type(exc).__name__}: {exc}")
            return result, time.perf_counter() - start

        workers = max(1, min(cfg.sandbox_workers, len(pending)))
        if workers == 1:
            results = [run(item) for item in pending]
        else:
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(run, pending))
        for (t, _), (result, wall) in zip(pending, results):
            if isinstance(t.session, Exception):
                t.session = None
            status = str(getattr(result, "status", "error"))
            t.calls += 1
            t.errors += status != "ok"
            t.timeouts += status == "timeout"
            duration = getattr(result, "duration_s", None)
            t.time_s += float(duration) if duration is not None else wall
            text = output_block(cfg.output_template,
                                render_result(result, cfg.max_output_chars, cfg.timeout_s), t.segment)
            if t.calls >= cfg.max_tool_calls and cfg.no_more_code_message:
                # The notice is a courtesy: when budget is short the output itself matters more.
                with_notice = text + cfg.no_more_code_message
                if len(t.ids) + len(self.encode(with_notice)) <= budget:
                    text = with_notice
            self._insert(t, text, budget, new_segment=True)

    @staticmethod
    def _result(t: _Traj) -> ToolCompletion:
        return ToolCompletion(
            token_ids=t.ids, logprobs=t.logprobs, finish_reason=t.finish or "length", mask=t.mask,
            tool_calls=t.calls, tool_errors=t.errors, tool_timeouts=t.timeouts, tool_time_s=t.time_s,
            all_calls_failed=t.calls > 0 and t.errors == t.calls, rounds=t.rounds,
            hints_inserted=t.hints,
        )


def tool_metrics(completions) -> dict[str, float]:
    """Step metrics over a batch of completions (plain Completions count as tool-free)."""
    n = max(1, len(completions))
    calls = [int(getattr(c, "tool_calls", 0)) for c in completions]
    total = sum(calls)
    errors = sum(int(getattr(c, "tool_errors", 0)) for c in completions)
    timeouts = sum(int(getattr(c, "tool_timeouts", 0)) for c in completions)
    time_s = sum(float(getattr(c, "tool_time_s", 0.0)) for c in completions)
    tokens = sum(len(c.token_ids) for c in completions)
    inserted = sum(len(m) - sum(m) for m in (getattr(c, "mask", None) or [] for c in completions))
    return {
        "tool/calls_mean": total / n,
        "tool/calls_max": float(max(calls, default=0)),
        "tool/used_frac": sum(k > 0 for k in calls) / n,
        "tool/error_rate": errors / total if total else 0.0,
        "tool/timeout_rate": timeouts / total if total else 0.0,
        "tool/time_s": time_s,
        "tool/time_per_call_s": time_s / total if total else 0.0,
        "tool/all_failed_frac": sum(bool(getattr(c, "all_calls_failed", False)) for c in completions) / n,
        "tool/inserted_token_frac": inserted / tokens if tokens else 0.0,
    }


def all_calls_failed_penalty(completion, penalty: float = -0.1) -> float:
    """Additive reward term (CoRT): ``penalty`` when the trajectory called code and every call
    failed, else 0.0; the caller adds it to the verifier's score."""
    return float(penalty) if getattr(completion, "all_calls_failed", False) else 0.0
