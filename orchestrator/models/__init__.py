"""The model store (content-addressed model directories on the host) and how workers get its models."""

from .catalog import ModelCatalog
from .store import OPERATOR, ModelRecord, ModelStore

__all__ = ["OPERATOR", "ModelCatalog", "ModelRecord", "ModelStore"]
