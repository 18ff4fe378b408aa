import signal
import subprocess
import sys
import textwrap
import threading

import pytest
import yaml
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

import minichatgpt.hub
from minichatgpt.errors import PipelineError
from minichatgpt.hub import (
    METADATA_FILE,
    REVISIONS_DIR,
    add_evaluation,
    card_metadata,
    check_name,
    check_writable,
    hub_path,
    list_hub,
    push,
)
from minichatgpt.model.loading import load_model, require_model_folder, revision_folder


def tiny_model(seed=0, vocab_size=64):
    import torch

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=16, n_embd=8, n_layer=1, n_head=2))


def push_model(hub, name, model, metrics=None, **kwargs):
    return push(hub, name, model.save_pretrained, metadata={"stage": "pretrain", "parent": "x-tokenizer",
                                                            "metrics": metrics or {}},
                card_body="# card", card_metadata={"library_name": "transformers"}, **kwargs)


def revisions(hub, name):
    return sorted(p for p in (hub / REVISIONS_DIR / name).iterdir() if p.is_dir())


def embeddings(folder):
    return AutoModelForCausalLM.from_pretrained(folder).transformer.wte.weight


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
    old, new = revisions(tmp_path, "run-base")
    assert first.is_symlink() and first.resolve() == new.resolve()
    assert not embeddings(old).equal(embeddings(first))
    (row,) = list_hub(tmp_path)
    assert row["name"] == "run-base" and row["stage"] == "pretrain" and row["parent"] == "x-tokenizer"


def test_failed_write_leaves_previous_version_and_no_staging(tmp_path):
    push_model(tmp_path, "run-base", tiny_model(0))

    def broken(folder):
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(PipelineError, match=r"pushing run-base failed \(disk full\); nothing half-written was left, "
                                            r".*run-base still holds its previous model"):
        push(tmp_path, "run-base", broken, metadata={}, card_body="", card_metadata={})
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "run-base")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".staging")] == []


KILLED_PUSH = textwrap.dedent("""
    import os, shutil, signal, sys
    from minichatgpt import hub

    point, hub_dir, source = sys.argv[1:]
    real_replace, real_rmtree = os.replace, shutil.rmtree

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def replace(src, dst):
        swap = os.path.basename(src).startswith(".link-")
        if swap and point == "before swap":
            die()
        real_replace(src, dst)
        if swap and point == "after swap":
            die()

    def rmtree(path, *args, **kwargs):
        if point == "pruning" and hub.REVISIONS_DIR in str(path):
            die()
        real_rmtree(path, *args, **kwargs)

    def write(folder):
        shutil.copytree(source, folder, dirs_exist_ok=True)
        if point == "write":
            weights = folder / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[:100])
            die()

    os.replace, shutil.rmtree = replace, rmtree
    hub.push(hub_dir, "run-base", write, metadata={}, card_body="", card_metadata={}, keep_revisions=0)
""")


@pytest.mark.parametrize("point, survivor", [("write", "old"), ("before swap", "old"), ("after swap", "new"),
                                             ("pruning", "new")])
def test_sigkill_at_any_point_of_a_push_leaves_a_whole_model_at_the_name(tmp_path, point, survivor):
    hub = tmp_path / "hub"
    push_model(hub, "run-base", tiny_model(0))
    tiny_model(1).save_pretrained(tmp_path / "new")
    weights = {"old": (hub / "run-base" / "model.safetensors").read_bytes(),
               "new": (tmp_path / "new" / "model.safetensors").read_bytes()}
    child = subprocess.run([sys.executable, "-c", KILLED_PUSH, point, str(hub), str(tmp_path / "new")])
    assert child.returncode == -signal.SIGKILL, f"the push was not killed at '{point}'"
    assert (hub / "run-base" / "model.safetensors").read_bytes() == weights[survivor]
    assert (hub / "run-base" / METADATA_FILE).is_file() and (hub / "run-base" / "README.md").is_file()
    reference = tiny_model(0 if survivor == "old" else 1).transformer.wte.weight
    assert embeddings(hub / "run-base").equal(reference)
    push_model(hub, "run-base", tiny_model(2))
    assert embeddings(hub / "run-base").equal(tiny_model(2).transformer.wte.weight), "the next push still works"


def test_a_reader_loading_in_a_loop_never_fails_while_the_model_is_pushed(tmp_path):
    models = [tiny_model(seed) for seed in range(11)]
    pushed = [model.transformer.wte.weight for model in models]
    push_model(tmp_path, "run-base", models[0])
    loaded, failures, done = [], [], threading.Event()

    def read():
        while not done.is_set() or len(loaded) < 2:
            try:
                weight = embeddings(tmp_path / "run-base")
                loaded.append(next(i for i, w in enumerate(pushed) if w.equal(weight)))
            except Exception as err:  # a half model, a missing file, weights of no pushed model
                failures.append(repr(err))
                return

    reader = threading.Thread(target=read)
    reader.start()
    for model in models[1:]:
        push_model(tmp_path, "run-base", model)
    done.set()
    reader.join()
    assert failures == []
    assert loaded == sorted(loaded) and len(loaded) >= 2


def test_pushes_of_one_name_from_two_threads_do_not_break_each_other(tmp_path):
    models = [tiny_model(seed) for seed in range(6)]
    failures = []

    def push_three(mine):
        try:
            for model in mine:
                push_model(tmp_path, "run-base", model, keep_revisions=1)
        except Exception as err:  # a staging folder or a revision deleted under the other push
            failures.append(repr(err))

    threads = [threading.Thread(target=push_three, args=(models[i::2],)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == [] and len(revisions(tmp_path, "run-base")) == 2
    assert any(embeddings(tmp_path / "run-base").equal(model.transformer.wte.weight) for model in models[-2:])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".staging")] == []


def test_two_pushes_in_the_same_instant_get_different_revisions(tmp_path, monkeypatch):
    push_model(tmp_path, "run-base", tiny_model(0))
    push_model(tmp_path, "run-base", tiny_model(1))
    assert len(revisions(tmp_path, "run-base")) == 2, "microseconds tell pushes within one second apart"
    monkeypatch.setattr(minichatgpt.hub, "_revision_stamp", lambda: "29991231-235959-999999")
    push_model(tmp_path, "run-base", tiny_model(2))
    push_model(tmp_path, "run-base", tiny_model(3))
    *_, first, second = revisions(tmp_path, "run-base")
    assert (first.name, second.name) == ("29991231-235959-999999", "29991231-235959-999999-1")
    assert embeddings(first).equal(tiny_model(2).transformer.wte.weight)
    assert (tmp_path / "run-base").resolve() == second.resolve()


def test_only_the_last_revisions_are_kept(tmp_path):
    for seed in range(5):
        push_model(tmp_path, "run-base", tiny_model(seed), keep_revisions=2)
    kept = revisions(tmp_path, "run-base")
    assert len(kept) == 3 and (tmp_path / "run-base").resolve() == kept[-1].resolve()
    for folder, seed in zip(kept, (2, 3, 4)):
        assert embeddings(folder).equal(tiny_model(seed).transformer.wte.weight)
    with pytest.raises(PipelineError, match="keep_revisions must be a whole number of at least 0, got -1"):
        push_model(tmp_path, "run-base", tiny_model(5), keep_revisions=-1)


def test_a_hub_of_older_versions_becomes_revisions_on_the_next_push(tmp_path):
    tiny_model(0).save_pretrained(tmp_path / "run-base")
    push_model(tmp_path, "run-base", tiny_model(1))
    old, new = revisions(tmp_path, "run-base")
    assert (tmp_path / "run-base").is_symlink() and (tmp_path / "run-base").resolve() == new.resolve()
    assert embeddings(old).equal(tiny_model(0).transformer.wte.weight)


def card(folder):
    return yaml.safe_load((folder / "README.md").read_text().split("---\n")[1])


def test_adding_an_evaluation_makes_a_revision_and_leaves_the_previous_card_alone(tmp_path):
    push(tmp_path, "run-sft", tiny_model(0).save_pretrained, metadata={"stage": "sft"}, card_body="# card",
         card_metadata=card_metadata("run-base", ["chitchat"], "r.yaml", {"eval_loss": 2.0}, "text-generation"))
    (pushed,) = revisions(tmp_path, "run-sft")
    pushed_card = (pushed / "README.md").read_text()
    add_evaluation(tmp_path, "run-sft", {"eval_perplexity": 12.345678})
    add_evaluation(tmp_path, "run-sft", {"eval_perplexity": 11.0, "recall_at_1": 0.25})
    assert (pushed / "README.md").read_text() == pushed_card
    first_edit, second_edit = revisions(tmp_path, "run-sft")[1:]
    results = card(tmp_path / "run-sft")["model-index"][0]["results"]
    assert results[0]["metrics"] == [{"type": "eval_loss", "value": 2.0}], "the training numbers stay"
    assert results[1:] == [{"task": {"type": "text-generation"},
                            "dataset": {"name": "held-out evaluation", "type": "minichatgpt"},
                            "metrics": [{"type": "eval_perplexity", "value": 11.0},
                                        {"type": "recall_at_1", "value": 0.25}]}]
    assert card(first_edit)["model-index"][0]["results"][1]["metrics"] == [{"type": "eval_perplexity",
                                                                           "value": 12.3457}]
    assert (second_edit / "README.md").read_text().endswith("# card\n\nMade with " +
                                                            pushed_card.split("Made with ")[1])
    assert embeddings(tmp_path / "run-sft").equal(embeddings(pushed))
    with pytest.raises(PipelineError, match="no model of that name in the hub"):
        add_evaluation(tmp_path, "run-ppo", {"win_rate": 0.5})
    with pytest.raises(PipelineError, match="evaluation metrics must be numbers, not win_rate"):
        add_evaluation(tmp_path, "run-sft", {"win_rate": None})


def test_hub_listing_measures_the_linked_revision(tmp_path):
    push_model(tmp_path, "run-base", tiny_model(0, vocab_size=8192))
    push_model(tmp_path, "run-base", tiny_model(1, vocab_size=8192))
    tiny_model(2, vocab_size=8192).save_pretrained(tmp_path / "old-layout")
    rows = {row["name"]: row for row in list_hub(tmp_path)}
    assert set(rows) == {"run-base", "old-layout"}
    current = (tmp_path / "run-base").resolve()
    size = sum(f.stat().st_size for f in current.iterdir())
    assert rows["run-base"]["size_mb"] == round(size / 2**20, 1) > 0
    assert rows["run-base"]["stage"] == "pretrain" and rows["old-layout"]["size_mb"] > 0


def test_hub_listing_cli(tmp_path):
    push_model(tmp_path, "run-base", tiny_model(0), {"eval_perplexity": 12.5})
    out = subprocess.run([sys.executable, "-m", "minichatgpt.hub", "list", "--hub_dir", str(tmp_path)],
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


def test_a_hub_without_room_for_the_models_weights_is_refused_before_training(small_disk):
    small = tiny_model()  # 0.01 MiB of weights
    large = GPT2LMHeadModel(GPT2Config(vocab_size=4096, n_positions=16, n_embd=128, n_layer=1, n_head=2))
    with pytest.raises(PipelineError, match=r"only 1\.0 MiB free on disk, need at least 50\.0 MiB"):
        check_writable(small_disk / "hub", small)
    with pytest.raises(PipelineError, match=r"need at least 5[0-9]\.[0-9] MiB \(the model's weights and 50 MiB"):
        check_writable(small_disk / "hub", large)


def test_a_push_that_fills_the_disk_says_so_in_one_line_and_leaves_the_name_as_it_was(small_disk):
    hub = small_disk / "hub"
    first = push_model(hub, "m", tiny_model(seed=1))
    before = embeddings(first)
    large = GPT2LMHeadModel(GPT2Config(vocab_size=4096, n_positions=16, n_embd=128, n_layer=1, n_head=2))
    with pytest.raises(PipelineError) as failure:
        push_model(hub, "m", large)
    assert str(failure.value).count("\n") == 0
    assert "pushing m failed (No space left on device" in str(failure.value)
    assert f"nothing half-written was left, {hub / 'm'} still holds its" \
           in str(failure.value)
    assert bool((embeddings(hub / "m") == before).all())
    assert sorted(p.name for p in hub.iterdir()) == [".revisions", "m"], "no staging folder is left behind"
    with pytest.raises(PipelineError, match=f"{hub / 'new'} was not created"):
        push_model(hub, "new", large)
    assert not (hub / "new").exists()


def test_one_load_reads_one_revision_whatever_is_pushed_meanwhile(tmp_path):
    push_model(tmp_path, "m", tiny_model(seed=1))
    before = embeddings(tmp_path / "m")
    files = revision_folder(tmp_path / "m")  # what a stage resolves once, before its tokenizer and its weights
    push_model(tmp_path, "m", tiny_model(seed=2))
    assert bool((embeddings(files) == before).all()), "the load began on the old revision and stays on it"
    assert revision_folder(tmp_path / "m") != files and not bool((embeddings(tmp_path / "m") == before).all())
    assert revision_folder(tmp_path / "not-a-link") == tmp_path / "not-a-link"
