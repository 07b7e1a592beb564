"""vSLERP Studio: edit images by moving through CLIP's double-ellipsoid geometry.

`from vslerp_app import load_pipeline` gives a ready `VSLERPEngine`; the math alone is
`vslerp_app.geometry`, statistics `vslerp_app.stats`. The model side (torch, diffusers)
is imported on first use of `load_pipeline`, so the pure modules stay light.
"""

__version__ = "0.1.0"

__all__ = ["VSLERPEngine", "load_pipeline", "__version__"]


def __getattr__(name: str):
    if name == "load_pipeline":
        from vslerp_app.models import load_pipeline

        return load_pipeline
    if name == "VSLERPEngine":
        from vslerp_app.engine import VSLERPEngine

        return VSLERPEngine
    raise AttributeError(f"module 'vslerp_app' has no attribute {name!r}")
