"""``refseg app``: the web app (``pip install "refseg[app]"``)."""

from __future__ import annotations

from pathlib import Path

import click

from ..memory import MemoryBank
from ..model_spec import ModelSpec
from .options import PORT, echo, model_options, refseg_errors


@click.command("app")
@model_options(
    default_preset="fast",
    help_texts={
        "preset": "Model settings; 'fast' (SAM2.1 tiny, DINOv2-S, 16x16 points) keeps the page responsive on a CPU."
    },
)
@click.option(
    "--memory",
    "memory_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A memory file every new browser session starts from.",
)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: the network)."
)
@click.option("--port", default=7860, show_default=True, type=PORT, help="TCP port (0: any free one).")
@refseg_errors
def app_command(models: ModelSpec, memory_path: Path | None, host: str, port: int) -> None:
    """Start the web app: add references in the browser, segment targets, download results."""
    from ..app import launch

    memory = MemoryBank.load(memory_path) if memory_path is not None else None
    echo(f"Loading the {models.preset} models...", err=True)
    segmenter = models.load_segmenter()
    if memory is not None:
        memory.check_encoder(segmenter.encoder.identity)
    echo(f"refseg app on http://{host}:{port} (Ctrl+C to stop)", err=True)
    launch(segmenter, host=host, port=port, memory=memory, block=True, quiet=True)
