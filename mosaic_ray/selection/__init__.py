"""Data selection: MOSAIC, its scaling laws and allocator, and the §7.3 baselines."""

from mosaic_ray.selection import baselines as _baselines  # noqa: F401  (registers the baselines)
