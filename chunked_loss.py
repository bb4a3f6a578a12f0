"""chunked_loss.py: cross-entropy of a language model's output projection without holding all its logits.

A training window of T tokens over a vocabulary of V has T × V logits: at T = 16k and V = 32k that is 2 GiB in
float32, more than the rest of a small model's activations. chunked_cross_entropy computes the loss a chunk of rows
at a time, and under autograd (_LinearCrossEntropy) turns each chunk's logits into their gradients at once, so only
one chunk of logits ever exists and the projection runs once. model.py calls it; nothing here is PoSE.
`python bench_engineering.py --parts=loss` measures it against the plain alternatives.
"""
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


class _LinearCrossEntropy(torch.autograd.Function):
    """The summed cross-entropy of logits h @ weight.T, h (N, dim) and targets (N,), one chunk of rows at a time.

    d loss / d logits = softmax(logits) - onehot(target) is known as soon as a chunk's logits are, so the forward
    pass turns them into that chunk's share of dh and dweight at once and drops them: peak memory is one chunk of
    logits, and the (N, V) projection runs once, where recomputing it in the backward pass (checkpointing) would
    run it twice -- on a small model most of the FLOPs. The backward pass only scales the two gradients."""

    @staticmethod
    def forward(ctx, h, weight, targets, chunk):
        need_h, need_w = ctx.needs_input_grad[:2]
        total = torch.zeros((), device=h.device)
        dh, dw = torch.empty_like(h) if need_h else None, None
        for i in range(0, h.size(0), chunk):
            hc, tc = h[i:i + chunk], targets[i:i + chunk]
            logits = (hc @ weight.t()).float()                            # (n, V)
            scored, t = (tc != -1).unsqueeze(1), tc.clamp(min=0).unsqueeze(1)  # (n, 1): -1 marks an ignored target
            top, target_logit = logits.amax(-1, keepdim=True), logits.gather(1, t)
            p = logits.sub_(top).exp_()                                    # in place: softmax times its sum
            sum_p = p.sum(-1, keepdim=True)
            total += ((sum_p.log() + top - target_logit) * scored).sum()  # logsumexp - the target's logit
            p.mul_(scored / sum_p).scatter_add_(1, t, -scored.float())    # softmax - onehot; 0 where ignored
            p = p.to(weight.dtype)
            if need_h:
                dh[i:i + chunk] = p @ weight
            if need_w:  # summed in the weight's dtype, whatever autocast computes the product in
                dw_chunk = (p.t() @ hc).to(weight.dtype)
                dw = dw_chunk if dw is None else dw.add_(dw_chunk)
        ctx.grads = dh, dw  # neither an input nor an output, so kept on ctx, and scaled in place below
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        if ctx.grads is None:
            raise RuntimeError("chunked_cross_entropy's gradients are precomputed for one backward pass, not two")
        (dh, dw), ctx.grads = ctx.grads, None
        return None if dh is None else dh.mul_(g), None if dw is None else dw.mul_(g), None, None


def chunked_cross_entropy(h, weight, targets, reduction="mean", chunk=1024):
    """Cross-entropy of logits h @ weight.T without ever holding all (B, T, V) of them. Targets of -1 are ignored.

    A sum or mean under autograd is _LinearCrossEntropy's. Per-token losses (reduction "none") under autograd
    recompute each chunk in the backward pass instead: their weight gradient cannot be summed ahead of time."""
    h, targets = h.reshape(-1, h.size(-1)), targets.reshape(-1)
    if reduction != "none" and torch.is_grad_enabled():
        total = _LinearCrossEntropy.apply(h, weight, targets, chunk)
    else:
        def nll(hc, tc):
            return F.cross_entropy((hc @ weight.t()).float(), tc, ignore_index=-1, reduction="none")
        parts = []
        for i in range(0, h.size(0), chunk):
            hc, tc = h[i:i + chunk], targets[i:i + chunk]
            parts.append(checkpoint(nll, hc, tc, use_reentrant=False) if torch.is_grad_enabled() else nll(hc, tc))
        losses = torch.cat(parts)
        if reduction == "none":
            return losses
        total = losses.sum()
    return total if reduction == "sum" else total / (targets != -1).sum().clamp(min=1)
