"""What each phase adds: every phase's best checkpoint evaluated end to end (05_phase3_finetune)."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd

from geopak_lib.analysis.cached_outputs import FEATURE_SOURCES, feature_source
from geopak_lib.analysis.frame import headline, split_frame
from geopak_lib.data.rundir import RunDir
from geopak_lib.training.checkpoints import build_model_from_checkpoint
from geopak_lib.training.selection import PHASE_NAMES, best_val_row
from geopak_lib.utils import quiet_rebuild


def phase_comparison(run_dir, data, *, batch_size: int = 64, device="cpu", num_workers: int = 0,
                     progress: bool = False, cache_root="cache") -> pd.DataFrame:
    """What each phase adds: the best checkpoint of every phase that has run, evaluated end to end
    on val and test. Rows (phase, split) with median/p90 km, accuracy at 25/200 km, province
    accuracy and cell top-5 (fractions), and ``features`` (FEATURE_SOURCES). Phases 0-1 never
    change the encoders, so their clean-view features are read from the feature cache they were
    trained on when one under ``cache_root`` matches the checkpoint's encoders and the manifest;
    phases 2-3 read the CLIP slot's from it when they left that encoder frozen (feature_source).
    The numbers are those of the encoders up to float16 storage (84.65 km either way on the demo).
    Phase 0's location figures come from untrained location heads."""
    run, rows = RunDir(run_dir), []
    manifest = run.read_manifest()
    for phase in range(4):
        path, losses = run.best_checkpoint(phase), run.losses(phase)
        if not path.is_file():
            continue
        best = best_val_row(phase, losses) if losses is not None else None
        if rows and best is not None and int(best["epoch"]) == 0:  # kept its start: the previous phase's weights
            rows += [{**r, "phase": phase, "name": PHASE_NAMES[phase]} for r in rows[-2:]]
            continue
        with quiet_rebuild():  # the encoders' status was reported by the notebooks that trained them
            model = build_model_from_checkpoint(path, with_encoders=True)
        source, cache = feature_source(model, manifest, cache_root)
        split_data = replace(data, cache=cache) if cache is not None else data
        for split in ("val", "test"):
            h = headline(split_frame(model, split_data, split, source=source, batch_size=batch_size, device=device,
                                     num_workers=num_workers,
                                     progress=progress))
            rows.append({"phase": phase, "name": PHASE_NAMES[phase], "split": split, "n": h["n"],
                         "median_km": h["median_km"], "p90_km": h["p90_km"], "acc_25km": h["acc_25km"],
                         "acc_200km": h["acc_200km"], "province_acc": h["province_acc"],
                         "cell_top5_acc": h["cell_top5_acc"], "features": FEATURE_SOURCES[source]})
    return pd.DataFrame(rows)
