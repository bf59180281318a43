"""CLIP for hmedit: the bundled toy CLIP (``hmedit/models/weights/toy-clip``) or any transformers CLIP a user
has (a folder, or a hub id already in the local Hugging Face cache), for scoring regions against their prompts
(:mod:`hmedit.clip.score`) and for guidance losses (:mod:`hmedit.clip.loss`)."""

from hmedit.clip.load import load_clip, resolve_clip

__all__ = ["load_clip", "resolve_clip"]
