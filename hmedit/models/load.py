"""Where weights come from: the bundled toy model, a local diffusers folder, a hub id found in the local
Hugging Face cache, or a single .safetensors / .ckpt file. Nothing else in hmedit knows.

SD 1.x (epsilon) and SD 2.x (v-prediction, linear projection) load the same way; SDXL is recognised and
refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hmedit.errors import HmeditError

WEIGHTS_DIR = Path(__file__).parent / "weights"
BUNDLED = {"toy": WEIGHTS_DIR / "toy"}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
DTYPES = ("auto", "fp32", "fp16", "bf16")
RANDOM_PREFIX = "random:"  # "random:sd15": the published architecture with random weights (benchmarks)


def quiet_libraries() -> None:
    """Silence third-party chatter (progress bars, import-time notices) that would drown hmedit's output."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def cache_dir() -> Path:
    """hmedit's cache folder (hashes, learned embeddings): $HMEDIT_CACHE, else $XDG_CACHE_HOME/hmedit."""
    root = (
        os.environ.get("HMEDIT_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hmedit"
    )
    return Path(root)


@dataclass
class ModelRef:
    """A model the user named, resolved to a place on disk (not loaded)."""

    name: str
    path: Path
    source: str  # "bundled" | "folder" | "hub" | "file" | "random"

    def weight_files(self) -> list[Path]:
        if self.source == "random":
            return []
        if self.path.is_file():
            return [self.path]
        return sorted(p for p in self.path.rglob("*") if p.suffix in (".safetensors", ".bin", ".ckpt", ".pt"))

    def size_bytes(self) -> int:
        if self.source == "random":
            return 0
        return (
            sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
            if self.path.is_dir()
            else self.path.stat().st_size
        )


def resolve(name: str, *, base_dir: Path | None = None) -> ModelRef:
    """Turn a model name from a scene or the command line into a place on disk, or a clear error."""
    if name in BUNDLED:
        path = BUNDLED[name]
        if not (path / "model_index.json").exists():
            raise HmeditError(
                f"the bundled model '{name}' is missing from {path}",
                hint="reinstall hmedit, or train it: python -m hmedit.toy.train --out " + str(path),
            )
        return ModelRef(name, path, "bundled")
    if name.startswith(RANDOM_PREFIX):
        from hmedit.models.random import RANDOM_KINDS

        if name[len(RANDOM_PREFIX) :] not in RANDOM_KINDS:
            raise HmeditError(
                f"unknown random architecture '{name}'",
                hint="use "
                + ", ".join(RANDOM_PREFIX + k for k in RANDOM_KINDS)
                + " (random weights, for speed and memory benchmarks)",
            )
        return ModelRef(name, Path(name), "random")
    candidates = [Path(name).expanduser()]
    if base_dir is not None and not Path(name).is_absolute():
        candidates.insert(0, base_dir / name)
    for cand in candidates:
        if cand.is_dir():
            if not (cand / "model_index.json").exists():
                raise HmeditError(
                    f"{cand} is a folder but not a diffusers model (no model_index.json)",
                    hint="point to the folder that holds model_index.json, unet/, vae/ ...",
                )
            return ModelRef(name, cand.resolve(), "folder")
        if cand.is_file():
            if cand.suffix not in SINGLE_FILE_SUFFIXES:
                raise HmeditError(f"{cand} is not a checkpoint file", hint="use a .safetensors or .ckpt file")
            return ModelRef(name, cand.resolve(), "file")
    if name.endswith(SINGLE_FILE_SUFFIXES) or name.startswith((".", "/", "~")):
        raise HmeditError(
            f"model '{name}' not found",
            hint="check the path (relative paths are taken from the "
            "scene's folder), or use 'toy' for the bundled model",
        )
    if name.count("/") == 1:
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(name, local_files_only=True))
        except Exception:  # noqa: BLE001 - any miss means "not in the cache"
            raise HmeditError(
                f"model '{name}' is not in the local Hugging Face cache and hmedit does not download",
                hint=f"on a machine with network run `hf download {name}` (or copy its folder here), "
                "then pass the hub id or the folder",
            ) from None
        return ModelRef(name, path, "hub")
    raise HmeditError(
        f"unknown model '{name}'",
        hint="use 'toy', a diffusers folder, a hub id like "
        "'org/name' in the local cache, or a .safetensors/.ckpt file",
    )


def model_hash(ref: ModelRef) -> str:
    """sha256 of the weight files (first 16 hex digits), cached by path, size and mtime; a random model's
    name (its weights are a function of it)."""
    if ref.source == "random":
        return ref.name
    files = ref.weight_files()
    key = json.dumps([[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files])
    store = cache_dir() / "hashes.json"
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    digest = h.hexdigest()[:16]
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        known[key] = digest
        tmp = store.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, store)
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return digest


def pick_device(device: str = "auto", dtype: str = "auto"):
    """CUDA if present (fp16 by default), else CPU fp32."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise HmeditError(f"unknown device '{device}'", hint="use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HmeditError(
            "--device cuda was asked for but no CUDA device is available", hint="use --device cpu"
        )
    if dtype not in DTYPES:
        raise HmeditError(f"unknown dtype '{dtype}'", hint="use one of " + ", ".join(DTYPES))
    if dtype == "auto":
        dtype = "fp16" if dev.type == "cuda" else "fp32"
    return dev, {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


@dataclass
class Model:
    """The loaded components of an SD-family model, ready for hmedit's sampler."""

    ref: ModelRef
    vae: Any
    text_encoder: Any
    tokenizer: Any
    unet: Any
    scheduler_config: dict
    device: Any
    dtype: Any
    family: str  # "sd1" | "sd2"
    hash: str = ""
    extras: dict = field(default_factory=dict)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_size(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    def components(self) -> dict:
        """Keyword arguments for a diffusers StableDiffusion pipeline built from these same modules."""
        return dict(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    def describe(self) -> dict:
        return {
            "name": self.ref.name,
            "path": str(self.ref.path),
            "source": self.ref.source,
            "hash": self.hash,
            "family": self.family,
            "prediction_type": self.prediction_type,
            "native_size": self.native_size,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
        }


def _refuse_sdxl(what: str) -> None:
    raise HmeditError(
        f"{what} is an SDXL model, which hmedit does not support yet",
        hint="use an SD 1.x or 2.x checkpoint (or 'toy')",
    )


def _family(unet) -> str:
    cfg = unet.config
    return "sd2" if cfg.cross_attention_dim == 1024 or cfg.get("use_linear_projection") else "sd1"


def load(
    name: str | ModelRef,
    *,
    device: str = "auto",
    dtype: str = "auto",
    base_dir: Path | None = None,
    config: str | None = None,
) -> Model:
    """Load a model by name (see ``resolve``). ``config``: a diffusers folder or hub id to take the
    architecture from when loading a single checkpoint file offline."""
    import torch

    quiet_libraries()
    ref = name if isinstance(name, ModelRef) else resolve(name, base_dir=base_dir)
    dev, dt = pick_device(device, dtype)
    # The VAE decodes in fp32 on GPUs: fp16 VAEs overflow into NaN (black images).
    vae_dt = torch.float32 if dt == torch.float16 else dt
    if ref.source == "random":
        from hmedit.models.random import sd_components

        comps = sd_components(ref.name[len(RANDOM_PREFIX) :], device=dev)
        sched_cfg = dict(comps.pop("scheduler").config)
    elif ref.path.is_file():
        comps, sched_cfg = _load_single_file(ref, dt, config)
    else:
        comps, sched_cfg = _load_folder(ref, dt)
    vae = comps["vae"].to(dev, vae_dt).eval().requires_grad_(False)
    text = comps["text_encoder"].to(dev, dt).eval().requires_grad_(False)
    unet = comps["unet"].to(dev, dt).eval().requires_grad_(False)
    return Model(ref, vae, text, comps["tokenizer"], unet, sched_cfg, dev, dt, _family(unet), model_hash(ref))


def _load_folder(ref: ModelRef, dt) -> tuple[dict, dict]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    try:
        index = json.loads((ref.path / "model_index.json").read_text())
    except (OSError, ValueError) as e:
        raise HmeditError(
            f"cannot read {ref.path / 'model_index.json'}: {e}", hint="is the model folder complete?"
        ) from None
    if "XL" in index.get("_class_name", "") or "text_encoder_2" in index:
        _refuse_sdxl(str(ref.path))
    missing = [
        p for p in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if not (ref.path / p).is_dir()
    ]
    if missing:
        raise HmeditError(
            f"{ref.path} lacks {', '.join(missing)}",
            hint="a Stable Diffusion folder needs unet/, vae/, text_encoder/, tokenizer/ and scheduler/",
        )
    try:
        comps = {
            "vae": AutoencoderKL.from_pretrained(ref.path, subfolder="vae", torch_dtype=dt),
            "unet": UNet2DConditionModel.from_pretrained(ref.path, subfolder="unet", torch_dtype=dt),
            "text_encoder": CLIPTextModel.from_pretrained(ref.path, subfolder="text_encoder", dtype=dt),
            "tokenizer": CLIPTokenizer.from_pretrained(ref.path, subfolder="tokenizer"),
        }
        sched_cfg = json.loads((ref.path / "scheduler" / "scheduler_config.json").read_text())
    except HmeditError:
        raise
    except Exception as e:  # noqa: BLE001 - a broken folder is a user problem, said in one line
        raise HmeditError(
            f"cannot load the model in {ref.path}: {str(e).splitlines()[0]}",
            hint="is it a complete diffusers Stable Diffusion folder?",
        ) from None
    return comps, sched_cfg


def _load_single_file(ref: ModelRef, dt, config: str | None) -> tuple[dict, dict]:
    from diffusers import StableDiffusionPipeline
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type, load_single_file_checkpoint

    try:
        ckpt = load_single_file_checkpoint(str(ref.path), local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise HmeditError(
            f"cannot read checkpoint {ref.path}: {str(e).splitlines()[0]}",
            hint="is the file complete? .safetensors is preferred over .ckpt",
        ) from None
    kind = infer_diffusers_model_type(ckpt)
    if "xl" in kind:
        _refuse_sdxl(str(ref.path))
    try:
        pipe = StableDiffusionPipeline.from_single_file(
            str(ref.path), config=config, local_files_only=True, torch_dtype=dt, load_safety_checker=False
        )
    except Exception as e:  # noqa: BLE001
        raise HmeditError(
            f"cannot build the {kind} architecture for {ref.path} offline: {str(e).splitlines()[0]}",
            hint="convert it to a diffusers folder (diffusers' convert_original_stable_diffusion_to_diffusers"
            ".py) "
            "or put the matching SD 1.x/2.x config in the local Hugging Face cache",
        ) from None
    comps = {k: getattr(pipe, k) for k in ("vae", "unet", "text_encoder", "tokenizer")}
    return comps, dict(pipe.scheduler.config)


SCHEDULERS = ("ddim", "euler", "euler_a", "dpmpp_2m", "pndm", "unipc")


def make_scheduler(name: str, config: dict):
    """A fresh scheduler of the named kind, configured from the model's own scheduler config."""
    import diffusers

    classes = {
        "ddim": "DDIMScheduler",
        "euler": "EulerDiscreteScheduler",
        "euler_a": "EulerAncestralDiscreteScheduler",
        "dpmpp_2m": "DPMSolverMultistepScheduler",
        "pndm": "PNDMScheduler",
        "unipc": "UniPCMultistepScheduler",
    }
    if name not in classes:
        raise HmeditError(f"unknown scheduler '{name}'", hint="use one of " + ", ".join(SCHEDULERS))
    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    if name == "dpmpp_2m":
        cfg.update(algorithm_type="dpmsolver++", solver_order=2)
        if cfg.get("rescale_betas_zero_snr"):
            cfg["final_sigmas_type"] = "zero"
    return getattr(diffusers, classes[name]).from_config(cfg)
