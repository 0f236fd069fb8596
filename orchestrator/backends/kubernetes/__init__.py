"""The ``kubernetes`` backend: each worker one hardened Pod, reached over TCP with mutual TLS.

:mod:`.backend` runs workers, :mod:`.api` holds every call to the API server
(the official ``kubernetes`` client, errors translated there), :mod:`.render`
the worker's Secret, NetworkPolicy and Pod (pure), :mod:`.state` what a pod's
status means, :mod:`.pss` the Pod Security Standards check, and
:mod:`.settings` the backend's ``backend_options``. See docs/kubernetes.md.
"""

from .backend import KubernetesBackend
from .settings import KubernetesSettings

__all__ = ["KubernetesBackend", "KubernetesSettings"]
