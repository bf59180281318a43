"""Where a CLIP comes from: the bundled toy CLIP (``toy``), a folder that ``CLIPModel.from_pretrained`` loads,
or a hub id already in the local Hugging Face cache (nothing is downloaded). Loaded models are cached per
(ref, device, dtype), frozen and in eval mode; every failure is one :class:`HmeditError` with a hint.

    model, processor = load_clip("toy")
    model, processor = load_clip("openai/clip-vit-base-patch16", device="cuda", dtype=torch.float16)
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import torch

from hmedit.errors import HmeditError

TOY_CLIP_NAMES = ("toy", "toy-clip")  # what a scene or the API may call the bundled CLIP
CLIP_MODEL_TYPES = ("clip",)  # config.json model_type of a transformers CLIPModel folder
_CACHE: dict[tuple[str, str, str], tuple] = {}
_LOCK = threading.Lock()


def bundled_folder() -> Path:
    """The bundled toy CLIP's folder (``hmedit models --path toy-clip``)."""
    from hmedit.models.load import WEIGHTS_DIR

    return WEIGHTS_DIR / "toy-clip"


def _check_folder(path: Path, name: str) -> Path:
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
        kind = cfg.get("model_type") if isinstance(cfg, dict) else None
    except (OSError, ValueError):
        kind = None
        cfg = None
    if cfg is None:
        raise HmeditError(
            f"{path} is not a CLIP model folder (no readable config.json)",
            field="clip",
            hint="point clip: to a folder that CLIPModel.from_pretrained loads (config.json, weights, "
            "tokenizer and preprocessor_config.json), or use 'toy'",
        )
    if kind not in CLIP_MODEL_TYPES:
        raise HmeditError(
            f"{path} holds a {kind or 'model of unknown type'}, not a CLIP model",
            field="clip",
            hint="clip: needs a transformers CLIPModel (vision and text towers), e.g. "
            "openai/clip-vit-base-patch16 or 'toy'",
        )
    return path


def resolve_clip(ref: str = "toy", *, base_dir: Path | None = None) -> Path:
    """The folder of the CLIP named ``ref``: the bundled one for "toy", a folder (relative paths are taken
    from ``base_dir`` first, e.g. a scene's folder), or a hub id 'org/name' found in the local cache."""
    if not isinstance(ref, str) or not ref.strip():
        raise HmeditError(
            f"clip must be a name, got {ref!r}", field="clip", hint="use 'toy', a folder or a hub id"
        )
    if ref in TOY_CLIP_NAMES:
        folder = bundled_folder()
        if not (folder / "config.json").is_file():
            raise HmeditError(
                f"the bundled CLIP is missing from {folder}",
                field="clip",
                hint="reinstall hmedit, or train it: make train-clip",
            )
        return _check_folder(folder, ref)
    cand = Path(ref).expanduser()
    if base_dir is not None and not cand.is_absolute() and (Path(base_dir) / cand).exists():
        cand = Path(base_dir) / cand
    if cand.is_dir():
        return _check_folder(cand.resolve(), ref)
    if cand.exists() or ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        raise HmeditError(
            f"CLIP '{ref}' not found",
            field="clip",
            hint="use 'toy' (bundled), a CLIPModel folder (relative paths are taken from the scene's folder) "
            "or a hub id 'org/name' in the local Hugging Face cache",
        )
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(ref, local_files_only=True))
    except Exception:  # noqa: BLE001 - any miss means "not in the cache"
        raise HmeditError(
            f"CLIP '{ref}' is not in the local Hugging Face cache and hmedit does not download",
            field="clip",
            hint=f"on a machine with network run `hf download {ref}` (or copy its folder here), or use 'toy'",
        ) from None
    return _check_folder(path, ref)


def load_clip(ref: str = "toy", *, device="cpu", dtype=torch.float32, base_dir: Path | None = None) -> tuple:
    """``(transformers.CLIPModel, transformers.CLIPProcessor)`` for ``ref`` (see :func:`resolve_clip`) on
    ``device`` in ``dtype``: eval mode, ``requires_grad`` off, cached per (ref, device, dtype) so that every
    caller shares one copy. Weights load offline (``local_files_only``); the bundled CLIP is stored in fp16
    and loads in the ``dtype`` asked for."""
    folder = resolve_clip(ref, base_dir=base_dir)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise HmeditError(f"unknown device '{device}'", hint="use cpu, cuda or cuda:N") from None
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise HmeditError(
            f"unknown CLIP dtype {dtype!r}", hint="use torch.float32, torch.float16 or torch.bfloat16"
        )
    key = (str(folder), str(dev), str(dtype))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        from transformers import CLIPModel, CLIPProcessor

        try:
            model = CLIPModel.from_pretrained(folder, dtype=dtype, local_files_only=True)
            processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
        except Exception as e:  # noqa: BLE001 - a broken folder is a user problem, said in one line
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise HmeditError(
                f"cannot load the CLIP in {folder}: {first}",
                field="clip",
                hint="is it a complete CLIPModel folder (config.json, model.safetensors, tokenizer files, "
                "preprocessor_config.json)?",
            ) from None
        if model.dtype != dtype:
            model = model.to(dtype=dtype)
        model = model.to(dev).eval().requires_grad_(False)
        _CACHE[key] = (model, processor)
        return model, processor


def clear_cache() -> None:
    """Forget every loaded CLIP (tests; freeing memory)."""
    with _LOCK:
        _CACHE.clear()


def _pooled(out):
    """transformers 4 returns the projected features as a tensor, transformers 5 as ``.pooler_output``."""
    return out if torch.is_tensor(out) else out.pooler_output


def image_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """[N, D] projected (not normalised) image embeddings of a CLIPModel, any transformers version."""
    return _pooled(model.get_image_features(pixel_values=pixel_values))


def text_features(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """[N, D] projected (not normalised) text embeddings of a CLIPModel, any transformers version."""
    return _pooled(model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))
