"""The README and docs/ hold together: links and images resolve, the commands name scripts, modules and recipes that
exist, the recipes they name parse, every key of our recipe dataclasses is documented, and the README's test command
is the one CI runs. Fast: nothing is trained."""

import re
from dataclasses import fields
from pathlib import Path

import pytest

from minichatgpt import recipe as config
from minichatgpt.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "recipes" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
RECIPE = re.compile(r"recipes/[\w./-]+\.ya?ml")
SCRIPT = re.compile(r"(?<![\w./-])((?:[\w-]+/)*[\w-]+\.(?:py|sh))\b")
MODULE = re.compile(r"python3? -m ([\w.]+)")


def prose(text: str) -> str:
    """The page without its code blocks and inline code, where link-like text is not a link."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def code_blocks(text: str, languages=("bash", "sh", "shell")) -> list[str]:
    return [body for language, body in FENCE.findall(text) if language in languages]


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower-cased, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen, ids = {}, set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")
        ids.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return ids


def broken_links(page: Path) -> list[str]:
    """Relative links and images of a Markdown page whose file (or heading anchor) does not exist."""
    broken = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no file {file})")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading '#{anchor}' in {file.name})")
    return broken


def named_in_commands(page: Path) -> list[str]:
    """Recipes, scripts and modules that the page's shell code blocks name but the repository lacks."""
    missing = []
    for block in code_blocks(page.read_text(encoding="utf-8")):
        for recipe in RECIPE.findall(block):
            if not (ROOT / recipe).is_file():
                missing.append(recipe)
        for script in SCRIPT.findall(block):
            if not (ROOT / script).is_file():
                missing.append(script)
        for module in MODULE.findall(block):
            if module.split(".")[0] in ("pipeline", "eval", "tokenizer", "bench"):
                path = ROOT / Path(*module.split("."))
                if not path.with_suffix(".py").is_file() and not (path / "__main__.py").is_file():
                    missing.append(f"python -m {module}")
    return missing


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_and_images_resolve(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_commands_name_what_exists(page):
    assert named_in_commands(page) == []


def test_every_recipe_named_in_the_docs_parses():
    named = {recipe for page in PAGES for recipe in RECIPE.findall(page.read_text(encoding="utf-8"))}
    recipes = sorted(r for r in named if not r.startswith("recipes/accelerate/"))
    assert "recipes/quickstart.yaml" in recipes
    for recipe in recipes:
        assert (ROOT / recipe).is_file(), recipe
        load_recipe(ROOT / recipe)
    for accelerate_config in sorted(r for r in named if r.startswith("recipes/accelerate/")):
        assert (ROOT / accelerate_config).is_file(), accelerate_config


def test_the_checks_catch_a_broken_link_and_a_missing_script(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](page.md) [anchor](#title) [gone](nowhere.md) ![img](missing.png) "
                    "[bad anchor](page.md#nothing) `[code](not-a-link.md)` [web](https://example.com/x)\n\n"
                    "```bash\npython pipeline/nope.py --config recipes/nope.yaml\npython -m pipeline.nope\n"
                    "python pipeline/chat.py --config recipes/smoke.yaml\n```\n", encoding="utf-8")
    assert [link.split(" ")[0] for link in broken_links(page)] == ["nowhere.md", "missing.png", "page.md#nothing"]
    assert named_in_commands(page) == ["recipes/nope.yaml", "pipeline/nope.py", "python -m pipeline.nope"]


def test_every_key_of_our_recipe_dataclasses_is_documented():
    page = (ROOT / "docs" / "recipes.md").read_text(encoding="utf-8")
    ours = [config.RecipeArguments] + [config.SECTIONS[section]()[0] for section in config.SECTIONS]
    missing = [f"{cls.__name__}.{f.name}" for cls in ours for f in fields(cls) if f"| `{f.name}` |" not in page]
    assert missing == [], "add these keys to docs/recipes.md (with their help strings)"


def test_the_readme_test_command_is_the_one_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").split("# --- README: run the tests ---\n", 1)[1]
    install, test = ci.strip().splitlines()[:2]
    command = f"python3 -m venv .venv && . .venv/bin/activate && {install} && {test}"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    assert command in [line for block in code_blocks(section) for line in block.splitlines()]


def test_the_project_speaks_of_itself_alone():
    texts = [*PAGES, *sorted((ROOT / "recipes").rglob("*.yaml"))]
    assert [p.name for p in texts if re.search(r"\bis{2}ue", p.read_text(encoding="utf-8"), re.I)] == []
