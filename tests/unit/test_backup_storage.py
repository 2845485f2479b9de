"""The storage layer's pure parts: keys that stay inside a store, parts regrouped without losing a byte, the storage
spec's validation; and the filesystem store's visibility rule on a real directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from whm_ha.backup.storage import FilesystemStore, S3Store, _parts, check_key, open_store
from whm_ha.crd.backup import BackupStorageSpec, S3StorageSpec


@pytest.mark.parametrize("key", ["a", "a/b", "backup-1/dump.sql.zst", "x/y/z.json"])
def test_keys_that_are_accepted(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize("key", ["", "/a", "a/", "a//b", "../a", "a/../b", "a/./b", ".hidden", "a/.b.partial"])
def test_keys_that_would_leave_the_store_or_name_an_upload_in_progress_are_refused(key: str) -> None:
    with pytest.raises(ValueError, match="not a storage key"):
        check_key(key)


@given(st.lists(st.binary(max_size=50), max_size=20), st.integers(min_value=1, max_value=40))
def test_parts_keep_every_byte_in_order_and_only_the_last_is_short(chunks: list[bytes], size: int) -> None:
    parts = list(_parts(chunks, size))
    assert b"".join(parts) == b"".join(chunks)
    assert all(len(part) == size for part in parts[:-1])
    assert len(parts[-1]) < size


def test_a_failed_upload_leaves_no_object_and_the_previous_one_intact(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "store")
    store.put("b/data", b"old")

    def failing() -> Iterator[bytes]:
        yield b"new"
        raise RuntimeError("the dump failed")

    with pytest.raises(RuntimeError, match="the dump failed"):
        store.upload("b/data", failing())
    assert store.get("b/data") == b"old"
    assert store.list() == ["b/data"]
    assert [p.name for p in (tmp_path / "store" / "b").iterdir()] == ["data"], "no partial file left"


def test_filesystem_store_lists_reads_and_deletes(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    assert store.upload("x/1", [b"ab", b"cd"]) == 4
    store.put("y/2", b"e")
    (tmp_path / "x" / ".1.0.partial").write_bytes(b"in progress")
    assert store.list() == ["x/1", "y/2"]
    assert store.list("x/") == ["x/1"]
    assert store.get("x/1") == b"abcd"
    store.delete("x/1")
    store.delete("x/1")
    assert store.list() == ["y/2"]


def test_storage_spec_from_the_wire_opens_the_store_it_names(tmp_path: Path) -> None:
    spec = BackupStorageSpec.model_validate(
        {
            "s3": {
                "endpoint": "https://s3.example.net:8333",
                "bucket": "backups",
                "prefix": "prod/db/",
                "credentialsSecret": {"name": "s3-creds"},
                "caSecret": {"name": "s3-ca"},
            }
        }
    )
    assert spec.s3 is not None
    assert spec.s3.region == "us-east-1"
    store = open_store(spec, access_key_id="id", secret_access_key="secret")
    assert isinstance(store, S3Store)
    assert store.describe() == "s3 https://s3.example.net:8333/backups/prod/db/"
    assert "secret" not in repr(store.settings)
    directory = open_store(BackupStorageSpec.model_validate({"filesystem": {"path": str(tmp_path)}}))
    assert isinstance(directory, FilesystemStore)


@pytest.mark.parametrize(
    "s3",
    [
        {"endpoint": "s3.example.net", "bucket": "backups"},
        {"endpoint": "https://s3.example.net/path", "bucket": "backups"},
        {"endpoint": "https://s3.example.net", "bucket": "Backups"},
        {"endpoint": "https://s3.example.net", "bucket": "backups", "prefix": "../x/"},
        {"endpoint": "https://s3.example.net", "bucket": "backups", "prefix": "no-slash"},
    ],
)
def test_s3_specs_that_are_refused(s3: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        S3StorageSpec.model_validate({**s3, "credentialsSecret": {"name": "c"}})
