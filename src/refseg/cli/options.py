"""What every verb shares: error handling, printing, and the model options declared once."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import click

from ..errors import RefsegError
from ..files import check_writable, check_writable_folder
from ..model_spec import ModelSpec
from ..pipelines.reporter import Reporter
from ..presets import PRESETS, SETTING_CHOICES, SETTING_RANGES, SettingRange

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class RefsegGroup(click.Group):
    """A click group that turns :class:`RefsegError` into a clean ``Error: ...`` and exit code 1.

    A bad option value (out of range, not a number, a missing required option) exits 1 as
    well: it is bad input like any other. Only a malformed command line (an unknown option)
    keeps click's exit code 2.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RefsegError as error:
            raise click.ClickException(printable(str(error))) from None
        except click.BadParameter as error:
            error.exit_code = 1
            raise


class Bounded(click.ParamType):
    """An integer or finite number within bounds (:class:`refseg.presets.SettingRange`).

    click's ``FloatRange`` lets NaN through (every comparison with NaN is false); this type
    refuses NaN and infinities, and says what it wants: ``0 is not an integer >= 1``.
    """

    def __init__(self, kind: type, minimum: float | None = None, maximum: float | None = None) -> None:
        self.allowed = SettingRange(kind, minimum, maximum)
        self.name = "integer" if kind is int else "number"

    @classmethod
    def of(cls, allowed: SettingRange) -> Bounded:
        return cls(allowed.kind, allowed.minimum, allowed.maximum)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str):
            try:
                value = self.allowed.kind(value.strip())
            except ValueError:
                self.fail(f"{value!r} is not {self.allowed.describe()}.", param, ctx)
        if not self.allowed.accepts(value):
            self.fail(f"{value!r} is not {self.allowed.describe()}.", param, ctx)
        return value

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "INTEGER" if self.allowed.kind is int else "NUMBER"


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
    """``text`` without lone surrogates (a file or class name that was not valid UTF-8 comes
    through ``os.fsdecode`` with them), shown as ``\\udcff``: printing never crashes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def echo(message: str = "", *, err: bool = False) -> None:
    """``click.echo``, and the message with escapes where the terminal cannot show it."""
    try:
        click.echo(message, err=err)
    except UnicodeEncodeError:
        encoding = getattr(sys.stderr if err else sys.stdout, "encoding", None) or "utf-8"
        click.echo(printable(message).encode(encoding, "backslashreplace").decode(encoding), err=err)


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


# ----------------------------------------------------------------------------- outputs


def output_option(
    *decls: str,
    help: str,
    example: str = "results.json",
    folder: bool = False,
    required: bool = False,
    path_type: type | None = None,
) -> Callable:
    """An output option (``-o FILE``, ``--vis FOLDER``...) checked as soon as it is parsed, so a
    path that cannot be written stops the verb before any model is loaded or any work is done
    (:func:`refseg.files.check_writable`): ``Error: out is a folder; give a file name such as
    out/results.json``, exit code 1.

    Args:
        decls: the option's names (``"-o", "--output"``) and parameter name.
        example: the file name suggested when a folder is given for a file.
        folder: the output is a folder (files are written into it).
    """

    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return value
        try:
            if folder:
                check_writable_folder(value)
            else:
                check_writable(value, example=example)
        except RefsegError as error:
            raise click.ClickException(printable(str(error))) from None
        return value

    return click.option(
        *decls,
        type=click.Path(path_type=path_type),
        metavar="FOLDER" if folder else "FILE",
        required=required,
        callback=check,
        help=help,
    )


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

# Setting overrides: option name -> (Preset field, help); their types come from SETTING_RANGES.
REFERENCE_SETTINGS = {
    "--context-ratio": ("context_ratio", "Reference crop margin, 0 to 10 (paper: 0.2)."),
}
# Convention overrides: option name -> (Preset field, help); their choices come from SETTING_CHOICES.
REFERENCE_CHOICES = {
    "--reference-crop": (
        "reference_crop",
        "Reference crop convention (paper: research; fast: refseg); a memory holds one. See docs/fidelity.md.",
    ),
}
PREDICT_SETTINGS = {
    "--points-per-side": ("points_per_side", "Proposal grid side, 1 to 1024 (paper: 32)."),
    "--batch-size": ("points_batch_size", "Prompts per decoder call, >= 1 (speed only)."),
    "--iou-thr": ("iou_threshold", "SAM2 predicted-IoU filter, in [0, 1] (paper: 0.4)."),
    "--nms-thr": ("nms_threshold", "Class-wise NMS IoU, in [0, 1] (paper: 0.5)."),
    "--max-instances": ("max_instances", "Instances kept per image, >= 1 (paper: 100)."),
}

#: Types of the options that are not settings (declared here once, used by every verb).
COUNT = Bounded(int, 1)  # --shots, --limit, --max-per-class
SCORE = Bounded(float, 0, 1)  # --score-thr
PORT = Bounded(int, 0, 65535)
TILE = Bounded(int, 16, 1024)  # --tile-size
MODEL_CHOICES = ("preset", "sam2", "encoder", "device", "dtype")


def quiet_model_loading() -> None:
    """No 'Loading weights' bar from transformers for every model a verb loads (the hub's
    download bars stay). The command's choice, made here at the edge: the library sets nothing."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


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
        click.option(flag, field, type=Bounded.of(SETTING_RANGES[field]), help=text)
        for flag, (field, text) in settings.items()
    ]
    choices = REFERENCE_CHOICES if references else {}
    options += [
        click.option(flag, field, type=click.Choice(SETTING_CHOICES[field]), help=text)
        for flag, (field, text) in choices.items()
    ]
    fields = [field for field, _ in settings.values()] + [field for field, _ in choices.values()]

    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            quiet_model_loading()
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
