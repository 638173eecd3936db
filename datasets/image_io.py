"""Decode image files to float arrays in [0, 1].

:func:`read_image` returns a ``float32`` array ``[C, H, W]`` with values in
[0, 1] for any file a reader meets:

* **PNG / JPEG** (Pillow). 8-bit values are divided by 255, 16-bit values
  (``I;16`` PNG) by 65535. A grayscale file read with ``channels=3`` repeats
  its channel; a colour file read with ``channels=1`` becomes its ITU-R 601
  luma (Pillow's ``L`` conversion).
* **DICOM** (pydicom, monochrome only). With ``s`` the stored values:

  1. ``m = modality(s)``: the Modality LUT, or ``s * RescaleSlope + RescaleIntercept``.
  2. ``v = voi(m)``: the VOI LUT Sequence when present, else the Window
     Center / Width (LINEAR, LINEAR_EXACT or SIGMOID), else ``v = m``.
  3. ``x = (v - lo) / (hi - lo)`` where ``[lo, hi]`` is the range of
     ``voi(modality(t))`` over every value ``t`` the stored bits allow
     (``BitsStored`` and ``PixelRepresentation``): a window maps to the full
     [0, 1], an image without a VOI keeps its place in the bits stored.
  4. ``MONOCHROME1`` (minimum shown white) is inverted, ``x = 1 - x``, so the
     result always follows the ``MONOCHROME2`` convention of
     :mod:`datasets.sample` (air dark, bone bright).

  Up to 16 bits stored, steps 1-3 are computed once for every possible
  stored value and applied as a lookup table (the same function, faster).
  A multi-frame file yields its first frame. Compressed transfer syntaxes are
  decoded when pydicom has an available decoder plugin for them (pydicom with
  Pillow decodes JPEG Baseline, JPEG 2000 and RLE); otherwise
  :class:`MissingDecoderError` names the transfer syntax and the packages that
  would decode it.

Errors. A file that is missing, truncated or not an image raises
:class:`ImageDecodeError`; a readable file whose encoding this installation
cannot decode raises :class:`MissingDecoderError`. Both are
:class:`~plumbing.cli.UserError` (one line naming the file). Only the first
is about one bad file, so data sets may skip it (see
:class:`datasets.tabular.RecordDataset`); the second concerns the whole
installation and is never skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from plumbing.errors import UserError

from .sample import check_channels

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
_PROBE_LIMIT_BITS = 16  # probe every stored value up to 2**16 of them; beyond, the two extremes


class ImageDecodeError(UserError):
    """One image file could not be read (missing, truncated, not an image)."""


class MissingDecoderError(UserError):
    """The installation lacks a decoder for a file's encoding."""


def read_image(path: str | Path, channels: int = 1) -> np.ndarray:
    """Read an image file as ``float32 [channels, H, W]`` in [0, 1] (see the module docstring)."""
    path = Path(path)
    check_channels(channels)
    if not path.is_file():
        raise ImageDecodeError(f"image file {path} does not exist")
    if path.suffix.lower() in DICOM_SUFFIXES:
        gray = read_dicom(path)
        image = gray[None]
    else:
        image = read_pil(path, channels)
    if image.shape[0] != channels:
        image = np.repeat(image, channels, axis=0)
    return np.ascontiguousarray(image, dtype=np.float32)


def read_pil(path: Path, channels: int = 1) -> np.ndarray:
    """Read a PNG / JPEG (any format Pillow knows) as ``float32 [C, H, W]`` in [0, 1].

    ``C`` is 1 for grayscale files or ``channels == 1``, else 3.
    """
    try:
        with Image.open(path) as img:
            img.load()
            array, scale = _pil_array(img, channels)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"image file {path} could not be decoded ({_reason(exc)})") from None
    array = array.astype(np.float32) / np.float32(scale)
    return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)


def _pil_array(img: Image.Image, channels: int) -> tuple[np.ndarray, float]:
    """The pixel array of a Pillow image and the value of white."""
    if img.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(img, dtype=np.uint16), 65535.0
    if img.mode == "I":  # 32-bit integer mode: 16-bit PNGs in some Pillow versions
        return np.clip(np.asarray(img), 0, 65535), 65535.0
    if img.mode == "F":
        return np.clip(np.asarray(img), 0.0, 1.0), 1.0
    gray = img.mode in ("L", "LA", "1") or (img.mode == "P" and channels == 1)
    target = "L" if channels == 1 or gray else "RGB"
    return np.asarray(img.convert(target)), 255.0


def read_dicom(path: Path) -> np.ndarray:
    """Read a monochrome DICOM as ``float32 [H, W]`` in [0, 1], MONOCHROME2 polarity (see the module docstring)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError) as exc:
        raise ImageDecodeError(f"DICOM file {path} could not be read ({_reason(exc)})") from None
    if "PixelData" not in ds:
        raise ImageDecodeError(f"DICOM file {path} holds no pixel data")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageDecodeError(
            f"DICOM file {path} is {photometric}; only MONOCHROME1 and MONOCHROME2 radiographs are read"
        )
    _check_decoder(ds, path)
    try:
        stored = ds.pixel_array
        if stored.ndim == 3:  # frames first
            stored = stored[0]
        first, probe = _stored_values(ds)
        table = _present(probe, ds)
        lo, hi = float(np.min(table)), float(np.max(table))
        invert = photometric == "MONOCHROME1"
        if len(probe) > 2 and np.issubdtype(stored.dtype, np.integer):
            # Every stored value is in the probe: look the normalised output up.
            lut = _normalise(table, lo, hi, invert)
            index = stored if first == 0 and stored.dtype.kind == "u" else stored.astype(np.int32) - first
            return lut[np.clip(index, 0, len(lut) - 1) if index.max() >= len(lut) or index.min() < 0 else index]
        return _normalise(_present(stored, ds), lo, hi, invert)
    except (ValueError, RuntimeError, AttributeError, KeyError, TypeError, IndexError, OSError) as exc:
        raise ImageDecodeError(f"DICOM file {path} could not be decoded ({_reason(exc)})") from None


def _normalise(values: np.ndarray, lo: float, hi: float, invert: bool) -> np.ndarray:
    """``(v - lo) / (hi - lo)`` clipped to [0, 1] (all 0 when ``hi == lo``), then ``1 - x`` when ``invert``; float32."""
    x = np.clip((values - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(values)
    return (1.0 - x if invert else x).astype(np.float32)


def _present(stored: np.ndarray, ds) -> np.ndarray:
    """Stored values -> VOI output: the modality transform, then the VOI LUT or window (float64)."""
    from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing

    values = apply_modality_lut(stored, ds)
    if ds.get("VOILUTSequence"):
        values = apply_voi(values, ds)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        values = apply_windowing(values, ds)
    return np.asarray(values, dtype=np.float64)


def _stored_values(ds) -> tuple[int, np.ndarray]:
    """The smallest stored value and every stored value the bits allow (only the two extremes beyond 16 bits)."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if bits <= _PROBE_LIMIT_BITS:
        return lo, np.arange(lo, hi + 1, dtype=np.int32 if signed else np.uint32)
    return lo, np.array([lo, hi], dtype=np.int64)


def _check_decoder(ds, path: Path) -> None:
    """Raise :class:`MissingDecoderError` when no installed plugin decodes the file's transfer syntax."""
    from pydicom.pixels import get_decoder

    meta = getattr(ds, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if syntax is None or not syntax.is_compressed:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise MissingDecoderError(
            f"DICOM file {path} uses the transfer syntax {syntax.name}, which pydicom cannot decode"
        ) from None
    if not decoder.is_available:
        options = "; ".join(f"{name} ({need})" for name, need in _needs(decoder.missing_dependencies))
        raise MissingDecoderError(
            f"DICOM file {path} is compressed as {syntax.name} and no installed package decodes it; "
            f"install one of: {options}"
        )


def _needs(missing: list[str]) -> list[tuple[str, str]]:
    """pydicom's ``'plugin - requires ...'`` lines as (pip packages, requirement) pairs."""
    pip_names = {
        "gdcm": "python-gdcm",
        "pylibjpeg": "pylibjpeg with its plugin",
        "pyjpegls": "pyjpegls",
        "pillow": "pillow",
    }
    pairs = []
    for line in missing:
        plugin, _, need = line.partition(" - ")
        pairs.append((pip_names.get(plugin.strip(), plugin.strip()), need.strip() or plugin.strip()))
    return pairs


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
