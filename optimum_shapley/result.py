"""PruningResult: everything a pruning run decided and measured, as one JSON-serialisable record."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["RESULTS_NAME", "PruningResult"]

RESULTS_NAME = "shapley_results.json"


def _count(parameters: int) -> str:
    return f"{parameters / 1e6:,.1f}M" if parameters >= 1e6 else f"{parameters:,}"


@dataclass
class PruningResult:
    """Per-layer contributions, the chosen layers, the evidence behind them and what it cost.

    ``values``/``stderr`` are indexed by the original layer; ``removed_layers`` are the ``num_removed`` lowest.
    ``masks`` (``"1101..."`` strings, layer 0 first) line up with ``mean_nll`` and ``utilities``: a mask whose loss
    was not finite keeps its place with the worst utility. ``num_model_evaluations`` counts real forward passes
    over the calibration set (or the verification set) run by this call; ``num_cached_evaluations`` the ones read
    back from the cache;
    ``selection_evaluations`` what the method needs, cache or not (its cost, comparable across methods), and
    ``selection_seconds`` how long the selection took. Methods without per-layer scores leave ``values`` empty.
    """

    base_model: str
    method: str
    num_layers: int
    num_removed: int
    removed_layers: list[int]
    kept_layers: list[int]
    values: list[float]
    stderr: list[float]
    estimator: str
    utility: str
    strata: list[int]
    masks: list[str] = field(default_factory=list)
    mean_nll: list[float] = field(default_factory=list)
    utilities: list[float] = field(default_factory=list)
    surrogate_fit: dict[str, Any] = field(default_factory=dict)
    calibration_ppl_before: float | None = None
    calibration_ppl_after: float | None = None
    calibration: dict[str, Any] = field(default_factory=dict)
    num_model_evaluations: int = 0
    num_cached_evaluations: int = 0
    selection_evaluations: int = 0
    selection_seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    weights_source: str = ""  # e.g. "de-quantized from the GGUF file ..."
    base_model_name: str = ""  # what the model card calls the base model, never a machine path (hub.checkpoint_name)
    recovery: dict[str, Any] = field(default_factory=dict)  # RecoveryResult.to_dict() after pruner.recover()
    # held-out evaluation: {"protocol": {...}, "results": {"dense"|"pruned"|"recovered": EvaluationSuite.run()}}
    evaluation: dict[str, Any] = field(default_factory=dict)
    verification_evaluations: int = 0  # passes over the larger verification set (multi-fidelity)
    tokens_processed: int = 0  # input tokens of every evaluation the method needed
    game: dict[str, Any] = field(default_factory=dict)  # criteria.shapley.GameEvidence of a shapley run
    value_check: dict[str, Any] = field(default_factory=dict)  # {"spearman", "num_evaluations", "new_evaluations"}
    speed: dict[str, Any] = field(default_factory=dict)  # throughput.speed_comparison (or {"error": ...})
    healing: dict[str, Any] = field(default_factory=dict)  # healing.HealingReport.to_dict() when heal != "none"
    # target_params runs: {"target_fraction", "dense_parameters", "pruned_parameters", "fraction"}
    parameter_budget: dict[str, Any] = field(default_factory=dict)
    # heal_aware runs: the game's best sets scored healed, {"candidates", "game_choice", "chosen", "changed", ...}
    heal_selection: dict[str, Any] = field(default_factory=dict)

    @property
    def played_game(self) -> bool:
        """A surrogate game chose the set: its evidence is recorded (results written before that was kept still
        name the strata of its design)."""
        return bool(self.game) or bool(self.strata)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json_file(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, allow_nan=True)
            f.write("\n")

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> PruningResult:
        with open(path, encoding="utf-8") as f:
            return cls(**json.load(f))

    def _evaluations_text(self) -> str:
        text = f"{self.num_model_evaluations} run, {self.num_cached_evaluations} from cache"
        passes = (self.details or {}).get("reference_passes")
        if passes:
            text += f" (+{passes} dense pass{'es' if passes > 1 else ''} rebuilding the KL reference)"
        return text

    def summary_rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs for the CLI summary and the model card."""
        fit = self.surrogate_fit or {}

        def fmt(value: Any, spec: str = ".3f") -> str:
            return "n/a" if value is None else format(value, spec)

        method = self.method
        if self.estimator:
            method += f" (estimator: {self.estimator}, utility: {self.utility})"
        rows = [
            ("base model", self.base_model),
            ("method", method),
            ("layers", f"{self.num_layers} -> {self.num_layers - self.num_removed} ({self.num_removed} removed)"),
        ]
        if self.parameter_budget:
            budget = self.parameter_budget
            rows.append(
                (
                    "parameter budget",
                    f"keep at most {budget['target_fraction']:.1%}: {_count(budget['dense_parameters'])} -> "
                    f"{_count(budget['pruned_parameters'])} ({budget['fraction']:.1%} kept)",
                )
            )
        rows += [
            ("removed layers", ", ".join(map(str, self.removed_layers))),
            (
                "calibration perplexity",
                f"{fmt(self.calibration_ppl_before, '.2f')} -> {fmt(self.calibration_ppl_after, '.2f')}",
            ),
        ]
        if fit:
            rows += [
                ("surrogate held-out R^2", fmt(fit.get("validation_r2"))),
                ("surrogate held-out Spearman", fmt(fit.get("validation_spearman"))),
            ]
        from .game_report import game_summary_rows, heal_selection_summary

        rows += game_summary_rows(self)
        rows += heal_selection_summary(self)
        cost = f"{self.selection_evaluations} model evaluations"
        if self.verification_evaluations:
            cost += f" + {self.verification_evaluations} on the verification blocks"
        if self.tokens_processed:
            cost += f" ({self.tokens_processed:,} tokens)"
        rows += [
            ("method cost", f"{cost}, {self.selection_seconds:.1f} s"),
            ("model evaluations", self._evaluations_text()),
        ]
        if self.speed.get("error"):
            rows.append(("speed", f"not measured ({self.speed['error']})"))
        elif self.speed:
            from .throughput import speed_summary

            rows += speed_summary(self.speed)
        if self.healing:
            from .healing import healing_summary

            rows.append(("healing", healing_summary(self.healing)))
        if self.recovery:
            from .recovery import recovery_summary_rows

            rows += recovery_summary_rows(self.recovery)
        rows.append(("wall time", f"{self.timings.get('total', 0.0):.1f} s (pruning; loading and saving not included)"))
        return rows
