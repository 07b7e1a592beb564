"""The diffusers side: model presets, robust loading, the vSLERP engine, tiny fixtures."""

from pipelines.engine import Frame, GenerationError, RenderSettings, VSLERPPipeline
from pipelines.factory import ModelLoadError, load_pipeline
from pipelines.presets import DEFAULT_MODEL, PRESETS, ModelPreset, get_preset, list_presets

__all__ = [
    "DEFAULT_MODEL",
    "PRESETS",
    "Frame",
    "GenerationError",
    "ModelLoadError",
    "ModelPreset",
    "RenderSettings",
    "VSLERPPipeline",
    "get_preset",
    "list_presets",
    "load_pipeline",
]
