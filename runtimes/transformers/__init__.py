"""The ``transformers`` bridge: Hugging Face models, tokenizers, pipelines, datasets and fine-tuning on torch."""

from .bridge import TransformersBridge

__all__ = ["TransformersBridge"]
