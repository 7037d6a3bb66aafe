"""Registers ``optimum-cli shapley prune``, ``recover`` and ``evaluate`` (optimum-cli imports every file here at start-up:
keep imports light)."""

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo


class ShapleyPruneCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(name="prune", help="Remove the decoder layers with the lowest Shapley contribution.")

    @staticmethod
    def parse_args(parser):
        from optimum_shapley.cli import add_prune_arguments

        add_prune_arguments(parser)

    def run(self):
        from optimum_shapley.cli import run_with_errors_reported

        return run_with_errors_reported(self.args)


class ShapleyRecoverCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(name="recover", help="Heal a (pruned) model with a short LoRA fine-tune.")

    @staticmethod
    def parse_args(parser):
        from optimum_shapley.cli import add_recover_arguments

        add_recover_arguments(parser)

    def run(self):
        from optimum_shapley.cli import run_recover, run_with_errors_reported

        return run_with_errors_reported(self.args, run_recover)


class ShapleyEvaluateCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(name="evaluate", help="Held-out perplexity and zero-shot accuracy of a model.")

    @staticmethod
    def parse_args(parser):
        from optimum_shapley.cli import add_evaluate_arguments

        add_evaluate_arguments(parser)

    def run(self):
        from optimum_shapley.cli import run_evaluate, run_with_errors_reported

        return run_with_errors_reported(self.args, run_evaluate)


class ShapleyCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(name="shapley", help="Layer pruning with surrogate-assisted Shapley values.")
    SUBCOMMANDS = (
        CommandInfo(name="prune", help=ShapleyPruneCommand.COMMAND.help, subcommand_class=ShapleyPruneCommand),
        CommandInfo(name="recover", help=ShapleyRecoverCommand.COMMAND.help, subcommand_class=ShapleyRecoverCommand),
        CommandInfo(
            name="evaluate", help=ShapleyEvaluateCommand.COMMAND.help, subcommand_class=ShapleyEvaluateCommand
        ),
    )


REGISTER_COMMANDS = [ShapleyCommand]
