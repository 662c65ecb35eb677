import contextlib
import os
import tempfile

os.environ["NEMO_GUARDRAILS_NO_USAGE_STATS"] = "1"
# The tests' ONNX exports of their random checkpoints (and the unpacked encoder) in a cache of the
# session's own, so that runs leave nothing behind in the user's ~/.cache/railstack.
_CACHE = tempfile.TemporaryDirectory(prefix="railstack-test-cache-")
os.environ["RAILSTACK_CACHE_DIR"] = _CACHE.name

from pathlib import Path  # noqa: E402
from typing import Iterator  # noqa: E402

import pytest  # noqa: E402

from main_model import MainModelDouble  # noqa: E402
from support import copy_configs, forget, kept_up, stop_kept_up  # noqa: E402


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu"):
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device: torch sees none")


@pytest.fixture(scope="module")
def loopback() -> Iterator[MainModelDouble]:
    """The module's loopback main model. Stopping one takes its server thread ~0.2 s: one per
    module, not per test."""
    model = MainModelDouble().start()
    yield model
    model.stop()


@pytest.fixture
def main_model(loopback) -> MainModelDouble:
    """The loopback main model, as fresh: default answers and latency, no calls recorded."""
    return forget(loopback)


@pytest.fixture(scope="module", autouse=True)
def _no_served_app_outlives_its_module():
    yield
    stop_kept_up()


@pytest.fixture
def configs(tmp_path) -> Path:
    """A copy of the packaged configs root for this test."""
    return copy_configs(tmp_path / "configs")


@pytest.fixture(scope="module")
def module_configs(tmp_path_factory) -> Path:
    """A copy of the packaged configs root for the module, to add the configs its served app serves."""
    return copy_configs(tmp_path_factory.mktemp("served") / "configs")


@pytest.fixture
def serve(main_model, monkeypatch):
    """``serve(root, warm=(), **env)``: `nemoguardrails server` over the configs root ``root``
    (in-process, as ``with serve(...) as client``), its main model the loopback one and ``env``
    set while it starts (settings are read then). Kept up for later tests of the module that
    serve the same root with the same environment (``support.kept_up``, which builds the
    configs in ``warm`` at once); a root of the test's own gets a fresh app."""
    monkeypatch.setenv("MAIN_MODEL_BASE_URL", main_model.base_url)

    def start(root: Path, warm=(), **env: str):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return contextlib.nullcontext(kept_up(root, warm))

    return start


@pytest.fixture
def make_config(tmp_path: Path):
    """Write a config dir that uses railstack: config.yml, optional extra flows, config.py."""

    def make(yml: str, colang: str = "", name: str = "cfg") -> Path:
        path = tmp_path / name
        path.mkdir()
        (path / "config.yml").write_text(yml)
        (path / "config.py").write_text("from railstack.nemo import init  # noqa: F401\n")
        if colang:
            (path / "flows.co").write_text(colang)
        return path

    return make


@pytest.fixture(autouse=True)
def fresh_process_state():
    """Rate-limit buckets, bounded stages, engines and config runtimes live for the whole
    process; each test starts with none."""
    from railstack.admission.service import admissions
    from railstack.core import runtimes
    from railstack.engines.pool import pool
    from railstack.overload.health import dependencies
    from railstack.overload.stages import stages

    def reset():
        for registry in (admissions, stages, runtimes, pool, dependencies):
            registry.reset()

    reset()
    yield
    reset()
