"""Weaviate provisioning and the vector-combination rule, as units."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from ib_vectorizer.modalities import Modality
from pipelines import provision
from pipelines.schema import MediaField, _weaviate_module_config, bind_vector_config
from pipelines.schema import combine_like_weaviate as combine


def test_binary_path_is_where_weaviate_client_looks(tmp_path):
    from weaviate.embedded import EmbeddedOptions, EmbeddedV4

    ours = provision.embedded_binary_path("1.38.11", tmp_path)
    digest = hashlib.sha256(b"v1.38.11").hexdigest()
    assert ours == tmp_path / f"weaviate-v1.38.11-{digest}"
    embedded = EmbeddedV4(EmbeddedOptions(binary_path=str(tmp_path), version="1.38.11"))
    ours.write_bytes(b"#!/bin/sh\n")
    embedded.ensure_weaviate_binary_exists()  # finds ours, so it does not download
    assert embedded._weaviate_binary_path == ours


def test_binary_dir_mirrors_the_clients_xdg_quirk(tmp_path):
    assert provision.embedded_binary_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path
    assert provision.embedded_binary_dir({}).parts[-2:] == (".cache", "weaviate-embedded")


def fake_build(tmp_path, monkeypatch) -> Path:
    """Provision with a ``go`` that answers ``go mod download`` with the real module source
    and makes a small file for ``go build``; returns the installed path."""
    source = provision.module_source(shutil.which("go"), provision.WEAVIATE_VERSION, tmp_path)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    go = fake_bin / "go"
    go.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> "{tmp_path}/go-calls"\n'
        f'if [ "$1" = mod ]; then echo \'{{"Dir": "{source}"}}\'; exit 0; fi\n'
        'while [ "$1" != -o ]; do shift; done; echo built > "$2"\n'
    )
    go.chmod(go.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    path, what = provision.provision("1.38.11", tmp_path)
    assert what.startswith("built with our edit in ")
    return path


def test_provision_finds_our_build_without_go(tmp_path, monkeypatch):
    target = fake_build(tmp_path, monkeypatch)
    monkeypatch.setenv("PATH", "")  # no go: it must not need it
    assert provision.provision("1.38.11", tmp_path) == (target, "found")


def test_provision_keeps_another_binary_when_it_cannot_build_and_says_what_follows(
    tmp_path, monkeypatch
):
    target = provision.embedded_binary_path("9.9.9", tmp_path)
    target.write_bytes(b"a release")
    monkeypatch.setenv("PATH", "")
    path, what = provision.provision("9.9.9", tmp_path)
    assert path == target and target.read_bytes() == b"a release"
    assert what.startswith("found, not our build (Go is not installed)")
    assert "the local stack will require an API key" in what
    assert not provision.has_listen_address_edits(target)


def test_provision_builds_the_edited_source_installs_atomically_and_records_it(
    tmp_path, monkeypatch
):
    path = fake_build(tmp_path, monkeypatch)
    assert path == provision.embedded_binary_path("1.38.11", tmp_path)
    assert path.read_text() == "built\n" and os.access(path, os.X_OK)
    assert not path.with_name(path.name + ".part").exists()
    calls = (tmp_path / "go-calls").read_text().splitlines()
    assert calls == [
        "mod download -json github.com/weaviate/weaviate@v1.38.11",
        f"build -trimpath -o {calls[1].split()[3]} ./cmd/weaviate-server",
    ]
    assert provision.has_listen_address_edits(path)
    path.write_bytes(b"another binary put there since")  # say, weaviate-client's download
    assert not provision.has_listen_address_edits(path)


def test_our_edit_fits_the_pinned_weaviate_source(tmp_path):
    """Applied to the real module source, each edit finds its code once: gRPC and the cluster
    API then listen on the addresses the stack sets."""
    source = provision.module_source(shutil.which("go"), provision.WEAVIATE_VERSION, tmp_path)
    tree = tmp_path / "weaviate"
    for edit in provision.LISTEN_ADDRESS_EDITS:
        (tree / edit.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / edit.path, tree / edit.path)
    provision.apply_edits(tree)
    public = (tree / "adapters/handlers/grpc/server.go").read_text()
    assert 'net.JoinHostPort(os.Getenv("GRPC_BIND_ADDR"),' in public
    assert 'fmt.Sprintf(":%d",\n\t\tstate.ServerConfig.Config.GRPC.Port)' not in public
    cluster = (tree / "adapters/handlers/rest/clusterapi/serve.go").read_text()
    assert "net.JoinHostPort(appState.ServerConfig.Config.Cluster.BindAddr," in cluster
    assert '\t"net"\n\t"net/http"\n' in cluster


def test_source_our_edit_does_not_fit_fails_loudly_without_a_fallback(tmp_path, monkeypatch):
    tree = tmp_path / "weaviate"
    edit = provision.LISTEN_ADDRESS_EDITS[0]
    (tree / edit.path).parent.mkdir(parents=True)
    (tree / edit.path).write_text("package grpc // the listener moved elsewhere\n")
    with pytest.raises(provision.SourceMismatch, match=r"server\.go has 0 copies.*update LISTEN"):
        provision.apply_edits(tree)

    def mismatch(version, target):
        raise provision.SourceMismatch("the source changed")

    def download(version, target):
        raise AssertionError("a source that changed must not fall back to the release")

    monkeypatch.setattr(provision, "build_with_go", mismatch)
    monkeypatch.setattr(provision, "download_release", download)
    with pytest.raises(provision.SourceMismatch):
        provision.provision("1.2.3", tmp_path)


def test_the_provisioned_weaviate_is_our_build():
    """``make setup`` built it with the edit: the local stack keeps every port on loopback."""
    assert provision.has_listen_address_edits(provision.embedded_binary_path())


def test_provision_failure_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")

    def offline(version, target):
        raise provision.ProvisionError("offline")

    monkeypatch.setattr(provision, "download_release", offline)
    with pytest.raises(provision.ProvisionError, match=r"offline.*Install Go 1\.26"):
        provision.provision("1.2.3", tmp_path)


FIELDS = [
    MediaField("title", Modality.TEXT, 1.0),
    MediaField("photo_b", Modality.VISION, 2.0),
    MediaField("photo_a", Modality.VISION, 3.0),
    MediaField("clip", Modality.AUDIO, 4.0),
]


def test_combination_follows_weaviates_order_and_weights():
    v = {f.name: np.eye(4)[i] for i, f in enumerate(FIELDS)}
    # order: text, image (by name: photo_a, photo_b), audio; weights sum 10, n = 4
    expected = (1 * v["title"] + 3 * v["photo_a"] + 2 * v["photo_b"] + 4 * v["clip"]) / 10 / 4
    np.testing.assert_allclose(combine(v, FIELDS), expected, atol=1e-7)


def test_missing_field_shifts_weights_as_weaviate_does():
    v = {"title": np.ones(2), "clip": np.full(2, 2.0)}
    # Weaviate pairs the 2nd present vector (clip) with the 2nd configured weight (photo_a's 3).
    np.testing.assert_allclose(combine(v, FIELDS), (1 * 1 + 3 * 2) / 10 / 2 * np.ones(2))


def test_no_weights_is_the_plain_mean():
    fields = [MediaField("a", Modality.VISION), MediaField("b", Modality.AUDIO)]
    np.testing.assert_allclose(combine({"a": np.ones(3), "b": np.zeros(3)}, fields), 0.5)


def test_config_uses_weaviates_own_key_for_imu():
    fields = [MediaField("motion", Modality.IMU, 1.0), MediaField("img", Modality.VISION, 1.0)]
    module = _weaviate_module_config(bind_vector_config(fields))["vectorizer"]["multi2vec-bind"]
    assert module["imuFields"] == ["motion"] and module["weights"]["imuFields"] == [1.0]
    assert "IMUFields" not in module and "IMUFields" not in module["weights"]


def test_weights_are_all_or_none():
    with pytest.raises(ValueError, match="every media field a weight"):
        bind_vector_config([MediaField("a", Modality.VISION, 1.0), MediaField("b", Modality.TEXT)])
