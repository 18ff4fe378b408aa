"""The GPT-2 that minichatgpt pretrains from scratch, set up for training on packed blocks."""

import math
from functools import wraps

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
)
from transformers.modeling_outputs import CausalLMOutputWithCrossAttentions

from minichatgpt.arguments import PretrainArguments
from minichatgpt.model.attention import default_causal_attention, register_causal_attention
from minichatgpt.model.loss import chunked_causal_lm_loss


def build_model(tokenizer, shape, stage_args: PretrainArguments, bf16: bool) -> GPT2LMHeadModel:
    """A fresh GPT-2 set up for training on packed blocks, in bf16 autocast or not (see PretrainArguments for the
    switches)."""
    pad_to = stage_args.pad_vocab_to_multiple_of
    vocab_size = math.ceil(len(tokenizer) / pad_to) * pad_to
    register_causal_attention()
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=shape.n_positions,
        n_embd=shape.n_embd,
        n_layer=shape.n_layer,
        n_head=shape.n_head,
        resid_pdrop=shape.dropout,
        embd_pdrop=shape.dropout,
        attn_pdrop=shape.dropout,
        # GPT-2's tanh GELU, computed by one fused kernel instead of the Python formula of "gelu_new".
        activation_function="gelu_pytorch_tanh",
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation=stage_args.attention or default_causal_attention(bf16),
    )
    model = GPT2LMHeadModel(config)
    # The class name maps to no loss type, so every forward would log a warning: a graph break under torch.compile.
    model.loss_type = "ForCausalLM"
    if stage_args.loss_only_in_training:
        return_only_the_loss_in_training(model)
    chunked_loss = stage_args.chunked_loss
    if chunked_loss is None:
        # Off on accelerators by default (not measured there): at GPT-2's vocabulary its loop launches thousands of
        # kernels a step.
        chunked_loss = not torch.accelerator.is_available()
    if chunked_loss:
        model.loss_function = chunked_causal_lm_loss
    return model


def return_only_the_loss_in_training(model: GPT2LMHeadModel):
    """Training forwards (with labels) return the loss alone and build no key/value cache.

    With mixed precision, accelerate copies every floating output of the model to fp32: for GPT-2 124M at 16 x 1024
    that is 3.3 GB of logits written every step that Trainer never reads. Evaluation and generation are unchanged."""
    full_forward = model.forward

    @wraps(full_forward)
    def forward(*args, **kwargs):
        if not model.training:
            return full_forward(*args, **kwargs)
        output = full_forward(*args, **{**kwargs, "use_cache": False})
        return output if output.loss is None else CausalLMOutputWithCrossAttentions(loss=output.loss)

    model.forward = forward
