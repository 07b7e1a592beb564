"""vSLERP Studio: edit images by moving through CLIP's double-ellipsoid geometry."""

__version__ = "0.1.0"
