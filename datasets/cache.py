"""An in-memory copy of a data set, for training loops that revisit small data sets many times.

:class:`CachedDataset` reads every sample of a data set once (in batches,
through ``__getitems__`` when the data set has it, with a progress bar),
keeps the images as uint8 grey levels ``round(255 x)`` together with the
other sample fields, and serves them in the sample convention. A 64 px
radiograph costs 4 KiB, so 20,000 of them fit in 80 MiB. It suits generated
data sets (phantoms) whose samples are costly to draw but identical every
time; quantising to 8 bits is what an 8-bit radiograph file holds anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .sample import FINDINGS, ID, IMAGE, LABEL, to_uint8


class CachedDataset(Dataset):
    """Every sample of ``dataset`` held in memory (images as uint8)."""

    def __init__(self, dataset: Dataset, batch_size: int = 64, progress: bool = True) -> None:
        n = len(dataset)  # type: ignore[arg-type]
        images, findings, labels, ids = [], [], [], []
        fetch = getattr(dataset, "__getitems__", None)
        with tqdm(total=n, desc="caching data set", unit="img", disable=not progress) as bar:
            for start in range(0, n, batch_size):
                indices = list(range(start, min(start + batch_size, n)))
                samples = fetch(indices) if fetch is not None else [dataset[i] for i in indices]
                images.append(torch.stack([to_uint8(s[IMAGE]) for s in samples]))
                if FINDINGS in samples[0]:
                    findings.append(torch.stack([torch.as_tensor(s[FINDINGS], dtype=torch.float32) for s in samples]))
                labels.extend(int(s.get(LABEL, -1)) for s in samples)
                ids.extend(str(s.get(ID, i)) for s, i in zip(samples, indices, strict=True))
                bar.update(len(indices))
        self.images = torch.cat(images)
        self.findings = torch.cat(findings) if findings else None
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.ids = ids

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample: dict[str, Any] = {
            IMAGE: self.images[index].float() / 255.0,
            LABEL: int(self.labels[index]),
            ID: self.ids[index],
        }
        if self.findings is not None:
            sample[FINDINGS] = self.findings[index]
        return sample

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self[i] for i in indices]
