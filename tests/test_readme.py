"""README and docs/ are what users copy from: keep their commands, links, defaults, code and map true.

The README's two commands must stay verbatim (CI runs the second); every relative link in README.md,
docs/ and experiments/README.md must reach a file (and a heading, for #anchors); the defaults docs/cli.md
quotes must be TrainConfig's; the Python blocks must parse (and the README's must run: here, and the
load_many example of docs/python-api.md in tests/test_recommender.py); docs/layout.md must list every
module of the package, and nothing that is gone.
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"


def bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def markdown_files() -> list[Path]:
    return [README, ROOT / "experiments" / "README.md", *sorted(DOCS.glob("*.md"))]


def without_code(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.S)


def anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for line in without_code(path.read_text()).splitlines():
        m = re.match(r"#{1,6} (.*)", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_ci_runs_the_readme_test_command_verbatim():
    blocks = bash_blocks(README.read_text())
    train_cmd, test_cmd = blocks[0], blocks[1]
    assert train_cmd == "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/recpeft train --domain news"
    assert "pytest" in test_cmd
    assert test_cmd in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_stays_short():
    assert len(README.read_text().splitlines()) <= 250, "README.md is the front page: move detail into docs/"


def test_every_relative_link_reaches_a_file_and_heading():
    broken = []
    for md in markdown_files():
        for target in re.findall(r"\]\(([^)\s]+)\)", without_code(md.read_text())):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            dest = (md.parent / file).resolve() if file else md
            if not dest.exists():
                broken.append(f"{md.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{md.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_readme_links_every_docs_page():
    linked = set(re.findall(r"\]\(docs/([^)#\s]+)", README.read_text()))
    assert {p.name for p in DOCS.glob("*.md")} <= linked


def test_documented_defaults_match_the_config():
    from recpeft.config import TrainConfig

    text = (DOCS / "cli.md").read_text()
    cfg = TrainConfig()
    for name in ("max_steps", "batch_size", "lr", "history_len", "eval_every", "patience", "seed"):
        flag = "--" + name.replace("_", "-")
        row = next(line for line in text.splitlines() if line.startswith(f"| `{flag}`"))
        assert f"| {getattr(cfg, name)} |" in row or f"| `{getattr(cfg, name)}` |" in row, row


def test_python_blocks_parse():
    for md in markdown_files():
        for block in python_blocks(md.read_text()):
            ast.parse(block, filename=str(md.relative_to(ROOT)))


def test_readme_python_tour_runs(tiny_adapters, tmp_path, monkeypatch, capsys):
    (block,) = python_blocks(README.read_text())
    (tmp_path / "adapters").mkdir()
    (tmp_path / "adapters" / "news").symlink_to(tiny_adapters["news"])
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("[(Item(") and out[0].count("Item(") == 2


def layout_tree() -> set[str]:
    """The paths docs/layout.md's `recpeft/` block names: one entry a line, two spaces per level."""
    text = (DOCS / "layout.md").read_text()
    block = next(b for b in re.findall(r"```\n(.*?)```", text, flags=re.S) if b.startswith("recpeft/"))
    stack: list[str] = []
    paths = set()
    for line in block.splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        stack[depth:] = [name.rstrip("/")]
        paths.add("/".join(stack))
    return paths


def test_layout_lists_every_module_and_nothing_gone():
    listed = layout_tree()
    package = ROOT / "recpeft"
    modules = {"recpeft/" + str(p.relative_to(package)) for p in package.rglob("*.py")
               if "__pycache__" not in p.parts and "sample" not in p.parts}
    folders = {"recpeft/" + str(p.relative_to(package)) for p in package.rglob("*")
               if p.is_dir() and "__pycache__" not in p.parts and any(p.rglob("*.py"))}
    missing = sorted(m for m in modules if not m.endswith("__init__.py") and m not in listed)
    assert not missing, f"docs/layout.md does not list: {missing}"
    assert folders <= listed, f"docs/layout.md does not list the packages: {sorted(folders - listed)}"
    gone = sorted(p for p in listed if p != "recpeft" and not (ROOT / p).exists())
    assert not gone, f"docs/layout.md lists what is not there: {gone}"
