"""Shared test set-up: no model hub, no display, deterministic hashing."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")  # tests draw nothing on screen; notebooks keep inline
