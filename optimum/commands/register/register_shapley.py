"""Registers ``optimum-cli shapley prune`` (optimum-cli imports every file here at start-up: keep imports light)."""

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


class ShapleyCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(name="shapley", help="Layer pruning with surrogate-assisted Shapley values.")
    SUBCOMMANDS = (
        CommandInfo(name="prune", help=ShapleyPruneCommand.COMMAND.help, subcommand_class=ShapleyPruneCommand),
    )


REGISTER_COMMANDS = [ShapleyCommand]
