"""The causal LM loss of `transformers` (ForCausalLMLoss: the same shift, ignore index and reduction), computed a
chunk of rows at a time in fp32 from the logits as the model made them.

transformers upcasts all the logits to fp32 and runs one cross-entropy over them. Under CPU bf16 autocast that is a
copy of every logit to fp32, a log-softmax backward over the whole fp32 matrix and a copy of its gradient back to
bf16, a fifth of a quickstart step on a 2-core CPU. Chunks of rows whose fp32 logits fit in cache do the same
arithmetic in a third of the time (docs/results.md, "The loss in chunks"); the loss agrees to fp32 rounding, the
gradient to bf16's.
"""

import torch
from torch import nn

# 2^20 fp32 logits (4 MB) a chunk: chunks that fit in cache; out of cache the loss took twice as long
# (docs/results.md, "The loss in chunks").
CHUNK_ELEMENTS = 2**20


def row_chunks(logits: torch.Tensor) -> list[slice]:
    """Slices of `logits`' rows holding about CHUNK_ELEMENTS logits each."""
    rows = max(1, CHUNK_ELEMENTS // logits.size(1))
    return [slice(start, start + rows) for start in range(0, logits.size(0), rows)]


class ChunkedCrossEntropy(torch.autograd.Function):
    """Per-row cross-entropy of `logits` (rows × vocabulary, any float dtype) against `targets`; rows whose target is
    `ignore_index` get 0. The forward keeps each row's log-sum-exp; the backward recomputes softmax chunk by chunk."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
        valid = targets != ignore_index
        targets = torch.where(valid, targets, 0)
        log_normalizer = torch.cat([torch.logsumexp(logits[chunk].float(), dim=-1) for chunk in row_chunks(logits)])
        target_logits = logits.gather(1, targets[:, None]).squeeze(1).float()
        ctx.save_for_backward(logits, targets, valid, log_normalizer)
        return torch.where(valid, log_normalizer - target_logits, 0.0)

    @staticmethod
    def backward(ctx, grad_losses: torch.Tensor):
        logits, targets, valid, log_normalizer = ctx.saved_tensors
        scale = torch.where(valid, grad_losses, 0.0)
        grad = torch.empty_like(logits)
        for chunk in row_chunks(logits):
            softmax = (logits[chunk].float() - log_normalizer[chunk, None]).exp_()
            softmax.scatter_add_(1, targets[chunk, None], softmax.new_full((softmax.size(0), 1), -1.0))
            grad[chunk] = softmax.mul_(scale[chunk, None])
        return grad, None, None


def chunked_causal_lm_loss(logits, labels, vocab_size: int, num_items_in_batch=None, ignore_index: int = -100,
                           shift_labels=None, **kwargs) -> torch.Tensor:
    """A drop-in for transformers' ForCausalLMLoss (a model's `loss_function`)."""
    if shift_labels is None:
        shift_labels = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    targets = shift_labels.reshape(-1).to(logits.device)
    losses = ChunkedCrossEntropy.apply(logits.reshape(-1, vocab_size), targets, ignore_index)
    if num_items_in_batch is None:
        return losses.sum() / (targets != ignore_index).sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(losses.device)
    return losses.sum() / num_items_in_batch
