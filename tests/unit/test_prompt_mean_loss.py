"""The prompt-mean aggregation modes against GVM-RAFT's M-step: each prompt's samples averaged,
then prompts averaged, however many samples an allocator gave each prompt."""
from __future__ import annotations

import pytest
import torch

from algorithms import aggregate
from algorithms.aggregation import prompt_token_weights

D = torch.float64


def _rows():
    # prompts 0 (3 samples), 5 (1 sample), 2 (2 samples, one of them without a trained token)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=D)
    prompt = torch.tensor([0, 0, 0, 5, 2, 2])
    logp = -torch.rand(6, 3, dtype=D, generator=torch.Generator().manual_seed(0))
    return mask, prompt, logp


def test_prompt_mean_token_sum_is_the_m_step_objective():
    mask, prompt, logp = _rows()
    loss = aggregate(-logp, mask, "prompt-mean-token-sum",
                     token_weight=prompt_token_weights(mask, prompt, "prompt-mean-token-sum"))
    # M-step: (1/P) sum_p (1/n_p) sum_j log p(y_pj), the sequence log-likelihood summed over tokens
    seq = (logp * mask).sum(-1)
    m_step = ((seq[0] + seq[1] + seq[2]) / 3 + seq[3] / 1 + seq[4] / 1) / 3
    assert loss.item() == pytest.approx(-m_step.item(), rel=1e-12)


def test_prompt_mean_token_mean_averages_each_samples_token_mean():
    mask, prompt, logp = _rows()
    loss = aggregate(-logp, mask, "prompt-mean-token-mean",
                     token_weight=prompt_token_weights(mask, prompt, "prompt-mean-token-mean"))
    per_sample = (logp * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    expected = ((per_sample[0] + per_sample[1] + per_sample[2]) / 3 + per_sample[3] + per_sample[4]) / 3
    assert loss.item() == pytest.approx(-expected.item(), rel=1e-12)


def test_a_prompt_with_more_samples_does_not_weigh_more():
    mask, prompt, _ = _rows()
    weights = prompt_token_weights(mask, prompt, "prompt-mean-token-sum")
    row_weight = weights.sum(-1) / mask.sum(-1).clamp(min=1)  # the same on each of a row's tokens
    assert [float(row_weight[prompt == p].sum()) for p in (0, 5, 2)] == pytest.approx([1 / 3] * 3)
    assert row_weight[5] == 0  # a row without a trained token is not a sample of its prompt


def test_the_update_builder_weights_the_rows_that_stay():
    """RAFT drops rejected samples; the weights are over the accepted ones (GVM's n_i)."""
    from tests.unit.test_update import build, cfg

    batch, _, _ = build(cfg(name="raft", loss_agg="prompt-mean-token-sum"), [[1, 0, 1], [0, 0, 1]])
    weights, mask = batch["token_weight"], batch["loss_mask"]
    kept = mask.any(axis=1) & batch["advantages"].any(axis=1)
    per_row = weights.sum(1) / mask.sum(1).clip(min=1)
    assert per_row[kept].tolist() == pytest.approx([1 / 4, 1 / 4, 1 / 2])  # prompt 0: 2 kept; prompt 1: 1
    assert not weights[~kept].any()
