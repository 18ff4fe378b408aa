import os
import signal
import subprocess
import sys
import textwrap

import pytest
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from pipeline.common import load_model, require_model_folder
from pipeline.errors import PipelineError
from pipeline.hub import REVISIONS_DIR, check_name, check_writable, hub_path, list_hub, push


def tiny_model(seed=0):
    import torch

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=8, n_layer=1, n_head=2))


def push_model(hub, name, model, metrics=None):
    return push(hub, name, model.save_pretrained, metadata={"stage": "pretrain", "parent": "x-tokenizer",
                                                            "metrics": metrics or {}},
                card_body="# card", card_metadata={"library_name": "transformers"})


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", "..", "", "x" * 200, "a b"])
def test_names_that_could_escape_the_hub_are_refused(tmp_path, name):
    with pytest.raises(PipelineError, match="not a valid name"):
        hub_path(tmp_path, name)


def test_push_writes_safetensors_card_metadata_and_keeps_old_revision(tmp_path):
    first = push_model(tmp_path, "run-base", tiny_model(0), {"eval_loss": 2.0})
    assert (first / "model.safetensors").is_file() and not list(first.glob("*.bin"))
    card = (first / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n---\n")
    push_model(tmp_path, "run-base", tiny_model(1))
    (revision,) = (tmp_path / REVISIONS_DIR / "run-base").iterdir()
    old = AutoModelForCausalLM.from_pretrained(revision)
    new = AutoModelForCausalLM.from_pretrained(first)
    assert not old.transformer.wte.weight.equal(new.transformer.wte.weight)
    (row,) = list_hub(tmp_path)
    assert row["name"] == "run-base" and row["stage"] == "pretrain" and row["parent"] == "x-tokenizer"


def test_failed_write_leaves_previous_version_and_no_staging(tmp_path):
    push_model(tmp_path, "run-base", tiny_model(0))

    def broken(folder):
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        push(tmp_path, "run-base", broken, metadata={}, card_body="", card_metadata={})
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "run-base")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".staging")] == []


def test_sigkill_during_push_leaves_previous_version_loadable(tmp_path):
    push_model(tmp_path, "run-base", tiny_model(0))
    before = (tmp_path / "run-base" / "model.safetensors").read_bytes()
    script = textwrap.dedent(f"""
        import time
        from pipeline.hub import push
        def slow(folder):
            (folder / "model.safetensors").write_bytes(b"partial")
            print("writing", flush=True)
            time.sleep(60)
        push({str(tmp_path)!r}, "run-base", slow, metadata={{}}, card_body="", card_metadata={{}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "run-base" / "model.safetensors").read_bytes() == before
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "run-base")


def test_hub_listing_cli(tmp_path):
    push_model(tmp_path, "run-base", tiny_model(0), {"eval_perplexity": 12.5})
    out = subprocess.run([sys.executable, "-m", "pipeline.hub", "list", "--hub_dir", str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    assert "run-base" in out and "eval_perplexity=12.5" in out


def test_only_safetensors_are_loaded(tmp_path):
    import torch

    folder = tmp_path / "pickled"
    folder.mkdir()
    model = tiny_model()
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(PipelineError, match="only pickle weights"):
        load_model(folder, AutoModelForCausalLM, "model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="has no weights"):
        require_model_folder(tmp_path / "empty", "model")


def test_unwritable_hub_is_refused_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(PipelineError, match="hub folder is not writable"):
        check_writable(blocker / "hub")


@pytest.mark.parametrize("name", ["quickstart-ppo", "a.b_c-1", "wikigpt-movie-base"])
def test_check_name_accepts_run_names(name):
    assert check_name(name) == name
