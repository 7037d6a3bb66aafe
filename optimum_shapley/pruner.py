"""ShapleyLayerPruner: estimate -> select -> prune -> save / push, as a ``transformers.Trainer``.

Being a Trainer gives the pruner the user's ``TrainingArguments`` (device, batch size, output_dir, progress bars),
the eval dataloader and the accelerator; mask evaluation reuses them in a light loop that weights by tokens (one
``Trainer.evaluate()`` per mask would log every call and average per batch).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
import time
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedModel, Trainer, TrainingArguments, default_data_collator
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from .architectures import context_length, parameter_counts
from .config import ShapleyPruningConfig
from .criteria import GameRecord, select_layers
from .data import CalibrationDataset, build_calibration_dataset
from .evaluation import MaskEvaluation, MaskEvaluationCache, MaskEvaluator, model_fingerprint, run_fingerprint
from .evaluation.losses import measure_name
from .loading import detach_gguf_quantizer
from .result import PruningResult
from .surgery import drop_layers, kept_layers_from_mask, num_decoder_layers
from .surrogate import ShapleySurrogate
from .throughput import SpeedReport, measure_speed, speed_comparison

if TYPE_CHECKING:
    from .healing import HealingReport

__all__ = ["SURROGATE_DIR", "ShapleyLayerPruner", "pruning_arguments"]

logger = logging.getLogger(__name__)

SURROGATE_DIR = "surrogate"
"""Sub-folder of a saved run holding the surrogate (its own config.json and card, never mixed with the model's)."""


def _config_blocks(tokenizer: Any, config: ShapleyPruningConfig, num_samples: int, seed: int) -> CalibrationDataset:
    """Calibration blocks from the config's text source: the calibration set, or the larger verification set."""
    return build_calibration_dataset(
        tokenizer,
        config.dataset_name,
        dataset_config_name=config.dataset_config_name,
        split=config.dataset_split,
        text_column=config.text_column,
        streaming=config.dataset_streaming,
        num_samples=num_samples,
        seq_length=config.seq_length,
        seed=seed,
    )


def pruning_arguments(
    output_dir: str,
    batch_size: int = 8,
    seed: int = 42,
    disable_tqdm: bool = False,
    report_to: str | list[str] = "none",
    **training_arguments: Any,
):
    """The ``TrainingArguments`` a pruning run uses (the CLI's, and the benches', so they choose the same sets):
    evaluation batch, the cache folder (TensorBoard's ``runs/`` lands beside it), the logging integrations
    (``report_to``, offline by default), pinned memory only with CUDA; other ``TrainingArguments`` fields pass
    through (``bf16``, ``run_name``, ...)."""
    return TrainingArguments(
        output_dir=output_dir,  # the mask-evaluation cache lives here during the run
        per_device_eval_batch_size=batch_size,
        report_to=report_to,
        disable_tqdm=disable_tqdm,
        dataloader_pin_memory=torch.cuda.is_available(),
        seed=seed,
        **training_arguments,
    )


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
        # [total, layer 0, ...] when the budget is a parameter fraction: the count must meet it on this model
        self._parameter_counts = parameter_counts(model) if pruning_config.target_params is not None else None
        self.num_to_remove = pruning_config.layers_to_remove(self.num_layers, self._parameter_counts)
        # a stratum this model cannot have fails before any work
        pruning_config.resolved_strata(self.num_layers, self.num_to_remove)
        if pruning_config.heal != "none":  # refuse a family no removed set could heal before any work
            from .healing import check_healing_supported

            check_healing_supported(model, pruning_config.heal, pruning_config.heal_diagonal)
        if surrogate is not None and surrogate.num_layers != self.num_layers:
            raise ValueError(
                f"the surrogate was trained for a model with {surrogate.num_layers} layers; this model has "
                f"{self.num_layers}: use the surrogate of a run on this model, or prune without one"
            )
        self.surrogate = surrogate

        max_positions = context_length(model)
        if max_positions is not None and pruning_config.seq_length > max_positions:
            raise ValueError(
                f"ShapleyPruningConfig.seq_length={pruning_config.seq_length} exceeds the model's maximum of "
                f"{max_positions} positions; lower --seq_length"
            )
        if calibration_dataset is None:
            if processing_class is None:
                raise ValueError("pass processing_class (the tokenizer) or a ready calibration_dataset")
            calibration_dataset = _config_blocks(
                processing_class, pruning_config, pruning_config.num_samples, pruning_config.seed
            )
        self.calibration_dataset = calibration_dataset
        self.verification_dataset = None
        if pruning_config.verify_samples > 0 and pruning_config.method in VERIFYING_METHODS and processing_class:
            # multi-fidelity: a larger sample of the same source, another seed, for re-scoring the best sets
            self.verification_dataset = _config_blocks(
                processing_class, pruning_config, pruning_config.verify_samples, pruning_config.seed + 1
            )
        if args is None:
            args = TrainingArguments(
                output_dir="shapley-pruning", report_to="none", dataloader_pin_memory=torch.cuda.is_available()
            )
        kwargs.setdefault("data_collator", default_data_collator)
        super().__init__(
            model=model, args=args, eval_dataset=calibration_dataset, processing_class=processing_class, **kwargs
        )
        # the search reports through Trainer.log (report_to integrations, callbacks, state.log_history); the
        # console already has the evaluator's progress bars, so the Trainer's own printers stay out of it
        self.remove_callback(ProgressCallback)
        self.remove_callback(PrinterCallback)
        self.result: PruningResult | None = None
        self.evaluator: MaskEvaluator | None = None  # the calibration evaluator of the last prune()
        self._pruned = False

    # ------------------------------------------------------------------------------------------------------------
    # evaluation

    def _calibration_fingerprint(self, dataset: Any = None) -> str:
        dataset = dataset if dataset is not None else self.calibration_dataset
        if isinstance(dataset, CalibrationDataset):
            return dataset.fingerprint()
        rows = [dataset[i]["input_ids"] for i in range(len(dataset))]
        return CalibrationDataset(torch.stack([torch.as_tensor(r) for r in rows])).fingerprint()

    def _calibration_batches(self, dataset: Any = None):
        if dataset is not None or self.accelerator.num_processes > 1:
            # processes split the masks, not the data: each evaluates whole masks on the whole calibration set, so
            # the Trainer's sharded eval dataloader would give every process a different (partial) loss
            return torch.utils.data.DataLoader(
                dataset if dataset is not None else self.calibration_dataset,
                batch_size=self.args.eval_batch_size,
                collate_fn=self.data_collator,
                num_workers=self.args.dataloader_num_workers,
                pin_memory=self.args.dataloader_pin_memory,
            )
        return self.get_eval_dataloader(self.calibration_dataset)

    @property
    def objective(self) -> str:
        """What each mask evaluation measures besides the NLL: the KL to the dense model for ``utility="kl"``."""
        config = self.pruning_config
        wants_kl = (config.method == "shapley" and config.utility == "kl") or config.method in KL_METHODS
        return "kl" if wants_kl else "nll"

    def mask_evaluator(self, cache: MaskEvaluationCache | None = None, verifier: bool = False) -> MaskEvaluator:
        """A ``MaskEvaluator`` over the Trainer's eval dataloader, evaluating through ``evaluate_mask``.

        Groups of masks share their common kept-layer prefixes (``share_prefixes``) unless a subclass overrides
        ``evaluate_mask``: then every mask goes through the override, one plain evaluation each. With ``verifier``
        and a verification set, the evaluator carries a second one over it (same cache folder, its own
        fingerprint) for multi-fidelity verification."""
        overridden = getattr(self.evaluate_mask, "__func__", None) is not _PLAIN_EVALUATE_MASK
        share = self.pruning_config.share_prefixes and not overridden
        config = self.pruning_config
        second = None
        if verifier and self.verification_dataset is not None:
            dataset = self.verification_dataset
            second = MaskEvaluator(
                self.model,
                lambda: self._calibration_batches(dataset),
                prepare=self._prepare_inputs,
                cache=(
                    MaskEvaluationCache(
                        cache.directory,
                        run_fingerprint(
                            getattr(self, "_model_fp", None) or model_fingerprint(self.model),
                            self._calibration_fingerprint(dataset),
                            measure_name(self.objective, config.kl_top_k),
                        ),
                        persist=cache.persist,
                    )
                    if cache is not None
                    else None
                ),
                num_layers=self.num_layers,
                show_progress=not self.args.disable_tqdm and self.is_world_process_zero(),
                accelerator=self.accelerator,
                share_prefixes=share,
                objective=self.objective,
                kl_top_k=config.kl_top_k,
            )
        return MaskEvaluator(
            self.model,
            self._calibration_batches,
            prepare=self._prepare_inputs,
            cache=cache,
            num_layers=self.num_layers,
            show_progress=not self.args.disable_tqdm and self.is_world_process_zero(),
            run=None if share else (lambda kept: self.evaluate_mask(kept)),
            accelerator=self.accelerator,  # under `accelerate launch`, processes share the masks to evaluate
            share_prefixes=share,
            objective=self.objective,
            kl_top_k=config.kl_top_k,
            verifier=second,
        )

    def evaluate_mask(self, keep: Any) -> MaskEvaluation:
        """Token-weighted calibration NLL of the model with only ``keep`` layers: one real model evaluation."""
        if getattr(self, "_forward_evaluator", None) is None:  # one evaluator: the KL reference is built once
            self._forward_evaluator = self.mask_evaluator()
            main = getattr(self, "evaluator", None)
            if main is not None and main.objective == self._forward_evaluator.objective:
                self._forward_evaluator._references = main.references()  # the run's dense pass, not a second one
        return self._forward_evaluator.forward(kept_layers_from_mask(keep, self.num_layers))

    def calibration_evaluator(self, model_fp: str | None = None) -> MaskEvaluator:
        """The evaluator ``prune()`` uses: this model's masks on the calibration set, through the run's cache in
        ``args.output_dir`` (and the verification set's evaluator, when there is one). Call it before ``prune()``
        to evaluate masks of the dense model yourself; every result lands in (or comes from) the same cache."""
        if model_fp is None:
            model_fp = model_fingerprint(self.model)
        self._model_fp = model_fp
        measure = measure_name(self.objective, self.pruning_config.kl_top_k)
        cache = MaskEvaluationCache(
            self.args.output_dir,
            run_fingerprint(model_fp, self._calibration_fingerprint(), measure),
            persist=self.is_world_process_zero(),  # one writer; the other processes get results by gathering
        )
        return self.mask_evaluator(cache, verifier=True)

    # ------------------------------------------------------------------------------------------------------------
    # the job

    def prune(self, evaluate_calibration: bool = True) -> PruningResult:
        """Choose layers with ``pruning_config.method``, remove them from ``self.model`` and return a
        ``PruningResult``. With ``evaluate_calibration=False`` no forward pass runs outside the method itself."""
        if self._pruned:
            raise RuntimeError("prune() already ran on this model; load the model again to prune it differently")
        config = self.pruning_config
        start = time.perf_counter()
        model_fp = model_fingerprint(self.model)
        if self.surrogate is not None and self.surrogate.model_fingerprint not in ("", model_fp):
            trained_on = self.surrogate.base_model or "another model"
            raise ValueError(
                f"the surrogate was trained on {trained_on} (fingerprint {self.surrogate.model_fingerprint[:12]}), "
                f"not on this model ({self._base_model_name() or 'unnamed'}, fingerprint {model_fp[:12]}): "
                "contributions do not transfer between weights; load the exact checkpoint and dtype it was trained "
                "on, or prune without a surrogate to train one for this model"
            )
        evaluator = self.evaluator = self.calibration_evaluator(model_fp)
        timings = {"fingerprint": time.perf_counter() - start}
        self._watch(evaluator)
        self.control = self.callback_handler.on_train_begin(self.args, self.state, self.control)

        choice = select_layers(
            config.method,
            evaluator,
            self.num_to_remove,
            seed=config.seed,
            config=config,
            surrogate=self.surrogate,
            metadata={"base_model": self._base_model_name(), "model_fingerprint": model_fp},
        )
        timings["selection"] = choice.seconds
        details = choice.details  # the evidence's JSON record
        record = choice.evidence if isinstance(choice.evidence, GameRecord) else None
        if record is not None and record.surrogate is not None:
            self.surrogate = record.surrogate
        game = record.game.to_dict() if record is not None else {}
        fit = record.surrogate_fit if record is not None else None
        removed = choice.removed_layers
        heal_selection: dict[str, Any] = {}
        selected_healing = None
        if config.heal_aware and record is not None and record.game is not None:
            removed, selected_healing, heal_selection = self._choose_healed(record.game, removed)
            timings["heal_selection"] = heal_selection["seconds"]
        kept = [i for i in range(self.num_layers) if i not in removed]

        ppl_before = ppl_after = None
        if evaluate_calibration:
            t = time.perf_counter()
            ppl_before = evaluator(list(range(self.num_layers))).perplexity
            ppl_after = evaluator(kept).perplexity
            timings["calibration_report"] = time.perf_counter() - t

        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            if any(other != removed for other in gather_object([removed])):
                raise RuntimeError("the processes chose different layers; run them with the same model and data")
            here = evaluator.num_run_here + (evaluator.verifier.num_run_here if evaluator.verifier else 0)
            details["evaluations_per_process"] = gather_object([here])

        dense_speed = self._speed(timings) if config.measure_speed else None
        healing = self._heal(removed, evaluate_calibration, timings, selected_healing) if config.heal != "none" else {}
        if not healing:
            drop_layers(self.model, removed)
        speed: dict[str, Any] = {}
        if isinstance(dense_speed, str):
            speed = {"error": dense_speed}
        elif dense_speed is not None:
            pruned_speed = self._speed(timings)
            speed = (
                {"error": pruned_speed}
                if isinstance(pruned_speed, str)
                else speed_comparison(dense_speed, pruned_speed)
            )
        evaluators = [evaluator] + ([evaluator.verifier] if evaluator.verifier is not None else [])
        reference_passes = sum(e.reference_passes for e in evaluators)
        if reference_passes:
            details["reference_passes"] = reference_passes  # dense passes that only rebuilt the KL reference
        self._pruned = True
        parameter_budget = {}
        if self._parameter_counts is not None:  # the budget was a parameter fraction: what the pruned model holds
            kept_parameters = sum(p.numel() for p in self.model.parameters())
            parameter_budget = {
                "target_fraction": config.target_params,
                "dense_parameters": self._parameter_counts[0],
                "pruned_parameters": kept_parameters,
                "fraction": kept_parameters / self._parameter_counts[0],
            }
        timings["total"] = time.perf_counter() - start
        dataset = self.calibration_dataset
        self.result = PruningResult(
            base_model=self._base_model_name(),
            method=config.method,
            num_layers=self.num_layers,
            num_removed=self.num_to_remove,
            removed_layers=removed,
            kept_layers=kept,
            values=choice.scores,
            stderr=choice.stderr,
            estimator=record.estimator if record is not None else "",
            utility=record.utility if record is not None else "",
            strata=list(record.strata) if record is not None else [],
            masks=list(record.masks) if record is not None else [],
            mean_nll=list(record.mean_nll) if record is not None else [],
            utilities=list(record.utilities) if record is not None else [],
            surrogate_fit=fit.to_dict() if fit is not None else {},
            calibration_ppl_before=ppl_before,
            calibration_ppl_after=ppl_after,
            calibration={
                "source": getattr(dataset, "source", "") or (config.dataset_name or "embedded"),
                "num_samples": len(dataset),
                "seq_length": int(torch.as_tensor(dataset[0]["input_ids"]).numel()),
            },
            num_model_evaluations=sum(e.num_run for e in evaluators),
            num_cached_evaluations=sum(e.num_cached for e in evaluators),
            selection_evaluations=choice.num_model_evaluations,
            selection_seconds=choice.seconds,
            verification_evaluations=choice.num_verification_evaluations,
            tokens_processed=choice.tokens_processed + heal_selection.get("tokens", 0),
            game=game,
            value_check=(
                {k: game["value_check"][k] for k in ("spearman", "num_evaluations", "new_evaluations")}
                if game.get("value_check")
                else {}
            ),
            details=details,
            timings=timings,
            config=config.to_dict(),
            weights_source=str(getattr(self.model, "weights_source", "") or ""),
            healing=healing,
            speed=speed,
            parameter_budget=parameter_budget,
            heal_selection=heal_selection,
        )
        self._log_result(self.result)
        self.control = self.callback_handler.on_train_end(self.args, self.state, self.control)
        return self.result

    # ------------------------------------------------------------------------------------------------------------
    # logging: every mask evaluation and every phase of the search goes through Trainer.log, at step = distinct
    # calibration-set evaluations so far, so TensorBoard / W&B / trackio curves and TrainerCallbacks see the run

    def _watch(self, evaluator: MaskEvaluator) -> None:
        def on_mask(evaluation: MaskEvaluation, cached: bool, prefix: str) -> None:
            self._log_at_step(
                {
                    f"{prefix}/mask_loss": evaluator_of[prefix].loss(evaluation),
                    f"{prefix}/mask_nll": evaluation.mean_nll,
                    f"{prefix}/kept_layers": evaluation.mask.count("1"),
                    f"{prefix}/cached": int(cached),
                    "pruning/evaluations": evaluator.num_requested,
                }
            )

        def on_event(values: dict[str, Any]) -> None:
            self._log_at_step({f"pruning/{key}": value for key, value in values.items()})

        evaluator_of = {"pruning": evaluator, "verification": evaluator.verifier}
        evaluator.listeners.append(lambda e, cached: on_mask(e, cached, "pruning"))
        evaluator.event_listeners.append(on_event)
        if evaluator.verifier is not None:
            evaluator.verifier.listeners.append(lambda e, cached: on_mask(e, cached, "verification"))

    def _log_at_step(self, logs: dict[str, Any]) -> None:
        if self.evaluator is not None:
            self.state.global_step = self.evaluator.num_requested
        self.log(logs)

    def _log_result(self, result: PruningResult) -> None:
        logs: dict[str, Any] = {
            "pruning/num_removed": result.num_removed,
            "pruning/removed_layers": ", ".join(map(str, result.removed_layers)),
            "pruning/selection_evaluations": result.selection_evaluations,
            "pruning/verification_evaluations": result.verification_evaluations,
            "pruning/tokens_processed": result.tokens_processed,
            "pruning/selection_seconds": result.selection_seconds,
        }
        if result.calibration_ppl_before is not None:
            logs["pruning/calibration_ppl_dense"] = result.calibration_ppl_before
            logs["pruning/calibration_ppl_pruned"] = result.calibration_ppl_after
        if result.value_check:
            logs["pruning/value_check_spearman"] = result.value_check["spearman"]
        for key in ("prefill_speedup", "decode_speedup", "parameter_ratio"):
            if result.speed.get(key) is not None:
                logs[f"pruning/{key}"] = result.speed[key]
        self._log_at_step(logs)

    def _speed(self, timings: dict[str, float]) -> SpeedReport | str:
        """This model's speed and size now (``throughput.measure_speed``), or why it could not be measured: a
        model whose forward does not take a KV cache still gets pruned, and the summary says so. The seconds
        it takes add to ``timings["speed"]``."""
        start = time.perf_counter()
        try:
            return measure_speed(self.model, seed=self.pruning_config.seed)
        except Exception as error:  # noqa: BLE001 - reported in the result, never fatal to the pruning
            logger.warning("Speed not measured: %s", error)
            return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        finally:
            timings["speed"] = timings.get("speed", 0.0) + time.perf_counter() - start

    def _healing_dataset(self) -> Any:
        """``heal_num_samples`` blocks of the calibration text (the statistics take one forward pass, so many more
        than the search evaluates on); the calibration set itself for 0, or when no tokenizer can draw more."""
        config = self.pruning_config
        if config.heal_num_samples in (0, len(self.calibration_dataset)) or self.processing_class is None:
            return self.calibration_dataset
        return _config_blocks(self.processing_class, config, config.heal_num_samples, config.seed)

    def _healing_options(self) -> dict[str, Any]:
        config = self.pruning_config
        linear = config.heal == "linear"
        return {
            "method": config.heal,
            "ridge": config.heal_ridge if linear else 0.0,
            "diagonal": config.heal_diagonal,
            "fit": config.heal_fit if linear else "map",
            "relative": config.heal_relative and linear,
            # the check chooses each run's ridge; without it there is nothing to choose by
            "ridge_choices": config.heal_ridge_choices if linear and config.heal_check else (),
        }

    def _healing_batches(self, dataset: Any):
        return (self._prepare_inputs(batch) for batch in self._calibration_batches(dataset))

    def _healing_scorer(self) -> MaskEvaluator:
        """What healing-aware selection and the healing check score on: the verification blocks' evaluator, else
        the calibration set's."""
        return self.evaluator.verifier if self.evaluator.verifier is not None else self.evaluator

    def _healing_check(self, scorer: MaskEvaluator, kept: list[int]) -> dict[str, Any]:
        """``heal_check``'s arguments for ``heal_removed_layers``: the run's objective on the scorer's blocks (the
        verification blocks, else the calibration set) with only ``kept`` layers; empty when the check is off."""
        if not self.pruning_config.heal_check:
            return {}
        scorer.references()  # the dense reference, from the unhealed model, before any patch
        verification = scorer is not self.evaluator
        blocks = self.verification_dataset if verification else self.calibration_dataset
        measure = "KL to the dense model" if scorer.objective == "kl" else "the mean NLL"
        return {
            "check": lambda: scorer.loss(scorer.forward(kept)),
            "check_description": f"{measure} on the {len(blocks)} {'verification' if verification else 'calibration'} "
            "blocks",
        }

    def _choose_healed(self, evidence: Any, removed: list[int]) -> tuple[list[int], HealingReport, dict[str, Any]]:
        """Healing-aware selection: the game's best verified sets, each healed on the healing sample and scored
        healed on the verification blocks (else the calibration set); the best healed set wins. Every patch is
        taken back after its score (only the weights it wrote are copied), so the model leaves here dense; the
        winner's report (with its fits) comes back for the final healing to fold."""
        from .healing import temporarily_healed

        start = time.perf_counter()
        candidates = [list(s.removed) for s in evidence.top_sets[: self.pruning_config.verify_top]]
        if removed not in candidates:
            candidates.insert(0, list(removed))
        scorer = self._healing_scorer()
        scorer.references()  # the dense reference from the unhealed model, before any patch
        dataset = self._healing_dataset()
        runs_before = scorer.num_run  # unhealed scores not yet measured there (usually none: re-scored already)
        rows = []
        best_report, best_loss = None, math.inf  # the final healing folds the winner's fits again
        for candidate in candidates:
            kept = [i for i in range(self.num_layers) if i not in candidate]
            loss = scorer.loss(scorer(kept))  # the unhealed score (re-scored sets come from the cache)
            check = self._healing_check(scorer, kept)  # healed as the final healing would heal it
            with temporarily_healed(
                self.model, candidate, self._healing_batches(dataset), **self._healing_options(), **check
            ) as report:
                healed = report.check["healed_loss"] if check else scorer.loss(scorer.forward(kept))
            row = {"removed": candidate, "loss": loss, "healed_loss": healed}
            if check:
                row.update(folded=[run["folded"] for run in report.runs], check_evaluations=report.check["evaluations"])
                if report.ridge_choices:
                    row["ridges"] = [run["ridge"] for run in report.runs]
            rows.append(row)
            if best_report is None or healed < best_loss:  # the first lowest, as ``best`` below
                best_report, best_loss = report, healed
        best = min(range(len(rows)), key=lambda i: (rows[i]["healed_loss"], i))
        chosen = rows[best]["removed"]
        tokens_per_block = int(torch.as_tensor(dataset[0]["input_ids"]).numel())
        return (
            chosen,
            best_report,
            {
                "scored_on": "verification" if scorer is not self.evaluator else "calibration",
                "num_blocks": len(
                    self.verification_dataset if scorer is not self.evaluator else self.calibration_dataset
                ),
                "objective": scorer.objective,
                "candidates": rows,
                "game_choice": list(removed),
                "chosen": chosen,
                "changed": chosen != list(removed),
                "healing_passes": len(rows),
                "healed_evaluations": sum(row.get("check_evaluations", 1) for row in rows),
                "unhealed_evaluations": scorer.num_run - runs_before,
                # each candidate: a dense pass over the healing sample and an evaluation of the healed set (plus any
                # unhealed score that had to be measured)
                "tokens": len(rows) * len(dataset) * tokens_per_block
                + sum(row.get("check_evaluations", 1) for row in rows) * scorer.tokens_per_mask
                + (scorer.num_run - runs_before) * scorer.tokens_per_mask,
                "seconds": time.perf_counter() - start,
            },
        )

    def _heal(
        self,
        removed: list[int],
        evaluate_calibration: bool,
        timings: dict[str, float],
        selected: HealingReport | None = None,
    ) -> dict[str, Any]:
        """Training-free healing (``pruning_config.heal``) on the still-dense model, then the removal; the report
        goes to ``config.layer_pruning`` and to the result, with the healed calibration perplexity when asked.
        ``selected``: healing-aware selection's report for ``removed``, whose patch is folded as it was scored."""
        from .evaluation.losses import evaluate_batches
        from .healing import fold_healing, heal_removed_layers, record_healing

        dataset = self._healing_dataset()
        scorer = self._healing_scorer()
        check = self._healing_check(scorer, [i for i in range(self.num_layers) if i not in removed])
        if selected is not None:  # healing-aware selection scored this set healed: fold that patch, as scored
            start = time.perf_counter()
            fold_healing(self.model, removed, selected)
            report = dataclasses.replace(selected, seconds=time.perf_counter() - start)
        else:
            report = heal_removed_layers(
                self.model, removed, self._healing_batches(dataset), **self._healing_options(), **check
            )
        if check:
            report.check["tokens"] = report.check["evaluations"] * scorer.tokens_per_mask
        drop_layers(self.model, removed)
        record_healing(self.model, report)
        timings["healing"] = report.seconds
        healing = report.to_dict()
        healing.update(calibration_set=dataset is self.calibration_dataset, num_samples=len(dataset))
        if selected is not None:
            healing["from_heal_selection"] = True  # fitted and checked there (its cost is heal_selection's)
        if evaluate_calibration:
            nll, tokens = evaluate_batches(self.model, self._calibration_batches(), prepare=self._prepare_inputs)
            healing["calibration_ppl_after"] = math.exp(min(nll / max(tokens, 1), 700.0))
        return healing

    def recover(self, dataset: Any, lora_config: Any = None, training_args: Any = None, **kwargs: Any) -> Any:
        """Heal the pruned model with LoRA (see :func:`optimum_shapley.recovery.recover`; same arguments, e.g.
        ``merge=False`` to keep the adapter, ``max_steps=``). The result is recorded in ``self.result.recovery``,
        and ``save_pretrained``/``push_to_hub`` then write the recovered model (merged, or base + ``adapter/``)."""
        from .recovery import recover

        if self.result is None:
            raise RuntimeError("call prune() before recover()")
        if self.result.recovery:
            raise RuntimeError("recover() already ran on this model; save it and run recovery on the saved model")
        recovery = recover(self.model, self.processing_class, dataset, lora_config, training_args, **kwargs)
        self.model = self.model_wrapped = recovery.model
        self.result.recovery = recovery.to_dict()
        return recovery

    def _base_model_name(self) -> str:
        return str(getattr(self.model, "name_or_path", "") or getattr(self.model.config, "_name_or_path", ""))

    # ------------------------------------------------------------------------------------------------------------
    # outputs

    def save_pretrained(
        self,
        output_dir: str | os.PathLike,
        surrogate_repo_id: str | None = None,
        adapter_base_model: str | None = None,
    ) -> str:
        """Write the pruned model, tokenizer, config, results, card, plots and surrogate to ``output_dir``.

        Everything is written to a temporary folder first and moved into place at the end, so a failure never
        leaves a half-written model. Files of an earlier run in ``output_dir`` with the same names are replaced;
        the mask-evaluation cache is left alone. After ``recover(merge=False)`` the folder holds the pruned base
        weights plus ``adapter/``, whose config names ``adapter_base_model`` (default: ``output_dir``) as its base.
        Under ``accelerate launch`` only the main process writes (call it on every process, as ``Trainer.save_model``).
        """
        from .atomic import staged_folder
        from .hub import write_run_folder

        if self.result is None:
            raise RuntimeError("call prune() before save_pretrained()")
        output_dir = os.path.abspath(os.fspath(output_dir))
        if not self.is_world_process_zero():
            return output_dir
        with staged_folder(output_dir) as staging:
            self.state.save_to_json(os.path.join(staging, TRAINER_STATE_NAME))  # log_history: the search, logged
            write_run_folder(
                staging,
                model=self.model,
                tokenizer=self.processing_class,
                pruning_config=self.pruning_config,
                result=self.result,
                surrogate=self.surrogate,
                surrogate_dir=SURROGATE_DIR,
                surrogate_repo_id=surrogate_repo_id,
                adapter_base_model=adapter_base_model or output_dir,
            )
        return output_dir

    def push_to_hub(
        self,
        commit_message: str | None = "Upload layer-pruned model (optimum-shapley)",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        **kwargs: Any,
    ) -> dict[str, str]:
        """Push the pruned model (with card and plots) and its surrogate, each to its own repository.

        ``Trainer.push_to_hub``'s signature and arguments: the repository is ``repo_id=`` or
        ``TrainingArguments.hub_model_id`` (else the name of ``output_dir``, under your namespace), the token
        ``token`` or ``hub_token``, privacy ``private=`` or ``hub_private_repo``; ``revision`` is the branch the
        commits go to (created when missing). ``surrogate_repo_id=`` names the surrogate's repository (default
        ``{repo_id}-shapley-surrogate``). Uploads always complete before returning (``blocking`` is accepted for
        compatibility). Returns both repository ids. After ``recover()`` the pushed model is the merged one, or the
        pruned base plus ``adapter/`` (``merge=False``)."""
        from pathlib import Path

        from .hub import push_run_folder

        repo_id = kwargs.pop("repo_id", None) or self.args.hub_model_id or Path(self.args.output_dir).absolute().name
        surrogate_repo_id = kwargs.pop("surrogate_repo_id", None) or f"{repo_id}-shapley-surrogate"
        private = kwargs.pop("private", None)
        private = self.args.hub_private_repo if private is None else private
        if kwargs:
            raise TypeError(f"push_to_hub() got unexpected keyword arguments: {', '.join(sorted(kwargs))}")
        if self.result is None:
            raise RuntimeError("call prune() before push_to_hub()")
        if not self.is_world_process_zero():  # one upload, from the main process
            return {}
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, surrogate_repo_id=surrogate_repo_id, adapter_base_model=repo_id)
            return push_run_folder(
                folder,
                repo_id,
                surrogate_repo_id=surrogate_repo_id,
                surrogate_dir=SURROGATE_DIR,
                private=private,
                token=token or self.args.hub_token,
                commit_message=commit_message or "Upload layer-pruned model (optimum-shapley)",
                revision=revision,
            )


TRAINER_STATE_NAME = "trainer_state.json"
"""The Trainer's state in the run folder: ``log_history`` holds every logged mask evaluation and phase."""

KL_METHODS = ("evopress",)
"""Methods whose fitness is the KL to the dense model whatever the utility (``shapley`` follows ``utility``)."""

VERIFYING_METHODS = ("shapley", "evopress")
"""Methods that re-score their best sets on the larger verification sample (``verify_samples``)."""

_PLAIN_EVALUATE_MASK = ShapleyLayerPruner.evaluate_mask
"""What ``mask_evaluator`` compares against: a subclass or patch of ``evaluate_mask`` turns prefix sharing off."""
