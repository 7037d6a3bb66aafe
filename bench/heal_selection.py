"""Healing-aware selection: does scoring the game's best sets healed change the removed set, and what does it buy?

    python bench/heal_selection.py                           # SmolLM2-135M remove 10 (the deepest cut)
    python bench/heal_selection.py --cells gemma3-270m:6     # Gemma-3 (its linear healing is the diagonal map)

One ``ShapleyLayerPruner`` run per cell as ``optimum-shapley prune ALIAS --remove K --dataset c4_demo.json --heal
linear --heal_aware`` runs it (the default config otherwise). For each candidate set the game's healing-aware step
scored (its best verified sets), the table gives the verification loss unhealed and healed (what the step chose
on), and WikiText-2 perplexity unhealed and healed (each candidate healed by hand as the pruner healed it when it
scored it: ``heal_removed_layers`` on the pruner's own healing sample for the runs its check folded, each with the
ridge its check chose, then ``drop_layers``). The removed set is the
heal-aware choice; the game's own choice is what ``heal_aware=False`` removes with the same evaluations. Cost: the
step's healing passes and healed evaluations, in tokens, against the run's other tokens.
Writes bench/results/heal_selection.json, heal_selection.md and heal_selection.partial.jsonl.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from common import DEFAULT_DATA_DIR, data_paths, load_bench_model, report_markdown  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from transformers import default_data_collator  # noqa: E402

from optimum_shapley import ShapleyLayerPruner, ShapleyPruningConfig, drop_layers  # noqa: E402
from optimum_shapley.evaluation import perplexity_of_windows  # noqa: E402
from optimum_shapley.healing import heal_removed_layers  # noqa: E402
from optimum_shapley.pruner import pruning_arguments  # noqa: E402

EVAL_WINDOWS = {"smollm2-135m": 128, "gemma3-270m": 64}
POST_NORM_FAMILIES = ("gemma2", "gemma3_text")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", default="smollm2-135m:10", help="ALIAS:K,... (default: smollm2-135m:10)")
    parser.add_argument("--eval-windows", type=int, default=None, help="WikiText-2 windows (default: per model)")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "bench", "results"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return parser.parse_args()


def run_cell(alias: str, k: int, args: argparse.Namespace, c4: str) -> list[dict]:
    windows = args.eval_windows or EVAL_WINDOWS[alias]
    bench = load_bench_model(alias, args.data_dir, 10, windows)
    family = bench.model.config.get_text_config(decoder=True).model_type
    diagonal = family in POST_NORM_FAMILIES
    config = ShapleyPruningConfig(
        num_layers_to_remove=k, dataset_name=c4, heal="linear", heal_aware=True, heal_diagonal=diagonal
    )
    cache = os.path.join(args.output_dir, f"heal_selection-cache-{alias}-{k}")
    pruner = ShapleyLayerPruner(
        model=copy.deepcopy(bench.model),
        args=pruning_arguments(cache, bench.batch_size, config.seed, disable_tqdm=True),
        pruning_config=config,
        processing_class=bench.tokenizer,
    )
    result = pruner.prune(evaluate_calibration=True)
    selection = result.heal_selection
    heal_blocks = pruner._healing_dataset()  # the pruner's own healing sample (heal_num_samples of c4_demo.json)
    rows = []
    for candidate in selection["candidates"]:
        removed = candidate["removed"]
        start = time.perf_counter()
        model = healed_as_scored(bench, candidate, heal_blocks, config, diagonal)
        drop_layers(model, removed)
        healed = perplexity_of_windows(model, bench.windows, bench.batch_size)
        del model
        gc.collect()
        rows.append(
            {
                "model": alias,
                "removed": k,
                "removed_layers": removed,
                "game_choice": removed == selection["game_choice"],
                "heal_aware_choice": removed == selection["chosen"],
                "verification_loss": candidate["loss"],
                "verification_loss_healed": candidate["healed_loss"],
                "wikitext2_ppl": bench.wikitext_ppl(removed),
                "wikitext2_ppl_healed": healed,
                "seconds": time.perf_counter() - start,
                "objective": selection["objective"],
                "scored_on": f"{selection['num_blocks']} {selection['scored_on']} blocks",
                "step_tokens": selection["tokens"],
                "step_seconds": selection["seconds"],
                "run_tokens": result.tokens_processed,
                "heal_blocks": len(heal_blocks),
                "diagonal": diagonal,
                "dense_ppl": bench.wikitext_ppl(None),
                "windows": windows,
            }
        )
        with open(os.path.join(args.output_dir, "heal_selection.partial.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(rows[-1]) + "\n")
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _runs_of(removed: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for layer in sorted(removed):
        if runs and runs[-1][-1] == layer - 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return runs


def healed_as_scored(bench, candidate: dict, heal_blocks, config: ShapleyPruningConfig, diagonal: bool):
    """A copy of the dense model healed as the pruner healed ``candidate`` when it scored it: only the runs its check
    folded, each with the ridge its check chose (the config's heal_ridge without a check). Each run's patch is
    fitted on the dense stream alone, so fitting the runs one at a time gives the pruner's weights."""
    runs = _runs_of(candidate["removed"])
    folded = candidate.get("folded", [True] * len(runs))
    ridges = candidate.get("ridges", [config.heal_ridge] * len(runs))
    model = copy.deepcopy(bench.model)
    dense = bench.model.state_dict()
    for run, keep, ridge in zip(runs, folded, ridges):
        if not keep:
            continue
        alone = copy.deepcopy(bench.model)
        batches = DataLoader(heal_blocks, batch_size=bench.batch_size, collate_fn=default_data_collator)
        heal_removed_layers(
            alone,
            run,
            batches,
            method="linear",
            ridge=ridge,
            diagonal=diagonal,
            relative=config.heal_relative,
            fit=config.heal_fit,
        )
        model.load_state_dict(
            {n: t for n, t in alone.state_dict().items() if not torch.equal(t, dense[n])}, strict=False
        )
        del alone
    return model


def table(rows: list[dict]) -> str:
    lines = [
        "| model | removed | removed layers | chosen by | verification loss | healed | WikiText-2 ppl | healed |",
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        who = [name for name, flag in (("game", row["game_choice"]), ("heal-aware", row["heal_aware_choice"])) if flag]
        lines.append(
            f"| {row['model']} | {row['removed']} | {', '.join(map(str, row['removed_layers']))} | "
            f"{' + '.join(who) or '-'} | {row['verification_loss']:.4f} | {row['verification_loss_healed']:.4f} | "
            f"{row['wikitext2_ppl']:.2f} | {row['wikitext2_ppl_healed']:.2f} |"
        )
    return "\n".join(lines)


def note(rows: list[dict]) -> str:
    lines = []
    for key in sorted({(r["model"], r["removed"]) for r in rows}):
        cell = [r for r in rows if (r["model"], r["removed"]) == key]
        game = next(r for r in cell if r["game_choice"])
        aware = next(r for r in cell if r["heal_aware_choice"])
        first = cell[0]
        lines.append(
            f"- {key[0]} remove {key[1]}: the game chose {', '.join(map(str, game['removed_layers']))} (healed "
            f"WikiText-2 {game['wikitext2_ppl_healed']:.2f}); healing-aware selection "
            + (
                f"chose {', '.join(map(str, aware['removed_layers']))} ({aware['wikitext2_ppl_healed']:.2f}, "
                f"{aware['wikitext2_ppl_healed'] / game['wikitext2_ppl_healed']:.3f}x)"
                if aware is not game
                else "kept it"
            )
            + f", scoring {len(cell)} sets healed on {first['scored_on']} ({first['objective']}): "
            f"{first['step_tokens']:,} more tokens ({first['step_tokens'] / (first['run_tokens'] - first['step_tokens']):.2f}x "
            f"the run's other tokens), {first['step_seconds']:.0f} s. Healing sample {first['heal_blocks']} x 128 "
            f"tokens, {'diagonal' if first['diagonal'] else 'full'} map; dense {first['dense_ppl']:.2f} on "
            f"{first['windows']} windows."
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.output_dir, exist_ok=True)
    _, c4 = data_paths(args.data_dir)
    start = time.perf_counter()
    rows = []
    for item in args.cells.split(","):
        alias, k = item.split(":")
        rows += run_cell(alias, int(k), args, c4)
    meta = {"platform": platform.platform(), "torch": torch.__version__, "seconds": time.perf_counter() - start}
    with open(os.path.join(args.output_dir, "heal_selection.json"), "w", encoding="utf-8") as f:
        json.dump({"rows": rows, "meta": meta}, f, indent=2)
    report_markdown(args.output_dir, "heal_selection", table(rows), note(rows))


if __name__ == "__main__":
    main()
