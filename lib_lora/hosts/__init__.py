"""Where the model comes from: one Host protocol (base.py), one implementation per kind of host."""

from .base import Conditioning, GenerationRequest, Host, HostInfo

__all__ = ["Conditioning", "GenerationRequest", "Host", "HostInfo"]
