"""One training phase (1-3) from its section of the book's config: what notebooks 03-05 call."""

from __future__ import annotations

from geopak_lib.training.config import PhaseConfig, training_keys
from geopak_lib.training.inputs import PhaseInputs, make_loss
from geopak_lib.training.trainer import TrainResult, train_phase


def phase_config(section, *, seed: int) -> PhaseConfig:
    """The trainer's PhaseConfig of a geopak_lib.config.Phase{1,2,3}Config section."""
    return PhaseConfig.for_phase(section.PHASE, seed=seed, **training_keys(section))


def run_phase(section, inputs: PhaseInputs, *, run_dir, seed: int, device="auto", progress: bool = True,
              resume: bool = True) -> TrainResult:
    """Train phase ``section.PHASE`` from ``inputs`` (load_phase_inputs of the previous phase) into
    run_dir/checkpoints/phase{p}/: the loss on the model's cells (the section's beta), the previous
    checkpoint's parameters plus beta and seed stored in every checkpoint. Returns train_phase's result."""
    cfg = phase_config(section, seed=seed)
    loss_fn = make_loss(inputs.model, inputs.data, beta=section.beta, top_provinces=cfg.top_provinces,
                        top_cells=cfg.top_cells)
    return train_phase(cfg, inputs.model, inputs.data, run_dir, loss_fn=loss_fn, device=device, start=inputs.start,
                       params={**inputs.start["params"], "beta": section.beta, "seed": seed}, progress=progress,
                       resume=resume)
