"""The learner's fast update path (completion-only LM head, chunked log-softmax, token-budget
micro-batches, skipped zero-advantage rows) gives the loss and gradients of the plain path: one
full-batch forward over every position of an unsharded copy of the model, log_softmax of the
whole [B, L-1, V] logits, the policy loss with its global normalisers."""
from __future__ import annotations

import contextlib
import dataclasses

import socket

import numpy as np
import pytest
import torch

from algorithms import AGG_MODES, PolicyLossInput, aggregate, clipped_policy_loss
from algorithms.aggregation import prompt_token_weights
from rlcore import logprobs as logprobs_mod
from rlcore.batch import build_batch
from rlcore.logprobs import token_logprobs
from rlcore.update import UpdateSettings

RTOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ token_logprobs


def _plain(logits, targets, temperature):
    x = logits.float()
    if temperature not in (0.0, 1.0):
        x = x / temperature
    lse = torch.logsumexp(x, -1)
    logp = x.gather(-1, targets[..., None])[..., 0] - lse
    x64 = x.detach().double()  # entropy in float64: the fp32 lse - sum(p x) of the old path cancels
    return logp, -(torch.softmax(x64, -1) * torch.log_softmax(x64, -1)).sum(-1).float()


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.3, 0.0])
@pytest.mark.parametrize("chunk", [1 << 24, 300])  # one chunk, or several (and a ragged last one)
def test_token_logprobs_value_grad_and_entropy_match_log_softmax(monkeypatch, temperature, chunk):
    monkeypatch.setattr(logprobs_mod, "LOGIT_CHUNK_ELEMENTS", chunk)
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 7, 101, generator=g) * 4).requires_grad_()
    targets = torch.randint(0, 101, (3, 7), generator=g)
    upstream = torch.randn(3, 7, generator=g)
    ref_logits = logits.detach().clone().requires_grad_()
    ref_logp, ref_ent = _plain(ref_logits, targets, temperature)
    (ref_logp * upstream).sum().backward()
    logp, ent = token_logprobs(logits, targets, temperature, with_entropy=True)
    (logp * upstream).sum().backward()
    torch.testing.assert_close(logp, ref_logp, rtol=RTOL, atol=1e-6)
    torch.testing.assert_close(ent, ref_ent, rtol=RTOL, atol=1e-6)
    torch.testing.assert_close(logits.grad, ref_logits.grad, rtol=RTOL, atol=1e-7)
    assert not ent.requires_grad
    assert token_logprobs(logits, targets, temperature)[1] is None


def test_token_logprobs_on_bf16_logits_returns_fp32_and_bf16_grads():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 64, generator=g).bfloat16().requires_grad_()
    targets = torch.randint(0, 64, (5,), generator=g)
    ref_logits = logits.detach().clone().requires_grad_()
    ref_logp, _ = _plain(ref_logits, targets, 0.8)
    ref_logp.sum().backward()
    logp, _ = token_logprobs(logits, targets, 0.8)
    logp.sum().backward()
    assert logp.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(logp, ref_logp, rtol=RTOL, atol=1e-6)
    torch.testing.assert_close(logits.grad.float(), ref_logits.grad.float(), rtol=1e-2, atol=1e-3)


# ------------------------------------------------------------------ learner (world size 1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from rlcore.tiny_model import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("fast_update") / "llama", arch="llama", seed=3,
                                hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                                intermediate_size=128))


def _learner_cfg(model_dir: str, **learner) -> dict:
    """The wire form of a config whose learner (and critic) ranks do not clip gradients."""
    from rlcore.config import config_from_dict

    lc = {"num_ranks": 1, "micro_batch_size": 64, "num_threads": 1, "grad_clip": 1e9, **learner}
    critic = {k: lc[k] for k in ("num_ranks", "micro_batch_size", "num_threads", "grad_clip")}
    return config_from_dict({"model": {"path": model_dir}, "learner": lc, "critic": critic}).to_dict()


@pytest.fixture(scope="module")
def learner(model_dir):
    from rlcore.learner import LearnerWorker

    worker = LearnerWorker(0, 1, "127.0.0.1", _free_port(), _learner_cfg(model_dir))
    yield worker
    worker.shutdown()


@pytest.fixture(scope="module")
def plain_model(model_dir, learner):
    from rollout.model_io import load_causal_lm

    model, _ = load_causal_lm(model_dir, "float32", "cpu", learner.cfg.model.attn_implementation)
    return model


def _batch(seed: int, rows: int = 10, vocab: int = 300, prompt_lens=(3, 14), completion_lens=(1, 9),
           group_sizes=(3, 1, 4, 2)):
    """Rows with mixed prompt and completion lengths (right padding), some masked-out tokens;
    consecutive rows share prompts in groups of `group_sizes` (cycled), as samples of a prompt do."""
    rng = np.random.default_rng(seed)
    owners = np.repeat(np.arange(rows), (list(group_sizes) * rows)[:rows])[:rows]
    distinct = [rng.integers(4, vocab, rng.integers(*prompt_lens)).tolist() for _ in range(rows)]
    prompts = [distinct[o] for o in owners]
    completions = [rng.integers(4, vocab, rng.integers(*completion_lens)).tolist() for _ in range(rows)]
    masks = [[1] * len(c) for c in completions]
    masks[1] = [1] + [0] * (len(completions[1]) - 1)  # a tool-output-like gap
    return build_batch(prompts, completions, pad_id=3, response_masks=masks)


def _policy_batch(plain_model, batch, temperature, seed, zero_rows=()):
    """old_logp = the model's own log-probs plus noise (ratios != 1, some clipped), ref_logp
    likewise, advantages per row with `zero_rows` at exactly 0."""
    rng = np.random.default_rng(seed)
    lp, _ = _reference_logp(plain_model, batch, temperature)
    mask = batch["loss_mask"]
    out = dict(batch)
    lp = lp.detach().numpy()
    out["old_logp"] = ((lp + rng.normal(0, 0.3, lp.shape)) * mask).astype(np.float32)
    out["ref_logp"] = ((lp + rng.normal(0, 0.3, lp.shape)) * mask).astype(np.float32)
    adv = rng.normal(0, 1, len(mask)).astype(np.float32)
    adv[list(zero_rows)] = 0.0
    out["advantages"] = (adv[:, None] * mask).astype(np.float32)
    # For the prompt-mean-* modes: rows belong to prompts of uneven sizes (3, 1, 4, 2, ...).
    sizes = ([3, 1, 4, 2] * len(mask))[: len(mask)]
    prompts = torch.tensor(np.repeat(np.arange(len(mask)), sizes)[: len(mask)])
    out["token_weight"] = prompt_token_weights(torch.from_numpy(mask), prompts, "prompt-mean-token-mean").numpy()
    return out


def _reference_logp(model, batch, temperature):
    """The unoptimised path: every position through the LM head, full log-softmax."""
    ids = torch.from_numpy(batch["input_ids"])
    att = torch.from_numpy(batch["attention_mask"])
    logits = model(input_ids=ids, attention_mask=att, use_cache=False).logits[:, :-1].float()
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0], att


def _reference_step(model, batch, loss: str, hparams: dict):
    model.zero_grad(set_to_none=True)
    logp, _ = _reference_logp(model, batch, hparams.get("temperature", 1.0))
    mask = torch.from_numpy(batch["loss_mask"])
    tokens, seqs = float(mask.sum()), float((mask.sum(1) > 0).sum())
    if loss == "sft":
        value = aggregate(-logp, mask, "token-mean", token_normalizer=tokens)
    else:
        t = {k: torch.from_numpy(batch[k]) for k in ("old_logp", "advantages", "ref_logp")}
        assert loss == "policy"  # the learner's default algorithm, grpo: PPO clip
        value = clipped_policy_loss(PolicyLossInput(
            logp=logp, old_logp=t["old_logp"], advantages=t["advantages"], mask=mask, ref_logp=t["ref_logp"],
            clip_low=hparams["clip_low"], clip_high=hparams["clip_high"], dual_clip_c=hparams.get("dual_clip_c"),
            kl_coef=hparams.get("kl_coef", 0.0), agg_mode=hparams.get("loss_agg", "token-mean"),
            token_normalizer=tokens, seq_normalizer=seqs, max_tokens=hparams.get("max_tokens"),
            token_weight=torch.from_numpy(batch["token_weight"]) if "token_weight" in batch else None,
        )).loss
    value.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return float(value.detach()), grads


def _learner_grads(learner) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in learner.model.named_parameters():
        grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        out[name] = grad.detach().clone()
    return out


def _assert_same(learner, metrics, ref_loss, ref_grads):
    assert metrics["train/loss"] == pytest.approx(ref_loss, rel=RTOL, abs=1e-7)
    ours = _learner_grads(learner)
    assert set(ours) == set(ref_grads)
    for name, g in ref_grads.items():
        scale = float(g.abs().max()) or 1.0
        torch.testing.assert_close(ours[name], g, rtol=RTOL, atol=RTOL * scale, msg=name)


@contextlib.contextmanager
def layout(worker, **settings):
    """The worker's learner settings with `settings` changed, for the duration of the block."""
    saved = worker.settings
    worker.settings = dataclasses.replace(saved, **settings)
    try:
        yield
    finally:
        worker.settings = saved


@contextlib.contextmanager
def loss_config(worker, hp: dict):
    """The worker's typed config with the loss settings of `hp` (the names `_reference_step`
    reads), for the duration of the block: the learner reads them from its config."""
    saved = worker.cfg
    algo = {k: hp[k] for k in ("clip_low", "clip_high", "dual_clip_c", "kl_coef", "loss_agg") if k in hp}
    rollout = {"temperature": hp.get("temperature", 1.0), "max_new_tokens": hp.get("max_tokens", 8)}
    worker.cfg = dataclasses.replace(saved, algorithm=dataclasses.replace(saved.algorithm, **algo),
                                     rollout=dataclasses.replace(saved.rollout, **rollout))
    try:
        yield
    finally:
        worker.cfg = saved


def _train(learner, batch, loss, hp, **learner_cfg):
    """One update with lr 0; `hp`: the loss settings (as the reference takes them) plus
    skip_zero_advantage / tis_cap, the driver's per-update decisions."""
    settings = UpdateSettings(lr=0.0, skip_zero_advantage=hp.get("skip_zero_advantage", False),
                              tis_cap=hp.get("tis_cap"))
    with layout(learner, **learner_cfg), loss_config(learner, hp):
        return learner.train(batch, loss, settings)


HP = {"clip_low": 0.2, "clip_high": 0.28, "max_tokens": 8}
LAYOUTS = {  # today's rows-per-pass path, and token budgets that give one row / several rows per pass
    "rows3": {"micro_batch_size": 3, "micro_batch_tokens": 0},
    "tokens1": {"micro_batch_tokens": 1},
    "tokens40": {"micro_batch_tokens": 40},
}


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("share", [True, False], ids=["shared_prompts", "rows"])
def test_policy_loss_and_grads_match_plain_path(learner, plain_model, agg, layout, share):
    batch = _policy_batch(plain_model, _batch(seed=11), temperature=0.7, seed=5, zero_rows=(2, 6))
    hp = {**HP, "loss_agg": agg, "temperature": 0.7, "dual_clip_c": 3.0}
    ref = _reference_step(plain_model, batch, "policy", hp)
    for skip in (False, True):
        metrics = _train(learner, batch, "policy", {**hp, "skip_zero_advantage": skip}, share_prompts=share,
                         **LAYOUTS[layout])
        _assert_same(learner, metrics, *ref)


def test_kl_loss_and_sft_match_plain_path(learner, plain_model):
    batch = _policy_batch(plain_model, _batch(seed=12), temperature=1.3, seed=6, zero_rows=(0,))
    hp = {**HP, "kl_coef": 0.1, "temperature": 1.3, "loss_agg": "seq-mean-token-mean"}
    ref = _reference_step(plain_model, batch, "policy", hp)
    _assert_same(learner, _train(learner, batch, "policy", hp, micro_batch_tokens=50), *ref)
    ref = _reference_step(plain_model, batch, "sft", {})
    _assert_same(learner, _train(learner, batch, "sft", {"skip_zero_advantage": True}, micro_batch_tokens=50), *ref)


def test_skipping_runs_fewer_rows_and_all_zero_batch_still_steps(learner, plain_model, monkeypatch):
    batch = _policy_batch(plain_model, _batch(seed=13), temperature=1.0, seed=7, zero_rows=range(10))
    seen = []
    original = learner._to_tensors
    monkeypatch.setattr(learner, "_to_tensors", lambda b, idx: seen.append(len(idx)) or original(b, idx))
    metrics = _train(learner, batch, "policy", {**HP, "skip_zero_advantage": True}, micro_batch_tokens=40)
    assert seen == [] and metrics["train/loss"] == 0.0  # one zero-weight filler pass only
    grads = _learner_grads(learner)
    assert all(float(g.abs().max()) == 0.0 for g in grads.values())  # zero, not None: AdamW steps as usual
    batch["advantages"][4] = batch["loss_mask"][4]
    seen.clear()
    _train(learner, batch, "policy", {**HP, "skip_zero_advantage": True}, micro_batch_tokens=40)
    assert seen == [1]


def test_compute_logprobs_all_and_loss_positions(learner, plain_model):
    batch = _batch(seed=14)
    ref, att = _reference_logp(plain_model, batch, 0.7)
    ref = (ref * att[:, 1:]).detach().numpy()
    mask = batch["loss_mask"]
    for name, settings in LAYOUTS.items():
        with layout(learner, **settings):
            full = learner.compute_logprobs(batch, 0.7)
            scored = learner.compute_logprobs(batch, 0.7, positions="loss")
        np.testing.assert_allclose(full, ref, rtol=RTOL, atol=1e-5)
        np.testing.assert_allclose(scored * (mask > 0), ref * (mask > 0), rtol=RTOL, atol=1e-5)
        if name == "tokens1":  # one row per pass: nothing before its own first trained position
            first = np.argmax(mask > 0, axis=1)
            assert all((scored[i, : first[i]] == 0).all() for i in range(len(mask)))
            assert all((full[i, : first[i]] != 0).all() for i in range(len(mask)))
    ref, _ = _reference_logp(plain_model, batch, 1.0)  # sequence_logprobs: every token, T = 1
    seqs = [batch["input_ids"][i, : batch["attention_mask"][i].sum()].tolist() for i in range(3)]
    for i, lp in enumerate(learner.sequence_logprobs(seqs)):
        np.testing.assert_allclose(lp, ref[i, : len(seqs[i]) - 1].detach().numpy(), rtol=RTOL, atol=1e-5)


def test_token_plan_sorts_by_length_and_respects_the_budget(learner):
    batch = _batch(seed=15, rows=12)
    lengths = batch["attention_mask"].sum(1)
    with layout(learner, micro_batch_tokens=30):
        plan = learner._plan(batch, np.arange(12))
    assert sorted(np.concatenate(plan).tolist()) == list(range(12))
    for part in plan:
        assert len(part) == 1 or len(part) * lengths[part].max() <= 30
    widths = [lengths[p].max() for p in plan]
    assert widths == sorted(widths, reverse=True)
    assert [len(p) for p in learner._plan(batch, np.arange(12))] == [12]  # budget 0: micro_batch_size rows


def test_update_builder_marks_zero_advantage_skipping_by_spec_and_kl():
    from algorithms import get_algorithm
    from rlcore.config import config_from_dict
    from rlcore.update import UpdateBuilder

    def builder(**algo):
        cfg = config_from_dict({"model": {"path": "x"}, "algorithm": algo})
        return UpdateBuilder(cfg, get_algorithm(cfg.algorithm.name), pad_id=0)

    assert builder(name="grpo").settings(lr=0.0).skip_zero_advantage is True
    assert builder(name="drgrpo").settings(lr=0.0).skip_zero_advantage is True
    assert builder(name="grpo", kl_coef=0.1).settings(lr=0.0).skip_zero_advantage is False
    assert builder(name="grpo", kl_coef=0.1, kl_mode="reward").settings(lr=0.0).skip_zero_advantage is True
    assert builder(name="nft").settings(lr=0.0).skip_zero_advantage is False  # its loss is not zero at A = 0


def test_update_builder_counts_skipped_rows_and_asks_for_trained_positions_only():
    from tests.unit.test_update import FakeLearners, build, cfg, groups

    batch, metrics, _ = build(cfg(name="grpo"), [[1, 0, 0], [1, 1, 1]])
    assert metrics["samples/skipped_zero_adv"] == 3 and metrics["samples/trained"] == 6
    assert not batch["advantages"][3:6].any() and batch["loss_mask"][3:6].any()
    _, metrics, _ = build(cfg(name="grpo", kl_coef=0.1), [[1, 0, 0], [1, 1, 1]])
    assert "samples/skipped_zero_adv" not in metrics  # a KL loss term: every row has a loss

    class ShardedFake(FakeLearners):  # LearnerGroup.compute_logprobs, on 2 ranks
        def compute_logprobs(self, batch, temperature=1.0, reference=False, positions="all"):
            self.calls.append(("compute_logprobs", (temperature, reference, positions)))
            half = len(batch["input_ids"]) // 2
            return np.concatenate([FakeLearners.compute_logprobs(self, {k: v[s] for k, v in batch.items()}, temperature)
                                   for s in (slice(0, half), slice(half, None))], axis=0)

    from algorithms import get_algorithm
    from rlcore.update import UpdateBuilder

    c = cfg(name="grpo", kl_coef=0.1)
    learners = ShardedFake()
    spec = get_algorithm("grpo")
    batch, _ = UpdateBuilder(c, spec, pad_id=0).build(groups([[1, 0, 0], [1, 1, 0]]), learners)
    assert [call for call in learners.calls if call[0] == "compute_logprobs"] == [
        ("compute_logprobs", (1.0, True, "loss"))]
    assert batch["ref_logp"].shape == batch["loss_mask"].shape


@pytest.mark.parametrize("layout", ["rows3", "tokens40"])
def test_async_tis_from_the_training_forward_matches_weighting_the_advantages(learner, plain_model, layout):
    """Single-pass asynchronous updates: the learner weights each token's advantage by
    min(pi / mu, cap) using its own training forward; that is the plain path with advantages
    weighted beforehand and pi_old = pi (what rlcore/update.py did with an extra forward)."""
    from algorithms.off_policy import truncated_is_weights

    rng = np.random.default_rng(9)
    batch = _policy_batch(plain_model, _batch(seed=16), temperature=0.7, seed=8, zero_rows=(3,))
    del batch["old_logp"]
    lp, _ = _reference_logp(plain_model, batch, 0.7)
    lp = lp.detach()
    mask = torch.from_numpy(batch["loss_mask"])
    batch["rollout_logp"] = ((lp.numpy() + rng.normal(0, 0.4, lp.shape)) * batch["loss_mask"]).astype(np.float32)
    cap = 1.5
    weights, expected = truncated_is_weights(lp, torch.from_numpy(batch["rollout_logp"]), mask, cap)
    assert 0 < expected["async/is_clipped_frac"] < 1  # some weights capped, some not
    weighted = dict(batch, old_logp=(lp * mask).numpy(), advantages=batch["advantages"] * weights.numpy())
    hp = {**HP, "temperature": 0.7, "tis_cap": cap, "skip_zero_advantage": False}
    ref = _reference_step(plain_model, weighted, "policy", hp)
    metrics = _train(learner, batch, "policy", hp, **LAYOUTS[layout])
    _assert_same(learner, metrics, *ref)
    for key in ("async/is_weight_mean", "async/is_clipped_frac", "async/is_weight_max", "async/is_weight_min"):
        assert metrics[key] == pytest.approx(expected[key], rel=1e-4), key


def test_update_builder_leaves_tis_to_the_learner_only_for_single_pass_updates():
    from algorithms import get_algorithm
    from rlcore.config import config_from_dict
    from rlcore.update import UpdateBuilder
    from tests.unit.test_update import FakeLearners, groups

    def run(**learner):
        c = config_from_dict({"model": {"path": "x"}, "learner": {"num_ranks": 2, **learner},
                              "rollout": {"prompts_per_step": 2, "n_samples": 3, "max_staleness": 1, "tis_cap": 2.0},
                              "algorithm": {"name": "grpo"}})
        builder = UpdateBuilder(c, get_algorithm("grpo"), pad_id=0)
        learners = FakeLearners()
        batch, metrics = builder.build(groups([[1, 0, 0], [1, 1, 0]]), learners)
        return builder.settings(lr=1e-4), batch, metrics, learners.calls

    settings, batch, metrics, calls = run()
    assert settings.tis_cap == 2.0 and "old_logp" not in batch and not calls
    assert not any(k.startswith("async/") for k in metrics)  # the learner reports them
    settings, batch, metrics, calls = run(epochs=2)
    assert settings.tis_cap is None and settings.epochs == 2
    assert "old_logp" in batch and [c[0] for c in calls] == ["old"]
    assert "async/is_weight_mean" in metrics


def test_reset_optimizer_after_a_no_grad_forward_holds_the_sharded_parameters(learner):
    """FSDP2 leaves the root unsharded after a no-grad forward; the fresh optimizer must still
    own the parameters that training updates (else embeddings, norm and head never move)."""
    batch = dict(_batch(seed=17))
    learner.compute_logprobs(batch, 1.0)
    learner.reset_optimizer(1e-3)
    _train(learner, batch, "sft", {})  # a training step leaves every module resharded
    owned = {id(p) for g in learner.optimizer.param_groups for p in g["params"]}
    assert owned == {id(p) for p in learner.model.parameters()}


def test_rows_of_one_prompt_run_as_one_packed_sequence(learner, plain_model, monkeypatch):
    """The layouts above give the same loss and gradients packed or not; here: packing happens,
    one packed sequence per prompt of the micro-batch, and fewer tokens go through the model."""
    from rlcore import prompt_sharing

    packed = []
    original = prompt_sharing.pack
    monkeypatch.setattr(prompt_sharing, "pack", lambda *a, **k: packed.append(original(*a, **k)) or packed[-1])
    batch = _policy_batch(plain_model, _batch(seed=18), temperature=1.0, seed=9)
    _train(learner, batch, "policy", HP, micro_batch_size=64, micro_batch_tokens=0)
    assert len(packed) == 1
    groups = len({tuple(r[:p]) for r, p in zip(batch["input_ids"].tolist(), batch["prompt_len"])})
    assert packed[0].input_ids.shape[0] == groups == 4  # 10 rows in prompts of 3, 1, 4, 2
    prompts = {tuple(r[:p]): p for r, p in zip(batch["input_ids"].tolist(), batch["prompt_len"])}
    # Each prompt once, then every completion.
    assert sum(packed[0].lengths) == int(batch["attention_mask"].sum()) - int(batch["prompt_len"].sum()) + sum(
        prompts.values())
    # A batch without shared prompts runs as rows.
    packed.clear()
    single = _policy_batch(plain_model, _batch(seed=18, group_sizes=(1,)), temperature=1.0, seed=9)
    _train(learner, single, "policy", HP, micro_batch_size=64, micro_batch_tokens=0)
    assert packed == [None]
