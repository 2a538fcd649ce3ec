"""The on-disk workspace: SQLite (WAL) for runs, samples, predictions, layouts and feedback, NumPy arrays
for everything large. The analysis view over it is :class:`deepscope.atlas.Workspace`; the file layout is
documented in docs/workspace.md."""

from deepscope.workspace.store import (
    DATABASE,
    SCHEMA_VERSION,
    ChunkRows,
    LayerRecord,
    LayoutRecord,
    Run,
    RunLayer,
    SampleRow,
    SampleStatus,
    SkippedSample,
    Store,
)

__all__ = [
    "DATABASE",
    "SCHEMA_VERSION",
    "ChunkRows",
    "LayerRecord",
    "LayoutRecord",
    "Run",
    "RunLayer",
    "SampleRow",
    "SampleStatus",
    "SkippedSample",
    "Store",
]
