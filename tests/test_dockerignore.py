""".dockerignore: the build context holds what the Dockerfile copies and little else.

The rules are applied to this checkout with Docker's matching rules: no virtualenv, git
history, tests, caches, build artefacts or weights reach the Docker daemon.
"""

from __future__ import annotations

import pytest

from .docker_files import ROOT, _pattern_regex, build_context, copies, excluded


def test_dockerignore_matcher_follows_docker_rules():
    anywhere = _pattern_regex("**/*.pth")
    assert anywhere.match("a/b/c.pth") and anywhere.match("c.pth") and not anywhere.match("c.pt")
    assert _pattern_regex("*").match("top") and not _pattern_regex("*").match("a/b")
    assert _pattern_regex("**/*.py[cod]").match("x/y.pyc")


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "imagebind_huge.pth",
        "imagebind_huge.pth.part",
        "ib_vectorizer/model/imagebind_huge.pth",
        "tests/fixtures/imagebind-tiny/state_dict.pt",
        "tests/test_cli.py",
        "ib_vectorizer/__pycache__/cli.cpython-311.pyc",
        "ib_vectorizer.egg-info/PKG-INFO",
        "build/lib/ib_vectorizer/cli.py",
        "dist/ib_vectorizer-0.1.0-py3-none-any.whl",
        ".whl/torch-2.9.1.whl",
        ".gl/x",
        ".pytest_cache/v/cache",
        ".ruff_cache/x",
        "docker/Dockerfile",
    ],
)
def test_dockerignore_excludes(path):
    assert excluded(path)


def test_build_context_has_what_the_dockerfile_copies_and_little_else():
    context = build_context()
    sources = [s for flags, srcs, _ in copies() if "from" not in flags for s in srcs]
    assert "docker/entrypoint.sh" in sources and "pyproject.toml" in sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source in context or any(f.startswith(source + "/") for f in context), source
    assert "ib_vectorizer/model/presets/imagebind_huge.json" in context  # package data
    assert "ib_vectorizer/cli.py" in context and "README.md" in context
    assert not [f for f in context if f.endswith((".pth", ".pt", ".pyc")) or "/tests/" in f]
    assert not [f for f in context if f.startswith(("tests/", ".venv/", ".git/"))]
    assert sum(context.values()) < 2_000_000, sorted(context)
