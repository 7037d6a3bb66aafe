"""Prune a Hub model with WikiText-2 calibration text, then push model and surrogate to the Hub.

Needs network access and `huggingface-cli login`:

    python examples/prune_hub_wikitext.py --model HuggingFaceTB/SmolLM2-360M --pruning_ratio 0.25 \
        --push_to_hub my-user/SmolLM2-360M-pruned
"""

from dataclasses import dataclass, field

from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser, TrainingArguments

from optimum_shapley import ShapleyLayerPruner, ShapleyPruningConfig


@dataclass
class ScriptArguments:
    model: str = field(metadata={"help": "Hub id or local folder of a causal LM."})
    output: str = field(default="pruned-model", metadata={"help": "Where to save the pruned model."})
    push_to_hub: str | None = field(default=None, metadata={"help": "Hub repo to push the pruned model to."})


def main() -> None:
    # every ShapleyPruningConfig field is an option: --pruning_ratio, --num_masks, --estimator, ...
    script, config = HfArgumentParser((ScriptArguments, ShapleyPruningConfig)).parse_args_into_dataclasses()
    if config.dataset_name is None:  # WikiText-2 (train split) instead of the embedded default text
        config.dataset_name, config.dataset_config_name = "wikitext", "wikitext-2-raw-v1"

    model = AutoModelForCausalLM.from_pretrained(script.model, dtype="auto")
    tokenizer = AutoTokenizer.from_pretrained(script.model)
    pruner = ShapleyLayerPruner(
        model=model,
        args=TrainingArguments(output_dir=f"{script.output}-cache", report_to="none"),
        pruning_config=config,
        processing_class=tokenizer,
    )
    result = pruner.prune()
    print(f"removed layers {result.removed_layers}; surrogate held-out R^2 {result.surrogate_fit['validation_r2']:.3f}")
    pruner.save_pretrained(script.output)
    if script.push_to_hub:
        print(pruner.push_to_hub(repo_id=script.push_to_hub))


if __name__ == "__main__":
    main()
