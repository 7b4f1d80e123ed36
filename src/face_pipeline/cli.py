"""``kedro run`` as Kedro ships it, except that a bad input ends in one clear line, not a traceback."""

from pathlib import Path

import click
from kedro.framework.cli.project import run as kedro_run
from kedro.io import DatasetError

from face_pipeline.comparison import REPORT
from face_pipeline.comparison import compare_architectures as run_comparison
from face_pipeline.errors import FacePipelineError


class _RunWithClearErrors(click.Command):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (FacePipelineError, DatasetError) as error:
            raise click.ClickException(" ".join(str(error).split())) from None


@click.group(name="face_pipeline")
def cli() -> None:
    """Project commands."""


cli.add_command(
    _RunWithClearErrors(
        name="run",
        params=kedro_run.params,
        callback=kedro_run.callback,
        help=kedro_run.help,
        short_help=kedro_run.short_help,
        context_settings=kedro_run.context_settings,
    )
)


def _run_option(name: str) -> click.Parameter:
    """One of ``kedro run``'s options, so that ``--env`` and ``--params`` mean the same here."""
    return next(option for option in kedro_run.params if option.name == name)


@cli.command(
    name="compare-architectures",
    cls=_RunWithClearErrors,
    params=[_run_option("env"), _run_option("params")],
)
def compare_architectures(env: str | None, params: dict) -> None:
    """Run training, aggregation and evaluation per architecture; one table in data/08_reporting."""
    comparison = run_comparison(Path.cwd(), env, params or {})
    click.echo((Path.cwd() / REPORT).with_suffix(".md").read_text())
    click.echo(f"Claim: {comparison['claim']}")
