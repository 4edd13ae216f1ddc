"""Shared fixtures: where the real data sets are, and small models trained once per session.

Real data: Fashion-MNIST from $LENET_EXPORT_TEST_FMNIST, ../shared/datasets/fashion-mnist or Debian's
/usr/share/datasets/fashion-mnist; CIFAR-10 (JPEG copy) from $LENET_EXPORT_TEST_CIFAR or
../shared/datasets/cifar10-jpeg.tar.gz. Tests needing a missing one skip with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest

# Under pytest-xdist (scripts/test.sh), each worker gets its share of the cores for torch's and OpenMP's thread
# pools: two workers each running two threads on two cores slow each other down. Set before torch is imported.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # Linux / others
    _share = max(1, _cores // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, str(_share))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"


def _first(*paths) -> Path | None:
    for p in paths:
        if p and Path(p).exists():
            return Path(p)
    return None


FMNIST_DIR = _first(os.environ.get("LENET_EXPORT_TEST_FMNIST"), SHARED / "fashion-mnist",
                    "/usr/share/datasets/fashion-mnist")
CIFAR_SRC = _first(os.environ.get("LENET_EXPORT_TEST_CIFAR"), SHARED / "cifar10-jpeg.tar.gz")


# verify's oip backends would start two servers from .venv-serve in every all-backend verify of the suite (minutes
# of CI); the tests that judge the endpoint turn them on with serving_on().
SERVE_PYTHON_ENV = "LENET_EXPORT_SERVE_PYTHON"
SERVE_PYTHON = os.environ.get(SERVE_PYTHON_ENV) or REPO / ".venv-serve" / "bin" / "python"
os.environ.setdefault(SERVE_PYTHON_ENV, "")


def serving_on(mp: pytest.MonkeyPatch) -> bool:
    """Let the oip backends start servers ($LENET_EXPORT_SERVE_PYTHON as given, else .venv-serve); False when
    there is no serving environment."""
    if not Path(SERVE_PYTHON).is_file():
        return False
    mp.setenv(SERVE_PYTHON_ENV, str(SERVE_PYTHON))
    return True

# Fixtures that train a model or install npm packages: a test that needs none of them is in the quick tier
# (`bash scripts/test.sh -m quick`: parity rules, format metadata, registries, CLI errors), for the edit-test loop.
HEAVY_FIXTURES = {"fmnist_run", "cifar_run", "runs", "exports", "node_app"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "slow" not in item.keywords and "heavy" not in item.keywords \
                and not HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.quick)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


@pytest.fixture(scope="session")
def fmnist_dir() -> Path:
    if FMNIST_DIR is None:
        pytest.skip("real Fashion-MNIST not found (set LENET_EXPORT_TEST_FMNIST or apt-get install dataset-fashion-mnist)")
    return FMNIST_DIR


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    if CIFAR_SRC is None:
        pytest.skip("CIFAR-10 JPEG archive not found (set LENET_EXPORT_TEST_CIFAR to cifar10-jpeg.tar.gz)")
    return CIFAR_SRC.parent if CIFAR_SRC.is_file() else CIFAR_SRC


def data_dir_for(dataset: str, request) -> Path:
    return request.getfixturevalue("fmnist_dir" if dataset == "fashion-mnist" else "cifar_dir")


def _made_once(tmp_path_factory, name: str, make) -> Path:
    """``make(folder)`` once per test session, by whichever pytest-xdist worker asks first (the others wait on a file
    lock in the folder the workers share); each worker then gets a copy of its own, so a test that writes into or
    beside it cannot disturb another worker's. Without xdist: made in this session's folder, no copy."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.mktemp(name) / name
        make(folder)
        return folder
    shared, done = base.parent / name, base.parent / f"{name}.done"
    with FileLock(base.parent / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(shared, ignore_errors=True)  # a worker that failed half-way
            make(shared)
            done.touch()
    copy = tmp_path_factory.mktemp(name) / name
    shutil.copytree(shared, copy)
    return copy


def _train(tmp_path_factory, dataset: str, data_dir: Path, **kw) -> Path:
    from lenet_export.training.train import TrainConfig, train

    def make(out: Path) -> None:
        train(TrainConfig(dataset=dataset, data_dir=str(data_dir), out=str(out), force=True, **kw), log=lambda _: None)
    return _made_once(tmp_path_factory, f"run-{dataset}", make)


@pytest.fixture(scope="session")
def fmnist_run(tmp_path_factory, fmnist_dir) -> Path:
    """The default Fashion-MNIST model, one epoch on 20,000 training images (~10 s)."""
    return _train(tmp_path_factory, "fashion-mnist", fmnist_dir, epochs=1, train_limit=20000)


@pytest.fixture(scope="session")
def cifar_run(tmp_path_factory, cifar_dir) -> Path:
    """The default CIFAR-10 model, two epochs on 20,000 training images of the JPEG copy (~20 s)."""
    return _train(tmp_path_factory, "cifar10", cifar_dir, epochs=2, train_limit=20000)


@pytest.fixture(scope="session")
def runs(request):
    """{dataset: run folder}, trained lazily."""
    def get(dataset: str) -> Path:
        return request.getfixturevalue("fmnist_run" if dataset == "fashion-mnist" else "cifar_run")
    return get


@pytest.fixture(scope="session")
def exports(tmp_path_factory, runs, request):
    """{dataset: export folder} of the session's trained models (dynamo exporter, TorchScript)."""
    from lenet_export.export import ExportOptions, export

    cache: dict[str, Path] = {}

    def get(dataset: str) -> Path:
        if dataset not in cache:
            run, data_dir = runs(dataset), str(data_dir_for(dataset, request))

            def make(out: Path) -> None:
                export(run / "best.pth", ExportOptions(out=out, data_dir=data_dir), log=lambda _: None)
            cache[dataset] = _made_once(tmp_path_factory, f"export-{dataset}", make)
        return cache[dataset]
    return get


def run_cli(*args: str):
    """Invoke the CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from lenet_export.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def assert_clean_error(result, *fragments: str) -> None:
    """A non-zero exit with exactly one line 'error: ...' on stderr and no traceback."""
    assert result.exit_code != 0, result.output
    err = result.stderr.strip()
    assert err.startswith("error: "), err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in result.output
    for f in fragments:
        assert f in err, err


@pytest.fixture(scope="session")
def node_app(tmp_path_factory):
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node or npm is not installed")
    app = REPO / "examples" / "node"
    if not (app / "node_modules" / "onnxruntime-node").is_dir() or not (app / "node_modules" / "onnx-proto").is_dir():
        r = subprocess.run([npm, "install", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=app,
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            pytest.skip(f"npm install failed (no registry?): {r.stderr.strip().splitlines()[-1:]}")
    return node, app


@pytest.fixture
def zero_calibration(monkeypatch):
    """quantize calibrates on all-zero images (every pixel 0 after decoding): a broken INT8 variant on purpose."""
    import numpy as np

    import lenet_export.quantize as Q

    real = Q.calibration_images

    def zeros(ckpt, opts):
        x, val, cal = real(ckpt, opts)
        z = (0.0 - np.asarray(ckpt["mean"])) / np.asarray(ckpt["std"])
        return np.broadcast_to(z.reshape(1, -1, 1, 1), x.shape).astype(np.float32).copy(), val, cal

    monkeypatch.setattr(Q, "calibration_images", zeros)
