"""The project refers to no file outside its own tree.

A clone is all a reader gets: a comment, a doc or a script that cites notes kept
beside the repository, or a path of the machine it was written on, points at
nothing. Every tracked text file is read: relative paths must stay inside the tree,
every `*.md` named must be one of the tree's, and no path of the workspace appears.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SELF = Path(__file__).resolve()  # names the patterns it looks for: not scanned

# Paths of the workspace this project was written in, and the notes kept outside it.
OUTSIDE = ("/work/", ".library/", "/tmp/bash_jobs", "LAB-NOTES", "../shared")
RELATIVE = re.compile(r"(?:\.\./)+[\w.-]*")
MARKDOWN = re.compile(r"[\w./-]*\b[\w-]+\.md\b")
SKIPPED_DIRS = {".git", ".venv", "__pycache__", "build", "dist", "node_modules"}


def tracked(root: Path = ROOT) -> list[Path]:
    """The files git tracks; in a tree without git, every file but the usual build output."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.CalledProcessError):
        return [
            p
            for p in root.rglob("*")
            if p.is_file() and not SKIPPED_DIRS & set(p.relative_to(root).parts) and ".egg-info" not in str(p)
        ]
    return [root / name for name in out.stdout.decode().split("\0") if name]


def leaks(files: list[Path], root: Path = ROOT) -> list[str]:
    """Each reference out of the tree, as path:line: what it says."""
    names = {p.relative_to(root).as_posix() for p in files} | {p.name for p in files}
    found: list[str] = []
    for path in files:
        if path.resolve() == SELF or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # not text (an image, a key): it cites nothing
        for number, line in enumerate(text.splitlines(), 1):
            where = f"{path.relative_to(root).as_posix()}:{number}"
            found += [f"{where}: {s}" for s in OUTSIDE if s in line]
            for rel in RELATIVE.findall(line):
                target = (path.parent / rel).resolve()
                if not target.is_relative_to(root.resolve()):
                    found.append(f"{where}: {rel} leaves the tree")
            for md in MARKDOWN.findall(line):
                if md.lstrip("./") not in names and Path(md).name not in names:
                    found.append(f"{where}: {md} is not a file of the tree")
    return found


def test_no_tracked_file_refers_outside_the_tree() -> None:
    files = tracked()
    assert ROOT / "README.md" in files and ROOT / "src" / "havedane" / "cli.py" in files  # the tree is read
    found = leaks(files)
    assert not found, "references out of the tree:\n" + "\n".join(found)


def test_the_check_sees_each_kind_of_leak(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "scaling.md").write_text("See ../README.md and ../src/x.py.\n")
    (tmp_path / "README.md").write_text("Facts in docs/scaling.md.\n")
    (tmp_path / "a.py").write_text(
        "# shapes: ../shared/DESIGN.md\n# see DESIGN.md\n# (up to 2 s late, LAB-NOTES)\nPATH = '/work/main/x'\n"
    )
    files = [tmp_path / "docs" / "scaling.md", tmp_path / "README.md", tmp_path / "a.py"]
    assert leaks(files, tmp_path) == [
        "a.py:1: ../shared",
        "a.py:1: ../shared leaves the tree",
        "a.py:1: ../shared/DESIGN.md is not a file of the tree",
        "a.py:2: DESIGN.md is not a file of the tree",
        "a.py:3: LAB-NOTES",
        "a.py:4: /work/",
    ]
