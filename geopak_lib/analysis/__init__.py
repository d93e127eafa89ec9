"""What the notebooks measure (06 above all): per-split frames, phase comparison, ablations, baselines,
several-photo and ensemble studies, concept evaluation, explanations, fitting refinement and calibration."""
