"""Named settings (docs/method.md section 7). ``paper`` is exactly the method of
docs/method.md, with the research code's resampling, crop, grid and box conventions
(docs/fidelity.md); every other preset is a documented departure from it: ``paper-neg`` adds
negative references to the paper's method, ``fast`` uses small models, a coarser grid,
negative references and refseg's own conventions."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass


@dataclass(frozen=True)
class SettingRange:
    """The values a numeric setting accepts: an integer or a finite number, within bounds.

    One table (:data:`SETTING_RANGES`) serves :class:`Preset` (Python) and the command line's
    option types, so ``points_per_side=0`` and ``--points-per-side 0`` are refused alike.
    """

    kind: type  # int or float
    minimum: float | None = None
    maximum: float | None = None

    def describe(self) -> str:
        """``an integer >= 1``, ``a number in [0, 1]``..."""
        what = "an integer" if self.kind is int else "a finite number"
        if self.minimum is not None and self.maximum is not None:
            return f"{what} in [{self.minimum:g}, {self.maximum:g}]"
        if self.minimum is not None:
            return f"{what} >= {self.minimum:g}"
        if self.maximum is not None:
            return f"{what} <= {self.maximum:g}"
        return what

    def accepts(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if self.kind is int and not isinstance(value, numbers.Integral):
            return False
        if not math.isfinite(float(value)):  # NaN passes every comparison: refuse it first
            return False
        return (self.minimum is None or value >= self.minimum) and (
            self.maximum is None or value <= self.maximum
        )


#: What each numeric :class:`Preset` field accepts.
SETTING_RANGES: dict[str, SettingRange] = {
    "sam2_image_size": SettingRange(int, 1, 4096),
    "encoder_input_size": SettingRange(int, 1, 4096),
    "points_per_side": SettingRange(int, 1, 1024),  # a point per input pixel at most
    "points_batch_size": SettingRange(int, 1),
    "iou_threshold": SettingRange(float, 0, 1),
    "nms_threshold": SettingRange(float, 0, 1),
    "max_candidates": SettingRange(int, 1),
    "merge_exponent": SettingRange(float, 0),
    "max_instances": SettingRange(int, 1),
    "context_ratio": SettingRange(float, 0, 10),  # the crop is clipped to the image long before
}

#: What each named-convention :class:`Preset` field accepts (docs/fidelity.md says where each
#: value comes from: the first is the research code's, as ``paper`` uses it).
SETTING_CHOICES: dict[str, tuple[str, ...]] = {
    "proposer_resize": ("pil", "torch"),
    "reference_crop": ("research", "refseg"),
    "grid_order": ("x-slowest", "x-fastest"),
    "box_convention": ("inclusive", "exclusive"),
}


@dataclass(frozen=True)
class Preset:
    """All settings of a run.

    The last six settings are conventions (docs/fidelity.md): their defaults (``paper``) are
    what the research code computes; :data:`REFSEG_CONVENTIONS` (``fast``) are refseg's own
    choices, the better-posed resampling.

    Attributes:
        name: preset name.
        sam2_id: Hugging Face id or local directory of the SAM2 proposer.
        encoder_id: Hugging Face id or local directory of the DINOv2 encoder.
        sam2_image_size: side of the square SAM2 input (1024).
        encoder_input_size: side of the square DINOv2 input (518 -> 37x37 patches).
        points_per_side: the proposal grid is ``points_per_side`` x ``points_per_side`` points.
        points_batch_size: prompts decoded per mask-decoder call. Compute only: results do not
            depend on it (the paper used 256; smaller batches are faster and lighter on CPU).
        iou_threshold: proposals with SAM2 predicted IoU <= this are dropped.
        nms_threshold: class-wise box-NMS IoU threshold (ranked by predicted IoU).
        max_candidates: survivors kept after NMS, in NMS order (8 x max_instances in the paper).
        merge_exponent: soft-merge score = score * (1 - d) ** merge_exponent.
        max_instances: instances returned per image.
        context_ratio: reference crop side = (1 + context_ratio) * max(box width, box height).
        dtype: "float32" (paper) or "bfloat16" (opt-in speed).
        negatives: use the memory's negative references when scoring (a departure from the
            paper, which has none): a proposal whose nearest example of a class is a "not this
            class" one (or a background one) is not that class
            (:func:`refseg.matching.nearest_example_vetoes`). No effect on a memory without
            negatives; ``paper`` has it off, so its output never depends on them.
        proposer_resize: the square SAM2 input. ``"pil"`` (paper): Pillow's bicubic resize of
            the uint8 image, rounded to uint8, then / 255, as the research code's loader;
            ``"torch"``: bilinear with antialiasing on floats, as SAM2's own predictor (no
            rounding, any bit depth). Targets only: a reference marked with prompts is always
            given SAM2's predictor input (the research code prompts none).
        encoder_antialias: the target's DINOv2 input (the SAM2 square resized bicubically to
            ``encoder_input_size``) antialiased and clamped to [0, 1]. Off in paper (plain
            bicubic, as the research code); a 1024 -> 518 shrink without antialiasing aliases,
            so on is the better-posed resampling.
        reference_crop: ``"research"`` (paper): the crop is centred on the reference's
            annotated box when one is given (``add_reference(mask=..., box=...)``; each edge
            through ``int()``), else on the mask's tight box; crop edges through ``int()``; no
            clamp after the bicubic resize. ``"refseg"``: centred on the mask's tight box,
            edges floored / ceiled so the box lies inside, clamped (every refseg up to 0.2).
            A memory bank records its references' convention and refuses a mix.
        no_memory_embedding: add SAM2's no-memory embedding to the target's image embedding
            before decoding the grid, as SAM2's image predictor does. Off in paper: the
            research code decodes its grid against the backbone features as they are.
            (Prompted references always use SAM2's predictor embedding.)
        grid_order: the order of the prompt grid: ``"x-slowest"`` (paper, the research
            code's ``meshgrid``) or ``"x-fastest"``. Same points; only ties in NMS and in the
            final ranking depend on it.
        box_convention: boxes in COCO results: ``"inclusive"`` (paper: x2, y2 the last mask
            column / row, width x2 - x1, as the research code wrote the boxes the paper's
            bbox AP was computed on) or ``"exclusive"`` (a one-pixel mask is 1 wide, as
            pycocotools' ``toBbox``). :class:`~refseg.instances.Instances` always hold
            exclusive boxes.
    """

    name: str = "paper"
    sam2_id: str = "facebook/sam2-hiera-large"
    encoder_id: str = "facebook/dinov2-large"
    sam2_image_size: int = 1024
    encoder_input_size: int = 518
    points_per_side: int = 32
    points_batch_size: int = 64
    iou_threshold: float = 0.4
    nms_threshold: float = 0.5
    max_candidates: int = 800
    merge_exponent: float = 0.5
    max_instances: int = 100
    context_ratio: float = 0.2
    dtype: str = "float32"
    negatives: bool = False
    proposer_resize: str = "pil"
    encoder_antialias: bool = False
    reference_crop: str = "research"
    no_memory_embedding: bool = False
    grid_order: str = "x-slowest"
    box_convention: str = "inclusive"

    def __post_init__(self) -> None:
        from .errors import InvalidInputError

        for name, allowed in SETTING_RANGES.items():
            value = getattr(self, name)
            if not allowed.accepts(value):
                raise InvalidInputError(f"The setting {name} must be {allowed.describe()}, got {value!r}.")
        for name, choices in SETTING_CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise InvalidInputError(
                    f"The setting {name} must be one of {', '.join(map(repr, choices))}, got {value!r}."
                )
        for name in ("encoder_antialias", "no_memory_embedding"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidInputError(
                    f"The setting {name} must be True or False, got {getattr(self, name)!r}."
                )

    def replace(self, **changes: object) -> Preset:
        """A copy with some settings changed (``None`` values are ignored)."""
        from .errors import InvalidInputError

        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise InvalidInputError(f"Unknown setting(s) {unknown}; known settings: {sorted(known)}.")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


PAPER = Preset()

#: The paper's models and settings, plus the memory's negative references (``negatives``).
PAPER_NEG = dataclasses.replace(PAPER, name="paper-neg", negatives=True)

#: refseg's own conventions (what every preset used up to 0.2): see :class:`Preset`.
REFSEG_CONVENTIONS: dict[str, object] = {
    "proposer_resize": "torch",
    "encoder_antialias": True,
    "reference_crop": "refseg",
    "no_memory_embedding": True,
    "grid_order": "x-fastest",
    "box_convention": "exclusive",
}

FAST = Preset(
    name="fast",
    sam2_id="facebook/sam2.1-hiera-tiny",
    encoder_id="facebook/dinov2-small",
    points_per_side=16,
    negatives=True,
    **REFSEG_CONVENTIONS,  # type: ignore[arg-type]
)

PRESETS: dict[str, Preset] = {"paper": PAPER, "paper-neg": PAPER_NEG, "fast": FAST}


def get_preset(name: str | Preset) -> Preset:
    """Look a preset up by name (or pass a :class:`Preset` through)."""
    from .errors import InvalidInputError

    if isinstance(name, Preset):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise InvalidInputError(f"Unknown preset {name!r}; choose one of: {', '.join(PRESETS)}.") from None
