"""The unCLIP side: model presets, one module per model family, loading, the CLIP encoders,
the runner, tiny fixtures.

Knows nothing of vSLERP, statistics or output files: `vslerp_app` builds on it.
"""

from pipelines.encoders import ClipImageEncoder
from pipelines.families import FAMILIES, Family, RenderSettings
from pipelines.loading import (
    SUPPORTED_PIPELINES,
    HubUnreachableError,
    LoadedModel,
    ModelLoadError,
    PipelineDirectoryError,
    carried_mean,
    hub_snapshot,
    load_model,
)
from pipelines.presets import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MODEL,
    PRESETS,
    HubFiles,
    ModelPreset,
    get_preset,
    list_presets,
)
from pipelines.runner import GenerationError, UnclipRunner, is_out_of_memory

__all__ = [
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MODEL",
    "FAMILIES",
    "Family",
    "HubFiles",
    "PRESETS",
    "SUPPORTED_PIPELINES",
    "ClipImageEncoder",
    "GenerationError",
    "HubUnreachableError",
    "LoadedModel",
    "ModelLoadError",
    "ModelPreset",
    "PipelineDirectoryError",
    "RenderSettings",
    "UnclipRunner",
    "carried_mean",
    "get_preset",
    "hub_snapshot",
    "is_out_of_memory",
    "list_presets",
    "load_model",
]
