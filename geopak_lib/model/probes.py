"""Zero-shot text probes (spec 002's text prototypes): score an image against short prompts such as
"a photo of a hot desert" with CLIP's own text tower, so that a prediction can say what the image
looks like in words.

The CLIP slot's encoder keeps the pooled token *before* CLIP's projection (encoders.py sets
``visual.proj = None``), so a probe carries the projection matrix of the same weights and maps the
pooled features into the joint space itself. Scores are cosine similarities there. A probe only
exists for pretrained weights: on a random tower the scores mean nothing, and
:func:`build_text_probes` returns None with the reason instead. Decision: docs/decisions/probes.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from geopak_lib.model.encoders import parse_spec

# Concepts a person would name for a Pakistani landscape: the climate and land-cover classes the
# location rasters give (docs/decisions/concepts.md), in words CLIP's captions use.
PROBE_CONCEPTS = (
    "a hot desert", "a cold desert", "a dry steppe", "snowy mountains", "a glacier", "high barren mountains",
    "rocky hills", "irrigated farmland", "green fields", "an orchard", "a forest", "a grassland",
    "a river", "a lake", "the sea coast", "a coastal city", "a dense city", "a village", "a road",
)
PROMPT_TEMPLATE = "a photo of {}"


def probe_prompts(concepts=PROBE_CONCEPTS, template: str = PROMPT_TEMPLATE) -> list[str]:
    """['a photo of a hot desert', ...]: one prompt per concept."""
    return [template.format(c) for c in concepts]


@dataclass
class TextProbes:
    """Prompts with their unit text embeddings (K, E) and the CLIP image projection (D, E)."""

    prompts: list
    text_features: torch.Tensor
    projection: torch.Tensor
    source: str = ""

    def scores(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled (N, D) features of the CLIP slot (before projection) -> (N, K) cosine similarities
        in [-1, 1] between each projected image and each prompt."""
        image = F.normalize(pooled.float() @ self.projection.float().to(pooled.device), dim=-1)
        return image @ F.normalize(self.text_features.float().to(pooled.device), dim=-1).T

    def top(self, pooled: torch.Tensor, k: int = 3) -> list[list[tuple[str, float]]]:
        """(N, D) -> per image, the k best prompts' concepts with their cosine similarity, best first."""
        s = self.scores(pooled)
        val, idx = s.topk(min(k, s.shape[1]), dim=1)
        concept = [p.removeprefix(PROMPT_TEMPLATE.format("")) for p in self.prompts]
        return [[(concept[j], float(v)) for v, j in zip(vr.tolist(), ir.tolist())] for vr, ir in zip(val, idx)]


def probes_off_reason(encoder_info: dict | None) -> str | None:
    """Why text probes cannot run for a CLIP slot ({spec, weight_status, is_random}); None if they can."""
    if not encoder_info:
        return "text probes off: the model has no CLIP encoder"
    if parse_spec(encoder_info["spec"])[0] != "open_clip":
        return f"text probes off: the CLIP slot {encoder_info['spec']} is not an open_clip model, so it has no text tower"
    if encoder_info.get("is_random"):
        return (f"text probes off: the CLIP slot {encoder_info['spec']} runs on random weights, so its scores "
                "against text would mean nothing")
    return None


def weights_file(weight_status: str) -> str | None:
    """The local weights file named by a status 'file:<path> sha256=…' (None for a tag or the hub)."""
    if not weight_status.startswith("file:"):
        return None
    return weight_status[len("file:"):].split(" sha256=", 1)[0]


@torch.no_grad()
def build_text_probes(encoder_info: dict, prompts=None) -> tuple[TextProbes | None, str]:
    """(probes, message) for a CLIP slot described by {spec, weight_status, is_random}. The full
    open_clip model (text tower included) is built from the same weights file or tag the image tower
    came from; with random weights the probes are (None, the reason). Offline: a tag must already be
    in the local cache (HF_HUB_OFFLINE=1 makes a miss fail at once; it is then reported, not raised)."""
    reason = probes_off_reason(encoder_info)
    if reason:
        return None, reason
    import open_clip

    _, model, source, size = parse_spec(encoder_info["spec"])
    status = encoder_info.get("weight_status", "")
    path = weights_file(status)
    tag = status[len("pretrained:"):] if status.startswith("pretrained:") else None
    pretrained = path or tag
    if not pretrained:
        return None, f"text probes off: no weights file or tag recorded for {encoder_info['spec']}"
    if path and not Path(path).is_file():
        return None, f"text probes off: the CLIP weights file {path} is not on this machine"
    # the spec's tag (also given for a file, "file:… (as openai)") sets QuickGELU, as for the image tower
    known = open_clip.list_pretrained_tags_by_model(model)
    cfg = open_clip.get_pretrained_cfg(model, source) if source in known else {}
    try:
        clip = open_clip.create_model(model, pretrained=pretrained, force_image_size=size,
                                      force_quick_gelu=bool(cfg.get("quick_gelu")))
    except RuntimeError as exc:
        return None, f"text probes off: could not load the text tower of {encoder_info['spec']} ({str(exc)[:200]})"
    clip.eval()
    prompts = list(prompts or probe_prompts())
    tokens = open_clip.get_tokenizer(model)(prompts)
    text = clip.encode_text(tokens, normalize=True)
    probes = TextProbes(prompts, text, clip.visual.proj.detach().clone(), source=str(pretrained))
    return probes, f"text probes on: {len(prompts)} prompts scored with the text tower of {pretrained}"
