"""GEOPAK book library: province-aware hierarchical image geolocation for Pakistan.

The notebooks in ``notebooks/`` narrate; this package computes. Modules are small and named
for what they hold (see docs/design.md).
"""

__version__ = "0.1.0"
