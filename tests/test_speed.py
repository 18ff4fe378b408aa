"""Learning per CPU-minute: bf16 autocast where the machine has native bf16 (and a switch to force either), Muon on
exactly the blocks' weight matrices, and the speedrun bench's report."""

import re
from types import SimpleNamespace

import pytest
import torch
from conftest import launch, run_cli, write_recipe
from datasets import Dataset
from safetensors import safe_open
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator, pipeline

from minichatgpt.arguments import PretrainArguments
from minichatgpt.model.gpt2 import build_model
from minichatgpt.model.optimizers import Muon, MuonWithAdamW, hidden_matrices
from minichatgpt.recipe import load_recipe
from minichatgpt.training.defaults import native_bf16, pretrain_defaults, trainer_defaults

SHAPE = SimpleNamespace(n_layer=3, n_embd=32, n_head=2, n_positions=16, dropout=0.0)


class Vocab:
    eos_token_id, pad_token_id = 0, 1

    def __len__(self):
        return 100


def test_bf16_is_on_by_default_exactly_where_the_cpu_has_bf16_instructions():
    capabilities = torch.cpu.get_capabilities()
    native = any(capabilities.get(name, False) for name in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"))
    assert native_bf16() == native
    assert trainer_defaults()["bf16"] == native


@pytest.mark.parametrize(("precision", "section", "cli", "expected"), [
    ("fp32", {}, [], False),
    ("bf16", {}, [], True),
    ("fp32", {"bf16": True}, [], True),
    ("bf16", {}, ["--bf16", "false"], False),
    ("fp32", {}, ["--bf16", "true"], True),
])
def test_precision_switch_forces_either_and_a_stage_key_or_flag_overrides_it(tmp_path, precision, section, cli,
                                                                              expected):
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", tmp_path, precision=precision, pretrain=section))
    _, training_args = recipe.parse("pretrain", cli, defaults=pretrain_defaults())
    assert training_args.bf16 is expected


def test_auto_precision_follows_the_machine(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", tmp_path))
    for section in ("pretrain", "sft", "reward", "ppo"):
        training_args = recipe.parse(section, defaults=trainer_defaults())[1]
        assert training_args.bf16 is native_bf16()


def test_an_unknown_precision_is_one_clear_error(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path, precision="fp8")
    result = run_cli(["pipeline/run.py", "--config", recipe])
    assert result.returncode == 2
    assert "precision must be one of auto, bf16, fp32, got 'fp8'" in result.stderr
    assert not (tmp_path / "hub").exists()


def test_muon_takes_exactly_the_blocks_weight_matrices():
    model = build_model(Vocab(), SHAPE, PretrainArguments(), bf16=False)
    hidden = hidden_matrices(model)
    expected = {f"transformer.h.{i}.{name}.weight" for i in range(SHAPE.n_layer)
                for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert set(hidden) == expected
    optimizer = MuonWithAdamW(model, lr=1e-3, weight_decay=0.1)
    muon_params = [p for group in optimizer.muon.param_groups for p in group["params"]]
    decayed, undecayed = (group["params"] for group in optimizer.adamw.param_groups)
    parameters = dict(model.named_parameters())
    assert {id(p) for p in muon_params} == {id(parameters[name]) for name in expected}
    # The tied input/output embedding and the position embedding take AdamW with weight decay; norms and biases
    # take it without.
    assert {id(p) for p in decayed} == {id(model.transformer.wte.weight), id(model.transformer.wpe.weight)}
    assert all(p.ndim == 1 for p in undecayed)
    assert len(muon_params) + len(decayed) + len(undecayed) == len(list(model.parameters()))
    assert len(optimizer.param_groups) == 3


def muon_steps(optimizer_class, steps=3, **dtype):
    torch.manual_seed(0)
    model = build_model(Vocab(), SHAPE, PretrainArguments(), bf16=False)
    matrices = [param for name, param in model.named_parameters() if name in set(hidden_matrices(model))]
    optimizer = optimizer_class(matrices, lr=1e-2, weight_decay=0.1, adjust_lr_fn="match_rms_adamw", **dtype)
    ids = torch.randint(2, 100, (4, SHAPE.n_positions))
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return torch.cat([param.flatten() for param in matrices])


def test_muon_takes_torchs_steps_bit_for_bit_in_bf16_and_close_to_them_in_fp32():
    reference = muon_steps(torch.optim.Muon)
    assert torch.equal(muon_steps(Muon, newton_schulz_dtype=torch.bfloat16), reference)
    in_fp32 = muon_steps(Muon, newton_schulz_dtype=torch.float32)
    assert not torch.equal(in_fp32, reference)
    # Three steps of 0.2·sqrt(96)·1e-2 ≈ 0.02 each; bf16 rounds the orthogonalised update to about 1%.
    assert (in_fp32 - reference).abs().max() < 2e-3


def test_muon_orthogonalizes_in_bf16_only_where_the_machine_has_bf16_instructions():
    optimizer = MuonWithAdamW(build_model(Vocab(), SHAPE, PretrainArguments(), bf16=False), lr=1e-3, weight_decay=0.1)
    assert optimizer.muon.newton_schulz_dtype == (torch.bfloat16 if native_bf16() else torch.float32)


def test_a_scheduled_learning_rate_reaches_both_optimizers_and_their_state_round_trips():
    model = build_model(Vocab(), SHAPE, PretrainArguments(), bf16=False)
    optimizer = MuonWithAdamW(model, lr=1e-2, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    ids = torch.randint(2, 100, (2, SHAPE.n_positions))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    scheduler.step()
    assert {group["lr"] for group in optimizer.muon.param_groups + optimizer.adamw.param_groups} == {5e-3}
    restored = MuonWithAdamW(model, lr=1e-2, weight_decay=0.1)
    restored.load_state_dict(optimizer.state_dict())
    for before, after in ((optimizer.muon, restored.muon), (optimizer.adamw, restored.adamw)):
        for param, state in before.state.items():
            for key, value in state.items():
                assert torch.equal(torch.as_tensor(after.state[param][key]), torch.as_tensor(value))


def test_the_trainers_schedule_reaches_muon_and_adamw(tmp_path):
    model = build_model(Vocab(), SHAPE, PretrainArguments(), bf16=False)
    blocks = torch.randint(2, 100, (40, SHAPE.n_positions)).tolist()
    optimizer = MuonWithAdamW(model, lr=1e-2, weight_decay=0.1)
    seen = []

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append({group["lr"] for group in optimizer.muon.param_groups + optimizer.adamw.param_groups})

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=10, per_device_train_batch_size=4, learning_rate=1e-2,
                             lr_scheduler_type="linear", use_cpu=True, report_to=[], save_strategy="no")
    Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"input_ids": blocks, "labels": blocks}),
            data_collator=default_data_collator, optimizers=(optimizer, None), callbacks=[Record()]).train()
    assert [len(lrs) for lrs in seen] == [1] * 10
    assert [round(lrs.pop(), 6) for lrs in seen] == [round(1e-2 * (10 - step) / 10, 6) for step in range(1, 11)]


def test_pretraining_in_bf16_with_muon_learns_and_pushes_fp32_weights_stock_transformers_loads(tmp_path):
    recipe = write_recipe(tmp_path / "fast.yaml", tmp_path, pretrain={"optimizer": "muon", "max_steps": 30,
                                                                     "eval_steps": 10})
    run_cli(["tokenizer/train.py", "--config", recipe], check=True)
    result = launch("pipeline/pretrain.py", recipe, "--bf16", "true", check=True)
    losses = [float(m) for m in re.findall(r"'eval_loss': '([\d.]+)'", result.stdout + result.stderr)]
    assert len(losses) >= 3 and losses == sorted(losses, reverse=True) and losses[-1] < losses[0] - 0.1, losses
    model_dir = tmp_path / "hub" / "fast-base"
    with safe_open(model_dir / "model.safetensors", "pt") as weights:
        assert {weights.get_tensor(name).dtype for name in weights.keys()} == {torch.float32}
    assert "training_precision: bf16 autocast" in (model_dir / "README.md").read_text()
    generator = pipeline("text-generation", model=str(model_dir))
    assert generator("hello", max_new_tokens=5, do_sample=False)[0]["generated_text"].startswith("hello")


def test_the_speedrun_bench_reports_every_field_on_the_smoke_shape(tmp_path):
    recipe = write_recipe(tmp_path / "bench.yaml", tmp_path, pretrain={"optimizer": "muon"})
    run_cli(["tokenizer/train.py", "--config", recipe], check=True)
    result = run_cli(["bench/speedrun.py", "--config", recipe, "--minutes", "0.02", "0.04", "--rounds", "2"],
                     check=True)
    out = result.stdout
    assert re.search(r"speedup bf16/fp32 per round: \d+\.\d\d \d+\.\d\d \(mean \d+\.\d\d ± \d+\.\d\d\)", out)
    assert re.search(r"matmul peak on the model's shapes: fp32 \d+ GFLOP/s, bf16 \d+ GFLOP/s", out)
    assert re.search(r"pipeline fp32: [\d,]+ tokens/s, \d+ GFLOP/s, [\d.]+% of the fp32 matmul peak", out)
    assert re.search(r"pipeline bf16: [\d,]+ tokens/s, \d+ GFLOP/s, [\d.]+% of the bf16 matmul peak", out)
    last = out.strip().splitlines()[-4:]
    assert re.fullmatch(r"speedup bf16/fp32 \d+\.\d\d", last[0])
    assert re.fullmatch(r"mfu_bf16 \d\.\d{3}", last[1])
    assert re.fullmatch(r"loss_at_0.02min old \d+\.\d{3} new \d+\.\d{3}", last[2])
    assert re.fullmatch(r"loss_at_0.04min old \d+\.\d{3} new \d+\.\d{3}", last[3])
