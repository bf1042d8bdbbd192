"""Shared fixtures: a tiny shapes world, and an isolated cache directory for every CLI run."""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cmvl.data.shapes.world import ShapesSpec, ensure_shapes_world

# One compute thread per torch process, in this process and every command it starts: `make test` runs one xdist
# worker per core, and a second OpenMP thread in a process only spins against the other worker's on a shared core
# (a tiny training step: 14x slower with 2 threads than with 1 while the 2 cores were busy). Read when torch is
# imported, which nothing above does; a process that imported it already is set directly.
for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")
if "torch" in sys.modules:
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"
TINY_SPEC = ShapesSpec(images={"train": 60, "val": 20, "test": 12}, questions_per_image=5, size=32, seed=3)
# CLI overrides that select the tiny world and tiny training budget.
TINY_WORLD = [
    "dataset.num_images={train:60,val:20,test:12}",
    "dataset.image_size=32",
    "dataset.seed=3",
    "vision.image_size=32",
    "task.min_answer_count=1",
    "data.num_workers=0",
]
# The same world for a task other than VQA (the one task key above is VQA's).
TINY_WORLD_ANY_TASK = [o for o in TINY_WORLD if not o.startswith("task.")]

# A few steps of a small model: enough to train, checkpoint and evaluate through the CLI in seconds.
TINY_TRAINING = [
    "trainer=debug",
    "trainer.limit_val_batches=null",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=3",
    "data.batch_size=16",
    "model.dim=32",
    "vision.encoder.channels=32",
    "text.encoder.hidden_size=32",
    "text.encoder.intermediate_size=64",
    "text.tokenizer.vocab_size=200",
]


# `make test` hands whole files to its 2 workers (--dist loadfile, --no-loadscope-reorder). pytest-xdist's own order
# (files with the most tests first) leaves the files of a few slow tests, each a chain of fresh interpreters that
# signals, DDP and sweeps need, to the end of the queue, where one worker runs the last of them while the other
# waits. These go first instead, slowest first (the idle CI run's order); every other file follows in xdist's order.
SLOW_FILES_FIRST = (
    "tests/training/test_resume.py",
    "tests/training/test_ddp.py",
    "tests/sweeps/test_sweeps.py",
    "tests/training/test_nonfinite.py",
    "tests/models/test_pretrained_decoder.py",
    "tests/training/test_sigint.py",
    "tests/training/test_tracking.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files in SLOW_FILES_FIRST's order, then by how many tests they hold (most first), each file's tests in their
    own order."""

    def file_of(item: pytest.Item) -> str:
        return item.nodeid.split("::")[0]

    counts = collections.Counter(map(file_of, items))

    def rank(item: pytest.Item) -> tuple[int, int]:
        path = file_of(item)
        first = SLOW_FILES_FIRST.index(path) if path in SLOW_FILES_FIRST else len(SLOW_FILES_FIRST)
        return first, -counts[path]

    items.sort(key=rank)  # stable: within a rank, collection order


@pytest.fixture(autouse=True)
def cmvl_logging():
    """Every test starts with the cmvl logger as the CLI sets it up (stderr, default verbosity), so what a test reads
    of cmvl's lines does not depend on which test ran before it in the same worker (one that configured nothing, or
    one that ran `verbosity=quiet` in-process)."""
    from cmvl.log import configure

    configure()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cmvl-cache")
    os.environ["CMVL_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_world(cache_dir) -> Path:
    return ensure_shapes_world(cache_dir / "shapes" / TINY_SPEC.cache_name(), TINY_SPEC)


def run_files(run_dir: Path) -> dict[str, int]:
    """A run's own files and their modification times (not Hydra's record of the latest command, `.hydra/`, nor the
    run lock in `.cmvl/`, which a refused command may write)."""
    files = (
        p for p in run_dir.rglob("*") if p.is_file() and p.relative_to(run_dir).parts[0] not in (".hydra", ".cmvl")
    )
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in files}


@pytest.fixture(scope="session")
def finished_tiny_run(tmp_path_factory, tiny_world):
    """One finished tiny VQA run (TINY_WORLD, TINY_TRAINING: 2 epochs of 3 steps; step00000003.ckpt and
    step00000006.ckpt) for the tests that only read a finished run or are refused by one (run dirs, resume settings,
    one per session instead of one per file): its run directory, with what the command printed beside it
    (`train.out`). A test that would change it copies it first; at the end of the session the fixture checks that
    none of its files changed. Trained in-process: every worker that builds it has imported torch already, and the
    subprocess CLI is trained by the tests about processes (signals, DDP, sweeps)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    result = cli_in_process("train", *TINY_WORLD, *TINY_TRAINING, f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir.parent / "train.out").write_text(result.stdout)
    before = run_files(run_dir)
    yield run_dir
    assert run_files(run_dir) == before, f"a test changed the shared run {run_dir}: copy it first"


def cli_in_process(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`cmvl ARGS` through the same `main()` in this process: for refusals, `data info`, help and training runs whose
    test is not about the process, without paying a fresh interpreter's torch, Lightning and transformers imports
    (several seconds each on 2 busy cores). Output is what the command prints. The root logger's handlers are left
    as they were, as at a process's exit: Hydra's job log (`<run>/train_job.log`) would otherwise take every later
    line of this process into that run's folder."""
    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    root_handlers = list(logging.getLogger().handlers)
    code = 0
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            from cmvl.cli.main import main

            main(list(args))
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        os.chdir(previous)
        for handler in logging.getLogger().handlers:
            if handler not in root_handlers:
                handler.close()
        logging.getLogger().handlers[:] = root_handlers
    return subprocess.CompletedProcess(["cmvl", *args], code, out.getvalue(), err.getvalue())


def run_cli(*args: str, cwd: Path, env_extra: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "PYTHONWARNINGS": "ignore",
        **(env_extra or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "cmvl", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def load_checkpoint_file(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def same_training_state(a: dict, b: dict) -> bool:
    """Two checkpoints hold bit-identical weights and optimizer state."""
    import torch

    weights = all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    return weights and all(torch.equal(sa[p][k], sb[p][k]) for p in sa for k in sa[p])


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str, exit_code: int = 2) -> str:
    """The command failed as a user mistake must: exit `exit_code`, exactly one `cmvl: error:` line on stderr, no
    traceback anywhere; the line contains each of `needles`. Returns the line."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("cmvl: error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    assert result.returncode == exit_code, (result.returncode, result.stderr[-3000:])
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@contextlib.contextmanager
def dataset_untouched(monkeypatch: pytest.MonkeyPatch, *watched: Path):
    """Inside: building a source, reading a table or an image and generating the shapes world raise, and every file
    opened under `watched` is recorded in the yielded list (which a test asserts empty)."""
    from cmvl.data.shapes import world
    from cmvl.data.sources.base import Source

    opened: list[str] = []
    prefixes, active = [str(w) for w in watched], [True]

    def audit(event: str, args: tuple) -> None:
        if active[0] and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
            name = os.fsdecode(args[0])
            if any(name.startswith(p) for p in prefixes):
                opened.append(name)

    sys.addaudithook(audit)  # an audit hook cannot be removed: `active` switches it off afterwards

    def refuse(*args, **kwargs):
        raise AssertionError("the dataset was touched")

    monkeypatch.setattr(Source, "table", refuse)
    monkeypatch.setattr(Source, "open_image", refuse)
    monkeypatch.setattr(world, "ensure_shapes_world", refuse)
    monkeypatch.setattr("cmvl.training.build.build_source", refuse)
    try:
        yield opened
    finally:
        active[0] = False


def exported(checkpoint: Path, out: Path, *args: str) -> dict:
    """`cmvl export ckpt=checkpoint out=out *args` in process: it succeeds, checks its parity, and writes the
    manifest returned."""
    result = cli_in_process("export", f"ckpt={checkpoint}", f"out={out}", *args, cwd=out.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "parity on" in result.stdout
    return json.loads((out / "cmvl_export.json").read_text())


def script_module(name: str):
    """scripts/<name>.py imported as a module named `name` for the test (a generator for a fixture to yield from)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]
