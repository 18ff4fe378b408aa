"""The pretrain stage's speed settings, held in place without a GPU: one compiled graph per training step, attention
run causal with no mask on packed blocks (SDPA's kernel, or matmuls for bf16 on a CPU), the same loss as plain SDPA,
no logits out of a training forward, and the loss in chunks equal to transformers' own."""

from types import SimpleNamespace

import pytest
import torch
import yaml
from accelerate import Accelerator
from conftest import ROOT
from datasets import Dataset
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, default_data_collator
from transformers.loss.loss_utils import ForCausalLMLoss

from minichatgpt.arguments import PretrainArguments
from minichatgpt.model.attention import padded_attention
from minichatgpt.model.gpt2 import build_model
from minichatgpt.model.loss import chunked_causal_lm_loss
from minichatgpt.recipe import load_recipe
from minichatgpt.training.defaults import trainer_defaults, trainer_speed_defaults

SHAPE = SimpleNamespace(n_layer=2, n_embd=32, n_head=2, n_positions=16, dropout=0.0)
PLAIN = PretrainArguments(attention="sdpa", loss_only_in_training=False, chunked_loss=False)


class Vocab:
    """What `build_model` reads from a tokenizer: its length and special ids."""

    eos_token_id, pad_token_id = 0, 1

    def __len__(self):
        return 100


def model_with(stage_args: PretrainArguments, seed: int = 0, bf16: bool = False):
    torch.manual_seed(seed)
    return build_model(Vocab(), SHAPE, stage_args, bf16).train()


def packed_blocks(seed: int = 1, batch: int = 4):
    torch.manual_seed(seed)
    return torch.randint(2, 100, (batch, SHAPE.n_positions))


def attention_calls(explained):
    return [node for graph in explained.graphs for node in graph.graph.nodes
            if node.target is torch.nn.functional.scaled_dot_product_attention]


def trace_training_step(attention: str):
    """The stage's training forward as torch.compile sees it under Trainer (wrapped by accelerate for bf16 mixed
    precision): dynamo's graphs, without Inductor's code generation."""
    torch._dynamo.reset()
    blocks = packed_blocks()
    model = Accelerator(mixed_precision="bf16", cpu=True).prepare(model_with(PretrainArguments(attention=attention)))
    return torch._dynamo.explain(model)(input_ids=blocks, labels=blocks)


@pytest.fixture(scope="module")
def traced_training_step():
    return trace_training_step("sdpa_causal")


@pytest.mark.parametrize("attention", ["sdpa_causal", "matmul_causal"])
def test_training_forward_compiles_to_one_graph(attention):
    traced = trace_training_step(attention)
    assert traced.graph_break_count == 0, traced.break_reasons
    assert traced.graph_count == 1


def test_attention_runs_causal_without_a_mask_under_compile(traced_training_step):
    calls = attention_calls(traced_training_step)
    assert len(calls) == SHAPE.n_layer
    for call in calls:
        assert call.kwargs["attn_mask"] is None
        assert call.kwargs["is_causal"] is True


def test_loss_and_gradients_match_plain_sdpa_under_compile():
    """Traced by dynamo without a cache, plain SDPA gets a dense causal mask; the stage's runs causal: same numbers."""
    blocks = packed_blocks()
    results = []
    for stage_args in (PretrainArguments(attention="sdpa_causal"), PretrainArguments(attention="sdpa")):
        torch._dynamo.reset()
        model = model_with(stage_args)
        loss = torch.compile(model, backend="eager")(input_ids=blocks, labels=blocks, use_cache=False).loss
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    (loss, grads), (plain_loss, plain_grads) = results
    assert torch.equal(loss, plain_loss)
    assert all(torch.equal(g, plain_g) for g, plain_g in zip(grads, plain_grads))


def test_trainer_gets_only_the_loss_from_a_bf16_training_step(tmp_path):
    """Through Trainer and accelerate's mixed-precision wrapper, which copies every floating output to fp32."""
    outputs = []
    model = model_with(PretrainArguments())
    model.register_forward_hook(lambda module, args, kwargs, output: outputs.append(output), with_kwargs=True)
    blocks = packed_blocks(batch=8).tolist()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, bf16=True,
                             use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True,
                             **trainer_speed_defaults(cuda=False))
    Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"input_ids": blocks, "labels": blocks}),
            data_collator=default_data_collator).train()
    assert len(outputs) == 2
    assert all(set(output.keys()) == {"loss"} and torch.isfinite(output.loss) for output in outputs)

    model.eval()
    output = model(input_ids=packed_blocks(), labels=packed_blocks())
    assert output.logits.shape == (4, SHAPE.n_positions, 128) and output.loss is not None


def test_the_switches_turn_the_settings_off():
    blocks = packed_blocks()
    model = model_with(PLAIN)
    assert model.config._attn_implementation == "sdpa"
    assert model(input_ids=blocks, labels=blocks).logits is not None
    assert model.loss_function is ForCausalLMLoss


@pytest.mark.parametrize("bf16", [False, True])
def test_matmul_causal_attention_gives_sdpas_loss_and_gradients(bf16):
    blocks = packed_blocks()
    results = []
    for attention in ("sdpa", "matmul_causal"):
        model = model_with(PretrainArguments(attention=attention, chunked_loss=False))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=blocks, labels=blocks).loss
        loss.backward()
        results.append((loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    (expected, expected_grads), (loss, grads) = results
    # bf16 rounds the attention's inputs and outputs in different places in the two kernels.
    tolerance = dict(rtol=2e-2, atol=2e-3) if bf16 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, expected, **tolerance)
    torch.testing.assert_close(grads, expected_grads, **tolerance)


def test_matmul_causal_attention_generates_with_a_cache_as_sdpa_does():
    """Decoding one token at a time over cached keys: the mask must let the new query see every earlier key."""
    prompt = packed_blocks(batch=2)[:, :5]
    generated = [model_with(PretrainArguments(attention=attention)).eval().generate(
                     prompt, max_new_tokens=8, do_sample=False, pad_token_id=1)
                 for attention in ("sdpa", "matmul_causal")]
    assert torch.equal(generated[0], generated[1])


def test_attention_is_matmul_causal_for_bf16_on_a_cpu_and_sdpa_causal_elsewhere():
    on_cpu = not torch.accelerator.is_available()
    in_bf16 = model_with(PretrainArguments(), bf16=True).config._attn_implementation
    assert in_bf16 == ("matmul_causal" if on_cpu else "sdpa_causal")
    assert model_with(PretrainArguments(), bf16=False).config._attn_implementation == "sdpa_causal"


def test_the_loss_is_computed_in_chunks_by_default_exactly_without_an_accelerator():
    chunked = model_with(PretrainArguments()).loss_function is chunked_causal_lm_loss
    assert chunked == (not torch.accelerator.is_available())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_items_in_batch", [None, 700])
def test_the_chunked_loss_is_transformers_causal_lm_loss(monkeypatch, dtype, num_items_in_batch):
    """More rows than one chunk holds, some targets ignored; the loss and its gradient as ForCausalLMLoss gives."""
    monkeypatch.setattr("minichatgpt.model.loss.CHUNK_ELEMENTS", 64 * 1000)
    torch.manual_seed(0)
    logits = (3 * torch.randn(3, 300, 1000)).to(dtype)
    labels = torch.randint(0, 1000, (3, 300))
    labels[:, :40] = -100
    results = []
    for loss_function in (ForCausalLMLoss, chunked_causal_lm_loss):
        leaf = logits.clone().requires_grad_()
        loss = loss_function(leaf, labels, 1000, num_items_in_batch=num_items_in_batch)
        loss.backward()
        results.append((loss.detach(), leaf.grad))
    (expected, expected_grad), (loss, grad) = results
    assert grad.dtype == dtype
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad.float(), expected_grad.float(), rtol=0.01, atol=1e-8)


def test_host_waits_are_off_and_gpu_input_settings_only_with_cuda():
    recipe = load_recipe(ROOT / "recipes" / "smoke.yaml")
    _, cpu = recipe.parse("pretrain", defaults=trainer_defaults(**trainer_speed_defaults(cuda=False)))
    assert not cpu.logging_nan_inf_filter
    assert cpu.dataloader_num_workers == 0 and not cpu.dataloader_pin_memory
    assert not cpu.accelerator_config.non_blocking
    _, gpu = recipe.parse("pretrain", defaults={"bf16": False, **trainer_speed_defaults(cuda=True)})
    assert gpu.dataloader_num_workers == 2 and gpu.dataloader_persistent_workers and gpu.dataloader_pin_memory
    assert gpu.accelerator_config.non_blocking and not gpu.logging_nan_inf_filter


def test_gpu_recipe_loads_with_the_fast_settings():
    path = ROOT / "recipes" / "gpu-124m.yaml"
    recipe = load_recipe(path)
    assert recipe.run_name == "gpu-124m"
    (shape,) = recipe.parse("model")
    assert (shape.n_layer, shape.n_embd, shape.n_head, shape.n_positions) == (12, 768, 12, 1024)
    data, stage, training = recipe.parse_stage("pretrain", [], defaults={"bf16": False})
    assert data.text_sources == ["hub:Salesforce/wikitext:wikitext-103-raw-v1"]
    assert training.torch_compile and training.per_device_train_batch_size == 16
    assert stage.attention is None and stage.loss_only_in_training
    assert yaml.safe_load(path.read_text())["tokenizer"]["vocab_size"] == 50257


def test_padded_batches_get_the_same_logits_from_eager_attention_as_from_sdpa(tmp_path):
    """The later stages' kernel for bf16 on a CPU (padded_attention), loaded as they load the model: a left-padded
    batch gives SDPA's logits wherever there is a token."""
    model_with(PLAIN).save_pretrained(tmp_path)
    ids = packed_blocks(batch=3)
    mask = torch.ones_like(ids)
    mask[0, :6], mask[1, :2] = 0, 0
    ids = ids.masked_fill(mask == 0, 1)
    kernels = {padded_attention(bf16=True), "sdpa"}
    assert kernels == ({"eager", "sdpa"} if not torch.accelerator.is_available() else {"sdpa"})
    logits = [AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=kernel).eval()(
                  input_ids=ids, attention_mask=mask).logits for kernel in sorted(kernels)]
    assert padded_attention(bf16=False) == "sdpa"
    torch.testing.assert_close(logits[0][mask == 1], logits[-1][mask == 1], rtol=1e-5, atol=1e-5)
