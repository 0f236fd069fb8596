"""From a dataset resource to what ``Trainer`` eats, per task: label checks, tokenization, collator.

A training run checks at create time (:func:`check_fit`) that the dataset
can train the model for the task: the columns hold the right kind of values
and every label names a class of the model's head. That scan is what turns
a bad label into an INVALID_ARGUMENT naming the row before any step, where
torch would fail mid-run with a CUDA assert or an index error. Tokenization
(:func:`prepare`) happens when the run executes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..core import InvalidArgument
from .datasets import DatasetResource

__all__ = ["HEADS", "TASKS", "check_fit", "check_tokenizer", "prepare", "task_of"]

#: The tasks a training run trains for, and the model class suffixes that train for each.
HEADS: dict[str, tuple[str, ...]] = {
    "sequence-classification": ("ForSequenceClassification",),
    "token-classification": ("ForTokenClassification",),
    "causal-lm": ("ForCausalLM", "LMHeadModel"),
    "masked-lm": ("ForMaskedLM",),
}
TASKS = tuple(HEADS)


def task_of(model: Any, wanted: str | None, role: str) -> str:
    """The task ``model`` trains for: ``wanted`` when its head fits, else the one its class names.

    Raises:
        InvalidArgument: an unknown task, a head that does not fit it, or a model with no trainable head.
    """
    cls = type(model).__name__
    heads = [t for t, suffixes in HEADS.items() if cls.endswith(suffixes)]
    if wanted is not None:
        if wanted not in HEADS:
            raise InvalidArgument(f"training task {wanted!r} is not supported; tasks: {', '.join(TASKS)}")
        if wanted not in heads:
            raise InvalidArgument(f"{role} is a {cls}, which does not train for {wanted}; create a model "
                                  f"resource with the matching kind, or leave 'task' out")
        return wanted
    if not heads:
        raise InvalidArgument(f"{role} is a {cls}, which has no head to fine-tune; create the model resource "
                              f"with a kind of {', '.join(TASKS)}")
    return heads[0]


def _label_ids(values: Sequence[Any], label2id: Mapping[str, int], num_labels: int, where: str) -> list[int]:
    names = ", ".join(f"{i}={n}" for n, i in sorted(label2id.items(), key=lambda kv: kv[1]))
    out: list[int] = []
    for value in values:
        label = label2id.get(value) if isinstance(value, str) else value
        if label is None:
            raise InvalidArgument(f"{where}: label {value!r} is not a label of the model ({names}); use those "
                                  f"names or class ids 0..{num_labels - 1}")
        if not 0 <= label < num_labels:
            raise InvalidArgument(f"{where}: label {value} is out of range: the model has {num_labels} labels "
                                  f"(0..{num_labels - 1}: {names}); relabel, or fine-tune a model made with "
                                  f"num_labels={label + 1}")
        out.append(int(label))
    return out


def _labels(task: str, dataset: DatasetResource, split: Any, config: Any) -> list[Any] | None:
    """The labels of ``split`` (of ``dataset``) as the model's head wants them: class ids, floats, id lists.

    None for language modelling, whose labels are the text itself.
    """
    if task in ("causal-lm", "masked-lm"):
        return None
    column, kind = dataset.label_column, dataset.label_kind
    if column is None:
        raise InvalidArgument(f"task {task} needs labels, and dataset {dataset.resource_id!r} has none; create it "
                              f"with a label column (label_column)")
    values = split[column]
    num_labels, label2id = int(config.num_labels), dict(getattr(config, "label2id", None) or {})
    if task == "token-classification":
        if kind != "tags":
            raise InvalidArgument(f"task token-classification needs one tag per word in {column!r}, which holds "
                                  f"{kind} labels")
        return [_label_ids(tags, label2id, num_labels, f"dataset row {i}") for i, tags in enumerate(values)]
    if kind == "tags":
        raise InvalidArgument(f"label column {column!r} holds tag lists; they train token-classification, not "
                              f"{task}")
    if num_labels == 1:  # a regression head
        if kind == "str":
            raise InvalidArgument("the model has one output (regression); its labels must be numbers")
        return [float(v) for v in values]
    if kind == "float":
        raise InvalidArgument(f"label column {column!r} holds non-integer numbers, but the model classifies into "
                              f"{num_labels} labels; use class ids or names")
    return [_label_ids([v], label2id, num_labels, f"dataset row {i}")[0] for i, v in enumerate(values)]


def check_fit(task: str, dataset: DatasetResource, model: Any) -> None:
    """Refuse a dataset that cannot train ``model`` for ``task`` (columns, label kinds, label range)."""
    if task != "token-classification" and dataset.text_kind == "words":
        raise InvalidArgument(f"dataset {dataset.resource_id!r} holds word lists; task {task} needs text strings")
    if task == "token-classification" and dataset.label_kind != "tags":
        raise InvalidArgument(f"task token-classification needs a label column of tag lists (one per word); "
                              f"dataset {dataset.resource_id!r} has {dataset.label_kind or 'no'} labels")
    _labels(task, dataset, dataset.data, model.config)


def check_tokenizer(tokenizer: Any, task: str) -> bool:
    """Whether ``tokenizer`` can batch rows for ``task``; True when it must take its eos token as pad.

    A causal LM's tokenizer often has no pad token; its eos token serves
    (the caller sets it on its private copy). Changes nothing.

    Raises:
        InvalidArgument: no pad token (and no eos to use), no mask token for masked-lm, or a slow tokenizer
            for token classification (word alignment needs a fast one).
    """
    if task == "token-classification" and not getattr(tokenizer, "is_fast", False):
        raise InvalidArgument("token classification needs a fast tokenizer (it aligns tags to words); save the "
                              "model with a tokenizer.json")
    if task == "masked-lm" and tokenizer.mask_token is None:
        raise InvalidArgument("the tokenizer has no mask token, so masked-lm cannot mask; set mask_token when "
                              "saving the tokenizer")
    if tokenizer.pad_token is not None:
        return False
    if task == "causal-lm" and tokenizer.eos_token is not None:
        return True
    raise InvalidArgument(f"the tokenizer has no pad token, needed to batch rows for {task}; save the tokenizer "
                          f"with a pad_token (a causal LM's tokenizer uses its eos token when it has one)")


def _align(word_ids: list[int | None], tags: list[int]) -> list[int]:
    """One label per token: a word's tag on its first sub-token, -100 (ignored) on the rest and specials."""
    out, previous = [], None
    for wid in word_ids:
        out.append(-100 if wid is None or wid == previous else tags[wid])
        previous = wid
    return out


def prepare(task: str, dataset: DatasetResource, split: Any, tokenizer: Any, config: Any, max_length: int,
            mlm_probability: float) -> tuple[Any, Any]:
    """``(tokenized split, data collator)`` for ``task``; the split's rows become model inputs."""
    import transformers as tf

    text_col = dataset.text_column
    labels = _labels(task, dataset, split, config)

    def encode(batch: dict[str, list[Any]], idx: list[int]) -> dict[str, Any]:
        if task == "token-classification":
            words = [t if isinstance(t, list) else str(t).split() for t in batch[text_col]]
            enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
            assert labels is not None
            enc["labels"] = [_align(enc.word_ids(j), labels[i]) for j, i in enumerate(idx)]
            return dict(enc)
        enc = tokenizer(batch[text_col], truncation=True, max_length=max_length)
        if labels is not None:
            enc["labels"] = [labels[i] for i in idx]
        return dict(enc)

    tokenized = split.map(encode, batched=True, with_indices=True, remove_columns=split.column_names,
                          keep_in_memory=True)
    empty = [i for i, ids in enumerate(tokenized["input_ids"]) if not ids]
    if empty:
        raise InvalidArgument(f"dataset row(s) {', '.join(map(str, empty[:10]))} tokenize to nothing; drop "
                              f"empty texts")
    collator: Any
    if task == "token-classification":
        collator = tf.DataCollatorForTokenClassification(tokenizer)
    elif task in ("causal-lm", "masked-lm"):
        collator = tf.DataCollatorForLanguageModeling(tokenizer, mlm=task == "masked-lm",
                                                      mlm_probability=mlm_probability)
    else:
        collator = tf.DataCollatorWithPadding(tokenizer)
    return tokenized, collator

