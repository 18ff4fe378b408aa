"""Training throughput of the pretrain stage (GPT2LMHeadModel + transformers.Trainer) against a minimal plain-PyTorch
GPT of the same shape, batch, sequence and optimizer, in the same process, on random tokens (no data download).
The stage's model and training settings come from minichatgpt (build_model, pretrain_defaults) with PretrainArguments' defaults, so the
benchmark measures the same speed settings the stage trains with.

    python bench/pretrain_throughput.py                      # 4 x 192, batch 16: this CPU's yardstick
    python bench/pretrain_throughput.py --compile            # on a GPU: GPT-2 124M, 16 x 1024, bf16, compiled

Prints the device, torch and transformers versions, tokens/s of both, their ratio, peak memory of each, and MFU on a
GPU with a known bf16 peak.
"""

import argparse
import resource
import tempfile
import time
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers
from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

from minichatgpt.arguments import PretrainArguments
from minichatgpt.model.gpt2 import build_model
from minichatgpt.training.defaults import trainer_speed_defaults
from minichatgpt.training.throughput import device_peak_flops, flops_per_token

# `quickstart` is the quickstart's shape until 2 December 2026 (it is 4 x 128 since): kept, so that this machine's
# tokens/s quoted beside every timing in docs/results.md stay comparable.
SIZES = {
    "quickstart": dict(n_layer=4, n_embd=192, n_head=4, n_positions=192, vocab=4096, batch=16),
    "gpt2-124m": dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab=50304, batch=16),
}


class MinimalGPT(nn.Module):
    """nanoGPT-style GPT-2: pre-LayerNorm blocks, fused QKV, SDPA causal attention, tied embeddings."""

    def __init__(self, n_layer, n_embd, n_head, n_positions, vocab):
        super().__init__()
        self.n_head = n_head
        self.wte, self.wpe = nn.Embedding(vocab, n_embd), nn.Embedding(n_positions, n_embd)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "ln1": nn.LayerNorm(n_embd), "qkv": nn.Linear(n_embd, 3 * n_embd), "proj": nn.Linear(n_embd, n_embd),
            "ln2": nn.LayerNorm(n_embd), "fc": nn.Linear(n_embd, 4 * n_embd), "out": nn.Linear(4 * n_embd, n_embd),
        }) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab, bias=False)
        self.head.weight = self.wte.weight
        self.apply(lambda m: nn.init.normal_(m.weight, std=0.02) if isinstance(m, (nn.Linear, nn.Embedding)) else None)

    def forward(self, idx, targets):
        b, t = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for blk in self.blocks:
            q, k, v = blk["qkv"](blk["ln1"](x)).split(x.shape[-1], dim=2)
            q, k, v = (z.view(b, t, self.n_head, -1).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, -1)
            x = x + blk["proj"](y)
            x = x + blk["out"](F.gelu(blk["fc"](blk["ln2"](x)), approximate="tanh"))
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory_gib() -> float:
    """Peak GPU memory allocated since the last reset, or the process's peak RSS on a CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def bench_minimal(shape, steps, warmup, device, bf16, compile_model):
    model = MinimalGPT(shape["n_layer"], shape["n_embd"], shape["n_head"], shape["n_positions"], shape["vocab"])
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0, fused=True)
    step_fn = torch.compile(model) if compile_model else model
    idx = torch.randint(0, shape["vocab"], (shape["batch"], shape["n_positions"]), device=device)
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            start = time.time()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = step_fn(idx, idx)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync()
    return steps * shape["batch"] * shape["n_positions"] / (time.time() - start)


class StepTimer(TrainerCallback):
    def __init__(self, warmup):
        self.warmup, self.start, self.steps = warmup, None, 0

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            sync()
            self.start = time.time()
        elif state.global_step > self.warmup:
            self.steps += 1

    def on_train_end(self, args, state, control, **kwargs):
        sync()
        self.seconds = time.time() - self.start


def bench_pipeline(shape, steps, warmup, bf16, compile_model, tmp_dir):
    tokenizer = _FakeVocab(shape["vocab"])
    model = build_model(tokenizer, SimpleNamespace(n_layer=shape["n_layer"], n_embd=shape["n_embd"],
                                                   n_head=shape["n_head"], n_positions=shape["n_positions"],
                                                   dropout=0.0), PretrainArguments(), bf16)
    blocks = torch.randint(0, shape["vocab"], ((warmup + steps) * shape["batch"], shape["n_positions"]))
    data = Dataset.from_dict({"input_ids": blocks.tolist(), "labels": blocks.tolist()}).with_format("torch")
    args = TrainingArguments(output_dir=tmp_dir, max_steps=warmup + steps, per_device_train_batch_size=shape["batch"],
                             learning_rate=3e-4, lr_scheduler_type="cosine", bf16=bf16, torch_compile=compile_model,
                             logging_steps=10**9, save_strategy="no", report_to=[], disable_tqdm=True,
                             **trainer_speed_defaults(torch.cuda.is_available()))
    timer = StepTimer(warmup)
    Trainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator,
            callbacks=[timer]).train()
    return timer.steps * shape["batch"] * shape["n_positions"] / timer.seconds, model.num_parameters()


class _FakeVocab:
    """Stands in for the tokenizer `build_model` reads its vocabulary size and special ids from."""

    def __init__(self, size):
        self.size, self.eos_token_id, self.pad_token_id = size, 0, 1

    def __len__(self):
        return self.size


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default=None, help="default: quickstart on CPU, gpt2-124m on GPU")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    shape = dict(SIZES[args.size or ("gpt2-124m" if gpu else "quickstart")])
    if args.batch:
        shape["batch"] = args.batch
    steps, warmup = args.steps or (50 if gpu else 20), args.warmup or (10 if gpu else 3)
    device = torch.device("cuda" if gpu else "cpu")
    bf16 = gpu and torch.cuda.is_bf16_supported()
    torch.manual_seed(0)

    minimal = bench_minimal(shape, steps, warmup, device, bf16, args.compile)
    minimal_peak = peak_memory_gib()
    if gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp_dir:
        pipeline, n_params = bench_pipeline(shape, steps, warmup, bf16, args.compile, tmp_dir)
    pipeline_peak = peak_memory_gib()
    name = torch.cuda.get_device_name() if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"model {shape['n_layer']}x{shape['n_embd']}, vocab {shape['vocab']}, {n_params / 1e6:.1f}M parameters; "
          f"batch {shape['batch']} x {shape['n_positions']}; {'bf16' if bf16 else 'fp32'}"
          f"{', compiled' if args.compile else ''}; {steps} timed steps after {warmup} warm-up steps")
    per_token = flops_per_token(n_params, shape["n_layer"], shape["n_embd"], shape["n_positions"])
    peak_flops = device_peak_flops()
    memory = "GPU memory" if gpu else "RSS (process, cumulative)"
    for label, rate, peak in (("pipeline (Trainer + GPT2LMHeadModel)", pipeline, pipeline_peak),
                              ("minimal PyTorch GPT", minimal, minimal_peak)):
        mfu = f", MFU {rate * per_token / peak_flops:.1%}" if peak_flops else ""
        print(f"{label:38} {rate:12,.0f} tokens/s{mfu}, peak {memory} {peak:.2f} GiB")
    print(f"ratio pipeline / minimal: {pipeline / minimal:.3f}")
    if peak_flops:
        print(f"MFU: {per_token / 1e6:.0f} MFLOP per token (6N + 12*L*d*T) against a {peak_flops / 1e12:.0f} TFLOP/s "
              "bf16 peak")


if __name__ == "__main__":
    main()
