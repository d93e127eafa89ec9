"""06's ensemble study: the final checkpoint with the best of the earlier phases, each member's outputs
computed once (from the cache where it matches) and combined. Running an ensemble: geopak_lib/inference/ensemble.py."""

from __future__ import annotations

import pandas as pd

from geopak_lib.analysis.cached_outputs import feature_source, outputs_from_cache
from geopak_lib.analysis.frame import predictions_frame, split_outputs
from geopak_lib.data.rundir import RunDir
from geopak_lib.inference.ensemble import same_weights
from geopak_lib.inference.predictor import GeopakPredictor
from geopak_lib.training.checkpoints import latest_epoch_checkpoint


def run_ensemble(run_dir, final, phases, max_members: int = 2, **load) -> tuple:
    """06's ensemble: the final checkpoint plus one checkpoint of each phase in ``phases``: its
    best.pt, or, when that holds weights already in the ensemble (a phase that kept its starting
    weights saves a copy of them), its latest epoch file; a phase with neither is skipped; at most
    max_members checkpoints in all (each costs one more pass over the images). load: keyword arguments of GeopakPredictor.from_checkpoint. -> (ensemble predictor, or None when
    no second distinct checkpoint exists; the members' paths)."""
    run = RunDir(run_dir)
    members = [GeopakPredictor.from_checkpoint(final, calibration=None, **load)]
    for phase in phases:
        if len(members) >= max_members:
            break
        for path in (run.best_checkpoint(phase), latest_epoch_checkpoint(run.phase_dir(phase))):
            if path is None or not path.is_file():
                continue
            candidate = GeopakPredictor.from_checkpoint(path, calibration=None, **load)
            if not any(same_weights(candidate.model, m.model) for m in members):
                members.append(candidate)
                break
    paths = [str(m.checkpoint) for m in members]
    return (GeopakPredictor.ensemble(members) if len(members) > 1 else None), paths


def ensemble_frames(ens, table: pd.DataFrame, *, known: dict | None = None, splits=("val", "test"),
                    batch_size: int = 64, num_workers: int = 0, cache_root="cache") -> dict:
    """{split: predictions_frame} of an ensemble predictor (what predictor_frames gives), with the
    first member's outputs taken from ``known`` ({split: outputs of that checkpoint alone}, e.g.
    06's plain pass of the final model) instead of running its encoders again. Each other member
    runs once, with what the feature cache holds of its encoders (frame.feature_source: the heads
    alone for a phase-0/1 member, the scene encoder alone for one with a frozen CLIP slot);
    EnsembleModel.pack combines them exactly as its forward does."""
    model, train = ens.model, table[table["split"] == "train"]
    solo = [GeopakPredictor(member, checkpoint=ens.checkpoint[m], top_provinces=ens.top_provinces,
                            top_cells=ens.top_cells)
            for m, member in enumerate(model.members)]
    found = [None if m == 0 and known is not None else feature_source(p.model, table, cache_root)
             for m, p in enumerate(solo)]  # one cache lookup per member, for every split

    def member_outputs(m, split):
        if found[m] is None:
            return known[split]
        source, cache = found[m]
        if cache is not None:
            return outputs_from_cache(solo[m].model, table, split, source, cache=cache)
        return split_outputs(solo[m], table, split, tta=False, batch_size=batch_size, num_workers=num_workers)

    frames = {}
    for s in splits:
        outs = [member_outputs(m, s) for m in range(len(solo))]
        frames[s] = predictions_frame(model, model.pack(outs), table[table["split"] == s], train,
                                      top_provinces=ens.top_provinces, top_cells=ens.top_cells)
    return frames
