"""One benchmark configuration: load the models, predict, time each stage, measure memory.

:func:`run_configuration` is what a worker subprocess runs (one per configuration, so each
peak RSS is its own); tests call it in-process on tiny models.
"""

from __future__ import annotations

import functools
import logging
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
from bench_compare import Outputs

logger = logging.getLogger(__name__)

STAGES = ("embed", "decode", "encode", "match")


@dataclass(frozen=True)
class CodePath:
    """How a configuration runs the pipeline.

    Attributes:
        name: "optimised" or "straightforward".
        decoder: SAM2 point decoder, "fast" (refseg's) or "stock" (``Sam2Model.forward``).
        encoder: SAM2 image encoder forward, "lean" (refseg's, less memory) or "stock".
        batch_size: prompts per decoder call; None means the preset's.
        pool: mask-average pooling of :func:`refseg.matching.postprocess`, "fast" or "dense".
        retain_freed_memory: the worker keeps freed heap memory for reuse and trims it between
            stages (:func:`refseg.runtime.retain_freed_memory`, the ``refseg`` command's policy;
            CPU only; ``REFSEG_RETAIN_FREED_MEMORY=0`` in the environment turns it off).
        huge_pages: run the worker with ``THP_MEM_ALLOC_ENABLE=1`` (torch then asks for
            2 MiB transparent huge pages for tensors >= 2 MiB: far fewer page faults when
            big temporaries are allocated and freed per batch). Read by torch at import, so
            only a fresh process honours it.
    """

    name: str
    decoder: str
    encoder: str
    batch_size: int | None
    pool: str
    retain_freed_memory: bool
    huge_pages: bool


PATHS: dict[str, CodePath] = {
    "optimised": CodePath(
        "optimised",
        decoder="fast",
        encoder="lean",
        batch_size=None,
        pool="fast",
        retain_freed_memory=True,
        huge_pages=True,
    ),
    "straightforward": CodePath(
        "straightforward",
        decoder="stock",
        encoder="stock",
        batch_size=256,
        pool="dense",
        retain_freed_memory=False,
        huge_pages=False,
    ),
}


@dataclass
class RunSpec:
    """Everything a worker needs to run one configuration (JSON-serialisable).

    Attributes:
        preset: "paper" or "fast".
        path: a key of :data:`PATHS`.
        dtype: "float32" or "bfloat16".
        device: "cpu" or "cuda".
        image: target image path.
        sam2_dir, encoder_dir: checkpoint directories (loaded through refseg.models.loading).
        memory: memory-bank file.
        outputs: where to write the predictions (``.npz``).
        repeats: predictions of the same image; the fastest one is reported.
        threads: torch intra-op threads (None: torch's default).
        grid: points per side overriding the preset's (a sub-grid, for scaling), or None.
    """

    preset: str
    path: str
    dtype: str
    device: str
    image: str
    sam2_dir: str
    encoder_dir: str
    memory: str
    outputs: str
    repeats: int = 1
    threads: int | None = None
    grid: int | None = None

    @property
    def label(self) -> str:
        return f"{self.preset}/{self.dtype}/{self.path}"


# ---------------------------------------------------------------------------- memory use


def _status_bytes(field_name: str) -> int | None:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in bytes, None off Linux."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM, and with it ru_maxrss) of this process.

    Returns False where that is not possible (not Linux).
    """
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def lifetime_peak_rss() -> int:
    """ru_maxrss of this process in bytes (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class PeakRss:
    """Peak RSS per interval, and over the whole process across the resets.

    :meth:`mark` returns the peak since the previous mark and starts a new interval. Where
    the peak cannot be reset, every interval reports the process's peak so far.
    """

    def __init__(self) -> None:
        self.resettable = reset_peak_rss()
        self.overall = 0

    def mark(self) -> int:
        peak = _status_bytes("VmHWM") if self.resettable else None
        if peak is None:
            peak = lifetime_peak_rss()
        self.overall = max(self.overall, peak)
        if self.resettable:
            reset_peak_rss()
        return peak


# ---------------------------------------------------------------------------- stage timing


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class StageClock:
    """Accumulates the wall time, CPU time and peak RSS of wrapped calls.

    ``current`` maps a stage name to wall seconds, ``current_cpu`` to process CPU seconds
    (user + system, all threads: on a shared machine it is steadier than wall time),
    ``current_rss`` to the peak RSS in bytes during the stage; ``outputs`` keeps what
    ``keep`` extracts from each stage's last return value (cleared by :meth:`reset`, so it
    never adds to the next prediction's memory).
    """

    synchronize: Callable[[], None] | None = None
    rss: PeakRss | None = None
    current: dict[str, float] = field(default_factory=dict)
    current_cpu: dict[str, float] = field(default_factory=dict)
    current_rss: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)

    def reset(self) -> None:
        self.current, self.current_cpu, self.current_rss, self.outputs = {}, {}, {}, {}

    def wrap(
        self, name: str, function: Callable[..., Any], keep: Callable[[Any], Any] | None = None
    ) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self.synchronize is not None:
                self.synchronize()
            if self.rss is not None:
                self.rss.mark()  # closes the interval before this stage
            start, start_cpu = time.perf_counter(), cpu_seconds()
            result = function(*args, **kwargs)
            if self.synchronize is not None:
                self.synchronize()
            self.current[name] = self.current.get(name, 0.0) + time.perf_counter() - start
            self.current_cpu[name] = self.current_cpu.get(name, 0.0) + cpu_seconds() - start_cpu
            if self.rss is not None:
                self.current_rss[name] = max(self.current_rss.get(name, 0), self.rss.mark())
            if keep is not None:
                self.outputs[name] = keep(result)
            return result

        return timed


# ---------------------------------------------------------------------------- memory bank of the runs


def reference_masks(height: int, width: int) -> dict[str, list[np.ndarray]]:
    """Fixed elliptic reference masks on the target image: 3 classes x 2 shots.

    Only there to give the prototypes the encoder's feature statistics (with random weights
    any region serves); the same masks for every configuration.
    """
    ys, xs = np.mgrid[0:height, 0:width]
    shapes = {
        "cup": [(0.55, 0.45, 0.25, 0.2), (0.5, 0.5, 0.15, 0.12)],
        "saucer": [(0.75, 0.5, 0.12, 0.35), (0.8, 0.3, 0.08, 0.15)],
        "table": [(0.15, 0.2, 0.1, 0.15), (0.2, 0.85, 0.12, 0.1)],
    }
    masks: dict[str, list[np.ndarray]] = {}
    for name, ellipses in shapes.items():
        masks[name] = [
            ((ys - cy * height) / (ry * height)) ** 2 + ((xs - cx * width) / (rx * width)) ** 2 <= 1.0
            for cy, cx, ry, rx in ellipses
        ]
    return masks


def prepare_memory(
    encoder_dir: str | Path, image: str | Path, out: str | Path, input_size: int = 518
) -> Path:
    """Build the benchmark's memory bank (float32 encoder) and save it to ``out``."""
    from refseg.data.images import load_image
    from refseg.memory import MemoryBank, reference_feature
    from refseg.models.loading import load_encoder

    encoder = load_encoder(encoder_dir, input_size=input_size, device="cpu", dtype="float32")
    pixels = load_image(image)
    bank = MemoryBank(encoder.identity)
    for name, masks in reference_masks(*pixels.shape[:2]).items():
        for shot, mask in enumerate(masks):
            bank.add(reference_feature(encoder, pixels, mask, 0.2), name, {"shot": shot})
    return bank.save(out)


# ---------------------------------------------------------------------------- one configuration


def run_configuration(spec: RunSpec) -> dict[str, Any]:
    """Load the models as ``spec`` says, predict ``spec.repeats`` times, report.

    Returns:
        A JSON-serialisable dict: the spec, load time, per-stage wall seconds of the
        fastest repeat (``stages``: embed, decode, encode, match, other, total) and its CPU
        seconds (``cpu_stages``), every repeat's totals (``totals``, ``cpu_totals``),
        proposal and instance counts, peak RSS (whole process, model loading, each stage),
        CPU user/system seconds of all predictions, threads. The predictions of the last
        repeat, with intermediate tensors, are written to ``spec.outputs``.
    """
    import torch

    from refseg import matching, runtime
    from refseg.memory import MemoryBank
    from refseg.models.loading import load_encoder, load_proposer
    from refseg.presets import get_preset
    from refseg.segmenter import Segmenter

    code_path = PATHS[spec.path]
    if spec.threads:
        torch.set_num_threads(spec.threads)
    cuda = spec.device.startswith("cuda")
    retained = False
    if code_path.retain_freed_memory and not cuda:
        retained = runtime.retain_freed_memory()  # before the first heavy stage, as the refseg command

    rss = PeakRss()
    start = time.perf_counter()
    proposer = load_proposer(
        spec.sam2_dir,
        device=spec.device,
        dtype=spec.dtype,
        decoder=code_path.decoder,
        encoder=code_path.encoder,
    )
    preset = get_preset(spec.preset)
    encoder = load_encoder(
        spec.encoder_dir, input_size=preset.encoder_input_size, device=spec.device, dtype=spec.dtype
    )
    memory = MemoryBank.load(spec.memory)
    load_seconds = time.perf_counter() - start
    peak_load = rss.mark()

    settings = preset.replace(
        points_per_side=spec.grid,
        points_batch_size=code_path.batch_size,
        dtype=spec.dtype,
    )
    segmenter = Segmenter(
        proposer, encoder, memory=memory, preset=settings, between_stages=runtime.release_freed_memory
    )
    clock = StageClock(synchronize=torch.cuda.synchronize if cuda else None, rss=rss)
    proposer.embed = clock.wrap("embed", proposer.embed, keep=lambda e: e.image_embeddings[0].float().cpu())
    proposer.decode_points = clock.wrap("decode", proposer.decode_points, keep=lambda proposals: proposals)
    encoder.encode = clock.wrap("encode", encoder.encode, keep=lambda features: features[0].float().cpu())
    postprocess = clock.wrap("match", functools.partial(matching.postprocess, pool=code_path.pool))

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    usage_start = resource.getrusage(resource.RUSAGE_SELF)
    repeats: list[dict[str, dict[str, float]]] = []
    stage_peaks: dict[str, int] = {}
    instances = None
    with mock.patch.object(matching, "postprocess", postprocess):
        for _ in range(max(1, spec.repeats)):
            clock.reset()
            t0, cpu0 = time.perf_counter(), cpu_seconds()
            instances = segmenter.predict(spec.image)
            if cuda:
                torch.cuda.synchronize()
            total, total_cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
            stages = {name: clock.current.get(name, 0.0) for name in STAGES}
            stages["other"] = total - sum(stages.values())
            stages["total"] = total
            cpu = {name: clock.current_cpu.get(name, 0.0) for name in STAGES}
            cpu["other"] = total_cpu - sum(cpu.values())
            cpu["total"] = total_cpu
            repeats.append({"wall": stages, "cpu": cpu})
            for name, peak in clock.current_rss.items():
                stage_peaks[name] = max(stage_peaks.get(name, 0), peak)
            logger.info("%s: %.2f s (CPU %.2f s)", spec.label, total, total_cpu)
    stage_peaks["other"] = rss.mark()
    usage_end = resource.getrusage(resource.RUSAGE_SELF)
    _save_outputs(spec.outputs, instances, clock.outputs)

    best = min(repeats, key=lambda stages: stages["wall"]["total"])
    result: dict[str, Any] = {
        "spec": asdict(spec),
        "label": spec.label,
        "grid": settings.points_per_side,
        "preset_grid": preset.points_per_side,
        "batch_size": settings.points_batch_size,
        "decoder": code_path.decoder,
        "encoder": code_path.encoder,
        "pool": code_path.pool,
        "retain_freed_memory": retained,
        "huge_pages": os.environ.get("THP_MEM_ALLOC_ENABLE", "0") not in ("", "0"),
        "load_s": load_seconds,
        "stages": best["wall"],
        "cpu_stages": best["cpu"],
        "totals": [stages["wall"]["total"] for stages in repeats],
        "cpu_totals": [stages["cpu"]["total"] for stages in repeats],
        "proposals": len(clock.outputs["decode"]) if "decode" in clock.outputs else 0,
        "instances": len(instances),
        "peak_rss_bytes": max(rss.overall, lifetime_peak_rss()),
        "peak_rss_load_bytes": peak_load,
        "peak_rss_stage_bytes": stage_peaks if rss.resettable else None,
        "cpu_user_s": usage_end.ru_utime - usage_start.ru_utime,
        "cpu_system_s": usage_end.ru_stime - usage_start.ru_stime,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "pid": os.getpid(),
    }
    if cuda:
        result["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated())
        result["cuda_device"] = torch.cuda.get_device_name()
    return result


def _save_outputs(path: str, instances: Any, stage_outputs: dict[str, Any], samples: int = 16) -> None:
    """Write the instances and what the stages kept (see :class:`Outputs`).

    ``stage_outputs``: "decode" -> Proposals, "embed" -> (C, h, w) SAM2 image embedding,
    "encode" -> (C, g, g) DINOv2 features.
    """
    import torch

    proposals = stage_outputs.get("decode")
    embedding = stage_outputs.get("embed")
    features = stage_outputs.get("encode")
    empty = Outputs(instances.masks, instances.scores, instances.labels, instances.boxes, np.zeros(0))
    fields: dict[str, Any] = {}
    if proposals is not None and len(proposals):
        logits = proposals.low_res_logits.float().cpu()
        sample = torch.linspace(0, len(proposals) - 1, min(samples, len(proposals))).round().long().unique()
        fields.update(
            predicted_iou=proposals.predicted_iou.float().cpu().numpy(),
            points=proposals.points.float().cpu().numpy(),
            proposal_masks=(logits > 0).numpy(),
            logits_sample=logits[sample].numpy(),
            sample_points=proposals.points[sample].float().cpu().numpy(),
        )
    if embedding is not None:
        fields["image_embedding"] = embedding.numpy()
    if features is not None:
        fields["features"] = features.numpy()
    Outputs(**{**vars(empty), **fields}).save(path)
