"""Resumable training checkpoints: the encoder (its own file format) plus the optimizer and
random-generator state, so a resumed run continues exactly where it stopped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from sg3archive.atomic import replacing
from sg3archive.checkpoints.encoder_file import load_encoder, save_encoder
from sg3archive.training.config import TrainConfig

STATE_JSON, STATE_TENSORS = "train_state.json", "train_state.safetensors"


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, plain = {}, {"param_groups": sd["param_groups"], "state": {}}
    for idx, state in sd["state"].items():
        plain["state"][str(idx)] = {}
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"opt.{idx}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                plain["state"][str(idx)][key] = value
    return tensors, plain


def _optimizer_state(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in plain["state"].items()}
    for name, value in tensors.items():
        if name.startswith("opt."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def save_checkpoint(directory: str | Path, *, encoder: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    rng: torch.Generator, step: int, config: TrainConfig, generator_fingerprint: str,
                    history: list[dict[str, float]]) -> Path:
    """Write a checkpoint to ``directory`` whole or not at all (:func:`sg3archive.atomic.replacing`:
    a temporary sibling folder, then a rename over the previous checkpoint)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with replacing(directory) as tmp:
        tmp.mkdir()
        save_encoder(encoder, str(tmp), generator_fingerprint=generator_fingerprint,
                     info={"step": step, "train_config": config.settings_dict()})
        tensors, plain = _optimizer_tensors(optimizer)
        tensors["rng_state"] = rng.get_state()
        safetensors.torch.save_file(tensors, str(tmp / STATE_TENSORS))
        (tmp / STATE_JSON).write_text(json.dumps({"step": step, "config": config.settings_dict(), "optimizer": plain,
                                                  "history": history}, indent=1))
    return directory


def load_checkpoint(directory: str | Path, *, generator: torch.nn.Module, device: torch.device
                    ) -> tuple[torch.nn.Module, dict[str, Any], torch.Tensor, int, TrainConfig, list[dict]]:
    """``(encoder, optimizer state, rng state, step, config, history)`` of a checkpoint; refuses
    a checkpoint made against another generator."""
    directory = Path(directory)
    encoder = load_encoder(str(directory), generator=generator)
    encoder.requires_grad_(True)
    doc = json.loads((directory / STATE_JSON).read_text())
    tensors = safetensors.torch.load_file(str(directory / STATE_TENSORS))
    moments = {k: v if k.endswith(".step") else v.to(device) for k, v in tensors.items() if k != "rng_state"}
    opt_state = _optimizer_state(moments, doc["optimizer"])
    return (encoder.to(device).train(), opt_state, tensors["rng_state"], int(doc["step"]),
            TrainConfig.from_dict(doc["config"]), doc.get("history", []))
