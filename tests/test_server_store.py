"""The workspace's artifacts (the results the workbench computes once): kept and found by kind, key and version,
in workspaces created now and in those of schema version 1, which are upgraded on open or read as they are."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

import deepscope as ds
from deepscope.errors import SettingError, SettingTypeError, WorkspaceError
from deepscope.workspace.store import DATABASE, SCHEMA, SCHEMA_VERSION, Store


def version_1_workspace(path) -> None:
    """A workspace as deepscope wrote it before artifacts existed: the version-1 tables only."""
    path.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path / DATABASE)
    with connection:
        connection.executescript(SCHEMA)
        connection.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [("schema_version", "1"), ("created_with", "deepscope 0.0")],
        )
    connection.close()


def test_arrays_and_bytes_are_kept_by_kind_and_key(tmp_path):
    store = Store.create(tmp_path / "ws")
    layout = np.arange(8, dtype=np.float32).reshape(4, 2)
    kept = store.put_artifact("layout", "tsne:fc3/a b", layout, {"perplexity": 30.0})
    assert kept.path.is_file() and kept.path.parent.parent == tmp_path / "ws" / "artifacts"
    found = store.artifact("layout", "tsne:fc3/a b")
    np.testing.assert_array_equal(found.load(), layout)
    assert (found.meta, found.version, found.format) == ({"perplexity": 30.0}, 1, "npy")
    store.put_artifact("picture", "unit 3", b"\x89PNG...")
    assert store.artifact("picture", "unit 3").load() == b"\x89PNG..."
    assert store.artifact("layout", "other") is None and store.artifact("picture", "tsne:fc3/a b") is None
    assert store.artifacts("layout") == ["tsne:fc3/a b"]


def test_a_new_value_replaces_the_old_and_versions_keep_apart(tmp_path):
    store = Store.create(tmp_path)
    first = store.put_artifact("featurevis", "conv2:3", np.zeros(3, np.float32), version=1)
    second = store.put_artifact("featurevis", "conv2:3", np.ones(3, np.float32), version=2)
    assert first.path == second.path  # replaced in place: one file per key
    assert store.artifact("featurevis", "conv2:3", version=1) is None  # computed by other code: not found
    np.testing.assert_array_equal(store.artifact("featurevis", "conv2:3", version=2).load(), np.ones(3))
    assert store.artifact("featurevis", "conv2:3", version=None).version == 2
    second.path.unlink()
    assert store.artifact("featurevis", "conv2:3", version=2) is None  # a lost file is no artifact


def test_artifacts_survive_reopening(tmp_path):
    Store.create(tmp_path).put_artifact("faithfulness", "k", np.zeros(0, np.float32), {"deletion_auc": 0.25})
    assert Store.open(tmp_path).artifact("faithfulness", "k").meta == {"deletion_auc": 0.25}


def test_what_is_not_an_artifact_is_refused(tmp_path):
    store = Store.create(tmp_path)
    with pytest.raises(SettingTypeError, match="NumPy array or bytes"):
        store.put_artifact("layout", "x", [1, 2, 3])
    with pytest.raises(SettingTypeError, match="non-empty string"):
        store.put_artifact("", "x", b"")
    with pytest.raises(SettingError, match="NaN"):
        store.put_artifact("layout", "x", b"", {"value": float("nan")})
    with pytest.raises(SettingTypeError, match="not JSON"):
        store.put_artifact("layout", "x", b"", {"value": object()})


def test_a_version_1_workspace_is_upgraded_on_open(tmp_path):
    version_1_workspace(tmp_path)
    store = Store.open(tmp_path)
    assert store.schema_version == SCHEMA_VERSION == 2 and not store.read_only
    store.put_artifact("layout", "pca", np.zeros((2, 2), np.float32))
    assert Store.open(tmp_path).artifact("layout", "pca") is not None


def test_a_read_only_version_1_workspace_is_read_as_it_is(tmp_path):
    version_1_workspace(tmp_path)
    store = Store.open(tmp_path, read_only=True)
    assert store.read_only and store.schema_version == 1
    assert store.artifact("layout", "pca") is None and store.artifacts("layout") == []
    with pytest.raises(WorkspaceError, match="read-only"):
        store.put_artifact("layout", "pca", np.zeros(2, np.float32))
    store.close()
    assert Store.open(tmp_path).schema_version == 2  # opened for writing, it is upgraded


def test_a_scanned_version_1_workspace_still_opens_with_its_scan(tmp_path):
    digits = ds.datasets.mnist5k("test").subset(range(20))
    ws = ds.atlas.scan("zoo:lenet_mnist", digits, out=tmp_path, thumbnail_size=0)
    predictions = ws.predictions
    ws.store.close()
    connection = sqlite3.connect(tmp_path / DATABASE)
    with connection:
        connection.execute("DROP TABLE artifacts")
        connection.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    connection.close()
    reopened = ds.atlas.open_workspace(tmp_path)
    np.testing.assert_array_equal(reopened.predictions, predictions)
    assert reopened.store.schema_version == 2


def test_a_workspace_of_a_future_version_is_refused(tmp_path):
    store = Store.create(tmp_path)
    with store.transaction() as db:
        db.execute("UPDATE meta SET value='9' WHERE key='schema_version'")
    store.close()
    with pytest.raises(WorkspaceError, match="schema version 9"):
        Store.open(tmp_path)
