"""Generator files: export an EMA generator, load one without executing code.

A generator file is a safetensors file holding the EMA generator's tensors
and, as string metadata, ``network`` (the network configuration as JSON),
``training`` (the training configuration and the exact command) and
``condition_columns``. A training checkpoint (``checkpoint_<n>.pt`` of
``synth.train``) is accepted too and read with ``torch.load(weights_only=True)``;
its ``training`` record is computed by the same :func:`training_metadata` that
the export writes, so both kinds of file are refused alike when they stopped
mid-growth and report alike whether they were trained on phantoms. Neither
path unpickles code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from datasets.registry import REGISTRY
from plumbing.errors import UserError
from plumbing.files import atomic_path, sha256_file
from plumbing.training import load_checkpoint
from synth.generator import Generator
from synth.network_config import NetworkConfig

from .config import TrainingConfig, saved_run

DEMO_GENERATOR = Path(__file__).resolve().parent / "assets" / "phantom-demo-64.safetensors"


@dataclass
class LoadedGenerator:
    """A generator ready to sample, with the provenance a store records."""

    generator: Generator
    network: dict[str, Any]
    training: dict[str, Any]
    condition_columns: list[str]
    sha256: str
    path: str

    @property
    def trained_on_phantoms(self) -> bool:
        return bool(self.training.get("trained_on_phantoms", False))

    def check_fully_grown(self) -> None:
        """Refuse a progressive generator exported before its last resolution had faded in."""
        active = int(self.training.get("active_resolution", self.generator.img_resolution))
        alpha = float(self.training.get("alpha", 1.0))
        if active != self.generator.img_resolution or alpha < 1.0:
            raise UserError(
                f"generator {self.path} stopped growing at {active} px (fade {alpha:.2f}) of "
                f"{self.generator.img_resolution} px; train it further (synth.train --resume --kimg ...) "
                "before generating"
            )


def training_metadata(record: dict[str, Any], iteration: int) -> dict[str, Any]:
    """The ``training`` metadata of a generator after ``iteration`` steps of the run recorded in ``record``.

    ``record`` is a run's record (:mod:`synth.config`: ``training``,
    ``command``, ``resumed_with`` once resumed); the metadata is its training
    configuration plus ``command``, ``resumed_with``, the progress
    (``iteration``, ``kimg_done``), the active resolution and fade ``alpha``
    of the progressive schedule, and ``trained_on_phantoms`` (the data set
    needs no files). The export and a checkpoint read as a generator both
    compute it here.
    """
    training = TrainingConfig.from_dict(record["training"])
    active, alpha = training.schedule().state(iteration * training.batch_size)
    spec = REGISTRY.get(training.data)
    return dict(
        training.to_dict(),
        command=record["command"],
        resumed_with=list(record.get("resumed_with", [])),
        iteration=iteration,
        kimg_done=iteration * training.batch_size / 1000,
        active_resolution=active,
        alpha=alpha,
        trained_on_phantoms=spec is not None and spec.env_var is None,
    )


def export_generator(
    path: Path, generator: Generator, network: dict[str, Any], training: dict[str, Any], condition_columns: list[str]
) -> None:
    """Write ``generator``'s state as a safetensors file with its configuration (atomically)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in generator.state_dict().items()}
    metadata = {
        "network": json.dumps(network, sort_keys=True),
        "training": json.dumps(training, sort_keys=True),
        "condition_columns": json.dumps(list(condition_columns)),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def _build(network: dict[str, Any], state: dict[str, torch.Tensor], path: Path) -> Generator:
    try:
        generator = Generator(NetworkConfig.from_dict(network))
        generator.load_state_dict(state)
    except (TypeError, KeyError, RuntimeError, ValueError) as exc:
        raise UserError(f"{path} does not hold a generator of this version: {str(exc).splitlines()[0]}") from exc
    return generator.eval().requires_grad_(False)


def load_generator(path: Path, device: torch.device) -> LoadedGenerator:
    """Load a generator file (.safetensors) or a ``synth.train`` checkpoint (.pt)."""
    if not path.is_file():
        raise UserError(f"generator {path} does not exist (give a .safetensors generator or a synth.train checkpoint)")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            state = load_file(str(path))
            network = json.loads(meta["network"])
            training = json.loads(meta.get("training", "{}"))
            columns = json.loads(meta["condition_columns"])
        except (KeyError, json.JSONDecodeError, OSError) as exc:
            raise UserError(f"{path} is not a generator file of this project ({type(exc).__name__})") from exc
        except Exception as exc:  # safetensors raises its own error type for damaged headers
            raise UserError(f"cannot read generator {path}: {str(exc).splitlines()[0]}") from exc
    else:
        checkpoint = load_checkpoint(path)
        saved = saved_run(checkpoint, path)
        state, network = checkpoint["G_ema"], saved.record["network"]
        columns = list(saved.record["condition_columns"])
        training = training_metadata(saved.record, saved.iteration)
    generator = _build(network, state, path).to(device)
    return LoadedGenerator(generator, network, training, columns, sha256_file(path), str(path))
