"""The public inference API: the predictor, model folders (export and load), the calibration and
refinement records, ensembles and groups of photos. What the notebooks measure: geopak_lib.analysis."""
