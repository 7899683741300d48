"""``refseg reproduce``: the paper's benchmarks end to end (:mod:`refseg.pipelines.reproduce`)."""

from __future__ import annotations

import click

from ..model_spec import ModelSpec
from .options import (
    CONTEXT_SETTINGS,
    COUNT,
    PrintReporter,
    RefsegGroup,
    echo,
    model_options,
    output_option,
)


@click.group(cls=RefsegGroup, context_settings=CONTEXT_SETTINGS)
def reproduce() -> None:
    """Reproduce the paper's benchmarks end to end."""


@reproduce.command("coco-fsod", context_settings=CONTEXT_SETTINGS)
@click.option("--shots", type=COUNT, default=30, show_default=True, help="References per class, >= 1.")
@click.option("--seed", type=int, default=33, show_default=True, help="Sampling seed.")
@click.option(
    "--coco-root",
    type=click.Path(file_okay=False),
    required=True,
    help="COCO layout: annotations/instances_{train,val}2017.json and {train,val}2017/.",
)
@output_option("--out", "out_dir", folder=True, help="Run folder (default runs/coco-fsod-...).")
@click.option(
    "--limit", type=COUNT, help="Only the first N val images (a quick look, not comparable to the paper)."
)
@click.option(
    "--resume", is_flag=True, help="Reuse the run folder's refs and memory and continue predicting."
)
@model_options(predict=True, references=True)
def reproduce_coco_fsod(
    shots: int,
    seed: int,
    coco_root: str,
    out_dir: str | None,
    limit: int | None,
    resume: bool,
    models: ModelSpec,
) -> None:
    """COCO-FSOD (20 novel classes): sample -> memory -> predict val2017 -> eval, beside the paper.

    Writes refs.json, memory.safetensors, results.json and summary.json into the run folder.
    Runs under torchrun too (sampling and memory on rank 0, prediction on every rank).

    \b
    Example:
      refseg reproduce coco-fsod --shots 30 --seed 33 --coco-root /data/coco --limit 100
    """
    from ..evaluate import format_table
    from ..pipelines.reproduce import reproduce_coco_fsod as run

    result = run(
        models,
        coco_root,
        shots=shots,
        seed=seed,
        out_dir=out_dir,
        limit=limit,
        resume=resume,
        reporter=PrintReporter(),
    )
    if result is None:  # another process of a torchrun group: rank 0 reports
        return
    echo(format_table(result.scores, per_class=False))
    echo()
    echo(result.comparison)
    echo(str(result.summary_path))
