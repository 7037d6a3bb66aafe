"""LoRA recovery ("healing"): a short PEFT fine-tune that wins back part of what removing layers cost.

Layer-pruning papers (LLM-Pruner, Shortened LLaMA, the Shapley paper) train a rank-8 LoRA (alpha 16, dropout 0.05)
on every linear projection of the pruned model for a short while, then merge it into the weights. ``recover`` does
that with PEFT and a plain ``transformers.Trainer`` over fixed-length token blocks built by :mod:`.data`, and returns
what it did as a JSON-able :class:`RecoveryResult` (steps, tokens, losses, LoRA settings, seconds) for the card.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .data import (
    EMBEDDED_SOURCE,
    SUPPORTED_SUFFIXES,
    CalibrationDataset,
    _describe,
    load_texts,
    tokenize_blocks,
)
from .loading import detach_gguf_quantizer

__all__ = [
    "ADAPTER_DIR",
    "DEFAULT_LEARNING_RATE",
    "DEFAULT_MAX_STEPS",
    "RecoveryResult",
    "default_lora_config",
    "is_adapter_model",
    "recover",
    "save_model_and_adapter",
]

ADAPTER_DIR = "adapter"
"""Sub-folder of a saved model that holds a kept (unmerged) LoRA adapter; the folder itself holds the base weights."""

DEFAULT_MAX_STEPS = 200
DEFAULT_LEARNING_RATE = 1e-4  # the paper's (and LLM-Pruner's) LoRA learning rate
DEFAULT_BATCH_SIZE = 8
DEFAULT_SEQ_LENGTH = 128


def _require_peft() -> Any:
    try:
        import peft
    except ImportError as exc:
        raise ImportError(
            "LoRA recovery needs PEFT: pip install 'optimum-shapley[recovery]' (or pip install peft)"
        ) from exc
    return peft


def default_lora_config() -> Any:
    """The papers' healing adapter: r=8, alpha=16, dropout 0.05 on every linear projection.

    PEFT's ``"all-linear"`` targets every ``nn.Linear``/``Conv1D`` of a ``PreTrainedModel`` except the output head
    (``get_output_embeddings()``), which is what "all linear projections" means in those papers.
    """
    return _require_peft().LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
    )


@dataclass
class RecoveryResult:
    """What a recovery run did. ``model`` is the recovered model (not serialised): the base model with the LoRA
    merged into its weights, or a ``PeftModel`` holding the adapter when ``merged`` is False.

    ``train_loss_first``/``train_loss_last`` are the mean training loss over the first and the last
    ``logging_steps`` steps; ``loss_history`` holds every logged ``(step, loss)``.
    """

    dataset: str
    num_blocks: int
    seq_length: int
    steps: int
    tokens: int
    batch_size: int
    learning_rate: float
    train_loss_first: float
    train_loss_last: float
    train_loss: float
    logging_steps: int
    loss_history: list[list[float]]
    lora: dict[str, Any]
    trainable_parameters: int
    merged: bool
    seconds: float
    model: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Every field but ``model``, as plain JSON types."""
        model, self.model = self.model, None
        try:
            data = asdict(self)
        finally:
            self.model = model
        data.pop("model")
        return data

    def summary_rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs for the CLI summary."""
        return recovery_summary_rows(self.to_dict())


def recovery_summary_rows(recovery: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs describing a recovery record (``RecoveryResult.to_dict()``)."""
    lora = recovery.get("lora", {})
    return [
        ("recovery data", f"{recovery['dataset']} ({recovery['num_blocks']} blocks x {recovery['seq_length']} tokens)"),
        (
            "recovery training",
            f"{recovery['steps']} steps, {recovery['tokens']:,} tokens, batch {recovery['batch_size']}, "
            f"lr {recovery['learning_rate']:g}, {recovery['seconds']:.1f} s",
        ),
        ("recovery train loss", f"{recovery['train_loss_first']:.3f} -> {recovery['train_loss_last']:.3f}"),
        (
            "recovery LoRA",
            f"r={lora.get('r')}, alpha={lora.get('lora_alpha')}, dropout={lora.get('lora_dropout')}, "
            f"{lora.get('target_modules_requested')} ({recovery['trainable_parameters']:,} trainable parameters), "
            + ("merged into the weights" if recovery["merged"] else f"kept as an adapter in {ADAPTER_DIR}/"),
        ),
    ]


def is_adapter_model(model: Any) -> bool:
    """True for a ``PeftModel`` (a recovery that kept its adapter)."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


# ------------------------------------------------------------------------------------------------------------- data


def _check_positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


def check_recovery_source(source: Any) -> None:
    """Fail fast (before a model is loaded or trained) on a recovery data file that does not exist."""
    if source is None or not isinstance(source, (str, os.PathLike)):
        return
    text = os.fspath(source)
    if text == EMBEDDED_SOURCE:
        return
    path = os.path.expanduser(text)
    if os.path.exists(path):
        if os.path.isdir(path):
            raise ValueError(
                f"recovery dataset {text} is a directory; give a file ending in {', '.join(SUPPORTED_SUFFIXES)}"
            )
        return
    looks_like_file = text.lower().endswith(SUPPORTED_SUFFIXES) or text.startswith((".", "~", os.sep))
    if looks_like_file:
        raise ValueError(f"recovery dataset file not found: {text}")


def _training_blocks(
    dataset: Any,
    tokenizer: Any,
    *,
    num_blocks: int,
    seq_length: int,
    seed: int,
    dataset_config_name: str | None,
    split: str,
    text_column: str,
) -> CalibrationDataset:
    """Turn ``dataset`` into fixed-length causal-LM blocks (``labels`` = ``input_ids``)."""
    if isinstance(dataset, CalibrationDataset):
        return dataset
    if isinstance(dataset, torch.Tensor):
        return CalibrationDataset(dataset, source="token blocks")
    if isinstance(dataset, torch.utils.data.Dataset):
        rows = [torch.as_tensor(dataset[i]["input_ids"]) for i in range(len(dataset))]  # type: ignore[arg-type]
        if not rows:
            raise ValueError("the recovery dataset is empty")
        return CalibrationDataset(torch.stack(rows), source=type(dataset).__name__)
    if tokenizer is None:
        raise ValueError("recover() needs the tokenizer to turn text into token blocks")
    if isinstance(dataset, (str, os.PathLike)) or dataset is None:
        check_recovery_source(dataset)
        texts = load_texts(dataset, dataset_config_name=dataset_config_name, split=split, text_column=text_column)
        source = _describe(dataset, dataset_config_name, split, text_column)
    elif isinstance(dataset, Sequence):
        texts, source = list(dataset), f"{len(dataset)} documents"
    else:
        raise ValueError(
            "the recovery dataset must be a Hub dataset id, a local .txt/.json/.jsonl/.parquet file, 'embedded', a "
            f"list of documents, a token tensor or a torch Dataset; got {type(dataset).__name__}"
        )
    blocks = tokenize_blocks(texts, tokenizer, num_samples=num_blocks, seq_length=seq_length, seed=seed)
    return CalibrationDataset(blocks, source=source)


# ---------------------------------------------------------------------------------------------------------- training


def _training_arguments(
    training_args: Any,
    output_dir: str,
    *,
    max_steps: int | None,
    learning_rate: float | None,
    batch_size: int | None,
    seed: int,
    show_progress: bool,
) -> Any:
    """The user's ``TrainingArguments`` with explicit keywords applied on top, or the papers' defaults."""
    from transformers import TrainingArguments

    if training_args is None:
        return TrainingArguments(
            output_dir=output_dir,
            max_steps=max_steps or DEFAULT_MAX_STEPS,
            learning_rate=DEFAULT_LEARNING_RATE if learning_rate is None else learning_rate,
            per_device_train_batch_size=batch_size or DEFAULT_BATCH_SIZE,
            warmup_steps=0.05,  # a ratio of the steps; then linear decay, as in LLM-Pruner's healing
            lr_scheduler_type="linear",
            optim="adamw_torch",
            logging_steps=max(1, (max_steps or DEFAULT_MAX_STEPS) // 20),
            save_strategy="no",
            report_to="none",
            label_names=["labels"],
            disable_tqdm=not show_progress,
            dataloader_pin_memory=torch.cuda.is_available(),
            seed=seed,
        )
    overrides: dict[str, Any] = {}
    if max_steps is not None:
        overrides["max_steps"] = max_steps
    if learning_rate is not None:
        overrides["learning_rate"] = learning_rate
    if batch_size is not None:
        overrides["per_device_train_batch_size"] = batch_size
    if not overrides:
        return training_args
    import dataclasses

    return dataclasses.replace(training_args, **overrides)


def _lora_summary(lora_config: Any, requested: Any) -> dict[str, Any]:
    targets = lora_config.target_modules
    return {
        "r": int(lora_config.r),
        "lora_alpha": lora_config.lora_alpha,
        "lora_dropout": float(lora_config.lora_dropout),
        "bias": str(lora_config.bias),
        "target_modules_requested": requested if isinstance(requested, str) else sorted(requested or []),
        "target_modules": sorted(targets) if not isinstance(targets, str) else targets,
    }


def recover(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    lora_config: Any = None,
    training_args: Any = None,
    *,
    merge: bool = True,
    max_steps: int | None = None,
    learning_rate: float | None = None,
    batch_size: int | None = None,
    seq_length: int = DEFAULT_SEQ_LENGTH,
    num_blocks: int | None = None,
    seed: int = 0,
    dataset_config_name: str | None = None,
    split: str = "train",
    text_column: str = "text",
    show_progress: bool = True,
) -> RecoveryResult:
    """Fine-tune a LoRA adapter on ``dataset`` and merge it into ``model`` (or keep it as an adapter).

    Args:
        model: a causal LM, usually just pruned. It is trained in place: with ``merge=True`` the returned
            ``result.model`` is this same model with updated weights; with ``merge=False`` it is a ``PeftModel``
            wrapping it (save it with :func:`save_model_and_adapter`).
        tokenizer: used to tokenize text sources.
        dataset: a Hub dataset id, a local ``.txt``/``.json``/``.jsonl``/``.parquet`` file, ``"embedded"`` (see
            :func:`optimum_shapley.data.load_texts`), a list of documents, a ``(num_blocks, seq_length)`` token
            tensor, or a torch ``Dataset`` of ``input_ids``.
        lora_config: a PEFT ``LoraConfig``; default :func:`default_lora_config` (r=8, alpha=16, dropout 0.05,
            all linear projections but the output head).
        training_args: ``TrainingArguments``; default: 200 steps, batch 8, lr 1e-4 with 5% warm-up and linear decay,
            AdamW, nothing saved during training (checkpoints would hold the whole model).
        merge: merge the adapter into the weights (``merge_and_unload``) or keep it.
        max_steps, learning_rate, batch_size: override the corresponding ``training_args`` fields.
        seq_length: tokens per training block (text sources).
        num_blocks: blocks to draw from a text source; default: one per training example (``max_steps`` x effective
            batch), non-overlapping while the text has room (see :func:`optimum_shapley.data.tokenize_blocks`).
        seed: seeds the LoRA initialisation, the block sampling and the data order.
    """
    get_peft_model = _require_peft().get_peft_model
    from transformers import Trainer, default_data_collator, set_seed
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    if max_steps is not None:
        _check_positive("max_steps", max_steps)
    if batch_size is not None:
        _check_positive("batch_size", batch_size)
    if num_blocks is not None:
        _check_positive("num_blocks", num_blocks)
    if learning_rate is not None and (not isinstance(learning_rate, (int, float)) or not learning_rate > 0):
        raise ValueError(f"learning_rate must be a positive number, got {learning_rate!r}")
    _check_positive("seq_length", seq_length)
    if is_adapter_model(model):
        raise ValueError("the model already holds a PEFT adapter; merge it (merge_and_unload) before recovering")
    check_recovery_source(dataset)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="optimum-shapley-recovery-") as scratch:
        args = _training_arguments(
            training_args,
            scratch,
            max_steps=max_steps,
            learning_rate=learning_rate,
            batch_size=batch_size,
            seed=seed,
            show_progress=show_progress,
        )
        effective_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        if num_blocks is None:
            if args.max_steps is None or args.max_steps < 1:
                raise ValueError("give max_steps (or num_blocks when training_args sets epochs instead of steps)")
            num_blocks = args.max_steps * effective_batch
        blocks = _training_blocks(
            dataset,
            tokenizer,
            num_blocks=num_blocks,
            seq_length=seq_length,
            seed=seed,
            dataset_config_name=dataset_config_name,
            split=split,
            text_column=text_column,
        )

        detach_gguf_quantizer(model)
        was_training = model.training
        lora_config = lora_config if lora_config is not None else default_lora_config()
        requested = lora_config.target_modules
        set_seed(seed)
        peft_model = get_peft_model(model, lora_config)
        try:
            trainable, _ = peft_model.get_nb_trainable_parameters()
            trainer = Trainer(
                model=peft_model,
                args=args,
                train_dataset=blocks,
                data_collator=default_data_collator,  # blocks are full length: no padding, labels = input_ids
            )
            if not show_progress:
                trainer.remove_callback(PrinterCallback)
                trainer.remove_callback(ProgressCallback)
            output = trainer.train()
            state = trainer.state
            del trainer
        except BaseException:
            peft_model.unload()  # a failed or interrupted run leaves the model as it was, with no LoRA layers
            model.train(was_training)
            raise

    history = [[float(entry["step"]), float(entry["loss"])] for entry in state.log_history if "loss" in entry]
    steps = int(state.global_step)
    result_model = peft_model.merge_and_unload() if merge else peft_model
    result_model.train(was_training)
    return RecoveryResult(
        dataset=blocks.source,
        num_blocks=blocks.num_samples,
        seq_length=blocks.seq_length,
        steps=steps,
        tokens=steps * effective_batch * blocks.seq_length,
        batch_size=effective_batch,
        learning_rate=float(args.learning_rate),
        train_loss_first=history[0][1] if history else float("nan"),
        train_loss_last=history[-1][1] if history else float("nan"),
        train_loss=float(output.training_loss) if math.isfinite(output.training_loss) else float("nan"),
        logging_steps=int(args.logging_steps),
        loss_history=history,
        lora=_lora_summary(peft_model.peft_config["default"], requested),
        trainable_parameters=int(trainable),
        merged=bool(merge),
        seconds=time.perf_counter() - start,
        model=result_model,
    )


# ------------------------------------------------------------------------------------------------------------ saving


def save_model_and_adapter(model: Any, folder: str, base_model_name_or_path: str | None = None) -> None:
    """Save a ``PeftModel``'s base weights to ``folder`` (loadable with plain ``from_pretrained``) and its adapter
    to ``folder/adapter``; the adapter records ``base_model_name_or_path`` (the folder or Hub repo of the base)."""
    peft = _require_peft()
    if not hasattr(peft, "get_base_model_state_dict"):
        raise ImportError(
            f"saving a kept LoRA adapter needs peft>=0.20 (found {peft.__version__}): pip install -U peft"
        )
    # the base weights under their original names, without the adapter's (PEFT's own key mapping, not a string edit)
    model.get_base_model().save_pretrained(folder, state_dict=peft.get_base_model_state_dict(model))
    config = model.peft_config["default"]
    previous = config.base_model_name_or_path
    config.base_model_name_or_path = base_model_name_or_path or previous
    try:
        # embeddings are never adapted ("all-linear" leaves them alone): skip PEFT's check of the base's vocabulary
        model.save_pretrained(os.path.join(folder, ADAPTER_DIR), save_embedding_layers=False)
    finally:
        config.base_model_name_or_path = previous
