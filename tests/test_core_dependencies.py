"""``ib-vectorizer`` runs with the core dependencies alone: no Beam, no weaviate-client.

The server image installs only the core dependencies, so ``serve``, ``embed``,
``download`` and ``bench`` must never import ``pipelines``, ``apache_beam`` or
``weaviate``. Each runs here as a real subprocess in which importing those
fails, as it would where they are not installed (their children too, through
the inherited ``PYTHONPATH``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from ib_vectorizer.server_process import ServerProcess

from .fixture_data import FIXTURE

BLOCKED = ("pipelines", "apache_beam", "weaviate")
BLOCKER = f"""
import importlib.abc
import sys

class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not installed)", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
"""
TINY = ["--model", str(FIXTURE / "config.json"), "--checkpoint", str(FIXTURE / "state_dict.pt")]


@pytest.fixture(scope="module")
def core_env(tmp_path_factory) -> dict[str, str]:
    """An environment whose Python cannot import the optional packages."""
    site = tmp_path_factory.mktemp("core-only")
    (site / "sitecustomize.py").write_text(BLOCKER)
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "IB_LOG_LEVEL": "WARNING"}


def ib_vectorizer(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ib_vectorizer", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


@pytest.mark.parametrize("module", BLOCKED)
def test_the_optional_packages_really_cannot_be_imported(core_env, module):
    result = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, env=core_env
    )
    assert result.returncode != 0 and "not installed" in result.stderr


def test_version_and_help(core_env):
    assert ib_vectorizer(core_env, "--version").returncode == 0
    result = ib_vectorizer(core_env, "--help")
    assert result.returncode == 0
    assert "{embed,classify,download,serve,bench}" in result.stdout  # the stack is ib-stack now


def test_embed(core_env, tmp_path):
    out = tmp_path / "t.npy"
    result = ib_vectorizer(
        core_env, "embed", "--modality", "text", *TINY, "--output", str(out), "hi"
    )
    assert result.returncode == 0, result.stderr
    assert np.load(out).shape == (1, 32)


def test_download(core_env, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "weights.pth").write_bytes(b"\x00weights" * 1000)
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as http:
        threading.Thread(target=http.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{http.server_address[1]}/weights.pth"
        dest = tmp_path / "got" / "weights.pth"
        result = ib_vectorizer(core_env, "download", "--url", url, "--output", str(dest), "--quiet")
        http.shutdown()
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == (served / "weights.pth").read_bytes()


def test_serve(core_env):
    env = {**core_env, "IB_MODEL": TINY[1], "IB_CHECKPOINT": TINY[3]}
    with ServerProcess(env) as server:
        server.wait_ready(timeout_s=120)
        request = urllib.request.Request(
            server.url + "/vectorize",
            data=json.dumps({"texts": ["a dog"]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            assert len(json.loads(response.read())["textVectors"][0]) == 32
        assert "ModuleNotFoundError" not in server.log_tail()


def test_bench(core_env, tmp_path):
    report = tmp_path / "bench.json"
    load = ["--concurrency", "2", "--requests", "6", "--warmup-requests", "0", "--mix", "text=1"]
    result = ib_vectorizer(core_env, "bench", *TINY, *load, "--json", str(report))
    assert result.returncode == 0, result.stderr
    scenario = json.loads(Path(report).read_text())["scenarios"][0]
    assert scenario["results"]["batched"]["errors"] == 0 and scenario["speedup"] > 0
