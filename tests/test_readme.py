"""README's two commands are the ones users copy: keep them true to the code and to CI."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_test_command_verbatim():
    blocks = bash_blocks((ROOT / "README.md").read_text())
    train_cmd, test_cmd = blocks[0], blocks[1]
    assert train_cmd.endswith("recpeft train --domain news")
    assert "pytest" in test_cmd
    assert test_cmd in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_flag_table_matches_the_cli_defaults():
    from recpeft.config import TrainConfig

    text = (ROOT / "README.md").read_text()
    cfg = TrainConfig()
    for name in ("max_steps", "batch_size", "lr", "history_len", "eval_every", "patience", "seed"):
        flag = "--" + name.replace("_", "-")
        row = next(line for line in text.splitlines() if line.startswith(f"| `{flag}"))
        assert f"| {getattr(cfg, name)} |" in row or f"| `{getattr(cfg, name)}` |" in row, row
