"""Every ```python block and every ```bash `flowvi ...` command of README.md, the Getting started page, the
tutorials and the how-to pages runs, in page order, in a fresh directory (so a command can use the run directory an
earlier one wrote), at a reduced size.

The reduction is a fixed, documented substitution, nothing else:

* a command gets the options of ``SMALL[subcommand]`` appended; argparse keeps the last value of an option, so these
  override the page's (``--steps 2000`` runs 20 steps);
* ``--device cuda`` becomes ``--device cpu``;
* in Python, ``steps=N`` becomes ``steps=20`` and every other integer literal of 1000 or more (sample counts) 500;
* a Python block whose first line is ``# NAME.py`` is written to that file (a target file the commands use);
* lines that are not ``flowvi`` commands (``pip``, ``export``, ``torchrun``, ...) are not run.

The whole set is slow (minutes on a small CPU): ``pytest -m slow tests/test_docs_examples.py``. The default suite
runs the README's quick starts.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from flowvi.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    "README.md",
    "docs/index.md",
    "docs/tutorials/bayesian.md",
    "docs/tutorials/lattice.md",
    "docs/tutorials/comparing.md",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs" / "howto").glob("*.md")),
]

SMALL = {
    "fit": "--steps 20 --batch-size 64 --layers 2 --eval-samples 1000 --n-samples 200 --init-steps 20 --quiet",
    "nmcmc": "--steps 300 --bins 10",
    "sample": "-n 200",
    "evaluate": "-n 1000",
    "gauge-observables": "-n 500",
    "baseline": "--samples 30 --warmup 30 --chains 4 --particles 64 --moves 2 --repeats 1 --rounds 1 "
    "--local-steps 5 --global-steps 5 --train-steps 5 --quiet",
    "study": "--steps 10 --seeds 1 --eval-samples 500 --layers 2 --hidden 16 --quiet",
    "fit-data": "--steps 5 --eval-every 5 --checkpoint-every 5 --flow-steps 1 --hidden 16 --quiet",
}
NO_SMALL = {("study", "score"), ("targets",)}


def examples(page: str) -> list[tuple[str, str]]:
    """``(kind, text)`` in page order: kind ``bash`` (one flowvi command), ``python`` (a block) or ``file``."""
    text = (ROOT / page).read_text()
    out = []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M):
        if lang == "python":
            first = body.splitlines()[0].strip()
            out.append(("file", body) if re.fullmatch(r"# [\w-]+\.py", first) else ("python", body))
        elif lang == "bash":
            for line in body.replace("\\\n", " ").splitlines():
                line = re.sub(r"\s+#.*$", "", line).strip()
                if line.startswith("flowvi "):
                    out.append(("bash", line))
    return out


def small_command(line: str) -> list[str]:
    argv = shlex.split(line)[1:]
    argv = ["cpu" if a == "cuda" and argv[i - 1] == "--device" else a for i, a in enumerate(argv)]
    if tuple(argv[:2]) in NO_SMALL or tuple(argv[:1]) in NO_SMALL:
        return argv
    key = "--" if argv[0].startswith("-") else argv[0]
    extra = SMALL.get(key, "")
    if argv[0] == "nmcmc" and "--hmc" in argv:
        extra += " --hmc 20"
    return argv + extra.split()


def small_python(code: str) -> str:
    code = re.sub(r"\bsteps=[\d_]+", "steps=20", code)
    return re.sub(
        r"(?<![\w.])(\d[\d_]{3,})(?![\w.])", lambda m: "500" if int(m[1].replace("_", "")) >= 1000 else m[1], code
    )


def run_examples(items, workdir: Path, monkeypatch, capsys) -> None:
    examples = workdir / "examples"  # the pages run the repository's example models by their relative path
    if not examples.exists():
        shutil.copytree(ROOT / "examples", examples)
    monkeypatch.chdir(workdir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for kind, text in items:
            if kind == "file":
                (workdir / text.splitlines()[0][2:].strip()).write_text(text)
            elif kind == "python":
                exec(compile(small_python(text), "<docs example>", "exec"), {"__name__": "__docs__"})
            else:
                argv = small_command(text)
                rc = main(argv)
                err = capsys.readouterr().err
                assert rc == 0, f"`{text}` (run as flowvi {' '.join(argv)}) exited {rc}: {err[-2000:]}"
    finally:
        torch.set_num_threads(threads)


def test_extraction_sees_every_block():
    """The extractor finds the README's commands and blocks, and the substitution does what the docstring says."""
    items = examples("README.md")
    commands = [t for k, t in items if k == "bash"]
    assert "flowvi fit conjugate_regression --out runs/reg" in commands
    assert any(k == "file" and t.startswith("# mymodel.py") for k, t in items)
    assert all(c.startswith("flowvi ") for c in commands) and len(commands) > 20
    argv = small_command("flowvi fit funnel --steps 5000 --device cuda")
    assert argv[argv.index("--device") + 1] == "cpu" and argv[-argv[::-1].index("--steps")] == "20"
    assert small_python("fit(flow, target, steps=2000)\nevaluate(flow, target, n=100_000)") == (
        "fit(flow, target, steps=20)\nevaluate(flow, target, n=500)"
    )


def test_readme_quick_starts(tmp_path, monkeypatch, capsys):
    """The default suite: README's command-line quick start, its target file and its Python quick start."""
    items = examples("README.md")
    quick = [it for it in items if it[0] == "bash"][:4]  # targets, fit, evaluate, sample
    python = [it for it in items if it[0] in ("python", "file")]
    assert [t.split()[1] for _, t in quick] == ["targets", "fit", "evaluate", "sample"]
    run_examples(quick + python[:1], tmp_path, monkeypatch, capsys)
    assert (tmp_path / "runs" / "reg" / "summary.json").exists() and (tmp_path / "mymodel.py").exists()
    run_examples([python[1]], tmp_path, monkeypatch, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page, tmp_path, monkeypatch, capsys):
    items = examples(page)
    assert items or page.startswith("docs/howto"), f"{page} has no examples"
    run_examples(items, tmp_path, monkeypatch, capsys)
