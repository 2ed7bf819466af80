"""The `facesort` command: a small click group; each command lives in sorter/commands/."""
import logging
import warnings

import click

# torch and fastai announce deprecations of their own internals on import: noise for a user of this tool
warnings.filterwarnings("ignore", category=FutureWarning)
# fastai imports matplotlib, which facesort never draws with; its "building the font cache" notice (after 5 s, on a
# first run or a busy machine) would land unstamped in a cron log
logging.getLogger("matplotlib").setLevel(logging.ERROR)

from .commands import EXIT_CODES
from .commands.clean import clean
from .commands.evaluate import evaluate
from .commands.predict import predict
from .commands.review import review
from .commands.run import run
from .commands.serve import serve
from .commands.train import train


@click.group(epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="facesort")
def main():
    """Sort photos into male/, female/ and neither/ with a fastai multi-label model."""


main.add_command(train)
main.add_command(run)
main.add_command(predict)
main.add_command(evaluate)
main.add_command(review)
main.add_command(clean)
main.add_command(serve)
