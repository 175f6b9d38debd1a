"""Shared fixtures: the tiny parity model and its reference data."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from .fixture_data import FIXTURE, INPUTS


@pytest.fixture(scope="session")
def manifest() -> dict:
    return json.loads((FIXTURE / "manifest.json").read_text())["inputs"]


@pytest.fixture(scope="session")
def expected() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "expected.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="session")
def preprocessed() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "preprocessed.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="session")
def tiny_model():
    from ib_vectorizer.model import create_model

    return create_model(FIXTURE / "config.json", checkpoint=FIXTURE / "state_dict.pt")


@pytest.fixture(scope="session")
def texts() -> list[str]:
    return json.loads((INPUTS / "texts.json").read_text())


@pytest.fixture(scope="session")
def wire_items(manifest, texts) -> dict[str, list[str]]:
    """Every fixture input in its request list of Weaviate's wire format."""
    from .wire import fixture_wire_items

    return fixture_wire_items(manifest, texts)


def tiny_stack(data_dir):
    """Our inference server (tiny model) plus the real Weaviate: a LocalStack to enter."""
    from ib_vectorizer.options import ModelOptions
    from pipelines.stack import LocalStack

    from .server_process import TINY_ENV

    model = ModelOptions(model=TINY_ENV["IB_MODEL"], checkpoint=TINY_ENV["IB_CHECKPOINT"])
    return LocalStack(data_dir, model)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """One stack per test module."""
    with tiny_stack(tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture(scope="module")
def client(stack):
    connection = stack.client()
    yield connection
    connection.close()


CHROMIUM = "/usr/bin/chromium"  # Debian's, which Playwright drives (make setup installs both)
SCREENSHOTS = Path(__file__).parent / "screenshots"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, request):
    """A fresh page; what it showed at the end is kept in tests/screenshots/."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    yield opened
    SCREENSHOTS.mkdir(exist_ok=True)
    opened.screenshot(path=str(SCREENSHOTS / f"{request.node.name}.png"), full_page=True)
    context.close()


# Built and run with Docker by `make docker-test`, and on Flink and Spark clusters by
# `make dist-test` (each names its folder); not collected by a plain `pytest` or `make test`.
collect_ignore = ["containers", "dist"]


# Every process the suite starts inherits this mark, so the end of the session can find
# what was left running, even a process whose parent is gone.
SESSION_MARK = "IB_TEST_SESSION"


def pytest_configure(config):
    os.environ.setdefault(SESSION_MARK, f"{os.getpid()}-{time.time_ns()}")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    """The suite leaves no process behind: one still running fails the session, and is stopped.

    A child of this very process that ends with it is not counted: the job
    server Beam caches (Prism's, stopped at exit) and multiprocessing's
    forkserver and resource tracker (which end when their parent does).
    """
    from .stack_process import processes_with_environment

    mark = os.environ[SESSION_MARK]
    if not mark.startswith(f"{os.getpid()}-"):
        return  # a pytest run inside a test: the outer session checks
    deadline = time.monotonic() + 10
    while True:
        left = {
            pid: command
            for pid, command in processes_with_environment(SESSION_MARK, mark).items()
            if not _ends_with_this_process(pid, command)
        }
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if not left:
        return
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"  {pid}: {command[:200]}" for pid, command in sorted(left.items())]
    message = "processes left behind by the tests (now killed):\n" + "\n".join(lines)
    if reporter:
        reporter.write_line("")
        reporter.write_line(message, red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


# What a child of the test process runs when it ends with that process.
ENDS_WITH_ITS_PARENT = ("prism", "multiprocessing.forkserver", "multiprocessing.resource_tracker")


def _ends_with_this_process(pid: int, command: str) -> bool:
    from .stack_process import parent_of

    return parent_of(pid) == os.getpid() and any(part in command for part in ENDS_WITH_ITS_PARENT)
