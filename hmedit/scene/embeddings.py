"""Learned-token (textual inversion) files, read as data: diffusers ``learned_embeds`` (.safetensors/.bin),
A1111 (.pt with ``string_to_param``, .safetensors with ``emb_params``) and SDXL (``clip_l`` + ``clip_g``).
Nothing is unpickled: ``.pt``/``.bin`` load with ``torch.load(weights_only=True)``. Validation and rendering
read embeddings with this one function, so ``hmedit validate`` ok means the render can read them too.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from hmedit.errors import HmeditError

# Text-encoder widths of known families, to say where a wrong-width embedding belongs.
FAMILY_BY_WIDTH = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL", 128: "hmedit's bundled toy model"}
SDXL_KEYS = ("clip_l", "clip_g")  # an SDXL embedding file: one tensor per text encoder


def load_embedding(path: str | Path, dim: int | None = None) -> dict[str, Tensor]:
    """Read an embedding file: diffusers ``learned_embeds.safetensors`` / ``.bin`` ({token: [D] or [n, D]}),
    A1111 (``.pt`` with 'string_to_param', ``.safetensors`` with 'emb_params'; named after the file or its
    'name'), or SDXL (``clip_l`` and ``clip_g``: returned concatenated, [D_l + D_g]). Returns {token: [D]}
    ([n, D] for multi-vector embeddings). ``dim``: the width of the model's text encoders together,
    checked. Nothing is unpickled (``.pt`` / ``.bin`` load with ``weights_only=True``)."""
    path = Path(path)
    state = _read_state(path)
    if "clip_l" in state or "clip_g" in state:  # SDXL (A1111 and diffusers): the rows concatenated
        parts = [state.get(k) for k in SDXL_KEYS]
        if not all(isinstance(p, Tensor) and p.ndim in (1, 2) for p in parts):
            raise HmeditError("an SDXL embedding needs both clip_l and clip_g", file=path)
        rows = [p.reshape(-1, p.shape[-1]) for p in parts]
        if rows[0].shape[0] != rows[1].shape[0]:
            raise HmeditError("clip_l and clip_g have different numbers of vectors", file=path)
        state = {"emb_params": torch.cat(rows, dim=-1)}
    if "string_to_param" in state:  # A1111 .pt
        params = state["string_to_param"]
        vectors = params.get("*") if isinstance(params, dict) else None
        name = state.get("name") if isinstance(state.get("name"), str) else path.stem
        found = {name: vectors}
    elif "emb_params" in state:  # A1111 .safetensors
        found = {path.stem: state["emb_params"]}
    elif len(state) == 1:  # diffusers
        found = dict(state)
    else:
        found = {}
    if len(found) != 1 or not all(isinstance(v, Tensor) and v.ndim in (1, 2) for v in found.values()):
        raise HmeditError(
            "not a textual-inversion embedding (no {token: vector}, A1111 string_to_param or emb_params)",
            file=path,
            hint="use a diffusers learned_embeds.safetensors/.bin or an A1111 .pt/.safetensors embedding",
        )
    out = {}
    for token, v in found.items():
        v = v.detach().float()
        v = v.reshape(-1) if v.ndim == 2 and v.shape[0] == 1 else v
        if dim is not None:
            check_width(v.shape[-1], dim, "this embedding", file=path)
        out[token] = v
    return out


def _read_state(path: Path) -> dict:
    if not path.is_file():
        raise HmeditError("embedding file not found", file=path, hint="check the path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one user-facing line
        raise HmeditError(
            f"cannot read the embedding: {(str(e).splitlines() or [type(e).__name__])[0]}",
            file=path,
            hint="use a .safetensors, .bin or .pt textual-inversion file (pickles with code are not loaded)",
        ) from None
    if isinstance(state, Tensor):
        return {path.stem: state}
    if not isinstance(state, dict):
        raise HmeditError("not a textual-inversion embedding", file=path, hint="expected a dict of tensors")
    return state


def check_width(width: int, dim: int, what: str, file: str | Path | None = None) -> None:
    if width == dim:
        return
    family = FAMILY_BY_WIDTH.get(width, f"a model whose text encoder is {width} wide")
    raise HmeditError(
        f"{what} is {width} wide, made for {family}, but this model's text encoder is {dim} wide",
        file=file,
        hint=f"use it with {family}, or learn the token for this model",
    )
