"""Choosing bf16 or float32 for a workload on this device: the facts of the device, one short
measurement per machine and workload, cached as strict JSON, and the rule that decides.

On CUDA, bf16 is chosen where the device supports it. On a CPU, bf16 is only worth it with bf16
units (``amx_bf16`` or ``avx512_bf16``); without them bf16 matmuls are emulated and about 7x
slower. With them the gain still depends on the workload (a Top-K SAE step gains far less than
a matmul, because the selection does not speed up), so the workload itself is timed in both
precisions, once per machine (CPU model, torch version, thread count) and workload shape, and
bf16 is chosen only when it is at least :data:`MIN_SPEEDUP` times faster. A workload smaller than
the caller's threshold is not worth timing and keeps float32 on a CPU (tiny runs stay float32
on every CPU, so they give the same weights on every CPU of one capability; a CUDA device with
bf16 takes it at any size). A cached record is used as it is, so the choice
is fixed once measured. What the workloads are (an SAE step, a language-model forward) is the
callers'; this module only times what it is handed and never imports the rest of the project
but :mod:`saeseeds.io`.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from saeseeds.io import atomic_write_json, build_lock, read_json

log = logging.getLogger(__name__)

MIN_SPEEDUP = 1.15
"""bf16 is chosen when the workload runs at least this many times faster in it: a smaller gain
is within what a short measurement on a busy machine can get wrong."""
REPEATS = 3
"""Timed runs per precision (after one warm-up each); the median counts."""
CACHE_FOLDER = "precision"
"""Sub-folder of ``paths.model_cache_dir`` with one JSON record per machine and workload."""
RECORD_VERSION = 1


@dataclass(frozen=True)
class Device:
    """What decides whether bf16 can pay on a device, and what a measurement is keyed by."""

    kind: str  # "cpu" or "cuda"
    name: str  # the CPU model, or the CUDA device's name
    bf16_units: tuple[str, ...]
    """CPU flags of hardware bf16 (``amx_bf16``, ``avx512_bf16``); on CUDA ``("cuda",)`` when
    the device supports bf16."""
    cpu_capability: str
    torch_version: str
    threads: int

    @property
    def key(self) -> str:
        return f"{self.kind}|{self.name}|{self.torch_version}|threads={self.threads}"


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision chosen for one workload, and why; recorded in environment.json."""

    workload: str
    chosen: str  # "bfloat16" or "float32"
    reason: str
    speedup: float | None = None
    """float32 time / bf16 time of the workload, when it was measured."""
    float32_s: float | None = None
    bfloat16_s: float | None = None
    measured_at: str | None = None
    device_key: str = ""

    def record(self) -> dict[str, Any]:
        return asdict(self)


def _cpu_facts() -> tuple[str, tuple[str, ...]]:
    name, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        field, _, value = line.partition(":")
        if field.strip() == "model name" and value.strip():
            name = value.strip()
        elif field.strip() == "flags":
            flags.update(value.split())
            break  # every core lists the same flags
    units = tuple(unit for unit in ("amx_bf16", "avx512_bf16") if unit in flags)
    return name, units


def this_device(device: torch.device | str = "cpu") -> Device:
    """The facts of ``device`` (the CPU, or a CUDA device) in this process."""
    device = torch.device(device)
    threads, version = torch.get_num_threads(), torch.__version__
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        name = torch.cuda.get_device_name(device)
        return Device("cuda", name, ("cuda",) if supported else (), "", version, threads)
    name, units = _cpu_facts()
    capability = torch.backends.cpu.get_cpu_capability()
    return Device("cpu", name, units, capability, version, threads)


def record_path(cache_dir: str | Path, device: Device, workload: str) -> Path:
    digest = hashlib.sha256(f"{device.key}|{workload}".encode()).hexdigest()[:24]
    return Path(cache_dir).expanduser() / CACHE_FOLDER / f"{digest}.json"


def read_record(cache_dir: str | Path, device: Device, workload: str) -> PrecisionChoice | None:
    """The cached choice for this machine and workload, or None (none, unreadable, or another
    machine's record under a colliding name)."""
    path = record_path(cache_dir, device, workload)
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("version") != RECORD_VERSION:
        return None
    if record.get("device_key") != device.key or record.get("workload") != workload:
        return None
    fields = set(PrecisionChoice.__dataclass_fields__)
    try:
        return PrecisionChoice(**{name: record[name] for name in fields if name in record})
    except TypeError:
        return None


def write_record(cache_dir: str | Path, device: Device, choice: PrecisionChoice) -> Path:
    """Cache ``choice`` for this machine and workload (strict JSON, atomic)."""
    path = record_path(cache_dir, device, choice.workload)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"version": RECORD_VERSION, **choice.record()})
    return path


def median_seconds(run: Callable[[], Any], repeats: int = REPEATS) -> float:
    """One warm-up call, then the median of ``repeats`` timed calls."""
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measured_choice(
    device: Device,
    workload: str,
    run_in: Callable[[torch.dtype], Callable[[], Any]],
    min_speedup: float = MIN_SPEEDUP,
) -> PrecisionChoice:
    """Time the workload in float32 and in bf16 (``run_in(dtype)`` returns the call to time)
    and choose bf16 if it is at least ``min_speedup`` times faster."""
    with torch.random.fork_rng(devices=[]):  # the job's random streams stay as they were
        float32_s = median_seconds(run_in(torch.float32))
        bfloat16_s = median_seconds(run_in(torch.bfloat16))
    speedup = float32_s / bfloat16_s if bfloat16_s > 0 else 0.0
    faster = speedup >= min_speedup
    return PrecisionChoice(
        workload=workload,
        chosen="bfloat16" if faster else "float32",
        reason=(
            f"measured: bf16 {speedup:.2f}x the speed of float32 "
            f"({'>=' if faster else '<'} {min_speedup:g}x)"
        ),
        speedup=round(speedup, 4),
        float32_s=round(float32_s, 6),
        bfloat16_s=round(bfloat16_s, 6),
        measured_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        device_key=device.key,
    )


def choose(
    device: Device,
    workload: str,
    cache_dir: str | Path,
    run_in: Callable[[torch.dtype], Callable[[], Any]],
    worth_measuring: bool,
) -> PrecisionChoice:
    """bf16 or float32 for ``workload`` on ``device``: a cached record first (the choice stays
    what it was measured to be), then the device's facts, then a measurement (cached). A
    workload not ``worth_measuring`` (too small to gain) keeps float32."""
    cached = read_record(cache_dir, device, workload)
    if cached is not None:
        return cached

    def fixed(chosen: str, reason: str) -> PrecisionChoice:
        return PrecisionChoice(workload, chosen, reason, device_key=device.key)

    if device.kind == "cuda":
        if device.bf16_units:
            return fixed("bfloat16", "CUDA device with bf16 support")
        return fixed("float32", "CUDA device without bf16 support")
    if not device.bf16_units:
        return fixed(
            "float32", "CPU without bf16 units (no amx_bf16/avx512_bf16): bf16 is emulated there"
        )
    if not worth_measuring:
        return fixed("float32", "too small to gain from bf16 (not measured)")
    path = record_path(cache_dir, device, workload)
    with build_lock(path.with_suffix("")):  # one process measures; the others read its record
        cached = read_record(cache_dir, device, workload)
        if cached is not None:
            return cached
        log.info("Measuring bf16 against float32 for %s on this machine (once) ...", workload)
        choice = measured_choice(device, workload, run_in)
        write_record(cache_dir, device, choice)
    log.info("Precision for %s: %s (%s)", workload, choice.chosen, choice.reason)
    return choice
