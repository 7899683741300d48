"""The ``refseg`` command line: one verb per step (sample, memory, predict, eval, reproduce...).

The verbs only parse options and print messages: the work is done by library calls
(:mod:`refseg.pipelines`, :mod:`refseg.references`, :mod:`refseg.memory_pictures`,
:mod:`refseg.evaluate`...), and models come from one :class:`~refseg.model_spec.ModelSpec`.
Any :class:`~refseg.errors.RefsegError` is printed as ``Error: <message>`` on stderr with exit
code 1, never as a traceback.
"""

from __future__ import annotations

import logging

import click

from .. import __version__
from .app import app_command
from .data import boxes_to_masks_command, sample, voc2coco
from .memory import memory
from .options import CONTEXT_SETTINGS, RefsegGroup
from .predict import eval_command, predict
from .reproduce import reproduce


@click.group(cls=RefsegGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="refseg")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Training-free reference-based instance segmentation.

    Show a few annotated examples of each class (the references); refseg finds, segments and
    labels every instance of those classes in new images (SAM2 proposals + DINOv2 matching).

    \b
    Typical run:
      refseg sample train.json --classes cat,dog --shots 5 -o refs.json
      refseg memory --refs refs.json --images train/ -o memory.safetensors
      refseg predict --memory memory.safetensors photos/ -o results.json
      refseg eval --gt val.json --results results.json
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")  # no-op if the host set logging up
    logging.getLogger("refseg").setLevel(level)
    if verbose == 0:  # the hub's retry chatter would bury our one-sentence errors
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()
        logging.getLogger("transformers").setLevel(logging.ERROR)


main = cli

for command in (
    sample,
    memory,
    predict,
    eval_command,
    reproduce,
    boxes_to_masks_command,
    voc2coco,
    app_command,
):
    cli.add_command(command)

__all__ = ["cli", "main"]
