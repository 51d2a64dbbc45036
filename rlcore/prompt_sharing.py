"""One forward per prompt, not per sample: a group's rows packed into one sequence.

Why: GRPO-style batches hold n samples of each prompt, and the rows repeat the prompt n times.
On the arithmetic task the prompt is two thirds of a row (14 of ~22 tokens), on SmolLM2's chat
template about 46 of ~70. Packing `prompt, completion_1, ..., completion_n` into one sequence,
with an attention mask that lets each completion see the prompt and its own earlier tokens
only, and positions that restart after the prompt for every completion, gives every completion
token exactly the context it has in its own row, and runs the prompt once.

The layout is built on the host from the rows (right-padded `input_ids`, `attention_mask`, and
each row's prompt length); `unpack` puts per-token results back into the rows' [B, L-1] layout
(position t predicts token t + 1), so the losses never see the packing. The first completion
token of every member is predicted from the shared last prompt position.

Needs an attention implementation that takes a custom 4D mask (sdpa, eager); see `supported`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PackedRows:
    input_ids: torch.Tensor  # [P, S] one packed sequence per prompt group
    position_ids: torch.Tensor  # [P, S] prompt 0..p-1, then p.. again for each completion
    attention_mask: torch.Tensor  # [P, 1, S, S] bool, True = may attend
    keep_from: int  # first packed position any scored token is predicted from
    packed_row: torch.Tensor  # [N] per scored token: its packed sequence...
    packed_pos: torch.Tensor  # [N] ...and the position that predicts it
    targets: torch.Tensor  # [N] the token predicted
    row: torch.Tensor  # [N] where it goes in the rows' [B, L-1] layout
    col: torch.Tensor  # [N]
    rows_shape: tuple[int, int]  # (B, L-1)
    lengths: list[int]  # tokens of each packed sequence


def supported(model) -> bool:
    """The attention takes our 4D mask as the whole truth: sdpa or eager, and no sliding-window
    layers (their own windowed mask would be replaced by ours)."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    window = getattr(config, "sliding_window", None)
    if window is not None and getattr(config, "use_sliding_window", True) is not False:
        return False
    return all(kind == "full_attention" for kind in getattr(config, "layer_types", None) or [])


# Longest packed sequence worth it: attention with a custom mask materialises [S, S] scores per
# head (no flash kernel), so past this length rows with the usual causal kernel are cheaper.
MAX_PACKED_TOKENS = 4096


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: torch.Tensor,
         pad_id: int = 0) -> PackedRows | None:
    """Rows [B, L] (right-padded; row b's prompt is its first prompt_len[b] tokens) -> packed
    groups; None unless some two rows share a prompt (else packing saves nothing), every row has
    a prompt and at least one token after it, and no packed sequence grows past MAX_PACKED_TOKENS."""
    ids, lengths, plens = input_ids.tolist(), attention_mask.sum(1).tolist(), prompt_len.tolist()
    groups: dict[tuple, list[int]] = {}
    for b, (row, p) in enumerate(zip(ids, plens)):
        if not 1 <= p < lengths[b]:
            return None
        groups.setdefault(tuple(row[:p]), []).append(b)
    longest = max(len(prompt) + sum(lengths[b] - len(prompt) for b in members) for prompt, members in groups.items())
    if len(groups) == len(ids) or longest > MAX_PACKED_TOKENS:
        return None

    seqs, positions, segments = [], [], []  # segment: -1 prompt, k = k-th member's completion
    packed_row, packed_pos, targets, rows, cols = [], [], [], [], []
    for g, (prompt, members) in enumerate(groups.items()):
        p = len(prompt)
        seq, pos, seg = list(prompt), list(range(p)), [-1] * p
        for k, b in enumerate(members):
            completion = ids[b][p : lengths[b]]
            start = len(seq)
            seq += completion
            pos += range(p, p + len(completion))
            seg += [k] * len(completion)
            # Row position t predicts token t + 1: t = p - 1 from the shared last prompt token,
            # t >= p from this member's own token t - p in the packed sequence.
            for t in range(p - 1, lengths[b] - 1):
                packed_row.append(g)
                packed_pos.append(p - 1 if t == p - 1 else start + t - p)
                targets.append(ids[b][t + 1])
                rows.append(b)
                cols.append(t)
        seqs.append(seq)
        positions.append(pos)
        segments.append(seg)

    width = max(len(s) for s in seqs)
    device = input_ids.device
    packed_ids = torch.full((len(seqs), width), pad_id, dtype=input_ids.dtype)
    packed_positions = torch.zeros((len(seqs), width), dtype=torch.long)
    seg_t = torch.full((len(seqs), width), -2, dtype=torch.long)  # -2: padding
    for g, (s, q, e) in enumerate(zip(seqs, positions, segments)):
        packed_ids[g, : len(s)] = torch.tensor(s)
        packed_positions[g, : len(q)] = torch.tensor(q)
        seg_t[g, : len(e)] = torch.tensor(e)
    query, key = seg_t[:, :, None], seg_t[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    # A token sees the prompt and its own segment, causally; padding sees only itself (a query
    # with nothing to attend to would give NaN, which backward would spread).
    mask = causal & (key == -1) & (query != -2) | causal & (query == key) & (query >= 0)
    mask |= torch.eye(width, dtype=torch.bool) & (query == -2)
    keep_from = min(packed_pos)
    return PackedRows(
        input_ids=packed_ids.to(device), position_ids=packed_positions.to(device), attention_mask=mask[:, None].to(device),
        keep_from=keep_from, packed_row=torch.tensor(packed_row, device=device),
        packed_pos=torch.tensor(packed_pos, device=device), targets=torch.tensor(targets, device=device),
        row=torch.tensor(rows, device=device), col=torch.tensor(cols, device=device),
        rows_shape=(input_ids.shape[0], input_ids.shape[1] - 1), lengths=[len(q) for q in seqs],
    )


def model_mask(packed: PackedRows, model) -> torch.Tensor:
    """The mask in the form the model's attention takes: bool for sdpa, additive for eager."""
    if model.config._attn_implementation != "eager":
        return packed.attention_mask
    dtype = next(model.parameters()).dtype
    blocked = torch.finfo(dtype).min
    return torch.zeros(packed.attention_mask.shape, dtype=dtype, device=packed.attention_mask.device).masked_fill(
        ~packed.attention_mask, blocked)


def select(logits: torch.Tensor, packed: PackedRows) -> torch.Tensor:
    """[P, S - keep_from, V] logits of the kept packed positions -> [N, V], one per scored token."""
    return logits[packed.packed_row, packed.packed_pos - packed.keep_from]


def unpack(values: torch.Tensor, packed: PackedRows) -> torch.Tensor:
    """[N] per scored token -> the rows' [B, L-1] layout, zeros elsewhere (differentiable)."""
    out = values.new_zeros(packed.rows_shape)
    return out.index_put((packed.row, packed.col), values)
