"""What a ``shapley`` run tells a person about how its set was chosen: summary rows and card sentences.

Every sentence is built from the run's ``GameEvidence`` (``PruningResult.game``), one branch per way a run can go
(which phase found the set, whether it was re-scored on the verification set, whether the k lowest values are the
removed set, whether values were checked), so that none of them can be false for the run.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["FOUND_BY", "game_paragraphs", "game_summary_rows", "heal_selection_paragraph", "heal_selection_summary"]

FOUND_BY = {
    "peer:angular": "angular distance's contiguous block (one forward pass), verified on the model",
    "peer:block-influence": "block influence's set (one forward pass), verified on the model",
    "peer:leave-one-out": "the leave-one-out set (the layers whose lone removal cost least), verified on the model",
    "peers": "the leave-one-out evaluations",
    "design": "one of the random design masks",
    "elimination": "the greedy elimination on the utility (SLEB's search; that step tried every kept layer)",
    "screened elimination": "the surrogate-screened elimination (SLEB whose candidates the surrogate screens)",
    "search": "the value-guided search around the best verified set",
    "region": "the random sample around the best verified set",
    "lowest values": "the k lowest values",
    "reuse": "the reused surrogate's proposals, verified on the model",
    "reuse walk": (
        "the walk from the reused surrogate's best verified set of another size, one layer at a time (the "
        "surrogate screening each step's candidates, each verified on the model)"
    ),
    "unverified": "the reused surrogate alone (no mask was evaluated)",
}
"""The phase that first evaluated the removed set, in words."""


def _fmt(value: Any, spec: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return format(value, spec)


def _layers(layers: list[int]) -> str:
    return ", ".join(map(str, layers))


def _loss_name(game: dict[str, Any]) -> str:
    return "KL to the dense model" if game.get("objective") == "kl" else "NLL"


def _changed(result: Any) -> bool:
    """Healing-aware selection removed another set than the game chose: the game's sentences are about its own."""
    return bool((getattr(result, "heal_selection", None) or {}).get("changed"))


def _game_choice(result: Any) -> str:
    """How the game's sentences name the set the game chose."""
    if _changed(result):
        return f"The game's own choice ({_layers(result.heal_selection['game_choice'])})"
    return "The removed set"


def _chosen_text(game: dict[str, Any], num_removed: int, subject: str = "The removed set") -> str:
    found = FOUND_BY.get(game.get("chosen_by", ""), game.get("chosen_by", ""))
    if game.get("chosen_on") == "verification":
        top = [s for s in game.get("top_sets", []) if s.get("verifier_loss") is not None]
        return (
            f"{subject} came from {found}; it had the lowest loss on the {game.get('verification_blocks')} "
            f"verification blocks among the {len(top)} best verified sets re-scored there."
        )
    if game.get("chosen_on") == "calibration":
        return f"{subject} came from {found}; it had the lowest calibration loss of all verified sets."
    if game.get("chosen_by") == "lowest values":
        return f"The {num_removed} layers with the lowest values were removed, without verifying the set."
    return f"{subject} came from {found}; it was not evaluated on the model (unverified)."


def _healed_scores(selection: dict[str, Any]) -> str:
    where = "verification" if selection.get("scored_on") == "verification" else "calibration"
    return f"{selection.get('num_blocks')} {where} blocks"


def heal_selection_summary(result: Any) -> list[tuple[str, str]]:
    """The summary row of healing-aware selection (empty when it did not run)."""
    selection = getattr(result, "heal_selection", None) or {}
    if not selection:
        return []
    chosen = next(c for c in selection["candidates"] if c["removed"] == selection["chosen"])
    text = (
        f"{len(selection['candidates'])} verified sets healed and scored on {_healed_scores(selection)}: "
        f"{_layers(selection['chosen'])} best healed (loss {_fmt(chosen['healed_loss'])}, unhealed "
        f"{_fmt(chosen['loss'])})"
    )
    text += (
        f"; the game had chosen {_layers(selection['game_choice'])}" if selection["changed"] else "; the game's choice"
    )
    return [("heal-aware selection", text)]


def heal_selection_paragraph(result: Any) -> str:
    """The card's account of healing-aware selection, with every candidate's score (empty when it did not run)."""
    selection = getattr(result, "heal_selection", None) or {}
    if not selection:
        return ""
    loss = "KL to the dense model" if selection.get("objective") == "kl" else "NLL"
    outcome = (
        f"it removed {_layers(selection['chosen'])} instead of the game's choice {_layers(selection['game_choice'])}"
        if selection["changed"]
        else "the game's own choice stayed best healed"
    )
    lines = [f"| removed layers | {loss} | {loss} healed |", "|---|---:|---:|"]
    for item in selection["candidates"]:
        mark = " (removed)" if item["removed"] == selection["chosen"] else ""
        lines.append(f"| {_layers(item['removed'])}{mark} | {_fmt(item['loss'])} | {_fmt(item['healed_loss'])} |")
    return (
        f"Healing-aware selection: the game's {len(selection['candidates'])} best verified sets were each healed "
        f"(as the removed set is, on the same sample) and scored healed on {_healed_scores(selection)}; the best "
        f"healed set was removed, so {outcome}. Cost: {selection['healing_passes']} healing passes and "
        f"{selection['healed_evaluations']} healed evaluations ({selection['tokens']:,} tokens, "
        f"{selection['seconds']:.1f} s), included in the method's cost.\n\n" + "\n".join(lines)
    )


def game_summary_rows(result: Any) -> list[tuple[str, str]]:
    """(label, value) rows about the game for the CLI summary and the card's table; empty for peer criteria."""
    game = result.game or {}
    if not game:
        return []
    low, high = (game.get("coalition_sizes") or [None, None])[:2]
    own = "game's choice " if _changed(result) else ""
    rows = [
        (f"{own}chosen by", FOUND_BY.get(game.get("chosen_by", ""), game.get("chosen_by", ""))),
        (
            f"{own}chosen on",
            {"verification": "verification blocks", "calibration": "calibration blocks"}.get(
                game.get("chosen_on"), "surrogate (unverified)"
            ),
        ),
        (
            "values fitted on" if game.get("values_estimator") == "measured" else "values average over",
            f"{game.get('values_region')} (coalitions of {low}-{high} other layers)",
        ),
    ]
    lowest = game.get("lowest_value_set")
    if game.get("lowest_value_is_chosen"):
        rows.append(("k lowest values", "exactly the game's choice" if own else "exactly the removed set"))
    elif lowest:
        rows.append(("k lowest values", f"{_layers(lowest['removed'])}: loss {_fmt(lowest['loss'])} (not chosen)"))
    check = result.value_check or {}
    checked_at = "the game's choice" if own else "the chosen set"
    if check:
        rows.append(
            (
                "value check",
                f"Spearman {_fmt(check.get('spearman'), '.3f')} with real marginals at {checked_at} "
                f"({check.get('num_evaluations')} evaluations, {check.get('new_evaluations')} new)",
            )
        )
    if game.get("flagged_layers"):
        rows.append(("uncertain at the cut", _layers(game["flagged_layers"])))
    if game.get("spent"):
        spent = ", ".join(f"{phase} {count}" for phase, count in game["spent"].items())
        if game.get("verification_evaluations"):
            spent += f"; verification {game['verification_evaluations']} x {game['verification_blocks']} blocks"
        rows.append(("evaluations by phase", spent))
    if game.get("stopped"):
        rows.append(("search stopped", game["stopped"]))
    return rows


def game_paragraphs(result: Any) -> list[str]:
    """The card's account of a ``shapley`` run, in paragraphs (markdown)."""
    game = result.game or {}
    if not game:
        return []
    loss = _loss_name(game)
    low, high = (game.get("coalition_sizes") or [None, None])[:2]
    subject = _game_choice(result)
    paragraphs = [_chosen_text(game, result.num_removed, subject)]
    measured = game.get("values_estimator") == "measured"
    if measured:
        values = (
            f"Each layer's value is its coefficient in {game.get('values_region')}: coalitions of {low} to {high} "
            "other layers, measured on the real model (`measured` estimator). Error bars are the regression's "
            "standard errors, from its leave-one-out residuals."
        )
    else:
        values = (
            f"Each layer's value is its mean marginal contribution over {game.get('values_region')}: coalitions of "
            f"{low} to {high} other layers, where the surrogate was trained (`{game.get('values_estimator')}` "
            "estimator)."
        )
    if game.get("values_estimator") == "permutation":
        values += " This estimator averages over every coalition size, most of them outside the surrogate's data."
    ensemble = (result.surrogate_fit or {}).get("ensemble_size", 1)
    if ensemble and ensemble > 1 and not measured:
        values += (
            f" Error bars combine Monte Carlo error with the spread of {ensemble} surrogates trained on different "
            "splits."
        )
    if game.get("flagged_layers"):
        values += f" Layers whose interval overlaps the cut: {_layers(game['flagged_layers'])}."
    paragraphs.append(values)
    lowest = game.get("lowest_value_set")
    if game.get("lowest_value_is_chosen"):
        which = "the game's own choice" if _changed(result) else "the removed layers"
        paragraphs.append(f"The {result.num_removed} lowest values are exactly {which}.")
    elif lowest:
        paragraphs.append(
            f"The {result.num_removed} lowest values ({_layers(lowest['removed'])}) give a calibration {loss} of "
            f"{_fmt(lowest['loss'])}; they were not removed."
        )
    check = result.value_check or {}
    checked_at = "the game's own choice" if _changed(result) else "the chosen set"
    if check:
        paragraphs.append(
            f"Value check: at {checked_at}, each layer's real marginal (remove each kept layer, add back each "
            f"removed one: {check.get('num_evaluations')} evaluations, {check.get('new_evaluations')} of them new) "
            f"has a Spearman rank correlation of {_fmt(check.get('spearman'), '.3f')} with its value."
        )
    top = game.get("top_sets") or []
    if top:
        lines = [
            f"| removed layers | calibration {loss} | verification {loss} | found by |",
            "|---|---:|---:|---|",
        ]
        for item in top:
            lines.append(
                f"| {_layers(item['removed'])} | {_fmt(item['loss'])} | {_fmt(item.get('verifier_loss'))} | "
                f"{item['found_by']} |"
            )
        paragraphs.append("The best verified sets:\n\n" + "\n".join(lines))
    if game.get("spent"):
        spent = ", ".join(f"{phase}: {count}" for phase, count in game["spent"].items())
        text = f"Real evaluations by phase (budget {game.get('budget')}): {spent}"
        if game.get("verification_evaluations"):
            text += (
                f"; plus {game['verification_evaluations']} passes over the {game['verification_blocks']} "
                "verification blocks"
            )
        paragraphs.append(text + f". The search stopped: {game.get('stopped')}.")
    if heal_selection_paragraph(result):
        paragraphs.append(heal_selection_paragraph(result))
    return paragraphs
