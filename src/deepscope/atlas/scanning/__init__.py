"""The one-pass dataset scan behind :func:`deepscope.atlas.scan`: predictions, probabilities, pooled embeddings
and every per-layer reduction from a single forward pass per sample, written chunk by chunk into a resumable
workspace.

The dataset is cut into chunks of ``chunk_size`` consecutive indices. A chunk is the unit of work (for the
local loop and for each Ray actor call) and the unit of commit: its array rows are written in place, then one
SQLite transaction records its samples, its predictions and the run's merged reductions. A scan that is
stopped (killed, crashed, interrupted) and started again with the same arguments skips the committed chunks.

One module per step, each importing only those before it:

- :mod:`~deepscope.atlas.scanning.reductions`: the mergeable reductions (histograms, unit statistics, top-k,
  confusion);
- :mod:`~deepscope.atlas.scanning.loading`: dataset items into model inputs, batches and thumbnails;
- :mod:`~deepscope.atlas.scanning.plan`: what a scan records (:class:`~deepscope.atlas.scanning.plan.ScanPlan`);
- :mod:`~deepscope.atlas.scanning.scanner`: one chunk, one forward pass per batch, its layers recorded;
- :mod:`~deepscope.atlas.scanning.fingerprints`: what makes two scans the same run;
- :mod:`~deepscope.atlas.scanning.commit`: chunk results into the workspace;
- :mod:`~deepscope.atlas.scanning.engines`: the local loop and the Ray actors;
- :mod:`~deepscope.atlas.scanning.driver`: :func:`~deepscope.atlas.scanning.driver.scan` itself.
"""
