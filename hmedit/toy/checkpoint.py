"""Training checkpoints of the toy trainers (CLIP, ControlNet): model, EMA and Adam moments, keyed by
parameter name, in one safetensors file (no pickle), written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def save_state(
    path: Path, model, opt, names: list[str], ema: list[torch.Tensor], step: int, record: dict
) -> None:
    """``names``: the parameters' names in the optimiser's order, which ``ema`` follows; ``record``: the run's
    arguments, kept in the file's metadata."""
    from hmedit.outputs.write import save_safetensors

    tensors = {f"model.{n}": p for n, p in model.named_parameters()}
    tensors.update({f"ema.{n}": e for n, e in zip(names, ema)})
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            tensors[f"opt.{names[i]}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    save_safetensors(path, tensors, metadata={"step": str(step), "args": json.dumps(record)})


def load_state(path: Path, model, opt, names: list[str]) -> tuple[list[torch.Tensor], int]:
    """Restore ``model`` and ``opt`` from :func:`save_state`'s file; returns (EMA tensors in ``names``' order,
    step). A damaged or foreign file is a one-line :class:`~hmedit.errors.HmeditError` naming it."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    from hmedit.errors import HmeditError

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        data = load_file(path)
        step = int(meta["step"])
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(data[f"model.{n}"])
        ema = [data[f"ema.{n}"].clone() for n in names]
        state = {}
        for i, n in enumerate(names):
            keys = [k for k in data if k.startswith(f"opt.{n}.")]
            if keys:
                state[i] = {k[len(f"opt.{n}.") :]: data[k] for k in keys}
        opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
    except (OSError, KeyError, ValueError, RuntimeError, SafetensorError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HmeditError(
            f"cannot resume from the checkpoint: {first}",
            file=path,
            hint="delete it to train from the start, or train into another --run-dir",
        ) from None
    return ema, step


def optimiser_step(
    opt, loss: torch.Tensor, params: list, ema: list[torch.Tensor], ema_max: float, step: int
) -> int:
    """One training step of the toy trainers: backward, gradients clipped to norm 1, Adam's step, then the EMA
    of ``params`` (decay ``min(ema_max, (1 + s) / (10 + s))`` at the new step s). Returns the new step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    step += 1
    decay = min(ema_max, (1 + step) / (10 + step))
    with torch.no_grad():
        torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
    return step
