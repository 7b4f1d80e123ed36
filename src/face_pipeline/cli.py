"""``kedro run`` as Kedro ships it, except that a bad input ends in one clear line, not a traceback."""

import click
from kedro.framework.cli.project import run as kedro_run
from kedro.io import DatasetError

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
