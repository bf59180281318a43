"""Where weights come from: the bundled toy model, a local diffusers folder, a hub id found in the local
Hugging Face cache, or a single .safetensors / .ckpt file. Nothing else in hmedit knows.

SD 1.x, SD 2.x and SDXL load the same way; what differs between them is the family object
(:mod:`hmedit.models.family`) the loaded :class:`Model` carries. Models load as diffusers recommends (with
accelerate: weights straight into place, no random initialisation first), without touching global logging or
environment variables.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hmedit.errors import HmeditError
from hmedit.models.family import FAMILIES, Family, detect
from hmedit.scene.spec import DTYPES, SCHEDULERS

WEIGHTS_DIR = Path(__file__).parent / "weights"
BUNDLED = {"toy": WEIGHTS_DIR / "toy", "toy-controlnet": WEIGHTS_DIR / "toy-controlnet"}
BUNDLED_CONTROLNETS = {"toy-controlnet": "toy"}  # bundled ControlNet -> the bundled model it is made for
CONTROLNET_CLASSES = ("ControlNetModel",)  # config.json _class_name of a diffusers ControlNet folder
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
RANDOM_PREFIX = "random:"  # "random:sd15": the published architecture with random weights (benchmarks)


def quiet_libraries() -> None:
    """Silence third-party chatter (progress bars, notices) for the command line; only the CLI and the toy
    evaluation call this, never the loader."""
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
    if name in BUNDLED_CONTROLNETS:
        hint = "name it in a node's control: {model: " + name + "}"
        raise HmeditError(f"'{name}' is a ControlNet, not a model", hint=hint)
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


def resolve_controlnet(name: str, *, base_dir: Path | None = None) -> ModelRef:
    """A ControlNet named in a scene (``control: {model: ...}``): a bundled one, a diffusers ControlNet folder
    (config.json with ``_class_name: ControlNetModel``), or a hub id found in the local Hugging Face cache."""

    def checked(path: Path, source: str) -> ModelRef:
        try:
            kind = json.loads((path / "config.json").read_text()).get("_class_name")
        except (OSError, ValueError, AttributeError):
            kind = None
        if kind not in CONTROLNET_CLASSES:
            what = "no readable config.json" if kind is None else f"config.json names {kind}"
            raise HmeditError(
                f"{path} is not a diffusers ControlNet ({what})",
                hint="point to the folder that holds a ControlNetModel's config.json and weights",
            )
        return ModelRef(name, path, source)

    if name in BUNDLED_CONTROLNETS:
        path = BUNDLED[name]
        if not (path / "config.json").is_file():
            raise HmeditError(
                f"the bundled ControlNet '{name}' is missing from {path}",
                hint="reinstall hmedit (it ships hmedit/models/weights/" + name + ")",
            )
        return checked(path, "bundled")
    if name in BUNDLED:
        raise HmeditError(f"'{name}' is a model, not a ControlNet", hint="use e.g. toy-controlnet")
    cand = Path(name).expanduser()
    if base_dir is not None and not cand.is_absolute() and (base_dir / cand).exists():
        cand = base_dir / cand
    if cand.is_dir():
        return checked(cand.resolve(), "folder")
    if cand.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise HmeditError(
            f"ControlNet '{name}' not found",
            hint="use toy-controlnet, a diffusers ControlNet folder (relative paths are taken from the "
            "scene's folder) or a hub id 'org/name' in the local cache",
        )
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(name, local_files_only=True))
    except Exception:  # noqa: BLE001 - any miss means "not in the cache"
        raise HmeditError(
            f"ControlNet '{name}' is not in the local Hugging Face cache and hmedit does not download",
            hint=f"on a machine with network run `hf download {name}` (or copy its folder here)",
        ) from None
    return checked(path, "hub")


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
    from hmedit.provenance import feed

    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        fd = os.open(p, os.O_RDONLY)
        try:
            feed(h, fd)
        finally:
            os.close(fd)
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


def pick_device(device: str = "auto", dtype: str = "auto", preset=None, *, cuda: bool | None = None):
    """CUDA if present, else CPU; ``dtype`` auto: the preset's for the device (fp16 on CUDA without one).
    ``cuda``: whether the machines that will run the render have CUDA (None: this process's; a distributed
    batch plans on a driver for its workers)."""
    import torch

    if cuda is None:
        cuda = torch.cuda.is_available()
    if device == "auto":
        device = "cuda" if cuda else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise HmeditError(f"unknown device '{device}'", hint="use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not cuda:
        raise HmeditError(
            "--device cuda was asked for but no CUDA device is available", hint="use --device cpu"
        )
    if dtype not in DTYPES:
        raise HmeditError(f"unknown dtype '{dtype}'", hint="use one of " + ", ".join(DTYPES))
    if dtype == "auto":
        dtype = (
            preset.dtype_for(dev.type) if preset is not None else ("fp16" if dev.type == "cuda" else "fp32")
        )
    return dev, getattr(torch, TORCH_DTYPES[dtype])


TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
"""hmedit's dtype flags -> torch's dtype names."""


def dtype_flag(dtype) -> str:
    """hmedit's flag for a torch dtype or its name (``torch.float16`` / "float16" -> "fp16"); flags pass."""
    name = str(dtype).replace("torch.", "")
    return {v: k for k, v in TORCH_DTYPES.items()}.get(name, name)


RANDOM_PRESETS = {
    "sd15": "sd15",
    "sd2": "sd21",
    "sdxl": "sdxl",
    "tiny": "sd15",
    "tiny-sd2": "sd21",
    "tiny-sdxl": "sdxl",
}


def default_preset(ref: ModelRef) -> str:
    """The preset of a model's family, found without loading it: the bundled model's own; a folder's from its
    configs; a single file's from its tensor names (safetensors header only); a random one's from its
    architecture. An unreadable config gets 'sd15' (only the defaults can then miss; the render still
    loads the model and checks it)."""
    if ref.source == "bundled":
        return ref.name
    if ref.source == "random":
        return RANDOM_PRESETS.get(ref.name[len(RANDOM_PREFIX) :], "sd15")
    if ref.path.is_dir():
        try:
            unet = json.loads((ref.path / "unet" / "config.json").read_text())
            index = json.loads((ref.path / "model_index.json").read_text())
        except (OSError, ValueError):
            return "sd15"
        return detect(unet, index).preset
    if ref.path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(ref.path), "pt") as f:
                keys = list(f.keys())
        except Exception:  # noqa: BLE001 - the loader reports an unreadable file
            return "sd15"
        if any(k.startswith("conditioner.embedders.1") for k in keys):
            return FAMILIES["sdxl"].preset
        if any(k.startswith("cond_stage_model.model.") for k in keys):
            return FAMILIES["sd2"].preset
    return "sd15"


@dataclass
class Model:
    """The loaded components of a model, ready for hmedit's sampler; ``family`` says how to use them."""

    ref: ModelRef
    vae: Any
    text_encoders: list
    tokenizers: list
    unet: Any
    scheduler_config: dict
    device: Any
    dtype: Any
    family: Family
    hash: str = ""
    config: dict = field(default_factory=dict)  # model_index.json (e.g. force_zeros_for_empty_prompt)

    @property
    def text_encoder(self):
        """The first text encoder (the only one of SD 1.x/2.x)."""
        return self.text_encoders[0]

    @property
    def tokenizer(self):
        return self.tokenizers[0]

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_size(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    def components(self) -> dict:
        """Keyword arguments for the family's diffusers pipeline built from these same modules."""
        out = dict(vae=self.vae, unet=self.unet)
        for (tok, enc), t, e in zip(self.family.text_components, self.tokenizers, self.text_encoders):
            out[tok], out[enc] = t, e
        if self.family.name == "sdxl":
            out["force_zeros_for_empty_prompt"] = self.family.zero_empty_negative(self)
        else:
            out.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        return out

    def describe(self) -> dict:
        return {
            "name": self.ref.name,
            "path": str(self.ref.path),
            "source": self.ref.source,
            "hash": self.hash,
            "family": self.family.name,
            "prediction_type": self.prediction_type,
            "native_size": self.native_size,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
        }


def load(
    name: str | ModelRef,
    *,
    device: str = "auto",
    dtype: str = "auto",
    base_dir: Path | None = None,
    config: str | None = None,
) -> Model:
    """Load a model by name (see ``resolve``). ``config``: a diffusers folder (or a hub id in the local cache)
    to take the architecture from when loading a single checkpoint file offline."""
    ref = name if isinstance(name, ModelRef) else resolve(name, base_dir=base_dir)
    dev, dt = pick_device(device, dtype)
    index: dict = {}
    if ref.source == "random":
        from hmedit.models.random import sd_components

        comps = sd_components(ref.name[len(RANDOM_PREFIX) :], device=dev)
        sched_cfg = dict(comps.pop("scheduler").config)
    elif ref.path.is_file():
        comps, sched_cfg, index = _load_single_file(ref, dt, config)
    else:
        comps, sched_cfg, index = _load_folder(ref, dt)
    fam = detect(comps["unet"].config, index)
    vae = _place(comps["vae"], dev, fam.vae_dtype(dt, comps["vae"].config))
    unet = _place(comps["unet"], dev, dt)
    tokenizers, encoders = [], []
    for tok, enc in fam.text_components:
        if tok not in comps or enc not in comps:
            raise HmeditError(f"{ref.path} is an {fam.label} model without its {enc}", hint="is it complete?")
        tokenizers.append(comps[tok])
        encoders.append(_place(comps[enc], dev, dt))
    return Model(ref, vae, encoders, tokenizers, unet, sched_cfg, dev, dt, fam, model_hash(ref), index)


def _place(module, device, dtype):
    """``module`` on ``device`` in ``dtype``, frozen, in eval mode (cast only when it is not already)."""
    if module.dtype != dtype:
        module = module.to(dtype=dtype)
    if module.device != device:
        module = module.to(device)
    return module.eval().requires_grad_(False)


def _text_class(index: dict, name: str):
    """The transformers class model_index.json names for component ``name`` (CLIPTextModel by default)."""
    import transformers

    entry = index.get(name)
    cls = entry[1] if isinstance(entry, list) and len(entry) == 2 else "CLIPTextModel"
    return getattr(transformers, str(cls), transformers.CLIPTextModel)


def _load_folder(ref: ModelRef, dt) -> tuple[dict, dict, dict]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTokenizer

    try:
        index = json.loads((ref.path / "model_index.json").read_text())
        unet_cfg = json.loads((ref.path / "unet" / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise HmeditError(
            f"cannot read the model's configuration: {e}", hint="is the model folder complete?"
        ) from None
    fam = detect(unet_cfg, index)
    needed = ["unet", "vae", "scheduler"] + [p for pair in fam.text_components for p in pair]
    missing = [p for p in needed if not (ref.path / p).is_dir()]
    if missing:
        raise HmeditError(
            f"{ref.path} lacks {', '.join(missing)}",
            hint=f"an {fam.label} folder needs " + ", ".join(p + "/" for p in needed),
        )
    try:
        vae_cfg = json.loads((ref.path / "vae" / "config.json").read_text())
        comps = {
            "vae": AutoencoderKL.from_pretrained(
                ref.path, subfolder="vae", torch_dtype=fam.vae_dtype(dt, vae_cfg)
            ),
            "unet": UNet2DConditionModel.from_pretrained(ref.path, subfolder="unet", torch_dtype=dt),
        }
        for tok, enc in fam.text_components:
            comps[tok] = CLIPTokenizer.from_pretrained(ref.path, subfolder=tok)
            comps[enc] = _text_class(index, enc).from_pretrained(ref.path, subfolder=enc, dtype=dt)
        sched_cfg = json.loads((ref.path / "scheduler" / "scheduler_config.json").read_text())
    except HmeditError:
        raise
    except Exception as e:  # noqa: BLE001 - a broken folder is a user problem, said in one line
        raise HmeditError(
            f"cannot load the model in {ref.path}: {str(e).splitlines()[0]}",
            hint=f"is it a complete diffusers {fam.label} folder?",
        ) from None
    return comps, sched_cfg, index


def _load_single_file(ref: ModelRef, dt, config: str | None) -> tuple[dict, dict, dict]:
    import diffusers
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type, load_single_file_checkpoint

    try:
        ckpt = load_single_file_checkpoint(str(ref.path), local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise HmeditError(
            f"cannot read checkpoint {ref.path}: {str(e).splitlines()[0]}",
            hint="is the file complete? .safetensors is preferred over .ckpt",
        ) from None
    kind = infer_diffusers_model_type(ckpt)
    # SGM's second text encoder marks SDXL whatever its size; a local config folder names its own family
    xl = "xl" in kind or any(k.startswith("conditioner.embedders.1.") for k in ckpt)
    if config is not None and (Path(config) / "model_index.json").is_file():
        try:
            index = json.loads((Path(config) / "model_index.json").read_text())
            unet_cfg = json.loads((Path(config) / "unet" / "config.json").read_text())
            xl = detect(unet_cfg, index).name == "sdxl"
        except (OSError, ValueError):
            pass
    kind = "xl" if xl and "xl" not in kind else kind
    fam = FAMILIES["sdxl" if xl else "sd1"]
    pipe_cls = getattr(diffusers, fam.pipeline)
    try:
        kwargs = {} if xl else {"load_safety_checker": False}
        pipe = pipe_cls.from_single_file(
            str(ref.path), config=config, local_files_only=True, torch_dtype=dt, **kwargs
        )
    except Exception as e:  # noqa: BLE001
        raise HmeditError(
            f"cannot build the {kind} architecture for {ref.path} offline: {str(e).splitlines()[0]}",
            hint="load it with a local diffusers folder of the same family as its architecture "
            "(hmedit.load_model(path, config=DIR)), put that family's config in the local Hugging Face "
            "cache, or convert the file to a diffusers folder",
        ) from None
    names = ["vae", "unet"] + [p for pair in fam.text_components for p in pair]
    comps = {k: getattr(pipe, k) for k in names}
    index = {"_class_name": fam.pipeline, **dict(pipe.config)}
    return comps, dict(pipe.scheduler.config), index


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
