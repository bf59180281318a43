"""hmedit: hierarchical, text-guided image editing and generation with latent diffusion models.

The library API (the command line is built on it)::

    import hmedit

    out = hmedit.render("scenes/nested_rings.yaml", seed=3)
    out.image.save("rings.png")

``load_scene``, ``load_model`` and ``render`` are imported on first use, so ``import hmedit`` stays light.
"""

__version__ = "0.1.0"

__all__ = ["HmeditError", "Render", "load_model", "load_scene", "plan", "render"]


def __getattr__(name: str):
    if name in ("load_scene", "load_model", "render", "plan", "Render"):
        from hmedit import api

        return getattr(api, name)
    if name == "HmeditError":
        from hmedit.errors import HmeditError

        return HmeditError
    raise AttributeError(f"module 'hmedit' has no attribute {name!r}")
