"""The ``docker`` backend: each worker one hardened container on the local Docker engine.

:mod:`.backend` runs workers, :mod:`.engine` holds every engine call,
:mod:`.render` the container settings (pure), :mod:`.state` what the engine's
answers mean, :mod:`.egress` the egress network and its firewall, and
:mod:`.errors` the translation of docker SDK errors.
"""

from .backend import DockerBackend, default_image

__all__ = ["DockerBackend", "default_image"]
