"""Dependencies point one way: ``models`` ← ``trainer``; ``models`` ← ``streamer`` ←
``dashboard``. Every import counts, those inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "trainer", "streamer", "dashboard")
ALLOWED = {
    "models": {"models"},
    "trainer": {"trainer", "models"},
    "streamer": {"streamer", "models"},
    "dashboard": {"dashboard", "streamer", "models"},
}


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def test_imports_point_one_way() -> None:
    wrong = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, module in imports_of(path):
                target = module.split(".")[0]
                if target in PACKAGES and target not in ALLOWED[package]:
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not wrong, "imports against the direction:\n" + "\n".join(wrong)


def test_the_live_path_does_not_lean_on_tools() -> None:
    """streamer/tools (clients, benchmarks, the embedded Redis) may use the live path; of
    the live path only the composition (service.py, workers.py) starts a tool, the embedded
    Redis."""
    wrong = []
    for path in sorted((ROOT / "streamer").rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[1] == "tools" or rel.name in ("service.py", "cli.py", "workers.py"):
            continue
        wrong += [f"{rel}:{line} imports {m}" for line, m in imports_of(path)
                  if m.startswith("streamer.tools")]
    assert not wrong, "\n".join(wrong)


def test_the_sample_rate_is_declared_once() -> None:
    """16 kHz is the models' rate, ``models.audio.MODEL_RATE_HZ``: no other module-level
    constant declares it."""
    wrong = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.relative_to(ROOT).as_posix() == "models/audio.py":
                continue
            for node in ast.parse(path.read_text()).body:
                if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                        and node.value.value == 16_000):
                    names = [ast.unparse(t) for t in node.targets]
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} {names} = 16000")
    assert not wrong, "\n".join(wrong)


def test_the_card_renders_without_torch() -> None:
    """The serving install has no PyTorch: the card (and the backbone name it describes,
    a cut encoder included) must render from ``models`` without importing it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from models.card import ModelCard\n"
        "from models.card_markdown import backbone_text, render\n"
        "from models import DEFAULT_MODEL_DIR\n"
        "assert render(ModelCard.load(DEFAULT_MODEL_DIR)).startswith('#')\n"
        "print(backbone_text('whisper-base:4'))\n"
        "print(backbone_text('whisper-base:9'))\n"
        "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out[0].startswith("OpenAI Whisper base encoder") and out[0].endswith(
        "only its lowest 4 layers kept")
    assert out[1] == "whisper-base:9"  # not a valid cut: the name as written
    assert out[2] == "False"
