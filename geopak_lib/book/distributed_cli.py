"""Command line for several processes: ``torchrun ... -m geopak_lib.book.distributed_cli cache
--profile P`` builds notebook 02's feature cache with the work split over the ranks
(geopak_lib.training.distributed does the work)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch.distributed as dist

from geopak_lib.book.runner import REPO_ROOT, ProfileError, book_config, load_profile
from geopak_lib.data.rundir import RunDir
from geopak_lib.training.distributed import build_cache_distributed, init_from_env
from geopak_lib.training.inputs import CACHE_PARAMETERS, build_encoders, cache_settings
from geopak_lib.utils import pick_device

# --- command line: `torchrun ... -m geopak_lib.book.distributed_cli cache --profile demo` ---

CLI_DESCRIPTION = """\
Build notebook 02's feature cache with the work split over several processes (one per GPU), then
run the book as usual: notebook 02 finds the cache complete and skips the build.

  torchrun --standalone --nproc_per_node 4 -m geopak_lib.book.distributed_cli cache --profile demo
  geopak book demo --start 02_phase0_province

The parameters are notebook 02's, as `geopak book PROFILE` passes them (the typed config's
defaults, which 02's parameters cell declares too, overlaid by the profile's common and
02_phase0_province keys), and the encoders are built after
the same seed_everything(seed), so the cache key is the one notebook 02 computes. Rank r encodes
batches r, r + N, ... into its own part folder; rank 0 merges them. NCCL on CUDA (one GPU per
rank, LOCAL_RANK), gloo on CPU. Without torchrun it runs as one process. Rank 0 prints the cache
path and size. Exit code 0: cache complete; 2: bad profile, encoder spec or missing manifest.
More: docs/distributed.md.
"""
NOTEBOOK = "02_phase0_province"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m geopak_lib.book.distributed_cli", description=CLI_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    p = sub.add_parser("cache", help="build notebook 02's feature cache over all ranks",
                       description=CLI_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", required=True, help="profile name in params/ (smoke, demo, full) or a YAML path")
    p.add_argument("--device", help="cpu, cuda or auto (default: the profile's device)")
    p.add_argument("--decode", default="auto", choices=("auto", "device", "workers"),
                   help="where clean views' JPEGs are decoded (default auto: on the GPU with CUDA)")
    p.add_argument("--progress", action="store_true", help="show a progress bar on rank 0")
    return parser


def notebook_parameters(profile_name: str, notebook: str = NOTEBOOK) -> dict:
    """The values `geopak book` runs ``notebook`` with: the typed config's defaults (geopak_lib.config,
    which the notebook's parameters cell declares too) overlaid by the profile's common and
    per-notebook keys. A key the config does not know, or a value of the wrong type, raises
    book.ProfileError, as in the book."""
    return book_config(load_profile(profile_name)).parameters_for(notebook)


def main(argv=None) -> int:
    """Entry point (see CLI_DESCRIPTION). Returns the exit code."""
    args = _parser().parse_args(argv)
    prog = "geopak_lib.book.distributed_cli cache"
    try:
        params = notebook_parameters(args.profile)
    except ProfileError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    os.chdir(REPO_ROOT)  # the book runs notebooks from the root; run_dir, cache_dir are relative to it
    manifest_path = Path(params["run_dir"]) / "manifest.csv"
    if not manifest_path.is_file():  # checked before joining the group, so every rank stops here alike
        print(f"{prog}: {manifest_path} not found: run notebooks 00-01 first "
              f"(geopak book {args.profile} --only 00_data_audit,01_geocells)", file=sys.stderr)
        return 2
    return _cache(params, manifest_path, args.device or params["device"], args.decode, args.progress, prog)


def notebook_inputs(params: dict, manifest_path) -> tuple:
    """What notebook 02 builds its cache from, by the same library calls (build_encoders seeds
    first, so random-init encoders get the notebook's weights and hence its cache key).
    -> (manifest, clip_encoder, scene_encoder, CacheSettings)."""
    manifest = RunDir(Path(manifest_path).parent).read_manifest()
    clip_encoder, scene_encoder = build_encoders(params["seed"], params["clip_spec"], params["clip_weights"],
                                                 params["scene_spec"], scene_weights=params["scene_weights"],
                                                 allow_random_weights=params.get("allow_random_weights", False))
    return manifest, clip_encoder, scene_encoder, cache_settings(**{k: params[k] for k in CACHE_PARAMETERS})


def _cache(params: dict, manifest_path: Path, device: str, decode: str, progress: bool, prog: str) -> int:
    """Notebook 02's cache call, with the build spread over the ranks."""
    grouped = int(os.environ.get("WORLD_SIZE", "1")) > 1  # started by torchrun with several processes
    rank, world, device = init_from_env(device) if grouped else (0, 1, pick_device(device))
    started = time.time()
    try:
        try:
            manifest, clip_encoder, scene_encoder, settings = notebook_inputs(params, manifest_path)
        except (FileNotFoundError, ValueError) as e:  # a weights file or an encoder spec: say which
            print(f"{prog}: {e}", file=sys.stderr)
            return 2
        cache = build_cache_distributed(manifest, clip_encoder, scene_encoder, replace(settings, decode=decode),
                                        device=device, progress=progress)
    finally:
        if grouped:
            dist.destroy_process_group()
    if rank == 0:
        size_mb = sum(f.stat().st_size for f in cache.path.iterdir()) / 1e6
        found = (cache.path / "complete.json").stat().st_mtime < started  # complete before this run began
        how = "found complete, nothing built" if found else f"built by {world} process(es)"
        print(f"cache {cache.path.resolve()}: {len(cache)} images, {cache.clip.shape[0]} slots, clip "
              f"{cache.clip_dim}-d, scene {cache.scene_dim}-d, {size_mb:.1f} MB ({how})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
