"""ShapleyLayerPruner: estimate -> select -> prune -> save / push, as a ``transformers.Trainer``.

Being a Trainer gives the pruner the user's ``TrainingArguments`` (device, batch size, output_dir, progress bars),
the eval dataloader and the accelerator; mask evaluation reuses them in a light loop that weights by tokens (one
``Trainer.evaluate()`` per mask would log every call and average per batch).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, Trainer, TrainingArguments, default_data_collator

from .architectures import get_decoder_config
from .config import ShapleyPruningConfig
from .data import CalibrationDataset, build_calibration_dataset
from .evaluation import (
    MaskEvaluation,
    MaskEvaluationCache,
    evaluate_batches,
    model_fingerprint,
    run_fingerprint,
    utilities_from_nll,
)
from .loading import detach_gguf_quantizer
from .masking import LayerMask, drop_layers, num_decoder_layers
from .result import PruningResult
from .sampling import key_to_mask, mask_to_key, sample_masks
from .shapley import estimate_contributions
from .surrogate import ShapleySurrogate, train_surrogate

__all__ = ["SURROGATE_DIR", "ShapleyLayerPruner"]

logger = logging.getLogger(__name__)

SURROGATE_DIR = "surrogate"
"""Sub-folder of a saved run holding the surrogate (its own config.json and card, never mixed with the model's)."""


def _max_positions(model: PreTrainedModel) -> int | None:
    config = get_decoder_config(model)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class ShapleyLayerPruner(Trainer):
    """Remove the decoder layers with the lowest estimated Shapley contribution.

    Args:
        model: any supported ``PreTrainedModel`` (causal LM). ``prune()`` removes layers from it in place.
        args: ``TrainingArguments``; ``output_dir`` holds the mask-evaluation cache (resume point), and
            ``per_device_eval_batch_size`` sets the evaluation batch. Defaults to ``output_dir="shapley-pruning"``.
        pruning_config: the ``ShapleyPruningConfig`` of the run.
        processing_class: the tokenizer; needed to build calibration data and saved with the model.
        calibration_dataset: ready calibration blocks; built from ``pruning_config`` when omitted.
        surrogate: a trained ``ShapleySurrogate`` for this model, to prune again without evaluating any mask.

    Example::

        config = ShapleyPruningConfig(num_layers_to_remove=6)
        pruner = ShapleyLayerPruner(model=model, args=TrainingArguments("run"), pruning_config=config,
                                    processing_class=tokenizer)
        result = pruner.prune()
        pruner.save_pretrained("smollm2-pruned")
    """

    def __init__(
        self,
        model: PreTrainedModel,
        args: TrainingArguments | None = None,
        pruning_config: ShapleyPruningConfig | None = None,
        processing_class: Any = None,
        calibration_dataset: torch.utils.data.Dataset | None = None,
        surrogate: ShapleySurrogate | None = None,
        **kwargs: Any,
    ):
        if pruning_config is None:
            raise ValueError("ShapleyLayerPruner needs a pruning_config (ShapleyPruningConfig)")
        self.pruning_config = pruning_config
        detach_gguf_quantizer(model)
        self.num_layers = num_decoder_layers(model)
        self.num_to_remove = pruning_config.layers_to_remove(self.num_layers)
        self.strata = pruning_config.resolved_strata(self.num_layers)
        if surrogate is not None and surrogate.num_layers != self.num_layers:
            raise ValueError(
                f"the surrogate was trained for a model with {surrogate.num_layers} layers; this model has "
                f"{self.num_layers}"
            )
        self.surrogate = surrogate

        max_positions = _max_positions(model)
        if max_positions is not None and pruning_config.seq_length > max_positions:
            raise ValueError(
                f"ShapleyPruningConfig.seq_length={pruning_config.seq_length} exceeds the model's maximum of "
                f"{max_positions} positions"
            )
        if calibration_dataset is None:
            if processing_class is None:
                raise ValueError("pass processing_class (the tokenizer) or a ready calibration_dataset")
            calibration_dataset = build_calibration_dataset(
                processing_class,
                pruning_config.dataset_name,
                dataset_config_name=pruning_config.dataset_config_name,
                split=pruning_config.dataset_split,
                text_column=pruning_config.text_column,
                num_samples=pruning_config.num_samples,
                seq_length=pruning_config.seq_length,
                seed=pruning_config.seed,
            )
        self.calibration_dataset = calibration_dataset
        if args is None:
            args = TrainingArguments(
                output_dir="shapley-pruning", report_to="none", dataloader_pin_memory=torch.cuda.is_available()
            )
        kwargs.setdefault("data_collator", default_data_collator)
        super().__init__(
            model=model, args=args, eval_dataset=calibration_dataset, processing_class=processing_class, **kwargs
        )
        self.result: PruningResult | None = None
        self._fit = None
        self._pruned = False

    # ------------------------------------------------------------------------------------------------------------
    # evaluation

    def _calibration_fingerprint(self) -> str:
        dataset = self.calibration_dataset
        if isinstance(dataset, CalibrationDataset):
            return dataset.fingerprint()
        rows = [dataset[i]["input_ids"] for i in range(len(dataset))]
        return CalibrationDataset(torch.stack([torch.as_tensor(r) for r in rows])).fingerprint()

    def evaluate_mask(self, keep: Any) -> MaskEvaluation:
        """Token-weighted calibration NLL of the model with only ``keep`` layers (one real model evaluation)."""
        dataloader = self.get_eval_dataloader(self.calibration_dataset)
        self.model.eval()
        keep_list = [i for i, kept in enumerate(keep) if kept] if len(keep) == self.num_layers else list(keep)
        start = time.perf_counter()
        with LayerMask(self.model, keep_list):
            nll, tokens = evaluate_batches(self.model, dataloader, prepare=self._prepare_inputs)
        flags = np.zeros(self.num_layers, dtype=bool)
        flags[keep_list] = True
        return MaskEvaluation(mask_to_key(flags), nll, tokens, time.perf_counter() - start)

    def _evaluate_all(self, masks: np.ndarray, cache: MaskEvaluationCache) -> tuple[list[MaskEvaluation], int]:
        keys = [mask_to_key(m) for m in masks]
        todo = [k for k in dict.fromkeys(keys) if k not in cache]
        progress = tqdm(
            total=len(todo),
            desc="Evaluating layer masks",
            unit="mask",
            disable=self.args.disable_tqdm or not self.is_world_process_zero(),
        )
        for key in todo:
            cache.add(self.evaluate_mask(key_to_mask(key)))
            progress.update(1)
        progress.close()
        return [cache.get(k) for k in keys], len(todo)

    # ------------------------------------------------------------------------------------------------------------
    # the job

    def prune(self, evaluate_calibration: bool = True) -> PruningResult:
        """Estimate every layer's contribution, remove the least valuable layers from ``self.model``, and return
        a ``PruningResult``. With ``evaluate_calibration=False`` no forward pass runs outside mask evaluation."""
        if self._pruned:
            raise RuntimeError("prune() already ran on this model; load the model again to prune it differently")
        config = self.pruning_config
        timings: dict[str, float] = {}
        start = time.perf_counter()
        evaluated = 0
        cached = 0
        cache = None
        masks = np.zeros((0, self.num_layers), dtype=bool)
        evaluations: list[MaskEvaluation] = []
        utilities = np.zeros(0)

        model_fp = model_fingerprint(self.model)
        if self.surrogate is not None and self.surrogate.model_fingerprint not in ("", model_fp):
            logger.warning("The surrogate was trained on a model with different weights or config than this one.")
        if self.surrogate is None or evaluate_calibration:
            cache = MaskEvaluationCache(
                self.args.output_dir, run_fingerprint(model_fp, self._calibration_fingerprint())
            )
        timings["fingerprint"] = time.perf_counter() - start

        if self.surrogate is None:
            t = time.perf_counter()
            masks = sample_masks(self.num_layers, self.strata, config.num_masks, config.seed)
            evaluations, evaluated = self._evaluate_all(masks, cache)
            cached = len(masks) - evaluated
            timings["mask_evaluation"] = time.perf_counter() - t

            t = time.perf_counter()
            full_nll = evaluations[0].mean_nll
            utilities = utilities_from_nll([e.mean_nll for e in evaluations], full_nll, config.utility)
            bad = sum(not math.isfinite(e.mean_nll) for e in evaluations)
            if bad:
                logger.warning("%d mask(s) gave a non-finite loss; they keep the worst utility.", bad)
            self.surrogate, self._fit = train_surrogate(
                masks,
                utilities,
                hidden_multiplier=config.surrogate_hidden_multiplier,
                activation=config.surrogate_activation,
                utility=config.utility,
                learning_rate=config.surrogate_learning_rate,
                momentum=config.surrogate_momentum,
                epochs=config.surrogate_epochs,
                batch_size=config.surrogate_batch_size,
                validation_fraction=config.validation_fraction,
                seed=config.seed,
                metadata={
                    "base_model": self._base_model_name(),
                    "model_fingerprint": model_fp,
                    "strata": self.strata,
                },
                mask_keys=[e.mask for e in evaluations],
            )
            timings["surrogate"] = time.perf_counter() - t

        t = time.perf_counter()
        self.surrogate.eval()
        estimate = estimate_contributions(
            self.surrogate,
            self.num_layers,
            estimator=config.estimator,
            num_samples=config.mc_samples,
            seed=config.seed,
            kept_counts=self.strata,
        )
        timings["shapley"] = time.perf_counter() - t
        values = np.asarray(estimate.values, dtype=np.float64)
        removed = sorted(
            int(i) for i in sorted(range(self.num_layers), key=lambda i: (values[i], i))[: self.num_to_remove]
        )
        kept = [i for i in range(self.num_layers) if i not in removed]

        ppl_before = ppl_after = None
        if evaluate_calibration:
            t = time.perf_counter()
            full_key = mask_to_key(np.ones(self.num_layers, dtype=bool))
            kept_key = mask_to_key(np.isin(np.arange(self.num_layers), kept))
            extra, n_new = self._evaluate_all(_masks_from_keys([full_key, kept_key]), cache)
            evaluated += n_new
            cached += 2 - n_new
            ppl_before, ppl_after = extra[0].perplexity, extra[1].perplexity
            timings["calibration_report"] = time.perf_counter() - t

        drop_layers(self.model, removed)
        self._pruned = True
        timings["total"] = time.perf_counter() - start
        dataset = self.calibration_dataset
        self.result = PruningResult(
            base_model=self._base_model_name(),
            method="shapley" if config.estimator == "permutation" else "shapley-paper",
            num_layers=self.num_layers,
            num_removed=self.num_to_remove,
            removed_layers=removed,
            kept_layers=kept,
            values=values.tolist(),
            stderr=np.asarray(estimate.stderr, dtype=np.float64).tolist(),
            estimator=config.estimator,
            utility=config.utility,
            strata=list(self.strata),
            masks=[e.mask for e in evaluations],
            mean_nll=[e.mean_nll for e in evaluations],
            utilities=utilities.tolist(),
            surrogate_fit=self._fit.to_dict() if self._fit is not None else {},
            calibration_ppl_before=ppl_before,
            calibration_ppl_after=ppl_after,
            calibration={
                "source": getattr(dataset, "source", "") or (config.dataset_name or "embedded"),
                "num_samples": len(dataset),
                "seq_length": int(torch.as_tensor(dataset[0]["input_ids"]).numel()),
            },
            num_model_evaluations=evaluated,
            num_cached_evaluations=cached,
            timings=timings,
            config=config.to_dict(),
            weights_source=str(getattr(self.model, "weights_source", "") or ""),
        )
        return self.result

    def _base_model_name(self) -> str:
        return str(getattr(self.model, "name_or_path", "") or getattr(self.model.config, "_name_or_path", ""))

    # ------------------------------------------------------------------------------------------------------------
    # outputs

    def save_pretrained(self, output_dir: str | os.PathLike, surrogate_repo_id: str | None = None) -> str:
        """Write the pruned model, tokenizer, config, results, card, plots and surrogate to ``output_dir``.

        Everything is written to a temporary folder first and moved into place at the end, so a failure never
        leaves a half-written model. Files of an earlier run in ``output_dir`` with the same names are replaced;
        the mask-evaluation cache is left alone.
        """
        from .hub import write_run_folder

        if self.result is None:
            raise RuntimeError("call prune() before save_pretrained()")
        output_dir = os.path.abspath(os.fspath(output_dir))
        parent = os.path.dirname(output_dir)
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".shapley-staging-", dir=parent)
        try:
            write_run_folder(
                staging,
                model=self.model,
                tokenizer=self.processing_class,
                pruning_config=self.pruning_config,
                result=self.result,
                surrogate=self.surrogate,
                surrogate_dir=SURROGATE_DIR,
                surrogate_repo_id=surrogate_repo_id,
            )
            os.makedirs(output_dir, exist_ok=True)
            for name in os.listdir(staging):
                target = os.path.join(output_dir, name)
                if os.path.isdir(target) and not os.path.islink(target):
                    shutil.rmtree(target)
                os.replace(os.path.join(staging, name), target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return output_dir

    def push_to_hub(  # type: ignore[override]
        self,
        repo_id: str,
        *,
        surrogate_repo_id: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = "Upload layer-pruned model (optimum-shapley)",
    ) -> dict[str, str]:
        """Push the pruned model (with card and plots) to ``repo_id`` and the surrogate to its own repository
        (``surrogate_repo_id``, default ``{repo_id}-shapley-surrogate``). Returns both repository ids."""
        from .hub import push_run_folder

        surrogate_repo_id = surrogate_repo_id or f"{repo_id}-shapley-surrogate"
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, surrogate_repo_id=surrogate_repo_id)
            return push_run_folder(
                folder,
                repo_id,
                surrogate_repo_id=surrogate_repo_id,
                surrogate_dir=SURROGATE_DIR,
                private=private,
                token=token,
                commit_message=commit_message,
            )


def _masks_from_keys(keys: list[str]) -> np.ndarray:
    return np.stack([key_to_mask(k) for k in keys])
