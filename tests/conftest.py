"""Shared fixtures. Every test runs offline, on the CPU, with small data the tests build.

One cache home per test session: the toy data, the estimator trained on it and the tiny SD base are built once
and shared by every module (their caches key on content, not on when they were written). The one joint smoke
sweep (`joint_sweep`) is shared by the report, model, UI and sweep tests. Tests that run a sweep, a cluster or
a browser are marked `slow`; `make test-fast` leaves them out.
"""

from __future__ import annotations

import collections
import os

import pytest

from tests.tools import JOINT_FAMILIES

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
# The two test workers and the sweeps they start share two cores: torch's OpenMP threads spin 1,000 times at a
# barrier, not 300,000, before they sleep, or a 2-thread task beside a busy core mostly spins (docs/measurements.md,
# "Threads beside other processes"). Set before torch loads; the sweeps the tests start inherit it.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")
# A Ray runtime a test starts (in-process or in a sweep it runs as a command) is its own, never one that someone
# started on this machine with `ray start`; tests that mean a cluster pass its address.
os.environ["RAY_ADDRESS"] = "local"


SLOW_FIXTURES = {"joint_sweep"}
SHARED_GROUP = "joint-sweep"
# The groups that take longest, longest first (the --durations of `make test`, docs/measurements.md): the two
# workers start on them, and the many short groups fill in behind on whichever worker is free. pytest-xdist's own
# order (most tests first) put these last, where the suite waited on one worker running them alone.
LONGEST_FIRST = (SHARED_GROUP, "tests.test_orchestration_phases", "tests.test_cluster",
                 "tests.test_orchestration_final_ddp", "tests.test_orchestration_gpus", "tests.test_orchestration_cli",
                 "tests.test_orchestration_mlflow_retry")


def pytest_configure(config: pytest.Config) -> None:
    """--dist loadgroup hands the groups out in the order collected below, not reordered by their number of tests."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def group_rank(group: str, sizes: dict[str, int]) -> tuple[int, int]:
    """LONGEST_FIRST in its order, then the other groups with the most tests first (pytest-xdist's own order)."""
    if group in LONGEST_FIRST:
        return LONGEST_FIRST.index(group), 0
    return len(LONGEST_FIRST), -sizes[group]


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test on the shared sweep is slow like the sweep; so are cluster and browser tests.

    `make test` runs on two pytest-xdist workers with --dist loadgroup: a module's tests stay on one worker (its
    module fixtures are built once) and every test of the shared sweep on one worker (the sweep runs once). The
    groups are ordered longest first (LONGEST_FIRST); within a group the tests keep their order."""
    for item in items:
        shared = SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))
        if shared or item.get_closest_marker("cluster") or item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.slow)
        item.add_marker(pytest.mark.xdist_group(SHARED_GROUP if shared else item.module.__name__))
    group = {item: item.get_closest_marker("xdist_group").args[0] for item in items}
    sizes = collections.Counter(group.values())
    items.sort(key=lambda item: group_rank(group[item], sizes))


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread; on a shared 2-core machine two threads mostly wait for each other.
    Denormals are flushed as in every entry point of the project (models.runtime)."""
    from models.runtime import configure_torch

    configure_torch(1)


@pytest.fixture(scope="session", autouse=True)
def home(tmp_path_factory, worker_id):
    """The session's CONDFACE_HOME (toy data, estimators, tiny bases), set for every test and every process the
    tests start; shared by the xdist workers of one run (each cache is built once, under its file lock). A test
    that needs an empty home sets its own with monkeypatch."""
    base = tmp_path_factory.getbasetemp()
    path = (base.parent if worker_id != "master" else base) / "condface-home"
    path.mkdir(exist_ok=True)
    old = os.environ.get("CONDFACE_HOME")
    os.environ["CONDFACE_HOME"] = str(path)
    yield path
    if old is None:
        os.environ.pop("CONDFACE_HOME", None)
    else:
        os.environ["CONDFACE_HOME"] = old


@pytest.fixture(scope="session")
def data(home) -> str:
    """A small 16 px synthetic face cache (256 train / 64 val / 8 test) in the session's home."""
    from data.synthetic import toy_cache

    return str(toy_cache(size=16, n_train=256, n_val=64, n_test=8, progress=False))


@pytest.fixture(scope="session")
def tiny_bases(data) -> None:
    """The tiny offline bases the smoke sweeps adapt (SD and IF, preset `test`), built once in the session's home,
    pretrained on the first training images of `data`. A sweep that finds none builds it on the embedded default
    cache, drawing 24,000 faces for the 16 it pretrains on."""
    from data.dataset import FaceDataset
    from models.tiny_base import PRESETS as SD_BASES
    from models.tiny_base import ensure_tiny_base
    from models.tiny_if_base import PRESETS as IF_BASES
    from models.tiny_if_base import ensure_tiny_if_base

    for presets, ensure in ((SD_BASES, ensure_tiny_base), (IF_BASES, ensure_tiny_if_base)):
        config = presets["test"]
        ensure(config, dataset=FaceDataset(data, "train", limit=config.train_images))


@pytest.fixture(scope="session")
def joint_sweep(home, data, tiny_bases, tmp_path_factory) -> dict:
    """One finished smoke sweep of every family (`--model all`) with the sampler phase, on a local Ray runtime and a
    real MLflow SQLite store. A Ray runtime of one CPU: one trial at a time (one trial process per grid, which Tune
    reuses) and the lone work on one thread, as the suite's two workers keep both cores busy anyway.
    Read it; do not change what is recorded (every slow module shares it).

    cfg, uri: the resolved config and its tracking URI; out: what run_sweep returned; parent: the sweep's run id;
    client: an MlflowClient on the store; tmp: a folder of its own (the store, Ray storage); data, home.
    """
    import ray
    from mlflow.tracking import MlflowClient

    from orchestration.config import resolve
    from orchestration.driver import run_sweep

    tmp = tmp_path_factory.mktemp("joint-sweep")
    cfg = resolve("smoke", model="all", data=data, tracking_uri=f"sqlite:///{tmp / 'mlruns.db'}",
                  storage_path=str(tmp / "results"), sampler_phase=True, max_concurrent=1)
    assert cfg.model == JOINT_FAMILIES, "tests/tools.py JOINT_FAMILIES lists every family, as --model all runs them"
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        out = run_sweep(cfg, dashboard=False)
    finally:
        if started:
            ray.shutdown()
    client = MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)
    return {"cfg": cfg, "uri": cfg.tracking_uri, "out": out, "parent": out["parent_run_id"], "client": client,
            "tmp": tmp, "data": data, "home": home}
