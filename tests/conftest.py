import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from minichatgpt.data.sources import CORNELL_SEPARATOR

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
WIKITEXT = SHARED_DATA / "wikitext-2-raw" / "wiki.test.raw"
CORNELL = SHARED_DATA / "cornell-movie-dialogs-sample"
# Small files of our own in the two corpora's formats (WikiText's raw text; Cornell's separators, in latin-1), so that a
# clone needs nothing beside it.
WIKITEXT_MINI = ROOT / "tests" / "data" / "wikitext-mini" / "wiki.test.raw"
CORNELL_MINI = ROOT / "tests" / "data" / "cornell-mini"


def shared_corpus(path):
    """A corpus of ../shared/data: present in this project's CI, where the test must run; reported as skipped
    elsewhere."""
    if not path.exists():
        if os.environ.get("CI") == "true":
            raise AssertionError(f"{path} is missing; CI has ../shared/data")
        pytest.skip(f"{path} is not beside this clone")
    return path


def run_cli(args, cwd=ROOT, timeout=600, check=False, env=None):
    """Run one of the project's commands as a user would, returning the completed process."""
    result = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def launch(script, recipe, *overrides, processes=1, **kwargs):
    """`accelerate launch` a stage script with the repo's accelerate config (or 2 CPU processes)."""
    if processes > 1:
        head = ["-m", "accelerate.commands.launch", "--quiet", "--multi_gpu", "--num_processes", str(processes)]
    else:
        head = ["-m", "accelerate.commands.launch", "--quiet", "--config_file", ROOT / "accelerate_config.yaml"]
    return run_cli([*head, ROOT / script, "--config", recipe, *overrides], **kwargs)


def write_recipe(path: Path, tmp_root: Path, base: str = "smoke", **changes) -> Path:
    """The `base` recipe (the smoke recipe) with its hub and checkpoints under `tmp_root`, the tiny labeler, and
    sections changed by `changes`."""
    recipe = yaml.safe_load((ROOT / "recipes" / f"{base}.yaml").read_text())
    recipe["hub_dir"] = str(tmp_root / "hub")
    recipe["output_root"] = str(tmp_root / "runs")
    recipe["run_name"] = path.stem
    recipe.setdefault("reward", {})["labeler"] = str(tiny_labelers()["embedder"])
    for section, values in changes.items():
        if isinstance(values, dict):
            recipe.setdefault(section, {}).update(values)
        else:
            recipe[section] = values
    path.write_text(yaml.safe_dump(recipe))
    return path


def seed_hub(smoke_run, tmp_path: Path, run_name: str, *stages: str):
    """Copy the smoke run's finished `stages` into tmp_path/hub under `run_name`; by default what an RL stage reads:
    the tokenizer, base, SFT and reward models. With the reward model come the comparisons it learned, which DPO and
    the evaluation read from the run folder."""
    stages = stages or ("tokenizer", "base", "sft", "reward")
    for stage in stages:
        shutil.copytree(smoke_run["hub"] / f"smoke-{stage}", tmp_path / "hub" / f"{run_name}-{stage}")
    if "reward" in stages:
        shutil.copytree(smoke_run["runs"] / "smoke" / "comparisons", tmp_path / "runs" / run_name / "comparisons")


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB filesystem of its own (a tmpfs: mounting needs root); unmounted afterwards."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The whole smoke chain, run once through `pipeline/run.py` as the README says."""
    root = tmp_path_factory.mktemp("smoke")
    recipe = write_recipe(root / "smoke.yaml", root)
    result = run_cli(["pipeline/run.py", "--config", recipe], check=True, timeout=1200)
    return {"root": root, "recipe": recipe, "hub": root / "hub", "runs": root / "runs", "log": result.stdout}


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def write_cornell(folder, lines, conversations, encoding="iso-8859-1", newline="\n"):
    """A Cornell-format folder: `lines` as (line id, speaker, text), `conversations` as lists of line ids."""
    folder.mkdir(exist_ok=True)
    rows = [CORNELL_SEPARATOR.join([line_id, speaker, "m0", speaker.upper(), text]) for line_id, speaker, text in lines]
    (folder / "movie_lines.txt").write_bytes(newline.join(rows + [""]).encode(encoding))
    rows = [CORNELL_SEPARATOR.join(["u0", "u1", "m0", repr(ids)]) for ids in conversations]
    (folder / "movie_conversations.txt").write_bytes(newline.join(rows + [""]).encode(encoding))
    return folder


def most_lines_missing(folder: Path) -> Path:
    """100 two-line conversations of which only 6 have their lines in movie_lines.txt."""
    lines = [(f"L{i}", f"u{i % 2}", f"line {i}") for i in range(12)]
    return write_cornell(folder, lines, [[f"L{2 * c}", f"L{2 * c + 1}"] for c in range(100)])


LABELER_WORDS = ("hi how are you good fine thanks what do for fun i like movies music dogs cats the a to and is it "
                 "that was going say ask you play guitar piano school work weekend yes no maybe ok lol").split()


@functools.cache
def tiny_labelers() -> dict[str, Path]:
    """Labelers built from config, as a hub id would bring them: a sentence-transformers embedder (a 2-layer BERT with
    mean pooling) and a sequence-classification reward model, sharing one WordPiece tokenizer. Built once per test
    session; every recipe the tests write labels with the embedder (the default labeler is a 420 MB download)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    root = Path(tempfile.mkdtemp(prefix="minichatgpt-labelers-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator([" ".join(LABELER_WORDS)] * 4, vocab_size=200, min_frequency=1)
    wordpiece.save_model(str(root))
    tokenizer = BertTokenizerFast(vocab_file=str(root / "vocab.txt"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=1)
    folders = {"embedder": root / "embedder", "reward_model": root / "reward-model"}
    torch.manual_seed(0)
    BertModel(config).save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    SentenceTransformer(str(root / "bert"), device="cpu").save(str(folders["embedder"]))
    BertForSequenceClassification(config).save_pretrained(folders["reward_model"])
    tokenizer.save_pretrained(folders["reward_model"])
    return folders
