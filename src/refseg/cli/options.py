"""What every verb shares: error handling, printing, and the model options declared once."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import click

from ..errors import RefsegError
from ..model_spec import ModelSpec
from ..pipelines.reporter import Reporter
from ..presets import PRESETS

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class RefsegGroup(click.Group):
    """A click group that turns :class:`RefsegError` into a clean ``Error: ...`` and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RefsegError as error:
            raise click.ClickException(printable(str(error))) from None


class DefaultCommandGroup(RefsegGroup):
    """A group that runs ``default_command`` when the first argument is not a sub-command.

    ``refseg memory --refs r.json ...`` is ``refseg memory build --refs r.json ...``.
    """

    default_command = "build"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


def refseg_errors(function: Callable) -> Callable:
    """Turn a :class:`RefsegError` into ``Error: ...`` and exit code 1 (for verbs used on their own)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except RefsegError as error:
            raise click.ClickException(printable(str(error))) from error

    return wrapper


def printable(text: str) -> str:
    """``text`` with lone surrogates (the undecodable bytes of a file name, as Python reads
    them) written as ``\\udcxx`` escapes, so printing it never fails, whatever the terminal."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def echo(message: str = "", *, err: bool = False) -> None:
    click.echo(printable(message), err=err)


class PrintReporter(Reporter):
    """Prints a pipeline's steps on stdout and its warnings on stderr."""

    def step(self, message: str) -> None:
        echo(message)

    def warn(self, message: str) -> None:
        echo(message, err=True)

    def predicted(self, summary: Any) -> None:
        print_predict_summary(summary)


def print_predict_summary(summary: Any) -> None:
    """What ``refseg predict`` says when it is done (a :class:`~refseg.runner.PredictSummary`)."""
    done = summary.total - summary.errors
    rate = summary.processed / summary.seconds if summary.seconds > 0 else 0.0
    resumed = f"; {summary.resumed} done by an earlier run" if summary.resumed else ""
    echo(
        f"{summary.instances} instances on {done} images; this process segmented {summary.processed} "
        f"({rate:.2f} img/s){resumed}"
    )
    echo(f"image ids: {summary.images_path}")
    if summary.errors:
        echo(
            f"{summary.errors} image(s) could not be read and were skipped: see {summary.errors_path}",
            err=True,
        )
    echo(str(summary.out_path))


# ----------------------------------------------------------------------------- model options

MODEL_HELP: dict[str, str] = {
    "preset": "Named settings: 'paper' is the paper's method (SAM2 Hiera-L, DINOv2-L, 32x32 points); "
    "'paper-neg' is paper plus the memory's negative examples; 'fast' uses SAM2.1 tiny, DINOv2-S, "
    "16x16 points and negative examples.",
    "sam2": "SAM2 hub id or local directory (overrides the preset).",
    "encoder": "DINOv2 hub id or local directory (overrides the preset).",
    "device": "cpu, cuda, cuda:1... (default: CUDA when available).",
    "dtype": "Compute dtype (default: the preset's).",
}

# Setting overrides: option name -> (Preset field, type, help).
REFERENCE_SETTINGS = {
    "--context-ratio": ("context_ratio", float, "Reference crop margin (paper: 0.2)."),
}
PREDICT_SETTINGS = {
    "--points-per-side": ("points_per_side", int, "Proposal grid side (paper: 32)."),
    "--batch-size": ("points_batch_size", int, "Prompts per decoder call (speed only)."),
    "--iou-thr": ("iou_threshold", float, "SAM2 predicted-IoU filter (paper: 0.4)."),
    "--nms-thr": ("nms_threshold", float, "Class-wise NMS IoU (paper: 0.5)."),
    "--max-instances": ("max_instances", int, "Instances kept per image (paper: 100)."),
}
MODEL_CHOICES = ("preset", "sam2", "encoder", "device", "dtype")


def model_options(
    *,
    choices: Sequence[str] = MODEL_CHOICES,
    predict: bool = False,
    references: bool = False,
    default_preset: str = "paper",
    help_texts: Mapping[str, str] | None = None,
) -> Callable:
    """Add the model options and hand the verb one :class:`~refseg.model_spec.ModelSpec` as ``models``.

    Args:
        choices: which of --preset/--sam2/--encoder/--device/--dtype the verb offers (a verb
            without --preset runs ``default_preset``).
        predict: add the prediction settings (--points-per-side, --batch-size, ...).
        references: add the reference settings (--context-ratio).
        default_preset: the preset when --preset is not given.
        help_texts: help texts that differ from :data:`MODEL_HELP` for this verb.
    """
    texts = {**MODEL_HELP, **(help_texts or {})}
    declared = {
        "preset": click.option(
            "--preset",
            type=click.Choice(list(PRESETS)),
            default=default_preset,
            show_default=True,
            help=texts["preset"],
        ),
        "sam2": click.option("--sam2", metavar="ID_OR_DIR", help=texts["sam2"]),
        "encoder": click.option("--encoder", metavar="ID_OR_DIR", help=texts["encoder"]),
        "device": click.option("--device", help=texts["device"]),
        "dtype": click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), help=texts["dtype"]),
    }
    options = [declared[name] for name in choices]
    settings = {**(REFERENCE_SETTINGS if references else {}), **(PREDICT_SETTINGS if predict else {})}
    options += [
        click.option(flag, field, type=kind, help=text) for flag, (field, kind, text) in settings.items()
    ]
    fields = [field for field, _, _ in settings.values()]

    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            overrides = {name: kwargs.pop(name) for name in fields}
            kwargs["models"] = ModelSpec(
                preset=kwargs.pop("preset", default_preset),
                sam2=kwargs.pop("sam2", None),
                encoder=kwargs.pop("encoder", None),
                device=kwargs.pop("device", None),
                dtype=kwargs.pop("dtype", None),
                overrides={k: v for k, v in overrides.items() if v is not None},
                trim_between_stages=True,  # a command owns its process: keep peak memory low
            )
            return function(*args, **kwargs)

        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate
