"""Tiny models made here, for tests, benchmarks and the demo: no hub, no download.

Each is a real transformers model (random weights from a small config, a
fixed seed) with a tokenizer trained on this module's little corpus by the
tokenizers library, saved with ``save_pretrained`` exactly as a user's model
directory would be, so the code that loads them is the code that loads any
model. ``mlbridge models tiny KIND DIR`` writes one.

Needs torch, transformers and tokenizers (the ``frameworks`` extra).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

__all__ = ["CORPUS", "KINDS", "make_tiny_model"]

#: What each kind is: the model class and the pipeline tasks it serves.
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "bert-classifier": ("BertForSequenceClassification", ("text-classification", "feature-extraction")),
    "bert-tagger": ("BertForTokenClassification", ("token-classification", "feature-extraction")),
    "bert-mlm": ("BertForMaskedLM", ("fill-mask", "feature-extraction")),
    "gpt2": ("GPT2LMHeadModel", ("text-generation",)),
}

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a sandbox runs each framework in its own container",
    "models are loaded once and serve many requests",
    "the orchestrator enforces limits quotas and secrets",
    "good morning how are you today",
    "this movie was great and i loved it",
    "this movie was terrible and i hated it",
    "tokens stream to the client one by one",
    "fine tuning changes the weights of a model",
    "paris is the capital of france",
    "berlin is the capital of germany",
    "the cat sat on the mat with a hat",
] * 4


def _transformers() -> Any:
    return importlib.import_module("transformers")


def _bert_tokenizer(vocab_size: int) -> Any:
    from tokenizers import BertWordPieceTokenizer

    BertTokenizerFast = _transformers().BertTokenizerFast

    trained = BertWordPieceTokenizer(lowercase=True)
    trained.train_from_iterator(CORPUS, vocab_size=vocab_size, min_frequency=1,
                                special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    return BertTokenizerFast(tokenizer_object=trained._tokenizer, unk_token="[UNK]", sep_token="[SEP]",
                             pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]", do_lower_case=True)


def _gpt2_tokenizer(vocab_size: int) -> Any:
    from tokenizers import ByteLevelBPETokenizer

    GPT2TokenizerFast = _transformers().GPT2TokenizerFast

    trained = ByteLevelBPETokenizer()
    trained.train_from_iterator(CORPUS, vocab_size=vocab_size, min_frequency=1, special_tokens=["<|endoftext|>"])
    tok = GPT2TokenizerFast(tokenizer_object=trained._tokenizer, bos_token="<|endoftext|>",
                            eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    tok.pad_token = tok.eos_token
    return tok


def make_tiny_model(out: Path | str, kind: str = "bert-classifier", *, seed: int = 0, hidden: int = 64,
                    layers: int = 2, num_labels: int = 2) -> Path:
    """Write a tiny ``kind`` model and its tokenizer to ``out`` and return the directory.

    Args:
        kind: one of :data:`KINDS`.
        seed: the torch seed the random weights come from (same seed, same weights file; the
            trained tokenizer may number tied tokens differently from run to run, so two runs
            can differ in tokenizer.json and so in the model hash).
        hidden: hidden size (heads are ``hidden // 16``).
        layers: transformer layers.
        num_labels: labels of a classifier or tagger.
    """
    import torch

    transformers = _transformers()
    transformers.utils.logging.disable_progress_bar()
    if kind not in KINDS:
        raise ValueError(f"unknown tiny model kind {kind!r}; kinds: {', '.join(KINDS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cls = getattr(transformers, KINDS[kind][0])
    if kind == "gpt2":
        tok = _gpt2_tokenizer(400)
        config: Any = transformers.GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=hidden, n_layer=layers,
                                              n_head=max(1, hidden // 16), bos_token_id=tok.bos_token_id,
                                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    else:
        tok = _bert_tokenizer(300)
        labels = {i: f"LABEL_{i}" if kind == "bert-tagger" else ("NEGATIVE", "POSITIVE", "NEUTRAL")[i % 3]
                  for i in range(num_labels)}
        config = transformers.BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                                         num_attention_heads=max(1, hidden // 16), intermediate_size=hidden * 2,
                                         max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                                         num_labels=num_labels, id2label=labels,
                                         label2id={v: k for k, v in labels.items()})
    model = cls(config)
    model.eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
