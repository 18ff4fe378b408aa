"""GGUF export: the file loads back with transformers' GGUF reader as the same model and the same tokenizer."""

import gguf
import pytest
import torch
from conftest import run_cli
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, GPT2Config, GPT2LMHeadModel

import minichatgpt.gguf
from minichatgpt.errors import PipelineError
from minichatgpt.generation import chat_generation_config
from minichatgpt.gguf import export
from minichatgpt.hub import push
from minichatgpt.model.tokenizer import train_tokenizer

TEXTS = ["hello world, how are you today?", "i am fine, thanks. and you?", "what do you like to do on weekends?",
         "i like to read books and watch movies.", "café, naïve, 日本語 and 🤖 are bytes too."]
CONVERSATION = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "how are you today?"},
                {"role": "assistant", "content": "i am fine, thanks."}, {"role": "user", "content": "and you?"}]
EMBEDDING_ROWS = 320  # the tokenizer's ~300 tokens padded to a multiple of 64, as pretrain.py's build_model does


def tiny_gpt2(tokenizer, seed=0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    # Weights larger than GPT-2's initialisation, so that the greedy tokens are not decided by rounding noise.
    return GPT2LMHeadModel(GPT2Config(
        vocab_size=EMBEDDING_ROWS, n_positions=64, n_embd=32, n_layer=2, n_head=2, initializer_range=0.2,
        activation_function="gelu_pytorch_tanh", bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)).eval()


def push_tiny(hub, name, stage):
    tokenizer = train_tokenizer(TEXTS * 20, vocab_size=300, min_frequency=1)
    model = tiny_gpt2(tokenizer)
    model.generation_config = chat_generation_config(tokenizer)

    def write(folder):
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return push(hub, name, write, metadata={"stage": stage}, card_body="# tiny", card_metadata={})


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory):
    return push_tiny(tmp_path_factory.mktemp("hub"), "tiny-sft", "sft")


def load_gguf(path):
    # transformers' GGUF reader maps gpt2.context_length to `n_ctx`, which GPT2Config does not have, and would build
    # 1024 position embeddings: the count is passed as `n_positions`.
    context = int(gguf.GGUFReader(path).fields["gpt2.context_length"].contents())
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, n_positions=context)
    return model.eval(), AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def test_f32_export_is_the_same_model_in_transformers(chat_folder, tmp_path):
    gguf_file, _ = export(chat_folder, tmp_path / "tiny.gguf")
    original = AutoModelForCausalLM.from_pretrained(chat_folder).eval()
    exported, _ = load_gguf(gguf_file)
    assert exported.config.n_positions == original.config.n_positions == 64
    assert exported.get_input_embeddings().weight.shape == (EMBEDDING_ROWS, 32)
    tokenizer = AutoTokenizer.from_pretrained(chat_folder)
    prompt = torch.tensor([tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, return_dict=False)])
    with torch.no_grad():
        torch.testing.assert_close(exported(prompt).logits, original(prompt).logits, rtol=0, atol=1e-4)
    greedy = GenerationConfig(do_sample=False, max_new_tokens=10, eos_token_id=None, pad_token_id=1)
    expected = original.generate(prompt, generation_config=greedy)
    assert expected.shape[1] == prompt.shape[1] + 10
    assert exported.generate(prompt, generation_config=greedy).tolist() == expected.tolist()


def test_f16_export_halves_the_matrices_but_not_the_vectors_and_position_embeddings(chat_folder, tmp_path):
    gguf_file, _ = export(chat_folder, tmp_path / "tiny-f16.gguf", dtype="f16")
    types = {tensor.name: tensor.tensor_type for tensor in gguf.GGUFReader(gguf_file).tensors}
    assert types["token_embd.weight"] == types["blk.0.attn_qkv.weight"] == gguf.GGMLQuantizationType.F16
    assert types["position_embd.weight"] == types["blk.0.attn_qkv.bias"] == gguf.GGMLQuantizationType.F32
    assert "output.weight" not in types, "tied: llama.cpp reuses the token embeddings"
    original = AutoModelForCausalLM.from_pretrained(chat_folder).eval()
    exported, _ = load_gguf(gguf_file)
    prompt = torch.tensor([[4, 40, 50, 60, 2, 5]])
    with torch.no_grad():
        torch.testing.assert_close(exported(prompt).logits.float(), original(prompt).logits, rtol=0, atol=2e-2)


def test_the_tokenizer_and_chat_template_come_back_the_same(chat_folder, tmp_path):
    gguf_file, _ = export(chat_folder, tmp_path / "tiny.gguf")
    _, exported = load_gguf(gguf_file)
    original = AutoTokenizer.from_pretrained(chat_folder)
    rendered = original.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
    assert exported.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False) == rendered
    assert "{% generation %}" not in exported.chat_template
    for text in [*TEXTS, "  two  spaces\nand a new line\tand a tab", "<|user|>hi<|end|><|assistant|>", rendered]:
        ids = original(text)["input_ids"]
        assert exported(text)["input_ids"] == ids, text
        assert exported.decode(ids) == text
    assert (exported.eos_token, exported.pad_token) == (original.eos_token, original.pad_token)
    assert len(exported) == EMBEDDING_ROWS and exported.convert_ids_to_tokens(EMBEDDING_ROWS - 1) == "[PAD319]"
    reader = gguf.GGUFReader(gguf_file)
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert reader.fields["tokenizer.ggml.add_bos_token"].contents() is False


def test_the_modelfile_renders_our_chat_format_with_the_shipped_decoding(chat_folder, tmp_path):
    _, modelfile = export(chat_folder, tmp_path / "tiny.gguf")
    lines = modelfile.read_text().splitlines()
    assert modelfile == tmp_path / "Modelfile"
    assert "FROM ./tiny.gguf" in lines
    assert ('TEMPLATE """{{- range .Messages }}<|{{ .Role }}|>{{ .Content }}<|end|>{{ end }}<|assistant|>"""'
            in lines)
    assert {'PARAMETER stop "<|end|>"', 'PARAMETER stop "<|endoftext|>"', "PARAMETER temperature 0.7",
            "PARAMETER top_p 0.9", "PARAMETER top_k 0", "PARAMETER repeat_penalty 1", "PARAMETER num_predict 64",
            "PARAMETER num_ctx 64"} <= set(lines)


def test_a_base_model_exports_without_chat_template_and_continues_plain_text(tmp_path):
    base = push_tiny(tmp_path / "hub", "tiny-base", "pretrain")
    gguf_file, modelfile = export(base, tmp_path / "base.gguf")
    assert "tokenizer.chat_template" not in gguf.GGUFReader(gguf_file).fields
    assert 'TEMPLATE """{{ .Prompt }}"""' in modelfile.read_text().splitlines()


def test_the_command_writes_both_files(chat_folder, tmp_path):
    result = run_cli(["pipeline/export.py", chat_folder, "--gguf", tmp_path / "tiny.gguf"], check=True)
    assert result.stdout.startswith(f"wrote {tmp_path / 'tiny.gguf'} (")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Modelfile", "tiny.gguf"]


def test_bad_input_is_one_error_line_and_exit_2(tmp_path):
    result = run_cli(["pipeline/export.py", tmp_path / "missing", "--gguf", tmp_path / "x.gguf"])
    assert result.returncode == 2
    assert result.stderr == f"error: {tmp_path / 'missing'}: model not found; run the stage that makes it " \
                                      "first (or fix the path)\n"


def pickle_only(folder):
    folder.mkdir()
    model = tiny_gpt2(train_tokenizer(TEXTS, vocab_size=300, min_frequency=1))
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


@pytest.mark.parametrize("case, message", [
    ("missing model folder", "model not found"),
    ("pickle-only model folder", "only pickle weights"),
    ("output in a missing folder", "does not exist; create it or pick another path"),
])
def test_bad_input_is_refused_before_anything_is_written(chat_folder, tmp_path, case, message):
    model, target = chat_folder, tmp_path / "out" / "tiny.gguf"
    target.parent.mkdir()
    if case == "missing model folder":
        model = tmp_path / "nope"
    elif case == "pickle-only model folder":
        model = pickle_only(tmp_path / "pickled")
    else:
        target = tmp_path / "missing" / "tiny.gguf"
    with pytest.raises(PipelineError, match=message):
        export(model, target)
    assert not target.exists() and not any((tmp_path / "out").iterdir())


def test_a_failed_export_keeps_the_previous_files_and_leaves_no_temporary(chat_folder, tmp_path, monkeypatch):
    gguf_file, modelfile = export(chat_folder, tmp_path / "tiny.gguf")
    before = gguf_file.read_bytes(), modelfile.read_text()

    def disk_full(path, *args):
        path.write_bytes(b"GGUF half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(minichatgpt.gguf, "write_gguf", disk_full)
    with pytest.raises(PipelineError, match="cannot write the export \\(No space left on device\\)"):
        export(chat_folder, gguf_file)
    assert (gguf_file.read_bytes(), modelfile.read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Modelfile", "tiny.gguf"]
