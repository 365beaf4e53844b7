"""The mutation check: do the tests catch the bugs they exist to catch?

For each deliberate bug of scripts/mutations.py: a temporary copy of the repository (the git-tracked
files as they are in the work tree, the built index, the venv by symlink), the bug applied there,
the guarding tests (and commands, e.g. `gistqa eval`) run there with PYTHONPATH pointing at the
copy, the copy restored. Before the mutations, one control run of every guard on the unmutated copy:
a guard that already fails cannot prove anything, and fails the check.

Prints a Markdown table (mutation, promise, tests that failed, caught) and exits 1 when a mutation
survives, is not applied (its text is no longer in the file), or a guard is missing or broken.

    .venv/bin/python scripts/mutation_check.py            # everything (~20 min on 2 cores)
    .venv/bin/python scripts/mutation_check.py --list     # the mutations and whether each still applies
    .venv/bin/python scripts/mutation_check.py --only history-ignored --only scope-ignored
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from mutations import MUTATIONS, Mutation  # noqa: E402

INDEX_DIR = Path(".gistqa") / "index"  # the built index, copied so that no guard rebuilds it
GUARD_TIMEOUT_S = 1800  # one mutation's tests; a guard that hangs on a bug has caught it
CHILD_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
             "PYTHONDONTWRITEBYTECODE": "1"}


@dataclass
class Outcome:
    mutation: Mutation
    applied: bool = True
    not_found: list[str] = field(default_factory=list)  # edits whose old text is not (exactly once) in the file
    missing: list[str] = field(default_factory=list)  # listed test files that do not exist
    ran: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # the run itself went wrong (a node id not found, a timeout)
    seconds: float = 0.0

    @property
    def caught(self) -> bool:
        return self.applied and bool(self.failed)


# --- the copy ---------------------------------------------------------------------------------
def make_copy(root: Path) -> Path:
    """root/repo: the tracked files of the work tree (uncommitted edits included), the built index,
    .venv as a symlink to this repository's; root/shared beside it, as the tests expect."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    copy = root / "repo"
    for name in filter(None, files):
        src = REPO / name.decode()
        if src.is_file():
            dst = copy / name.decode()
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    if (REPO / INDEX_DIR).is_dir():
        shutil.copytree(REPO / INDEX_DIR, copy / INDEX_DIR, ignore=shutil.ignore_patterns(".build.lock"))
    (copy / ".venv").symlink_to((REPO / ".venv").resolve(), target_is_directory=True)
    shared = REPO.parent / "shared"
    if shared.is_dir():
        (root / "shared").symlink_to(shared.resolve(), target_is_directory=True)
    return copy


def reset_index(copy: Path) -> None:
    """A guard may rebuild or damage the copy's index: every run starts from the original."""
    shutil.rmtree(copy / INDEX_DIR.parent, ignore_errors=True)
    if (REPO / INDEX_DIR).is_dir():
        shutil.copytree(REPO / INDEX_DIR, copy / INDEX_DIR, ignore=shutil.ignore_patterns(".build.lock"))


def check_edits(m: Mutation, base: Path) -> list[str]:
    """The edits whose old text is not exactly once in its file (as the file reads before any edit
    of this mutation; a later edit of the same file is checked after the earlier ones)."""
    problems, texts = [], {}
    for e in m.edits:
        path = base / e.file
        if e.file not in texts:
            texts[e.file] = path.read_text(encoding="utf-8") if path.is_file() else None
        text = texts[e.file]
        if text is None:
            problems.append(f"{e.file}: no such file")
            continue
        count = text.count(e.old)
        if count != 1:
            problems.append(f"{e.file}: old text found {count} times: {e.old.strip()[:60]!r}")
            continue
        texts[e.file] = text.replace(e.old, e.new, 1)
    return problems


def apply(m: Mutation, copy: Path) -> dict[Path, str]:
    """Apply the edits; returns the original text of every file touched (to restore)."""
    originals: dict[Path, str] = {}
    for e in m.edits:
        path = copy / e.file
        text = path.read_text(encoding="utf-8")
        originals.setdefault(path, text)
        path.write_text(text.replace(e.old, e.new, 1), encoding="utf-8")
    return originals


def restore(originals: dict[Path, str]) -> None:
    for path, text in originals.items():
        path.write_text(text, encoding="utf-8")


# --- running the guards -------------------------------------------------------------------------
def child_env(copy: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GISTQA_")}  # the defaults, in the copy
    return env | CHILD_ENV | {"PYTHONPATH": str(copy)}


def _node_file(node: str) -> str:
    return node.split("::", 1)[0]


def run_tests(nodes: list[str], copy: Path, work: Path, timeout_s: float) -> tuple[list[str], list[str], list[str]]:
    """(ran, failed, errors): the test ids that ran and failed, by pytest's JUnit report; errors when
    pytest could not run what it was given (a node id not found, a timeout)."""
    if not nodes:
        return [], [], []
    report = work / "junit.xml"
    report.unlink(missing_ok=True)
    cmd = [str(copy / ".venv" / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
           f"--junitxml={report}", *nodes]
    try:
        proc = subprocess.run(cmd, cwd=copy, env=child_env(copy), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return [], [], [f"timeout after {timeout_s:.0f} s"]
    errors = []
    if proc.returncode in (2, 3, 4, 5) and not report.is_file():
        errors.append(f"pytest exit {proc.returncode}: {proc.stdout.strip().splitlines()[-1:] or proc.stderr[-300:]}")
    if proc.returncode == 4 or "not found:" in proc.stdout + proc.stderr:
        lines = [l for l in (proc.stdout + proc.stderr).splitlines() if "not found" in l]
        errors.append("test not found: " + "; ".join(lines[:3]))
    if proc.returncode == 5:
        errors.append("no tests collected")
    ran, failed = [], []
    if report.is_file():
        for case in ET.parse(report).getroot().iter("testcase"):
            node = f"{case.get('classname', '')}::{case.get('name')}"
            ran.append(node)
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(node)
    return ran, failed, errors


def run_command(command: tuple[str, ...], copy: Path, work: Path, timeout_s: float) -> tuple[bool, str]:
    """(failed, label). `gistqa` means the copy's .venv/bin/gistqa; `gistqa eval` writes its reports to work."""
    cmd = [str(copy / ".venv" / "bin" / command[0]), *command[1:]]
    if command[:2] == ("gistqa", "eval"):
        cmd += ["--out", str(work / "eval")]
    label = " ".join(command)
    try:
        proc = subprocess.run(cmd, cwd=copy, env=child_env(copy), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return True, f"{label} (timeout)"
    return proc.returncode != 0, f"{label} (exit {proc.returncode})"


def run_guards(m: Mutation, copy: Path, work: Path) -> Outcome:
    out = Outcome(m)
    t = time.perf_counter()
    nodes = [n for n in m.tests if (copy / _node_file(n)).is_file()]
    out.missing = [n for n in m.tests if n not in nodes]
    reset_index(copy)
    out.ran, out.failed, out.errors = run_tests(nodes, copy, work, GUARD_TIMEOUT_S)
    for command in m.commands:
        reset_index(copy)
        failed, label = run_command(command, copy, work, GUARD_TIMEOUT_S)
        out.ran.append(label)
        if failed:
            out.failed.append(label)
    out.seconds = time.perf_counter() - t
    return out


def control_run(mutations: list[Mutation], copy: Path, work: Path) -> list[str]:
    """Every guard once on the unmutated copy: a guard that fails already proves nothing."""
    nodes = list(dict.fromkeys(n for m in mutations for n in m.tests if (copy / _node_file(n)).is_file()))
    commands = list(dict.fromkeys(c for m in mutations for c in m.commands))
    reset_index(copy)
    _, failed, errors = run_tests(nodes, copy, work, GUARD_TIMEOUT_S * 2)
    problems = [f"fails without any mutation: {f}" for f in failed] + errors
    for command in commands:
        reset_index(copy)
        bad, label = run_command(command, copy, work, GUARD_TIMEOUT_S)
        if bad:
            problems.append(f"fails without any mutation: {label}")
    return problems


# --- reporting ----------------------------------------------------------------------------------
def _short(node: str) -> str:
    return node.split("::", 1)[1] if "::" in node else node


def verdict(o: Outcome) -> str:
    if not o.applied:
        return "NOT APPLIED"
    if o.errors:
        return "ERROR" if not o.failed else "yes (with errors)"
    return "yes" if o.caught else "**NO (survived)**"


def table(outcomes: list[Outcome]) -> str:
    lines = ["| mutation | promise | tests that failed | caught |", "|---|---|---|---|"]
    for o in outcomes:
        if not o.applied:
            failed = "not applied: " + "; ".join(o.not_found)
        else:
            failed = ", ".join(_short(f) for f in o.failed) or "none"
            failed += f" ({len(o.failed)}/{len(o.ran)} failed, {o.seconds:.0f} s)"
            if o.missing:
                failed += "; missing: " + ", ".join(o.missing)
            if o.errors:
                failed += "; errors: " + "; ".join(o.errors)
        lines.append(f"| {o.mutation.name} | {o.mutation.promise} | {failed} | {verdict(o)} |")
    return "\n".join(lines)


def list_mutations(mutations: list[Mutation]) -> None:
    for m in mutations:
        problems = check_edits(m, REPO)
        state = "applies" if not problems else "NOT APPLIED: " + "; ".join(problems)
        missing = [n for n in m.tests if not (REPO / _node_file(n)).is_file()]
        print(f"{m.name}  [{m.promise}]  {state}")
        print(f"    files: {', '.join(dict.fromkeys(e.file for e in m.edits))}")
        for n in m.tests:
            print(f"    test: {n}" + ("   (MISSING)" if n in missing else ""))
        for c in m.commands:
            print(f"    command: {' '.join(c)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Apply each deliberate bug to a copy and run the tests that guard it.")
    parser.add_argument("--list", action="store_true", help="list the mutations, whether each applies, and their guards")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="run only this mutation (repeatable)")
    parser.add_argument("--no-control", action="store_true", help="skip the control run of the guards without mutations")
    args = parser.parse_args(argv)

    mutations = list(MUTATIONS)
    if args.only:
        unknown = [n for n in args.only if n not in {m.name for m in mutations}]
        if unknown:
            print(f"unknown mutation(s): {', '.join(unknown)}; known: {', '.join(m.name for m in mutations)}", file=sys.stderr)
            return 2
        mutations = [m for m in mutations if m.name in args.only]
    if args.list:
        list_mutations(mutations)
        return 0

    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="gistqa-mutation-"))
    try:
        copy = make_copy(root)
        work = root / "work"
        work.mkdir()
        problems: list[str] = []
        if not args.no_control:
            print(f"control run of the guards on the unmutated copy ({copy}) ...", file=sys.stderr, flush=True)
            problems = control_run(mutations, copy, work)
            for p in problems:
                print(f"  {p}", file=sys.stderr)
        outcomes: list[Outcome] = []
        for i, m in enumerate(mutations, start=1):
            not_found = check_edits(m, copy)
            if not_found:
                o = Outcome(m, applied=False, not_found=not_found)
            else:
                originals = apply(m, copy)
                try:
                    o = run_guards(m, copy, work)
                finally:
                    restore(originals)
            outcomes.append(o)
            print(f"[{i}/{len(mutations)}] {m.name}: {verdict(o)} ({len(o.failed)} failed, {o.seconds:.0f} s)",
                  file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(table(outcomes))
    survived = [o.mutation.name for o in outcomes if not o.caught]
    broken = [o.mutation.name for o in outcomes if o.errors]
    minutes = (time.perf_counter() - started) / 60
    print(f"\n{len(outcomes) - len(survived)}/{len(outcomes)} caught · {minutes:.1f} min")
    if problems:
        print("control run: " + "; ".join(problems))
    if broken:
        print("guards broken (not found, timed out) in: " + ", ".join(broken))
    missing = sorted({n for o in outcomes for n in o.missing})
    if missing:
        print("listed but missing (not run): " + ", ".join(missing))
    if survived:
        print("NOT CAUGHT: " + ", ".join(survived))
    return 1 if survived or problems or broken else 0


if __name__ == "__main__":
    sys.exit(main())
