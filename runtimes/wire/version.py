"""The one version of mlbridge: the distribution, both halves, image tags and ``common:describe``."""

__version__ = "0.1.0"
