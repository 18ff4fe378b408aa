import configparser
import importlib.metadata
import json
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from minichatgpt.hub import LIBRARIES, METADATA_FILE

ROOT = Path(__file__).resolve().parents[1]


def installed_versions():
    return {library: importlib.metadata.version(library) for library in LIBRARIES}


def test_every_pushed_model_and_the_report_record_the_library_versions(smoke_run):
    expected = installed_versions()
    made_with = "Made with " + ", ".join(f"{library} {version}" for library, version in expected.items()) + "."
    for stage in ("tokenizer", "base", "sft", "reward", "ppo"):
        folder = smoke_run["hub"] / f"smoke-{stage}"
        assert json.loads((folder / METADATA_FILE).read_text())["library_versions"] == expected, stage
        assert made_with in (folder / "README.md").read_text(), stage
    report = json.loads((smoke_run["runs"] / "smoke" / "eval" / "report.json").read_text())
    assert report["library_versions"] == expected


def test_the_lock_pins_torch_and_every_requirement_of_every_extra():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    lines = setup["options"]["install_requires"].splitlines()
    lines += [line for extra in setup["options.extras_require"].values() for line in extra.splitlines()]
    required = {canonicalize_name(Requirement(line).name) for line in lines if line.strip()}
    assert required - pins.keys() == set(), "setup.cfg names packages constraints.txt lacks; run .ci/lock"
    assert pins["torch"] == "2.13.0"
