"""mosaic_ray: MOSAIC data selection for driving planners, on Ray.

The folder tree follows the pipeline: ``data`` (ingest clips) -> ``scoring`` (EPDMS) ->
``planner`` (reference vocabulary planner) -> ``domains`` -> ``pilots`` (pilot runs) ->
``selection`` (scaling laws, allocator, strategies) -> ``train`` -> ``evaluate`` -> ``report``.
``stages`` holds the thin Ray adapters; everything else is plain numpy/torch.
"""

__version__ = "0.1.0"
