"""The batched phantom renderer: finding vectors and seeds in, radiographs and lung masks out.

For each sample (all steps batched, per-sample randomness from its own seed,
see :mod:`.streams`):

1. draw the scanner style of the domain (:mod:`.styles`);
2. resolve the finding vector to present findings and their appearances
   (:mod:`.appearances`; uncertain ``-1`` labels are present with
   probability 0.5, decided by the sample's seed);
3. place one of 435 real lung masks in a body frame (:mod:`.canvas`) and
   draw the normal anatomy with an enlarged heart / mediastinum or a broken
   rib where those findings are present (:mod:`.anatomy`);
4. add the finding layers and support devices (:mod:`.devices`);
5. turn attenuation into intensity with the style's contrast curve, blur,
   noise and burned-in markers, and optionally the shortcut mark.

``image = curve(A)`` with ``A = smooth + sharp - air * lung + vessels * gain + devices``
where ``smooth`` layers are drawn at half resolution from 192 px up and
upsampled. The lung mask returned is the placed real mask (binary, the
aerated lung field as annotated, heart excluded as in the source masks).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from plumbing.errors import UserError
from plumbing.lookup import look_up

from ..findings import CHEXPERT, NIH, FindingSchema
from .anatomy import build_anatomy, upsampled
from .appearances import APPEARANCES, appearance_matrix, draw_effects, resolve_findings
from .canvas import make_canvas
from .devices import devices_layer
from .streams import Streams, first_uniforms
from .styles import STYLES, contrast, detector, draw_style, shortcut_stamp, stamp_markers

MIN_RESOLUTION, MAX_RESOLUTION = 32, 512
DOMAIN_SCHEMAS: dict[str, FindingSchema] = {"phantom": CHEXPERT, "phantom-nih": NIH}
MAX_COLUMNS = 16  # uniforms reserved per sample for the per-column coins


def check_resolution(resolution: int) -> int:
    """``resolution`` as an int in [32, 512]; a :class:`UserError` otherwise."""
    if (
        isinstance(resolution, bool)
        or not isinstance(resolution, int | np.integer)
        or not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION
    ):
        raise UserError(
            f"phantom resolution must be an integer from {MIN_RESOLUTION} to {MAX_RESOLUTION} px, not {resolution!r}"
        )
    return int(resolution)


def check_domain(domain: str) -> str:
    return look_up("phantom domain", domain, list(STYLES))


def rendered_findings(vectors: torch.Tensor | np.ndarray, seeds: Sequence[int] | np.ndarray) -> torch.Tensor:
    """The findings a render of these vectors and seeds shows (``[B, K]`` bool), resolving -1 as the renderer does."""
    v = torch.as_tensor(np.asarray(vectors, dtype=np.float32))
    if len(seeds) == 0:
        return torch.zeros(v.shape, dtype=torch.bool)
    coins = first_uniforms(seeds)[:, : v.shape[1]]  # the renderer's first draws are these coins
    return resolve_findings(v, coins)


@torch.no_grad()
def render_batch(
    vectors: torch.Tensor | np.ndarray,
    seeds: Sequence[int] | np.ndarray,
    resolution: int,
    domain: str = "phantom",
    marks: torch.Tensor | np.ndarray | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render phantom radiographs.

    Args:
        vectors: ``[B, K]`` finding vectors (1 / 0 / -1 / nan) over the
            domain's schema (``phantom``: CheXpert, ``phantom-nih``: NIH).
        seeds: ``[B]`` non-negative per-sample seeds (below 2^64).
        resolution: output side, 32 to 512 px.
        domain: ``phantom`` or ``phantom-nih``.
        marks: optional ``[B]`` shortcut-mark values (0 = none, k >= 1 =
            a bright square in slot k outside the lungs).
        device: where to render.

    Returns:
        ``(images, masks)``, both ``float32 [B, 1, H, W]``: images in [0, 1],
        binary lung masks.
    """
    resolution = check_resolution(resolution)
    style = STYLES[check_domain(domain)]
    schema = DOMAIN_SCHEMAS[domain]
    device = torch.device(device)
    v = torch.as_tensor(np.asarray(vectors, dtype=np.float32), device=device)
    if v.dim() != 2 or v.shape[1] != len(schema.columns):
        raise ValueError(
            f"{domain} needs finding vectors [B, {len(schema.columns)}] over {schema.name}, not {tuple(v.shape)}"
        )
    if v.shape[0] != len(seeds):
        raise ValueError(f"{v.shape[0]} finding vectors but {len(seeds)} seeds")
    if v.shape[0] == 0:
        empty = torch.zeros(0, 1, resolution, resolution, device=device)
        return empty, empty.clone()

    streams = Streams(seeds, resolution, device)
    draws = streams.draws
    coins = draws.take(MAX_COLUMNS)[:, : v.shape[1]]
    choice = draws.take(MAX_COLUMNS)[:, : v.shape[1]]
    params = draw_style(style, draws)
    active = appearance_matrix(resolve_findings(v, coins), schema, choice)
    active[:, APPEARANCES.index("devices")] |= params.extra_devices

    def flag(name: str) -> torch.Tensor:
        return active[:, APPEARANCES.index(name)]

    canvas = make_canvas(draws, streams, resolution, params.fov, device)
    anatomy = build_anatomy(canvas, draws, flag("cardiomegaly"), flag("mediastinum"), flag("fracture"))
    smooth, sharp, gain = draw_effects(canvas, anatomy, active, draws)
    sharp += devices_layer(canvas, anatomy, flag("devices"), draws)

    smooth += anatomy.smooth
    both = upsampled(torch.stack([smooth, anatomy.air], dim=1), resolution)
    att = both[:, 0]
    att -= both[:, 1] * canvas.lung_soft
    att += anatomy.sharp
    att += sharp
    att += anatomy.vessels * gain

    image = contrast(att[:, None], style, params)
    image = detector(image, style, params, streams)
    image = stamp_markers(image, style, params, canvas.x, canvas.y)
    if marks is not None:
        image = shortcut_stamp(
            image, torch.as_tensor(np.asarray(marks), device=device).long(), canvas.lung, canvas.x, canvas.y
        )
    return image.clamp_(0.0, 1.0), canvas.lung[:, None].clone()
