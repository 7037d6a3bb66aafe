"""Registers ``optimum-cli shapley prune``, ``recover`` and ``evaluate`` (optimum-cli imports every file here at start-up:
keep imports light)."""

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo


class _ShapleyLeafCommand(BaseOptimumCLICommand):
    """One ``optimum-shapley`` sub-command, run with its exit code.

    optimum-cli's ``main`` calls ``run()`` and drops what it returns (its own process then exits 0), so a non-zero code
    is raised as ``SystemExit``: bad input exits 2 (130 on Ctrl-C), exactly as ``optimum-shapley`` does."""

    RUNNER = ""  # key of optimum_shapley.cli.RUNNERS

    def run(self):
        from optimum_shapley.cli import RUNNERS, run_with_errors_reported

        code = run_with_errors_reported(self.args, RUNNERS[self.RUNNER])
        if code:
            raise SystemExit(code)
        return code


class _ShapleyPruneCommand(_ShapleyLeafCommand):
    def run(self):
        import sys

        from optimum_shapley.cli import main
        from optimum_shapley.cli_arguments import is_config_file

        if is_config_file(getattr(self.args, "model_or_file", None)):
            # `optimum-cli shapley prune run.yaml ...`: the file sets the defaults before parsing, as in
            # `optimum-shapley prune run.yaml ...`, so the same tokens go through that one path
            tokens = sys.argv[sys.argv.index("prune") + 1 :]
            code = main(["prune", *tokens])
            if code:
                raise SystemExit(code)
            return code
        return super().run()


class ShapleyPruneCommand(_ShapleyPruneCommand):
    COMMAND = CommandInfo(name="prune", help="Remove the decoder layers with the lowest Shapley contribution.")
    RUNNER = "prune"

    @staticmethod
    def parse_args(parser):
        from optimum_shapley.cli_arguments import add_prune_arguments

        add_prune_arguments(parser)


class ShapleyRecoverCommand(_ShapleyLeafCommand):
    COMMAND = CommandInfo(name="recover", help="Heal a (pruned) model with a short LoRA fine-tune.")
    RUNNER = "recover"

    @staticmethod
    def parse_args(parser):
        from optimum_shapley.cli_arguments import add_recover_arguments

        add_recover_arguments(parser)


class ShapleyEvaluateCommand(_ShapleyLeafCommand):
    COMMAND = CommandInfo(name="evaluate", help="Held-out perplexity and zero-shot accuracy of a model.")
    RUNNER = "evaluate"

    @staticmethod
    def parse_args(parser):
        from optimum_shapley.cli_arguments import add_evaluate_arguments

        add_evaluate_arguments(parser)


class ShapleyCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(name="shapley", help="Layer pruning with surrogate-assisted Shapley values.")
    SUBCOMMANDS = (
        CommandInfo(name="prune", help=ShapleyPruneCommand.COMMAND.help, subcommand_class=ShapleyPruneCommand),
        CommandInfo(name="recover", help=ShapleyRecoverCommand.COMMAND.help, subcommand_class=ShapleyRecoverCommand),
        CommandInfo(name="evaluate", help=ShapleyEvaluateCommand.COMMAND.help, subcommand_class=ShapleyEvaluateCommand),
    )

    def __init__(self, subparsers=None, args=None, command=None, from_defaults_factory=False, parser=None):
        registered = None if from_defaults_factory else getattr(subparsers, "choices", {}).get(self.COMMAND.name)
        if registered is not None:
            # optimum-cli found this file twice on the namespace path (an installed wheel plus a source checkout on
            # PYTHONPATH) and registers its commands once per copy: the first registration serves, instead of an
            # argparse "conflicting subparser: shapley" traceback.
            self.parser, self._subparsers, self.args = registered, None, args
            return
        super().__init__(subparsers, args, command=command, from_defaults_factory=from_defaults_factory, parser=parser)

    @property
    def subparsers(self):
        # the sub-commands' parsers come from optimum_shapley's own factory: `prune` is the public HfArgumentParser
        # over its dataclasses, exactly the parser of `optimum-shapley prune`
        if getattr(self, "_subparsers", None) is None:
            from optimum_shapley.cli_arguments import command_parser

            self._subparsers = self.parser.add_subparsers(parser_class=command_parser)
        return self._subparsers

    @subparsers.setter
    def subparsers(self, subparsers):
        self._subparsers = subparsers

    def run(self):
        # `optimum-cli shapley` without a sub-command: the help, and a usage-error exit like `optimum-shapley`'s
        self.parser.print_help()
        raise SystemExit(2)


REGISTER_COMMANDS = [ShapleyCommand]
