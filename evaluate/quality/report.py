"""Write a quality report: ``quality.json``, ``quality.md`` and its PNG figures (PIL, no plotting library).

* ``samples.png``: one row per class, named in a left margin
  (:mod:`evaluate.quality.row_labels`), synthetic images on the left, real
  held-out images of the same class on the right;
* ``nearest.png``: the closest synthetic / training pairs of each space
  (synthetic above, training image below, the distance and a red frame when
  flagged as a near-copy);
* ``bars.png``: per class, the Frechet distance beside its floor and the
  synthetic images' precision, recall, density and coverage beside those of
  the reference half.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

from evaluate.quality.image_sets import ImageSet
from evaluate.quality.measurement import Measured
from evaluate.quality.row_labels import draw_row_label, label_width
from plumbing.files import atomic_path, write_json_atomic

SAMPLES_PER_SIDE = 6
TILE = 64
SYNTHETIC_COLOUR, REFERENCE_COLOUR = (214, 96, 77), (67, 147, 195)


def _tile(image: torch.Tensor, size: int = TILE) -> Image.Image:
    pixels = image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()
    return Image.fromarray(pixels).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)


def samples_picture(synthetic: ImageSet, reference: ImageSet, classes: Sequence[str]) -> Image.Image:
    font = ImageFont.load_default()
    label_w, gap, k = label_width(classes, font), 16, SAMPLES_PER_SIDE
    width = label_w + 2 * k * (TILE + 2) + gap
    picture = Image.new("RGB", (width, 16 + len(classes) * (TILE + 4)), "white")
    draw = ImageDraw.Draw(picture)
    draw.text((label_w, 2), "synthetic", fill=SYNTHETIC_COLOUR, font=font)
    draw.text((label_w + k * (TILE + 2) + gap, 2), "real (held out)", fill=REFERENCE_COLOUR, font=font)
    for c, name in enumerate(classes):
        y = 16 + c * (TILE + 4)
        draw_row_label(draw, name, y, TILE, font)
        for side, images in enumerate((synthetic, reference)):
            rows = images.of_class(c)[:k]
            x0 = label_w + side * (k * (TILE + 2) + gap)
            for j, row in enumerate(rows.tolist()):
                picture.paste(_tile(images.images[row]), (x0 + j * (TILE + 2), y))
    return picture


def nearest_picture(measured: Measured) -> Image.Image | None:
    if measured.training is None or not measured.memorisation:
        return None
    font = ImageFont.load_default()
    spaces = list(measured.memorisation.items())
    pairs = len(measured.figures["memorisation"]["spaces"][spaces[0][0]]["closest_pairs"])
    row_h = 2 * TILE + 18
    picture = Image.new("RGB", (90 + pairs * (TILE + 4), len(spaces) * row_h + 4), "white")
    draw = ImageDraw.Draw(picture)
    for s, (space, result) in enumerate(spaces):
        y = 2 + s * row_h
        draw.text((2, y + 10), f"{space}\nabove: synthetic\nbelow: training", fill="black", font=font)
        for j, pair in enumerate(measured.figures["memorisation"]["spaces"][space]["closest_pairs"]):
            x = 90 + j * (TILE + 4)
            picture.paste(_tile(measured.synthetic.images[pair["synthetic"]]), (x, y))
            picture.paste(_tile(measured.training.images[pair["training"]]), (x, y + TILE + 1))
            copy = result.flagged[pair["synthetic"]]
            if copy:
                draw.rectangle((x - 1, y - 1, x + TILE, y + 2 * TILE + 1), outline="red", width=2)
            draw.text((x, y + 2 * TILE + 3), f"{pair['distance']:.3g}", fill="red" if copy else "black", font=font)
    return picture


def _bar_rows(figures: dict[str, Any]) -> list[tuple[str, list[tuple[str, float | None, float | None]]]]:
    """Per group: (metric, synthetic value, reference value) with the FD normalised by the largest of the two."""
    out = []
    for name, fd in figures["fidelity"].items():
        cover = figures["coverage"].get(name, {})
        rows: list[tuple[str, float | None, float | None]] = []
        if fd.get("fd") is not None:
            top = max(fd["fd"], fd["floor"], 1e-12)
            rows.append((f"FD {fd['fd']:.3g} / floor {fd['floor']:.3g}", fd["fd"] / top, fd["floor"] / top))
        for metric in ("precision", "recall", "density", "coverage"):
            if cover.get("synthetic") is not None:
                rows.append((metric, min(cover["synthetic"][metric], 1.0), min(cover["reference"][metric], 1.0)))
        out.append((name, rows))
    return out


def bars_picture(figures: dict[str, Any]) -> Image.Image:
    font = ImageFont.load_default()
    label_w, bar_w, line = 170, 220, 12
    groups = _bar_rows(figures)
    height = 20 + sum(14 + max(1, len(rows)) * 2 * line + 6 for _, rows in groups)
    picture = Image.new("RGB", (label_w + bar_w + 60, height), "white")
    draw = ImageDraw.Draw(picture)
    draw.text((2, 2), "synthetic", fill=SYNTHETIC_COLOUR, font=font)
    draw.text((70, 2), "reference half / floor", fill=REFERENCE_COLOUR, font=font)
    y = 20
    for name, rows in groups:
        draw.text((2, y), name, fill="black", font=font)
        y += 14
        if not rows:
            draw.text((12, y), "too few images to measure", fill="grey", font=font)
            y += 2 * line
        for metric, syn, ref in rows:
            draw.text((12, y + line // 2), metric, fill="black", font=font)
            for k, (value, colour) in enumerate(((syn, SYNTHETIC_COLOUR), (ref, REFERENCE_COLOUR))):
                top = y + k * line
                draw.rectangle((label_w, top + 1, label_w + int(bar_w * (value or 0.0)), top + line - 2), fill=colour)
                draw.text((label_w + bar_w + 4, top), f"{value:.2f}", fill=colour, font=font)
            y += 2 * line
        y += 6
    return picture


def _value(x: float | None, digits: str = ".3f") -> str:
    return "-" if x is None else format(x, digits)


def markdown(figures: dict[str, Any], pictures: Sequence[str]) -> str:
    classes = figures["classes"]
    label, use, prov = figures["label_fidelity"], figures["usefulness"], figures["provenance"]
    lines = [
        f"# Synthetic data quality: {Path(figures['store']).name}",
        "",
        f"Task {prov['task']}, {prov['resolution']} px; reference `{figures['reference']['data']}` "
        f"({figures['reference']['split']} split). Features: {figures['features']['extractor']} "
        f"({figures['features']['dimension']} values).",
        "",
        "## Headline",
        "",
        "| label fidelity (mean) | lowest class | usefulness ratio | FD / floor | flagged near-copies |",
        "|---|---|---|---|---|",
    ]
    agreement = {k: v for k, v in label["agreement"].items() if v is not None}
    lowest = min(agreement, key=agreement.get) if agreement else None
    memo = figures["memorisation"]
    copies = ("not measured" if not memo["measured"] else
              ", ".join(f"{space} {s['flagged']}" for space, s in memo["spaces"].items()))
    fd_all = figures["fidelity"]["all"]
    lines.append(
        f"| {_value(label['mean'])} | {lowest or '-'} {_value(agreement.get(lowest))} | {_value(use['ratio'])} | "
        f"{_value(fd_all.get('ratio_to_floor'), '.2f')} | {copies} |"
    )
    lines += [
        "",
        "## Label fidelity",
        "",
        "A classifier trained on the reference classifies every synthetic image; agreement = the share of a "
        "class's images it assigns to that class. Its recall on real held-out images is the ceiling.",
        "",
        "| class | agreement | recall on real images |",
        "|---|---|---|",
    ]
    lines += [f"| {c} | {_value(label['agreement'][c])} | {_value(label['real_recall'].get(c))} |" for c in classes]
    lines += ["", "Confusion (rows intended, columns predicted):", "",
              "| | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    lines += [f"| {c} | " + " | ".join(str(v) for v in row) + " |"
              for c, row in zip(classes, label["confusion_matrix"], strict=True)]
    real, syn = use["train_on_real"], use["train_on_synthetic"]
    lines += [
        "",
        "## Usefulness",
        "",
        f"The same classifier and budget trained on {use['train_images']['synthetic']} synthetic or "
        f"{use['train_images']['real']} real images, tested on the same {use['test_images']} real held-out images.",
        "",
        "| trained on | balanced accuracy | " + " | ".join(f"recall {c}" for c in classes) + " |",
        "|---" * (len(classes) + 2) + "|",
        f"| real | {_value(real['balanced_accuracy'])} | " + " | ".join(_value(real['recall'][c]) for c in classes)
        + " |",
        f"| synthetic | {_value(syn['balanced_accuracy'])} | "
        + " | ".join(_value(syn['recall'][c]) for c in classes) + " |",
        "",
        f"Ratio synthetic / real: **{_value(use['ratio'])}**.",
        "",
        "## Fidelity and coverage",
        "",
        "FD = Frechet distance between synthetic and held-out reference features (95% bootstrap interval); floor = "
        "the distance between two disjoint halves of the reference of the same size. Precision, recall, density "
        "and coverage (k = " + str(figures["config"]["k"]) + ") of the synthetic images against one half, and of "
        "the other half (in brackets).",
        "",
        "| class | n | FD | interval | floor | precision | recall | density | coverage |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, fd in figures["fidelity"].items():
        cover = figures["coverage"][name]
        cells = []
        for metric in ("precision", "recall", "density", "coverage"):
            if cover.get("synthetic") is None:
                cells.append("-")
            else:
                cells.append(f"{cover['synthetic'][metric]:.3f} ({cover['reference'][metric]:.3f})")
        interval = "-" if fd.get("interval") is None else f"[{fd['interval'][0]:.3g}, {fd['interval'][1]:.3g}]"
        lines.append(f"| {name} | {fd['n']} | {_value(fd.get('fd'), '.4g')} | {interval} | "
                     f"{_value(fd.get('floor'), '.4g')} | " + " | ".join(cells) + " |")
    lines += ["", "## Memorisation", ""]
    if not memo["measured"]:
        lines.append(f"Not measured: {memo['reason']}.")
    else:
        lines += [
            f"Nearest of {memo['training_images']} generator training images ({memo['training_data']}) to every "
            "synthetic image, against the training images' own nearest-neighbour distances. A near-copy lies "
            "closer than the threshold (half the 1% quantile of those distances).",
            "",
            "| space | threshold | flagged | median distance | median training distance | ratio |",
            "|---|---|---|---|---|---|",
        ]
        for space, s in memo["spaces"].items():
            lines.append(f"| {space} | {s['threshold']:.4g} | {s['flagged']} ({s['flagged_share']:.1%}) | "
                         f"{s['median_distance']:.4g} | {s['median_training_distance']:.4g} | {s['ratio']:.3f} |")
    balance = figures["class_balance"]
    lines += ["", "## Class balance and provenance", "",
              "Images per class in the store: " + ", ".join(
                  f"{split}: " + ", ".join(f"{c} {n}" for c, n in counts.items())
                  for split, counts in (balance["counts"] or {}).items()) + ".",
              "Evaluated: " + ", ".join(f"{c} {n}" for c, n in balance["evaluated"].items()) + ".", "",
              "```json", json.dumps(prov, indent=2, sort_keys=True), "```", ""]
    lines += [f"![{name}]({name})" for name in pictures] + [""]
    return "\n".join(lines)


def write_report(out: Path, measured: Measured) -> list[Path]:
    """Write the report into folder ``out`` (each file atomically); returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    figures = measured.figures
    pictures = {
        "samples.png": samples_picture(measured.synthetic, measured.reference, figures["classes"]),
        "bars.png": bars_picture(figures),
        "nearest.png": nearest_picture(measured),
    }
    written = []
    for name, picture in pictures.items():
        if picture is None:
            continue
        with atomic_path(out / name) as tmp:
            picture.save(tmp, format="PNG")
        written.append(out / name)
    write_json_atomic(out / "quality.json", figures)
    with atomic_path(out / "quality.md") as tmp:
        tmp.write_text(markdown(figures, [p.name for p in written]))
    return [out / "quality.json", out / "quality.md", *written]
