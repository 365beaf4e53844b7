"""Builds that die, builds that collide, and damaged index files: the index in use is never lost (issue 8).

Real `gistqa index` processes are killed with SIGKILL (no handler runs, as with a power cut or the
OOM killer) on private copies of the corpus and the index (GISTQA_INDEX_DIR / GISTQA_CORPUS_DIR).
After each kill the previous index must load and answer through a fresh Bot, and the next build
must complete and leave no `.tmp-` folder behind.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from filelock import FileLock

from indexer.build import BuildBusy, build_index
from indexer.store import IndexCorrupt, current_build_dir, load_build, read_manifest, verify_files

REPO = Path(__file__).resolve().parents[2]
GISTQA = str(REPO / ".venv" / "bin" / "gistqa")
# The weights file the encoder maps: the ONNX encoder's embedding table, or the torch model's.
MODEL_FILES = ("word_embeddings.npy", "model.safetensors")
Q_DOSE = "KIT exon 9突变患者辅助治疗用多大剂量？"
PROCESS_TIMEOUT_S = 300
FAULTS: list[str] = []  # what was injected and survived, printed at the end of the module


# --- helpers -------------------------------------------------------------------------------------
def _private_copy(root: Path, built_index: Path, corpus_files: list[str] | None = None) -> Path:
    """root/corpus (all of the real corpus, or the named files) and root/index (a copy of the built index)."""
    corpus = root / "corpus"
    if corpus_files is None:
        shutil.copytree(REPO / "corpus", corpus)
    else:
        for rel in ["lexicon.json", *corpus_files]:
            (corpus / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / "corpus" / rel, corpus / rel)
    if built_index is not None:
        shutil.copytree(built_index, root / "index", ignore=shutil.ignore_patterns(".build.lock"))
    return root


def _env(root: Path) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "GISTQA_INDEX_DIR": str(root / "index"), "GISTQA_CORPUS_DIR": str(root / "corpus"),
            "GISTQA_LEXICON_PATH": str(root / "corpus" / "lexicon.json"),
            # Faults of the build itself; the learned decisions (trained on a bank written for the
            # real corpus) have their own tests (tests/bot/test_learn.py).
            "GISTQA_DECISIONS": "rules"}


def _start(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([GISTQA, "index", *args], cwd=root, env=_env(root), text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _run(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([GISTQA, "index", *args], cwd=root, env=_env(root), text=True, capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=PROCESS_TIMEOUT_S)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)


def _entries(root: Path) -> set[str]:
    builds = root / "index" / "builds"
    return set(os.listdir(builds)) if builds.is_dir() else set()


def _tmp_folders(root: Path) -> list[str]:
    return sorted(n for n in _entries(root) if n.startswith(".tmp-"))


def _model_loading(pid: int) -> bool:
    """The process has the model's weights file mapped (or open): the embedder is loading."""
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
            maps = f.read()
        if any(name in maps for name in MODEL_FILES):
            return True
        return any(os.readlink(f"/proc/{pid}/fd/{fd}").endswith(MODEL_FILES) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def _settings_for(settings, root: Path):
    return settings.model_copy(update={"index_dir": root / "index", "corpus_dir": root / "corpus",
                                       "lexicon_path": root / "corpus" / "lexicon.json"})


def _assert_index_answers(settings, root: Path, expected_build: Path) -> None:
    """The index named in CURRENT is `expected_build`, is intact, and a fresh Bot answers from it."""
    from bot.answer import Bot

    assert current_build_dir(root / "index") == expected_build
    index = load_build(root / "index")
    assert index.build_dir == expected_build and index.passages
    result = Bot(_settings_for(settings, root)).answer(Q_DOSE)
    assert not result.refused and result.quotes and all(q.verified for q in result.quotes)


@pytest.fixture(scope="module", autouse=True)
def report_faults(say):
    yield
    say("faults injected and survived:\n  " + "\n  ".join(FAULTS or ["(none)"]))


# --- SIGKILL mid-embedding -----------------------------------------------------------------------
def test_sigkill_mid_embedding_keeps_the_previous_index(tmp_path, built_index, settings, bot):
    root = _private_copy(tmp_path, built_index)
    before = current_build_dir(root / "index")
    entries_before = _entries(root)

    proc = _start(root, "--rebuild")
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    mapped_at = None
    try:
        # The model file is mapped once the embedder loads; a full rebuild then embeds ~280 texts
        # (many seconds). Kill 2.5 s into that, provided nothing has been written yet.
        while proc.poll() is None and time.monotonic() < deadline:
            if mapped_at is None and _model_loading(proc.pid):
                mapped_at = time.monotonic()
            if mapped_at is not None and time.monotonic() - mapped_at >= 2.5:
                break
            time.sleep(0.05)
        new = _entries(root) - entries_before
        assert proc.poll() is None, "the rebuild finished before it could be killed"
        assert not new, f"the build already started writing: {new}"
        proc.send_signal(signal.SIGKILL)
    finally:
        _kill(proc)
    assert proc.returncode == -signal.SIGKILL

    assert _entries(root) == entries_before  # nothing half-written
    _assert_index_answers(settings, root, before)
    FAULTS.append("SIGKILL of `gistqa index --rebuild` while embedding: previous index loads and answers")

    # The next build of the same corpus completes ("up to date", unless the corpus or lexicon was
    # edited since the index was built) and the index it leaves is whole.
    done = _run(root)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "无需更新" in done.stdout or current_build_dir(root / "index") != before
    assert _tmp_folders(root) == []
    assert load_build(root / "index").passages


# --- SIGKILL mid-write ---------------------------------------------------------------------------
def test_sigkill_mid_write_keeps_the_previous_index_and_the_next_build_cleans_up(tmp_path, built_index, settings, bot):
    """The write of a build (files, checksums, fsync, rename, CURRENT) is the same for an update and
    for `--rebuild`; an update after a small corpus change reaches it in seconds instead of
    re-embedding the whole corpus. The write takes tens of milliseconds, so `builds/` is polled
    every millisecond and the process is killed as soon as its `.tmp-` folder appears."""
    root = _private_copy(tmp_path, built_index)
    consensus = root / "corpus" / "consensus_kit_exon9.md"
    killed_mid_write = False
    added = []
    for attempt in range(1, 4):
        before = current_build_dir(root / "index")
        added.append(f"这是第{attempt}段为检验写入中断而新增的文字。")
        with open(consensus, "a", encoding="utf-8") as f:
            f.write("\n\n" + added[-1] + "\n")
        proc = _start(root)
        deadline = time.monotonic() + PROCESS_TIMEOUT_S
        seen = None
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                seen = _tmp_folders(root)
                if seen:
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.001)
        finally:
            _kill(proc)
        if seen and current_build_dir(root / "index") == before:
            killed_mid_write = True
            break
        # Missed the window (the build completed): the new build is the previous one of the next try.
    assert killed_mid_write, "could not catch a build mid-write in 3 tries"
    assert proc.returncode == -signal.SIGKILL

    _assert_index_answers(settings, root, before)
    leftovers = _tmp_folders(root)
    FAULTS.append(f"SIGKILL of `gistqa index` mid-write (attempt {attempt}; left {leftovers or 'no tmp'}): "
                  "previous index loads and answers")

    done = _run(root)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    after = current_build_dir(root / "index")
    assert after is not None and after != before
    assert _tmp_folders(root) == [], "the dead build's .tmp- folder should be cleaned by the next build"
    index = load_build(root / "index")
    assert all(any(text in p.text for p in index.passages) for text in added)
    assert _run(root, "--verify").returncode == 0


# --- two builds at once --------------------------------------------------------------------------
def test_two_rebuilds_at_once_never_leave_a_mixed_index(tmp_path):
    """Two `gistqa index --rebuild` started together on a small corpus (two reference cards, so that
    both embeddings fit the time budget): the second waits for the lock (or refuses with a message).
    Meanwhile and afterwards every load of the index is whole and its checksums verify."""
    root = _private_copy(tmp_path, None, ["references/ref-01.md", "references/ref-02.md"])
    procs = [_start(root, "--rebuild"), _start(root, "--rebuild")]
    loads = 0
    try:
        deadline = time.monotonic() + 2 * PROCESS_TIMEOUT_S
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if current_build_dir(root / "index") is not None:
                index = load_build(root / "index")  # raises IndexCorrupt on a mixed or partial build
                assert {d for d in index.documents} == {"ref-01", "ref-02"}
                loads += 1
            time.sleep(0.25)
        outcomes = [p.communicate(timeout=PROCESS_TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                _kill(p)

    for proc, (out, err) in zip(procs, outcomes):
        assert "Traceback" not in err and "Traceback" not in out
        waited_or_refused = proc.returncode == 0 or (proc.returncode == 2 and "另一个索引构建正在进行" in err)
        assert waited_or_refused, (proc.returncode, err[-2000:])
    assert any(p.returncode == 0 for p in procs)

    build = current_build_dir(root / "index")
    manifest = read_manifest(build)
    assert verify_files(build, manifest) == []
    verify = _run(root, "--verify")
    assert verify.returncode == 0, verify.stderr
    index = load_build(root / "index")
    assert len(index.passages) == manifest["counts"]["passages"]
    assert len(index.sentences) == manifest["counts"]["sentences"]
    for p in index.passages:
        assert index.documents[p.doc_id].text[p.start:p.end] == p.text
    assert _tmp_folders(root) == []
    FAULTS.append(f"two concurrent `gistqa index --rebuild` (exit codes {[p.returncode for p in procs]}, "
                  f"{loads} loads while they ran): one whole index, --verify exits 0")


def test_build_refuses_with_a_clear_message_while_another_holds_the_lock(tmp_settings):
    lock_path = Path(tmp_settings.index_dir) / ".build.lock"
    lock_path.parent.mkdir(parents=True)
    holder = FileLock(str(lock_path))
    holder.acquire()
    try:
        with pytest.raises(BuildBusy) as caught:
            build_index(tmp_settings, lock_timeout_s=0.5)
    finally:
        holder.release()
    message = str(caught.value)
    assert "另一个索引构建正在进行" in message and "another build is running" in message
    assert str(tmp_settings.index_dir) in message
    # Once the other build is done, this one runs (an empty corpus: no model work).
    assert not build_index(tmp_settings, lock_timeout_s=5).noop
    FAULTS.append("build while the lock is held: BuildBusy with a clear message after 0.5 s")


# --- damaged index files -------------------------------------------------------------------------
def test_verify_names_a_damaged_manifest_without_a_traceback(copy_of_index):
    build = current_build_dir(copy_of_index.index_dir)
    (build / "manifest.json").write_text('{"files": ', encoding="utf-8")
    proc = subprocess.run([GISTQA, "index", "--verify"], cwd=copy_of_index.index_dir.parent, text=True,
                          capture_output=True, timeout=PROCESS_TIMEOUT_S,
                          env={**os.environ, "GISTQA_INDEX_DIR": str(copy_of_index.index_dir)})
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-1500:]
    assert proc.returncode == 2 and "索引清单损坏" in proc.stderr and "gistqa index --rebuild" in proc.stderr


@pytest.mark.parametrize("manifest", ["[]", "null", '{"format_version": 1, "files": {"documents.jsonl": {}}}',
                                      '{"format_version": 1, "files": []}'])
def test_a_manifest_of_the_wrong_shape_is_reported_as_corrupt(copy_of_index, manifest):
    """Valid JSON that is not a manifest (a hand edit, a bad merge) must say "rebuild", not crash
    with AttributeError/KeyError (which the CLI and the chat page show as an internal error)."""
    build = current_build_dir(copy_of_index.index_dir)
    (build / "manifest.json").write_text(manifest, encoding="utf-8")
    with pytest.raises(IndexCorrupt, match="rebuild"):
        load_build(copy_of_index.index_dir)
