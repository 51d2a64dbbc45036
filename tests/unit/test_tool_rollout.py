"""Tool-integrated rollout: exact token bookkeeping, masks, limits, hints, metrics, loss masking."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from rlcore.config import ToolsConfig  # noqa: E402
from rollout.engine import Completion, Request, SamplingConfig  # noqa: E402
from rollout.tool_rollout import (  # noqa: E402
    ToolCompletion, ToolRollout, all_calls_failed_penalty, round_seed, tool_metrics,
)

EOS = "<EOS>"
FENCE = "```"
TEMPLATE = FENCE + "output\n{output}\n" + FENCE + "\n"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from rlcore.tiny_model import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("tool") / "tiny", hidden_size=64, num_layers=2,
                             num_heads=4, num_kv_heads=2, intermediate_size=128,
                             max_position_embeddings=512)


@pytest.fixture(scope="module")
def tok(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def enc(tok, text):
    return tok.encode(text, add_special_tokens=False)


def code(src):
    return f"{FENCE}python\n{src}\n{FENCE}\n"


@dataclass
class Result:
    status: str
    stdout: str = ""
    stderr: str = ""
    duration_s: float = 0.01


class FakeSession:
    """Runs trivially safe arithmetic with a private print; 'sleep' times out, 'boom' crashes."""

    def __init__(self, log):
        self.log, self.closed = log, False

    def run(self, src, timeout_s):
        self.log.append(src)
        if "sleep" in src:
            return Result("timeout", "partial\n", "", timeout_s)
        if "boom" in src:
            raise RuntimeError("sandbox died")
        out = []
        env = {"__builtins__": {"print": lambda *a: out.append(" ".join(map(str, a)) + "\n"), "range": range}}
        try:
            exec(src, env)  # test-only: scripted arithmetic
            return Result("ok", "".join(out))
        except Exception as exc:
            return Result("error", "".join(out), f"Traceback (most recent call last):\n{type(exc).__name__}: {exc}")

    def close(self):
        self.closed = True


class Sessions:
    def __init__(self):
        self.made, self.codes = [], []

    def __call__(self):
        self.made.append(FakeSession(self.codes))
        return self.made[-1]


class ScriptedEngine:
    """Per prompt, one scripted text per round; honours stop strings (unless told not to) and
    max_new_tokens at token granularity like vLLM. Records requests and what it returned."""

    def __init__(self, tok, scripts, ignore_stops=False):
        self.tok, self.ignore_stops = tok, ignore_stops
        self.scripts = {tuple(enc(tok, p)): rounds for p, rounds in scripts.items()}
        self.round = defaultdict(int)
        self.calls, self.returned = [], defaultdict(list)

    def key(self, ids):
        return next(p for p in self.scripts if tuple(ids[: len(p)]) == p)

    def __call__(self, requests, sampling):
        self.calls.append((requests, sampling))
        outs = []
        for r in requests:
            key = self.key(r.prompt_ids)
            rnd = self.round[key]
            self.round[key] += 1
            text = self.scripts[key][rnd]
            eos = text.endswith(EOS)
            ids = enc(self.tok, text.removesuffix(EOS)) + ([self.tok.eos_token_id] if eos else [])
            finish = "stop" if eos else "length"
            if sampling.stop and not self.ignore_stops:
                for k in range(1, len(ids) + 1):
                    if any(s in self.tok.decode(ids[:k]) for s in sampling.stop):
                        ids, finish = ids[:k], "stop"
                        break
            if len(ids) > sampling.max_new_tokens:
                ids, finish = ids[: sampling.max_new_tokens], "length"
            c = Completion(ids, [-0.01 * (j + 1) - rnd for j in range(len(ids))], finish)
            self.returned[key].append(c)
            outs.append(c)
        return outs


def expected(tok, pieces):
    """Trajectory from ('gen', Completion or (ids, lps)) and ('ins', text) pieces."""
    ids, lps, mask = [], [], []
    for kind, x in pieces:
        if kind == "gen":
            g_ids, g_lps = (x.token_ids, x.logprobs) if isinstance(x, Completion) else x
            ids, lps, mask = ids + list(g_ids), lps + list(g_lps), mask + [1] * len(g_ids)
        else:
            e = enc(tok, x)
            ids, lps, mask = ids + e, lps + [0.0] * len(e), mask + [0] * len(e)
    return ids, lps, mask


def run(tok, scripts, cfg, budget=400, seeds=None, **kw):
    engine, sessions = ScriptedEngine(tok, scripts, **kw), Sessions()
    prompts = list(scripts)
    reqs = [Request(enc(tok, p), (seeds or list(range(7, 7 + len(prompts))))[i]) for i, p in enumerate(prompts)]
    out = ToolRollout(engine, tok, sessions, cfg).generate(reqs, SamplingConfig(max_new_tokens=budget))
    return out, engine, sessions, reqs


def check(tok, c, pieces):
    ids, lps, mask = expected(tok, pieces)
    assert c.token_ids == ids and c.mask == mask and c.logprobs == pytest.approx(lps)
    assert all(lp == 0.0 for lp, m in zip(c.logprobs, c.mask) if m == 0)


def cfg(**kw):
    return ToolsConfig(enabled=True, output_template=TEMPLATE, **kw)


def test_one_call_exact_tokens_mask_logprobs_and_seeds(tok):
    scripts = {"Q: 2+3?\n": ["Let me compute.\n" + code("print(2+3)") + "ignored" + EOS, "So \\boxed{5}." + EOS]}
    (c,), engine, sessions, reqs = run(tok, scripts, cfg(max_tool_calls=2))
    r0, r1 = engine.returned[tuple(reqs[0].prompt_ids)]
    assert tok.decode(r0.token_ids).endswith("\n```\n") and "ignored" not in tok.decode(r0.token_ids)
    check(tok, c, [("gen", r0), ("ins", TEMPLATE.format(output="5")), ("gen", r1)])
    assert (c.finish_reason, c.tool_calls, c.tool_errors, c.all_calls_failed, c.rounds) == ("stop", 1, 0, False, 2)
    assert sessions.codes == ["print(2+3)\n"] and sessions.made[0].closed
    (q0,), s0 = engine.calls[0]
    (q1,), s1 = engine.calls[1]
    assert "\n```\n" in s0.stop and "\n```\n" in s1.stop  # a second call is still allowed
    assert q1.prompt_ids == reqs[0].prompt_ids + c.token_ids[: len(q1.prompt_ids) - len(reqs[0].prompt_ids)]
    assert (q0.seed, q1.seed) == (7, round_seed(7, 1)) and q1.seed != q0.seed


def test_opening_fence_does_not_stop(tok):
    scripts = {"Q:\n": ["```python\nx = 6*7\nprint(x)\n```\n" + EOS, "\\boxed{42}" + EOS]}
    (c,), engine, sessions, _ = run(tok, scripts, cfg())
    assert sessions.codes == ["x = 6*7\nprint(x)\n"] and c.tool_calls == 1
    assert TEMPLATE.format(output="42") in tok.decode(c.token_ids)


def test_max_tool_calls_message_and_final_round_without_code_stop(tok):
    msg = "(no more code)\n"
    scripts = {"Q:\n": ["a\n" + code("print(1)"), "b\n" + code("print(2)") + "\\boxed{2}" + EOS]}
    (c,), engine, sessions, reqs = run(tok, scripts, cfg(max_tool_calls=1, no_more_code_message=msg))
    r0, r1 = engine.returned[tuple(reqs[0].prompt_ids)]
    check(tok, c, [("gen", r0), ("ins", TEMPLATE.format(output="1") + msg), ("gen", r1)])
    assert sessions.codes == ["print(1)\n"] and c.tool_calls == 1
    assert "\n```\n" in engine.calls[0][1].stop and "\n```\n" not in engine.calls[1][1].stop
    assert tok.decode(r1.token_ids).endswith("\\boxed{2}<|im_end|>")


def test_batched_rounds_determinism_and_metrics(tok):
    scripts = {
        "P0:\n": ["\\boxed{1}" + EOS],
        "P1:\n": ["t\n" + code("print(10)"), "u\n" + code("print(1/0)"), "\\boxed{10}" + EOS],
        "P2:\n": [code("import time; sleep(9)"), "v" + EOS],
    }
    conf = cfg(max_tool_calls=2, sandbox_workers=4)
    out, engine, sessions, reqs = run(tok, scripts, conf)
    again, _, _, _ = run(tok, scripts, conf)
    assert [c.token_ids for c in out] == [c.token_ids for c in again]
    # round 0: all three in one call; round 1: P1, P2 (both may still call); round 2: P1 without code stop
    assert [len(r) for r, _ in engine.calls] == [3, 2, 1]
    assert "\n```\n" not in engine.calls[2][1].stop
    for rnd, (requests, _) in enumerate(engine.calls):
        for q in requests:
            own = next(r for r in reqs if q.prompt_ids[: len(r.prompt_ids)] == r.prompt_ids)
            assert q.seed == round_seed(own.seed, rnd)
    c0, c1, c2 = out
    assert (c0.tool_calls, c1.tool_calls, c2.tool_calls) == (0, 2, 1)
    assert (c1.tool_errors, c2.tool_errors, c2.tool_timeouts) == (1, 1, 1)
    assert c2.all_calls_failed and not c1.all_calls_failed and not c0.all_calls_failed
    assert "ZeroDivisionError: division by zero" in tok.decode(c1.token_ids)
    assert "partial\nTimeoutError: execution exceeded 5 s" in tok.decode(c2.token_ids)
    assert all(s.closed for s in sessions.made) and len(sessions.made) == 2  # one per trajectory
    m = tool_metrics(out)
    assert m["tool/calls_mean"] == pytest.approx(1.0) and m["tool/calls_max"] == 2.0
    assert m["tool/used_frac"] == pytest.approx(2 / 3) and m["tool/all_failed_frac"] == pytest.approx(1 / 3)
    assert m["tool/error_rate"] == pytest.approx(2 / 3) and m["tool/timeout_rate"] == pytest.approx(1 / 3)
    assert m["tool/time_s"] == pytest.approx(0.01 + 0.01 + 5.0)
    assert 0 < m["tool/inserted_token_frac"] < 1
    assert [all_calls_failed_penalty(c) for c in out] == [0.0, 0.0, -0.1]
    assert all_calls_failed_penalty(c2, penalty=-0.5) == -0.5
    assert tool_metrics([Completion([1], [0.0], "stop")])["tool/calls_mean"] == 0.0


def test_output_capped_and_session_exception_is_an_error(tok):
    scripts = {"Q:\n": [code("for i in range(200): print(i)"), code("boom"), "x" + EOS]}
    (c,), *_ = run(tok, scripts, cfg(max_output_chars=40, no_more_code_message=""))
    text = tok.decode(c.token_ids)
    assert "0\n1\n2\n" in text and "chars truncated]" in text and "199" not in text
    assert "RuntimeError: sandbox died" in text and c.tool_errors == 1 and not c.all_calls_failed


def test_prompt_hint_and_answer_hint_are_inserted_and_masked(tok):
    hint0, hint1 = "Let me use python.\n", "\nWait, maybe using Python here is a good idea.\n"
    scripts = {"Q: 2+2?\n": ["2+2 is \\boxed{4}." + EOS, code("print(2+2)"), "\\boxed{4}" + EOS]}
    (c,), engine, sessions, reqs = run(tok, scripts, cfg(prompt_hint=hint0, answer_hint=hint1))
    r0, r1, r2 = engine.returned[tuple(reqs[0].prompt_ids)]
    pos = tok.decode(r0.token_ids).index("\\boxed")  # cut before the token holding its first char
    k = max(k for k in range(len(r0.token_ids) + 1) if len(tok.decode(r0.token_ids[:k])) <= pos)
    assert tok.decode(r0.token_ids[:k]).rstrip().endswith("is")
    kept = (r0.token_ids[:k], r0.logprobs[:k])
    check(tok, c, [("ins", hint0), ("gen", kept), ("ins", hint1), ("gen", r1),
                   ("ins", TEMPLATE.format(output="4")), ("gen", r2)])
    assert engine.calls[0][0][0].prompt_ids == reqs[0].prompt_ids + enc(tok, hint0)
    assert c.hints_inserted == 2 and c.tool_calls == 1 and c.finish_reason == "stop"


def test_answer_hint_without_marker_drops_eos_and_is_used_once(tok):
    hint = "\nHint.\n"
    scripts = {"Q:\n": ["no answer" + EOS, "still none" + EOS]}
    (c,), engine, _, reqs = run(tok, scripts, cfg(answer_hint=hint))
    r0, r1 = engine.returned[tuple(reqs[0].prompt_ids)]
    check(tok, c, [("gen", (r0.token_ids[:-1], r0.logprobs[:-1])), ("ins", hint), ("gen", r1)])
    assert c.hints_inserted == 1 and c.finish_reason == "stop"


def test_total_budget_counts_inserted_tokens(tok):
    scripts = {"Q:\n": [code("print(12345)"), "long answer " * 20 + EOS]}
    budget = len(enc(tok, code("print(12345)"))) + len(enc(tok, TEMPLATE.format(output="12345"))) + 5
    (c,), engine, *_ = run(tok, scripts, cfg(), budget=budget)
    assert len(c.token_ids) == budget and c.finish_reason == "length" and c.tool_calls == 1
    assert engine.calls[1][1].max_new_tokens == 5
    # an output block that does not fit ends the trajectory instead of being cut
    (c,), *_ = run(tok, scripts, cfg(), budget=budget - 6)
    assert c.finish_reason == "length" and sum(c.mask) == len(c.mask) and c.tool_calls == 1


def test_non_python_fence_continues_without_running(tok):
    scripts = {"Q:\n": ["table:\n```\na b\n```\n", "then\n" + code("print(3)"), "\\boxed{3}" + EOS]}
    (c,), engine, sessions, reqs = run(tok, scripts, cfg())
    r0, r1, r2 = engine.returned[tuple(reqs[0].prompt_ids)]
    check(tok, c, [("gen", r0), ("gen", r1), ("ins", TEMPLATE.format(output="3")), ("gen", r2)])
    assert sessions.codes == ["print(3)\n"]


def test_engine_ignoring_stop_strings_is_cut_at_the_fence(tok):
    scripts = {"Q:\n": ["a\n" + code("print(5)") + "hallucinated output" + EOS, "\\boxed{5}" + EOS]}
    (c,), engine, _, reqs = run(tok, scripts, cfg(), ignore_stops=True)
    r0, r1 = engine.returned[tuple(reqs[0].prompt_ids)]
    k = len(enc(tok, "a\n" + code("print(5)")))
    check(tok, c, [("gen", (r0.token_ids[:k], r0.logprobs[:k])), ("ins", TEMPLATE.format(output="5")), ("gen", r1)])


def test_disabled_is_a_passthrough(tok):
    scripts = {"Q:\n": ["a\n" + code("print(5)") + EOS]}
    (c,), engine, sessions, _ = run(tok, scripts, ToolsConfig(enabled=False))
    assert isinstance(c, ToolCompletion) and c.mask == [1] * len(c.token_ids) and not sessions.made
    assert engine.calls[0][1].stop == []


def test_round_seed_deterministic_and_distinct():
    assert round_seed(123, 0) == 123 and round_seed(123, 1) == round_seed(123, 1)
    seeds = {round_seed(s, r) for s in range(50) for r in range(1, 6)}
    assert len(seeds) == 250 and all(0 <= x < 2**31 for x in seeds)


def test_inserted_tokens_excluded_from_loss_kl_and_entropy(tok):
    from algorithms.policy_loss import PolicyLossInput, clipped_policy_loss
    from rlcore.batch import build_batch

    scripts = {"Q1:\n": ["a\n" + code("print(7)"), "\\boxed{7}" + EOS], "Q22:\n": ["\\boxed{1}" + EOS]}
    out, _, _, reqs = run(tok, scripts, cfg(prompt_hint="hint\n"))
    prompts = [r.prompt_ids for r in reqs]
    batch = build_batch(prompts, [c.token_ids for c in out], tok.pad_token_id,
                        response_masks=[c.mask for c in out], rollout_logprobs=[c.logprobs for c in out])
    for i, (p, c) in enumerate(zip(prompts, out)):
        row = batch["loss_mask"][i]
        assert row[len(p) - 1 : len(p) - 1 + len(c.mask)].tolist() == c.mask
        assert row.sum() == sum(c.mask)  # prompt and padding are 0 too
    mask = torch.tensor(batch["loss_mask"])
    assert (mask == 0).any() and (mask == 1).any()
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
        logp = torch.randn(mask.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        logp.requires_grad_(True)
        loss = clipped_policy_loss(PolicyLossInput(
            logp=logp, old_logp=logp.detach() + 0.05, advantages=torch.ones_like(mask, dtype=torch.float64),
            mask=mask, ref_logp=torch.zeros_like(logp), kl_coef=0.1, agg_mode=mode)).loss
        loss.backward()
        assert torch.all(logp.grad[mask == 0] == 0) and torch.all(logp.grad[mask == 1] != 0)
    entropy = torch.rand(mask.shape)
    entropy_garbage = entropy.clone()
    entropy_garbage[mask == 0] = 1e6  # learner.py: (entropy * mask).sum() / mask.sum()
    assert (entropy_garbage * mask).sum() / mask.sum() == pytest.approx(float((entropy * mask).sum() / mask.sum()))


def test_real_hf_engine_invariants(model_dir, tok):
    from rollout.hf_engine import HFEngine

    engine = HFEngine(str(model_dir))
    closing = enc(tok, "\n```\n")
    log = []

    def generate(requests, sampling):
        """Round 0 closes the code block the prompt hint opened (the tiny model writes no code);
        every later round is the real engine."""
        if not log:
            outs = [Completion(list(closing), [-1.0] * len(closing), "stop") for _ in requests]
        else:
            outs = engine.generate(requests, sampling)
        log.append((requests, outs))
        return outs

    sessions = Sessions()
    conf = cfg(prompt_hint="```python\nprint(1+1)", max_tool_calls=1, max_total_new_tokens=120)
    prompts = [enc(tok, f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n") for q in ("1+1=", "7*6=")]
    out = ToolRollout(generate, tok, sessions, conf).generate(
        [Request(p, 3 + i) for i, p in enumerate(prompts)], SamplingConfig(max_new_tokens=999, temperature=1.0))
    head = enc(tok, "```python\nprint(1+1)") + closing + enc(tok, TEMPLATE.format(output="2") + conf.no_more_code_message)
    for i, c in enumerate(out):
        assert len(c.token_ids) == len(c.mask) == len(c.logprobs) <= 120 and sessions.codes[i] == "print(1+1)\n"
        assert c.token_ids[: len(head)] == head and c.tool_calls == 1
        gen = c.token_ids[len(head):]
        assert all(m == 1 for m in c.mask[len(head):])
        real = log[1][1][i]  # the engine's round-1 completion: kept verbatim (a budget cut at most)
        assert gen == real.token_ids[: len(gen)] and c.logprobs[len(head):] == real.logprobs[: len(gen)]
        assert log[1][0][i].prompt_ids == prompts[i] + head
        # the kept log-probs are those of the ids in their real context
        full = engine.sequence_logprobs([prompts[i] + c.token_ids])[0][len(prompts[i]) - 1:]
        gen_lp = [lp for lp, m in zip(full, c.mask) if m][len(closing):]
        assert gen_lp == pytest.approx(c.logprobs[len(head):], abs=2e-3)
    assert all(s.closed for s in sessions.made)
