"""Which ControlNet each control node uses, and loading them (once per process, device and dtype).

A control names its ControlNet with ``model:``; without it, a scene on a bundled model gets that model's
bundled ControlNet (``toy`` -> ``toy-controlnet``), and any other model is an error: hmedit cannot guess
which ControlNet fits a user's model.
"""

from __future__ import annotations

from typing import Any

from hmedit.errors import HmeditError
from hmedit.models.load import BUNDLED_CONTROLNETS, ModelRef, model_hash, resolve_controlnet
from hmedit.scene.spec import Scene

_loaded: dict[tuple, Any] = {}


def default_controlnet(model_ref: ModelRef) -> str | None:
    """The bundled ControlNet made for a bundled model, or None."""
    if model_ref.source != "bundled":
        return None
    return next((cn for cn, base in BUNDLED_CONTROLNETS.items() if base == model_ref.name), None)


def controlnet_refs(scene: Scene, model_ref: ModelRef) -> dict[int, ModelRef]:
    """Flat index -> the ControlNet of each control node; errors point at the control's ``model`` key."""
    out: dict[int, ModelRef] = {}
    for f in scene.flat():
        c = f.node.control
        if c is None:
            continue
        where = f"{f.path}.control.model" if c.model is not None else f"{f.path}.control"
        name = c.model or default_controlnet(model_ref)
        if name is None:
            raise HmeditError(
                f"this control needs a model: the model {model_ref.name!r} has no bundled ControlNet",
                **scene.where(where),
                hint="add model: <a diffusers ControlNet folder or hub id> for this model's family",
            )
        try:
            out[f.index] = resolve_controlnet(name, base_dir=scene.base_dir)
        except HmeditError as exc:
            raise HmeditError(exc.problem, **scene.where(where), hint=exc.hint) from None
    return out


def describe(scene: Scene, model_ref: ModelRef) -> dict[str, dict[str, str]]:
    """Control field path -> {name, path, source, hash} of its ControlNet (for the key and render.json)."""
    refs = controlnet_refs(scene, model_ref)
    flat = scene.flat()
    return {
        f"{flat[k].path}.control.model": {
            "name": ref.name,
            "path": str(ref.path),
            "source": ref.source,
            "hash": model_hash(ref),
        }
        for k, ref in refs.items()
    }


def key_of(ref: ModelRef) -> str:
    return f"{ref.source}:{ref.path}"


def load_controlnet(ref: ModelRef, model) -> Any:
    """The ControlNet at ``ref`` on ``model``'s device and dtype, checked to fit ``model``'s UNet."""
    key = (key_of(ref), str(model.device), str(model.dtype))
    if key not in _loaded:
        from diffusers import ControlNetModel

        try:
            net = ControlNetModel.from_pretrained(ref.path, torch_dtype=model.dtype, local_files_only=True)
        except Exception as e:  # noqa: BLE001 - a broken folder is a user problem, said in one line
            first = (str(e).splitlines() or [type(e).__name__])[0][:200]
            raise HmeditError(
                f"cannot load the ControlNet in {ref.path}: {first}",
                hint="is it a complete diffusers ControlNet folder (config.json and weights)?",
            ) from None
        _loaded[key] = net.to(model.device).eval().requires_grad_(False)
    net = _loaded[key]
    check_fits(net, model, ref)
    return net


def check_fits(net, model, ref: ModelRef) -> None:
    """A ControlNet made for another architecture fails here in one line, not deep inside the UNet."""
    cn, un = net.config, model.unet.config
    same = (
        tuple(cn.block_out_channels) == tuple(un.block_out_channels)
        and cn.cross_attention_dim == un.cross_attention_dim
        and cn.in_channels == un.in_channels
        and getattr(cn, "addition_embed_type", None) == getattr(un, "addition_embed_type", None)
    )
    if not same:
        raise HmeditError(
            f"the ControlNet {ref.name!r} does not fit the model {model.ref.name!r} ({model.family.label})",
            hint="use a ControlNet made for this model's family (same UNet channels and text width)",
        )
