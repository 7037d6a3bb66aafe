"""ShapleyPruningConfig: every setting of a pruning run, as a dataclass that saves, loads, pushes and parses.

Defaults follow the paper (DESIGN 1) where the paper's choice works, and say so where we differ: the utility
defaults to a log-perplexity ratio because the paper's ``ppl(full)/ppl(mask)`` saturates at 0 on small models, and
the strata default to kept counts centred on the target instead of a table hard-coded for 32 layers.
"""

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers.utils import PushToHubMixin

from .game_values import ESTIMATORS
from .registry import CRITERIA, DEFAULT_METHOD, methods_help
from .surrogate import ACTIVATIONS, SURROGATE_FEATURES

__all__ = [
    "CONFIG_NAME",
    "ESTIMATORS",
    "UTILITIES",
    "ShapleyPruningConfig",
    "default_evaluation_budget",
    "default_strata",
]

CONFIG_NAME = "shapley_pruning_config.json"
UTILITIES = ("kl", "log_ppl_ratio", "ppl_ratio")
HEAL_METHODS = ("none", "linear", "scale")
HEAL_FITS = ("projection", "map")  # heal=linear: refit the MLP output projection, or ReplaceMe's map on its output
# Each run's ridge chosen among these by the healing check (measured: docs/benchmarks.md, healing section).
DEFAULT_HEAL_RIDGE_CHOICES = (0.001, 0.01, 0.1, 1.0, 10.0)


def sleb_cost(num_layers: int, num_remove: int) -> int:
    """Real evaluations SLEB spends: every remaining layer is tried at each of its ``num_remove`` steps."""
    return sum(num_layers - step for step in range(num_remove))


def default_evaluation_budget(num_layers: int, num_remove: int) -> int:
    """The default search's budget in calibration-set evaluations: twice what SLEB spends at the same target,
    everything included (peers, design, search, verification on the larger set, the value check)."""
    return 2 * sleb_cost(num_layers, num_remove)


def default_strata(num_layers: int, num_remove: int) -> list[int]:
    """Kept-layer counts to sample masks from: the target's kept count and two steps either side.

    The step is half the number of removed layers (at least 1), so for 30 layers and 6 removed the strata are
    18, 21, 24, 27 and 29 kept layers; counts are clipped to ``[1, num_layers - 1]`` (the full model is always
    evaluated on its own).
    """
    target = num_layers - num_remove
    step = max(1, math.ceil(num_remove / 2))
    counts = {min(max(target + k * step, 1), num_layers - 1) for k in (-2, -1, 0, 1, 2)}
    return sorted(counts)


def _finite_nonnegative(value: Any) -> bool:
    """A ridge: a real number (not a bool) in [0, inf)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value < float("inf")


def _help(text: str, *aliases: str) -> dict[str, Any]:
    return {"help": text, "aliases": list(aliases)} if aliases else {"help": text}


@dataclass
class ShapleyPruningConfig(PushToHubMixin):
    """Configuration of a Shapley layer-pruning run (saved as ``shapley_pruning_config.json``).

    Set exactly one of ``num_layers_to_remove``, ``pruning_ratio`` and ``target_params``. Parse it from the command line with
    ``transformers.HfArgumentParser(ShapleyPruningConfig)``.
    """

    # --- method
    method: str = field(
        default=DEFAULT_METHOD,
        metadata=_help(
            f"Layer-selection method: {methods_help()}. The surrogate settings below apply to the shapley methods."
        ),
    )
    # --- target
    num_layers_to_remove: int | None = field(
        default=None, metadata=_help("Number of decoder layers to remove (or give --ratio).", "--remove")
    )
    pruning_ratio: float | None = field(
        default=None,
        metadata=_help(
            "Fraction of decoder layers to remove, rounded to the nearest count (or give --remove).", "--ratio"
        ),
    )
    target_params: float | None = field(
        default=None,
        metadata=_help(
            "Budget as a parameter fraction: the pruned model keeps at most this fraction of the dense model's "
            "parameters (embeddings included), e.g. 0.75. Removes the fewest layers that meet it whichever layers "
            "are chosen, so layers of different sizes (MoE, dense-first) never leave it unmet (or give --remove).",
            "--target-params",
        ),
    )
    # --- calibration text
    dataset_name: str | None = field(
        default=None,
        metadata=_help(
            "Calibration text: a Hub dataset name, a local .txt/.json/.jsonl/.parquet file, or 'embedded' (the "
            "default: English documentation text shipped with Python, no download).",
            "--dataset",
        ),
    )
    dataset_config_name: str | None = field(
        default=None, metadata=_help("Hub dataset configuration, e.g. wikitext-2-raw-v1.", "--dataset-config")
    )
    dataset_split: str = field(default="train", metadata=_help("Hub dataset split, e.g. 'train[:2000]'.", "--split"))
    text_column: str = field(default="text", metadata=_help("Column or JSON field holding the text."))
    dataset_streaming: bool = field(
        default=False,
        metadata=_help(
            "Stream the Hub calibration dataset instead of downloading its split: documents pass through a seeded "
            "shuffle buffer of 10,000 and are read only until the blocks are filled (local files and 'embedded' "
            "are read as usual).",
            "--streaming",
        ),
    )
    num_samples: int = field(default=10, metadata=_help("Number of calibration token blocks (paper: 10)."))
    seq_length: int = field(default=128, metadata=_help("Tokens per calibration block (paper: 128)."))
    # --- mask sampling
    num_masks: int | None = field(
        default=None,
        metadata=_help(
            "Random layer masks (from the strata) evaluated on the real model to start the surrogate, the full model "
            "included. Default: twice the depth for shapley; the search adds the masks it verifies."
        ),
    )
    strata: list[int] | None = field(
        default=None,
        metadata=_help(
            "Kept-layer counts to sample masks from. Default: the target's kept count and two steps of "
            "ceil(removed/2) either side, clipped to [1, depth-1]."
        ),
    )
    utility: str = field(
        default="kl",
        metadata=_help(
            "Utility of a mask: 'kl' = minus the mean per-token KL divergence of the masked model's next-token "
            "distribution from the dense model's (default, as EvoPress; top kl_top_k tokens plus the rest), "
            "'log_ppl_ratio' = log(ppl(full)/ppl(mask)) or 'ppl_ratio' = ppl(full)/ppl(mask) (the paper's)."
        ),
    )
    kl_top_k: int = field(
        default=128, metadata=_help("Dense-model probabilities kept per token for the KL utility (plus the rest).")
    )
    # --- surrogate (paper defaults: L -> 2L -> 1 MLP, CELU, SGD lr 0.008 momentum 0.9, 300 epochs, batch 300)
    surrogate_hidden_multiplier: int = field(default=2, metadata=_help("Hidden width of the MLP, in layers."))
    surrogate_activation: str = field(default="celu", metadata=_help(f"Hidden activation: one of {ACTIVATIONS}."))
    surrogate_learning_rate: float = field(default=0.008, metadata=_help("SGD learning rate."))
    surrogate_momentum: float = field(default=0.9, metadata=_help("SGD momentum."))
    surrogate_epochs: int = field(default=300, metadata=_help("Training epochs."))
    surrogate_batch_size: int = field(default=300, metadata=_help("Training batch size."))
    surrogate_features: str = field(
        default="mask+adjacent",
        metadata=_help(
            "Surrogate input: 'mask' (the paper's) or 'mask+adjacent' (also one feature per pair of neighbouring "
            "layers both removed: contiguous blocks)."
        ),
    )
    surrogate_ensemble: int = field(
        default=5,
        metadata=_help(
            "Networks in the surrogate ensemble, each on its own train/validation split: their spread is the "
            "surrogate uncertainty in the values' error bars and in the search's stopping rule."
        ),
    )
    validation_fraction: float = field(
        default=0.2, metadata=_help("Share of evaluated masks held out to validate the surrogate (at most 0.2).")
    )
    # --- Shapley estimation
    estimator: str = field(
        default="measured",
        metadata=_help(
            "'measured' (default): least-squares values of a linear game fitted to the real evaluations near the "
            "best verified set (neighbourhood and ridge chosen by leave-one-out), or 'local' where fewer "
            "evaluations than layers lie there; "
            "'local': each layer's mean marginal on the surrogate over kept sets of the target size within "
            "value_radius swaps of the best verified set, where the surrogate was trained; 'semivalue': over uniformly random "
            "kept sets of the target size; 'permutation': full-range Shapley values (every coalition size: mostly "
            "extrapolation on a surrogate trained near the target); 'paper': the published estimator."
        ),
    )
    value_radius: int = field(default=2, metadata=_help("Swaps around the best verified set for 'local' values."))
    mc_samples: int = field(
        default=20000, metadata=_help("Monte Carlo samples on the surrogate: permutations or coalitions.")
    )
    # --- surrogate-guided search of the kept set
    search_rounds: int = field(
        default=4,
        metadata=_help(
            "Rounds of search on the surrogate for the best kept set of the target size; each verifies the "
            "--search_candidates most promising sets on the real model, refits the surrogate, and the loop stops "
            "when a round finds nothing better. The best verified set is removed. 0: remove the layers with the "
            "lowest contributions instead."
        ),
    )
    search_candidates: int = field(default=8, metadata=_help("Candidates verified on the real model per round."))
    search_patience: int = field(
        default=2, metadata=_help("Search rounds in a row without a better verified set before the search stops.")
    )
    max_evaluations: int | None = field(
        default=None,
        metadata=_help(
            "Most calibration-set evaluations the shapley search may spend, everything included (a pass over the "
            "verification set counts as its size in calibration sets). Default: twice SLEB's cost at the target."
        ),
    )
    verify_samples: int = field(
        default=40,
        metadata=_help(
            "Multi-fidelity verification: calibration blocks (drawn like the calibration ones, with another seed) "
            "on which the verify_top best sets are re-scored before one is chosen. 0: choose on the calibration set."
        ),
    )
    verify_top: int = field(default=4, metadata=_help("Best verified sets re-scored on the verification blocks."))
    value_check: bool = field(
        default=True,
        metadata=_help(
            "Measure every layer's real marginal at the chosen set (remove each kept layer, add back each removed "
            "one: one evaluation each) and report its rank correlation with the values."
        ),
    )
    reuse_candidates: int = field(
        default=8,
        metadata=_help(
            "Pruning with a saved surrogate: kept sets verified on the model before one is chosen (the surrogate's "
            "proposals and the one-pass peers), and the candidates verified per step of the walk from the set the "
            "surrogate's run chose to the new size. 0: take the surrogate's choice unverified, evaluating nothing."
        ),
    )
    # --- evaluation cost
    share_prefixes: bool = field(
        default=True,
        metadata=_help(
            "Evaluate each group of masks in trie order, starting every mask from the remembered hidden states of "
            "the last kept layer it shares with the previous one (same numbers, about a third fewer decoder-layer "
            "passes; holds one hidden-state tensor per kept layer and calibration batch)."
        ),
    )
    # --- training-free healing of the kept weights (optimum_shapley.healing)
    heal: str = field(
        default="none",
        metadata=_help(
            "Training-free healing after the layers are chosen, folded into the kept weights on the calibration "
            "text (the checkpoint keeps its stock architecture): 'none' (default), 'linear' (ReplaceMe: one "
            "least-squares map per run of removed layers, folded into the MLP output projection before it) or "
            "'scale' (Prune&Comp: one magnitude scalar per run). Where no exact fold exists it is refused."
        ),
    )
    heal_ridge: float = field(
        default=0.01,
        metadata=_help(
            "heal=linear: ridge toward the identity (the unhealed model), in units of the mean eigenvalue; 0 is "
            "plain least squares. Used for every run where heal_check is off or heal_ridge_choices is empty. "
            "Measured on SmolLM2-135M without 10 layers, 256 x 128 tokens, relative weights: "
            "0.01 best of 0.01 / 0.1 / 1 (docs/benchmarks.md)."
        ),
    )
    heal_ridge_choices: list[float] = field(
        default_factory=lambda: list(DEFAULT_HEAL_RIDGE_CHOICES),
        metadata=_help(
            "heal=linear with heal_check: each run's ridge is the one of these whose patch alone gives the lowest "
            "check loss (heal_ridge is then not used); an empty list uses heal_ridge for every run. No single ridge "
            "suits every run: Gemma-3-270M without 7-9, 14, 15, 17 chose 10 / 0.1 / 10 (WikiText-2 410.33, against "
            "525.51 with 0.01 for all; docs/benchmarks.md). Costs one check evaluation per run and choice."
        ),
    )
    heal_relative: bool = field(
        default=True,
        metadata=_help(
            "heal=linear: weight each calibration token's squared error by 1 / its target's squared norm, so that "
            "the few massive-activation positions of a real model do not decide the fit alone; False is "
            "ReplaceMe's plain least squares."
        ),
    )
    heal_num_samples: int = field(
        default=256,
        metadata=_help(
            "Calibration blocks (of seq_length tokens, from the same text as the calibration set) for the healing "
            "statistics: one forward pass, so far more than the search's; 0 uses the calibration set itself."
        ),
    )
    heal_aware: bool = field(
        default=False,
        metadata=_help(
            "Healing-aware selection: the shapley game's best verified sets (verify_top) are each healed on the "
            "healing sample and re-scored healed (on the verification blocks, else the calibration set), and the "
            "best healed set is removed. Costs one healing pass and one evaluation per set."
        ),
    )
    heal_check: bool = field(
        default=True,
        metadata=_help(
            "Fold a run's patch only where it lowers the loss on held-out text (the verification blocks, else the "
            "calibration set; the run's objective: KL to the dense model for the default shapley, else the NLL): each run tried alone, the "
            "helpful ones added best first while the loss falls. A fit that lowers the stream's squared error can "
            "still hurt the model (Gemma-3-270M without 7-9, 14, 15, 17: 581.60 unhealed, 2176.69 healed, "
            "docs/benchmarks.md). Costs 1 + runs evaluations, plus one per further helpful run."
        ),
    )
    heal_fit: str = field(
        default="projection",
        metadata=_help(
            "heal=linear: 'projection' (default) refits the weight of the MLP output projection of the kept block "
            "before each run on that projection's input, ridge toward its original weight (a superset of "
            "ReplaceMe's map: SmolLM2-135M without 4, 5, 12-18, 26, WikiText-2 222.21 unhealed, 163.13 refitted "
            "against 174.19 with the map; docs/healing.md); 'map' is ReplaceMe's map on that projection's output. "
            "Runs with no such projection (a run at layer 0; Gemma-2/3's post-norm) and heal_diagonal take the map. "
            "Its statistics are the MLP width squared per run, not the hidden size squared."
        ),
    )
    heal_diagonal: bool = field(
        default=False,
        metadata=_help(
            "heal=linear: a per-channel scale instead of a full matrix (the only exact fold on Gemma-2/3, whose "
            "post-feedforward norm follows the MLP)."
        ),
    )
    measure_speed: bool = field(
        default=True,
        metadata=_help(
            "Measure what pruning buys, dense against pruned on this machine: prefill and KV-cached decode tokens/s, "
            "parameters, KV cache and (on CUDA) peak memory; in the summary, card and results (about 20 s for "
            "Gemma-3-270M on 2 CPU cores)."
        ),
    )
    seed: int = field(default=42, metadata=_help("Seed for calibration sampling, masks, surrogate and estimator."))

    def __post_init__(self) -> None:
        def fail(name: str, message: str) -> None:
            raise ValueError(f"ShapleyPruningConfig.{name}: {message}")

        if self.method not in CRITERIA.names():
            fail("method", f"must be one of {CRITERIA.names()}, got {self.method!r}")
        targets = (self.num_layers_to_remove, self.pruning_ratio, self.target_params)
        if sum(t is not None for t in targets) != 1:
            fail(
                "num_layers_to_remove",
                "set exactly one of num_layers_to_remove (--remove), pruning_ratio (--ratio) and target_params "
                f"(--target-params), got {self.num_layers_to_remove!r}, {self.pruning_ratio!r} and "
                f"{self.target_params!r}",
            )
        if self.num_layers_to_remove is not None and (
            isinstance(self.num_layers_to_remove, bool) or self.num_layers_to_remove < 1
        ):
            fail("num_layers_to_remove", f"must be a positive integer, got {self.num_layers_to_remove!r}")
        for name in ("pruning_ratio", "target_params"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                fail(name, f"must be a number strictly between 0 and 1, got {value!r}")
            if value is not None and not 0.0 < value < 1.0:
                fail(name, f"must be strictly between 0 and 1, got {value!r}")
        for name in ("num_samples", "surrogate_hidden_multiplier", "surrogate_epochs", "surrogate_ensemble"):
            if getattr(self, name) < 1:
                fail(name, f"must be at least 1, got {getattr(self, name)!r}")
        for name in ("verify_samples", "reuse_candidates", "value_radius"):
            if getattr(self, name) < 0:
                fail(name, f"must be 0 or more, got {getattr(self, name)!r}")
        if self.verify_top < 1:
            fail("verify_top", f"must be at least 1, got {self.verify_top!r}")
        if self.kl_top_k < 1:
            fail("kl_top_k", f"must be at least 1, got {self.kl_top_k!r}")
        if self.max_evaluations is not None and self.max_evaluations < 1:
            fail("max_evaluations", f"must be at least 1, got {self.max_evaluations!r}")
        if self.search_rounds < 0:
            fail("search_rounds", f"must be 0 or more, got {self.search_rounds!r}")
        if self.search_patience < 1:
            fail("search_patience", f"must be at least 1, got {self.search_patience!r}")
        if self.search_candidates < 1:
            fail("search_candidates", f"must be at least 1, got {self.search_candidates!r}")
        if self.surrogate_batch_size < 1:
            fail("surrogate_batch_size", f"must be at least 1, got {self.surrogate_batch_size!r}")
        if self.mc_samples < 1:
            fail("mc_samples", f"must be at least 1, got {self.mc_samples!r}")
        if self.num_masks is not None and self.num_masks < 10:
            fail("num_masks", f"needs at least 10 masks to train and validate a surrogate, got {self.num_masks}")
        if self.seq_length < 2:
            fail("seq_length", f"must be at least 2 tokens, got {self.seq_length!r}")
        if self.strata is not None:
            if not self.strata or any(isinstance(k, bool) or int(k) != k or k < 1 for k in self.strata):
                fail("strata", f"must be a non-empty list of positive kept-layer counts, got {self.strata!r}")
            self.strata = sorted({int(k) for k in self.strata})
        if self.utility not in UTILITIES:
            fail("utility", f"must be one of {UTILITIES}, got {self.utility!r}")
        if self.estimator not in ESTIMATORS:
            fail("estimator", f"must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.surrogate_features not in SURROGATE_FEATURES:
            fail("surrogate_features", f"must be one of {SURROGATE_FEATURES}, got {self.surrogate_features!r}")
        if self.surrogate_activation not in ACTIVATIONS:
            fail("surrogate_activation", f"must be one of {ACTIVATIONS}, got {self.surrogate_activation!r}")
        if not self.surrogate_learning_rate > 0:
            fail("surrogate_learning_rate", f"must be positive, got {self.surrogate_learning_rate!r}")
        if not 0 <= self.surrogate_momentum < 1:
            fail("surrogate_momentum", f"must be in [0, 1), got {self.surrogate_momentum!r}")
        if not 0 < self.validation_fraction <= 0.2:
            fail(
                "validation_fraction",
                f"must be in (0, 0.2] so the surrogate trains on at least 80% of the masks, got {self.validation_fraction!r}",
            )
        if self.heal not in HEAL_METHODS:
            fail("heal", f"must be one of {HEAL_METHODS}, got {self.heal!r}")
        ridge = self.heal_ridge
        if not _finite_nonnegative(ridge):
            fail("heal_ridge", f"must be a finite number >= 0, got {ridge!r}")
        choices = self.heal_ridge_choices
        if isinstance(choices, (str, bytes)) or not isinstance(choices, (list, tuple)):
            fail("heal_ridge_choices", f"must be a list of finite numbers >= 0, got {choices!r}")
        if not all(_finite_nonnegative(value) for value in choices):
            fail("heal_ridge_choices", f"must be a list of finite numbers >= 0, got {choices!r}")
        self.heal_ridge_choices = sorted({float(value) for value in choices})
        if self.heal_fit not in HEAL_FITS:
            fail("heal_fit", f"must be one of {HEAL_FITS}, got {self.heal_fit!r}")
        if self.heal_diagonal and self.heal != "linear":
            fail("heal_diagonal", f"applies to heal='linear', got heal={self.heal!r}")
        if not isinstance(self.heal_aware, bool):
            fail("heal_aware", f"must be True or False, got {self.heal_aware!r}")
        if self.heal_aware and (self.heal == "none" or self.method != "shapley"):
            fail(
                "heal_aware",
                "chooses among the shapley game's verified sets by their healed loss: it needs method='shapley' and "
                f"heal='linear' or 'scale', got method={self.method!r}, heal={self.heal!r}",
            )
        if not isinstance(self.heal_check, bool):
            fail("heal_check", f"must be True or False, got {self.heal_check!r}")
        if not isinstance(self.heal_relative, bool):
            fail("heal_relative", f"must be True or False, got {self.heal_relative!r}")
        if isinstance(self.heal_num_samples, bool) or not isinstance(self.heal_num_samples, int):
            fail("heal_num_samples", f"must be an integer, got {self.heal_num_samples!r}")
        if self.heal_num_samples < 0:
            fail("heal_num_samples", f"must be >= 0 (0: the calibration set), got {self.heal_num_samples!r}")

    # --- derived settings
    def layers_to_remove(self, num_layers: int, layer_parameters: Sequence[int] | None = None) -> int:
        """Number of layers to remove from a model with ``num_layers`` decoder layers.

        ``target_params`` needs the model's sizes: ``layer_parameters`` is ``[total, layer 0, layer 1, ...]``
        (``architectures.parameter_counts``), and the count is the fewest layers whose removal meets the fraction even if
        the smallest layers are the ones chosen, so every criterion's choice keeps the promise."""
        count = self.num_layers_to_remove
        if self.pruning_ratio is not None:
            count = int(round(self.pruning_ratio * num_layers))
        elif self.target_params is not None:
            count = self._count_for_parameters(num_layers, layer_parameters)
        if not 1 <= count < num_layers:
            target = (
                f"num_layers_to_remove={count}"
                if self.num_layers_to_remove is not None
                else f"pruning_ratio={self.pruning_ratio}"
            )
            raise ValueError(
                f"ShapleyPruningConfig: {target} asks to remove {count} of {num_layers} layers; "
                f"remove between 1 and {num_layers - 1}."
            )
        return count

    def _count_for_parameters(self, num_layers: int, layer_parameters: Sequence[int] | None) -> int:
        if layer_parameters is None or len(layer_parameters) != num_layers + 1:
            raise ValueError(
                "ShapleyPruningConfig.target_params needs the model's parameter counts ([total, layer 0, ...], "
                "optimum_shapley.architectures.parameter_counts(model)) to turn a fraction into a layer count"
            )
        total, sizes = int(layer_parameters[0]), sorted(int(n) for n in layer_parameters[1:])
        must_remove = total - math.floor(self.target_params * total)
        removed = 0
        for count, size in enumerate(sizes[:-1], start=1):  # at least one layer stays
            removed += size
            if removed >= must_remove:
                return count
        raise ValueError(
            f"ShapleyPruningConfig.target_params={self.target_params}: keeping at most "
            f"{self.target_params:.1%} of {total:,} parameters needs removing {must_remove:,}, but all decoder "
            f"layers but one hold only {sum(sizes[:-1]):,} (the rest is embeddings and head); raise target_params"
        )

    def resolved_num_masks(self, num_layers: int) -> int:
        """The random design's size for a model of ``num_layers`` layers: ``num_masks``, or twice the depth."""
        return self.num_masks if self.num_masks is not None else max(10, 2 * num_layers)

    def resolved_max_evaluations(self, num_layers: int, num_remove: int | None = None) -> int:
        """The search's evaluation budget: ``max_evaluations``, or twice SLEB's cost at the target (``num_remove``
        layers, by default the config's count)."""
        if self.max_evaluations is not None:
            return self.max_evaluations
        return default_evaluation_budget(num_layers, num_remove or self.layers_to_remove(num_layers))

    def resolved_strata(self, num_layers: int, num_remove: int | None = None) -> list[int]:
        """The kept-layer counts to sample from for a model of ``num_layers`` layers (validated)."""
        if self.strata is None:
            return default_strata(num_layers, num_remove or self.layers_to_remove(num_layers))
        bad = [k for k in self.strata if not 1 <= k <= num_layers - 1]
        if bad:
            raise ValueError(
                f"ShapleyPruningConfig.strata: kept counts {bad} are outside [1, {num_layers - 1}] for a model "
                f"with {num_layers} layers (the full model is always evaluated on its own)."
            )
        return list(self.strata)

    # --- serialisation (PEFT-style)
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> None:
        """Write ``shapley_pruning_config.json`` to ``save_directory`` (and push it if asked)."""
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory {save_directory!r} is a file, expected a directory")
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, CONFIG_NAME), "w", encoding="utf-8") as f:
            f.write(self.to_json_string())
        if push_to_hub:
            repo_id = kwargs.pop("repo_id", None) or os.path.basename(os.path.abspath(save_directory))
            self.push_to_hub(repo_id, **kwargs)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ShapleyPruningConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"ShapleyPruningConfig: unknown fields {unknown}")
        return cls(**values)

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, **hub_kwargs: Any) -> "ShapleyPruningConfig":
        """Load from a folder, a JSON file, or a Hub repository holding ``shapley_pruning_config.json``."""
        path = os.fspath(path_or_repo_id)
        if os.path.isdir(path):
            path = os.path.join(path, CONFIG_NAME)
        elif not os.path.isfile(path):
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(path, CONFIG_NAME, **hub_kwargs)
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))
