"""docker/entrypoint.sh: fetch missing weights once, then exec the server.

The script is run for real by /bin/sh with a fake ``ib-vectorizer`` first on PATH: it
downloads the checkpoint the server will read (unless it is there, or random weights are
asked for), stops if that fails, and execs the command so the server replaces the shell.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

import pytest

from ib_vectorizer.cli import build_parser

from .docker_files import ENTRYPOINT, FAKE


@dataclass
class Run:
    returncode: int
    pid: int
    calls: list[dict]
    stderr: str


@pytest.fixture
def entrypoint(tmp_path):
    """Run docker/entrypoint.sh with a fake ib-vectorizer (and a fake `other`) on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("ib-vectorizer", "other"):
        fake = bin_dir / name
        fake.write_text(FAKE.format(python=sys.executable))
        fake.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    models = tmp_path / "models"
    models.mkdir()

    def run(*args: str, **env: str) -> Run:
        log.write_text("")
        environment = {
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "FAKE_LOG": str(log),
            "FAKE_DEFAULT": str(tmp_path / "cache" / "imagebind_huge.pth"),
            "IB_CHECKPOINT": str(models / "imagebind_huge.pth"),
            **env,
        }
        process = subprocess.Popen(
            ["/bin/sh", str(ENTRYPOINT), *args],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _, stderr = process.communicate(timeout=30)
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        return Run(process.returncode, process.pid, calls, stderr)

    run.models = models
    return run


def argvs(run: Run) -> list[list[str]]:
    return [[call["name"], *call["argv"]] for call in run.calls]


def test_entrypoint_is_valid_posix_sh():
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n")
    for shell in ("bash", "/bin/sh"):  # /bin/sh is dash here, as in the Debian-based image
        result = subprocess.run([shell, "-n", str(ENTRYPOINT)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_entrypoint_downloads_missing_weights_once_then_execs_serve(entrypoint):
    weights = entrypoint.models / "imagebind_huge.pth"
    first = entrypoint("ib-vectorizer", "serve")
    assert first.returncode == 0, first.stderr
    assert argvs(first) == [
        ["ib-vectorizer", "download", "--quiet", "--output", str(weights)],
        ["ib-vectorizer", "serve"],
    ]
    download, serve = first.calls
    assert download["pid"] != first.pid  # a child ...
    assert serve["pid"] == first.pid  # ... then exec: the server replaces the shell
    assert weights.read_bytes() == b"weights"
    assert "CC-BY-NC-SA" in first.stderr
    # The real CLI accepts what the entrypoint passes to download.
    parsed = build_parser().parse_args(download["argv"])
    assert parsed.output == weights and parsed.quiet
    # Second start: the weights are there, nothing is downloaded.
    second = entrypoint("ib-vectorizer", "serve")
    assert argvs(second) == [["ib-vectorizer", "serve"]]
    assert second.calls[0]["pid"] == second.pid


def test_entrypoint_never_downloads_present_weights(entrypoint):
    (entrypoint.models / "imagebind_huge.pth").write_bytes(b"mine")
    for args in (("ib-vectorizer", "serve"), (), ("serve", "--max-batch", "64")):
        result = entrypoint(*args)
        assert result.returncode == 0, result.stderr
        assert [c["argv"][0] for c in result.calls] == ["serve"], args
    assert (entrypoint.models / "imagebind_huge.pth").read_bytes() == b"mine"


def test_entrypoint_follows_checkpoint_flags_and_random_weights(entrypoint, tmp_path):
    mine = tmp_path / "mine.pth"
    mine.write_bytes(b"mine")
    # --checkpoint wins over IB_CHECKPOINT (which is missing): nothing to fetch.
    result = entrypoint("ib-vectorizer", "serve", "--checkpoint", str(mine))
    assert argvs(result) == [["ib-vectorizer", "serve", "--checkpoint", str(mine)]]
    elsewhere = tmp_path / "elsewhere" / "w.pth"
    result = entrypoint("serve", f"--checkpoint={elsewhere}")
    assert argvs(result)[0] == ["ib-vectorizer", "download", "--quiet", "--output", str(elsewhere)]
    # Random weights need no checkpoint.
    for args, env in [
        (("ib-vectorizer", "serve"), {"IB_RANDOM_WEIGHTS": "True"}),
        (("serve", "--random-weights", "1"), {}),
        (("serve", "--random-weights=yes"), {}),
    ]:
        result = entrypoint(*args, **env)
        assert [c["argv"][0] for c in result.calls] == ["serve"], (args, env)
    # Random weights switched off: the checkpoint is needed again.
    result = entrypoint("serve", "--random-weights", "0")
    assert [c["argv"][0] for c in result.calls] == ["download", "serve"]


def test_entrypoint_without_a_checkpoint_path_fetches_the_default(entrypoint, tmp_path):
    result = entrypoint("ib-vectorizer", "serve", IB_CHECKPOINT="")
    assert argvs(result) == [
        ["ib-vectorizer", "download", "--quiet"],
        ["ib-vectorizer", "serve"],
    ]


def test_entrypoint_runs_other_commands_as_given(entrypoint):
    result = entrypoint("serve", "--help")
    assert argvs(result) == [["ib-vectorizer", "serve", "--help"]]  # no download for help
    result = entrypoint("embed", "--modality", "text", "--output", "o.npy", "a dog barking")
    assert argvs(result) == [
        ["ib-vectorizer", "embed", "--modality", "text", "--output", "o.npy", "a dog barking"]
    ]
    result = entrypoint("other", "serve", "x y")
    assert argvs(result) == [["other", "serve", "x y"]]
    assert result.calls[0]["pid"] == result.pid
    assert not (entrypoint.models / "imagebind_huge.pth").exists()


def test_entrypoint_stops_when_the_download_fails(entrypoint):
    result = entrypoint("ib-vectorizer", "serve", FAKE_DOWNLOAD_FAILS="1")
    assert result.returncode == 3
    assert [c["argv"][0] for c in result.calls] == ["download"]  # no server without weights
