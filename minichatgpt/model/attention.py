"""Which attention kernel each stage trains with.

Packed pretraining blocks have no padding and so need no attention mask. Two kernels for them, registered with
transformers' AttentionInterface under names its mask code does not know, so that it builds no mask for them:

- "sdpa_causal": torch's scaled_dot_product_attention with is_causal=True (FlashAttention or cuDNN on GPUs). Under
  torch.compile plain "sdpa" gets a dense (B, 1, T, T) mask instead, because transformers cannot prove while tracing
  that the blocks are unpadded, which rules those kernels out.
- "matmul_causal": the two matmuls and a softmax, masked causally in place. On a CPU in bf16 autocast this is
  faster at the pipeline's shapes than SDPA's CPU flash kernel, whose blocked loop does not reach oneDNN's bf16 matmul
  rate at head sizes of 32-64.

The stages after it train on padded batches with transformers' own kernels: `padded_attention`. Measured:
docs/results.md, "Attention on the CPU".
"""

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

SDPA_CAUSAL = "sdpa_causal"
MATMUL_CAUSAL = "matmul_causal"


def future_positions(query_length: int, key_length: int, device: torch.device) -> torch.Tensor:
    """True where a query may not see a key: keys after it, queries being the last `query_length` positions."""
    return torch.ones(query_length, key_length, dtype=torch.bool, device=device).triu(key_length - query_length + 1)


def matmul_causal_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                            **kwargs):
    """transformers' eager attention with the causal mask made here rather than passed in (for a (T, T) mask of
    booleans a few microseconds a layer)."""
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    scores = scores.masked_fill(future_positions(query.size(-2), key.size(-2), query.device),
                                torch.finfo(scores.dtype).min)
    weights = nn.functional.softmax(scores, dim=-1).type(value.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2), weights


def register_causal_attention():
    AttentionInterface.register(SDPA_CAUSAL, sdpa_attention_forward)
    AttentionInterface.register(MATMUL_CAUSAL, matmul_causal_attention)


def default_causal_attention(bf16: bool) -> str:
    """matmul_causal for bf16 training on a CPU, where it was measured faster; sdpa_causal elsewhere (on CPUs in fp32
    the two ran within noise of each other)."""
    return MATMUL_CAUSAL if bf16 and not torch.accelerator.is_available() else SDPA_CAUSAL


def padded_attention(bf16: bool) -> str:
    """The attention of the stages that train on padded batches (SFT, reward, RL): transformers' eager attention for
    bf16 on a CPU, where SDPA's CPU kernel with a padding mask was the slower (docs/results.md, "Attention on the
    CPU"), SDPA elsewhere."""
    return "eager" if bf16 and not torch.accelerator.is_available() else "sdpa"
