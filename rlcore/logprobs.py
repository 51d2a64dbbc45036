"""Per-token log-probs of a causal LM, computed only where the losses read them.

`model_logprobs` calls the root model's forward (FSDP2's unshard hooks live there) with
`logits_to_keep`, so prompt positions never reach the LM head; with each row's prompt length
the rows that share a prompt run as one packed sequence (rlcore/prompt_sharing.py).
`token_logprobs` turns logits into log-probs (and entropies) without a [N, V] copy.
"""
from __future__ import annotations

import inspect

import torch

from rlcore import prompt_sharing


def model_logprobs(model, input_ids, attention_mask, temperature: float, with_entropy: bool = False,
                   start: int = 0, prompt_len: torch.Tensor | None = None):
    """Log-probs (and, no-grad, entropies) of tokens 1..L-1, as [B, L-1] with zeros before
    position `start`: the LM head runs only on positions start..L-2.

    With `prompt_len` (each row's prompt length), rows that share a prompt run packed: zeros
    then also stand before each row's own prompt end.
    """
    packed = None
    if prompt_len is not None and prompt_sharing.supported(model):
        packed = prompt_sharing.pack(input_ids, attention_mask, prompt_len)
    if packed is not None:
        return _packed_logprobs(model, packed, temperature, with_entropy)
    batch, length = input_ids.shape
    start = min(max(int(start), 0), length - 1)
    logits = _logits(model, start, length - 1, input_ids=input_ids, attention_mask=attention_mask)
    logp, entropy = token_logprobs(logits, input_ids[:, start + 1 :], temperature, with_entropy)
    if start > 0:
        logp = torch.cat([logp.new_zeros(batch, start), logp], dim=1)
        if entropy is not None:
            entropy = torch.cat([entropy.new_zeros(batch, start), entropy], dim=1)
    return logp, entropy


def _packed_logprobs(model, packed: prompt_sharing.PackedRows, temperature: float, with_entropy: bool):
    logits = _logits(model, packed.keep_from, packed.input_ids.shape[1], input_ids=packed.input_ids,
                     attention_mask=prompt_sharing.model_mask(packed, model), position_ids=packed.position_ids)
    logp, entropy = token_logprobs(prompt_sharing.select(logits, packed), packed.targets, temperature, with_entropy)
    return prompt_sharing.unpack(logp, packed), (None if entropy is None else prompt_sharing.unpack(entropy, packed))


def _logits(model, first: int, stop: int, **inputs) -> torch.Tensor:
    """The root model's logits at positions first..stop-1 only, through `logits_to_keep` where
    the model takes it (the LM head then never sees the other positions)."""
    if _keeps_logits(model):
        keep = torch.arange(first, stop, device=inputs["input_ids"].device)
        return model(**inputs, use_cache=False, logits_to_keep=keep).logits
    return model(**inputs, use_cache=False).logits[:, first:stop]


def _keeps_logits(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` (every recent HF causal LM does)."""
    cached = getattr(model, "_rl_keeps_logits", None)
    if cached is None:
        cached = "logits_to_keep" in inspect.signature(type(model).forward).parameters
        model._rl_keeps_logits = cached
    return cached


# Logit elements `token_logprobs` processes at once: 64 MiB fp32 buffers (~340 positions at V = 49k).
LOGIT_CHUNK_ELEMENTS = 1 << 24


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                   with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(logits / T)[target] per position ([..., V] -> [...], fp32) and, without grad,
    the entropy of softmax(logits / T), from one logsumexp per position.

    Same values as `log_softmax(logits.float() / T).gather(target)` (T = 0 or 1: no scaling),
    but the vocabulary is processed in chunks of positions: no [N, V] copy of the logits is
    made or kept for backward (which rebuilds softmax chunk by chunk from the saved logsumexp).
    """
    shape = targets.shape
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    logp, entropy = _TokenLogProbs.apply(flat, targets.reshape(-1), float(temperature), bool(with_entropy))
    return logp.view(shape), (entropy.view(shape) if with_entropy else None)


class _TokenLogProbs(torch.autograd.Function):
    """Forward: per chunk of positions, d = x - max(x) (x = logits / T, in fp32) into one reused
    buffer, logsumexp = max + log sum exp(d), entropy = log z - sum(e^d d) / z. Backward writes
    (onehot(target) - softmax(x)) * grad / T straight into the logits' gradient."""

    @staticmethod
    def forward(ctx, logits, targets, temperature: float, with_entropy: bool):
        n, vocab = logits.shape
        scaled = temperature not in (0.0, 1.0)
        chunk = max(1, min(n, LOGIT_CHUNK_ELEMENTS // max(vocab, 1)))
        logp = torch.empty(n, dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(logp)
        entropy = torch.empty_like(logp) if with_entropy else logp.new_empty(0)
        d_buf = torch.empty((chunk, vocab), dtype=torch.float32, device=logits.device)
        e_buf = torch.empty_like(d_buf) if with_entropy else None
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            x, d = logits[s:e], d_buf[: e - s]
            if logits.dtype == torch.float32 and not scaled:
                top = x.amax(-1)
                torch.sub(x, top[:, None], out=d)
            else:
                if logits.dtype == torch.float32:
                    torch.div(x, temperature, out=d)
                else:
                    d.copy_(x)
                    if scaled:
                        d.div_(temperature)
                top = d.amax(-1)
                d.sub_(top[:, None])
            target_d = d.gather(-1, targets[s:e, None]).squeeze(-1)
            if with_entropy:
                p = torch.exp(d, out=e_buf[: e - s])
                z = p.sum(-1)
                log_z = z.log()
                entropy[s:e] = log_z - p.mul_(d).sum(-1) / z  # -sum p log p, no cancellation
            else:
                log_z = d.exp_().sum(-1).log()
            lse[s:e] = top + log_z
            logp[s:e] = target_d - log_z
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature = temperature
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        logits, targets, lse = ctx.saved_tensors
        temperature = ctx.temperature
        scaled = temperature not in (0.0, 1.0)
        n, vocab = logits.shape
        chunk = max(1, LOGIT_CHUNK_ELEMENTS // max(vocab, 1))
        g = grad_logp.float()
        if scaled:
            g = g / temperature
        grad = torch.empty_like(logits)
        direct = logits.dtype == torch.float32  # else build each chunk in fp32, then cast
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            # d logp / d x = onehot(target) - softmax(x), chained through x = logits / T.
            if direct:
                out, src = grad[s:e], logits[s:e]
            else:
                out = logits[s:e].float()
                src = out
            if scaled:
                torch.div(src, temperature, out=out).sub_(lse[s:e, None])
            else:
                torch.sub(src, lse[s:e, None], out=out)
            out.exp_().mul_(-g[s:e, None])
            out.scatter_add_(-1, targets[s:e, None], g[s:e, None])
            if not direct:
                grad[s:e] = out
        return grad, None, None, None
