"""Gradio builders for the three tabs, host-agnostic, for gradio 3.41 (A1111) and 4.x (Forge, standalone)."""

from __future__ import annotations

from .context import StudioContext
from .model_panel import HostProvider, describe_host
from .studio import APP_TITLE, build_studio

__all__ = ["APP_TITLE", "HostProvider", "StudioContext", "build_studio", "describe_host"]
