"""Choosing bf16 or float32: a real measurement of both precisions, its strict-JSON cache, and
the rule (device facts, size, measured speed-up), each given real inputs."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from saeseeds import precision
from saeseeds.precision import Device, PrecisionChoice, choose, measured_choice, this_device

NO_BF16 = Device("cpu", "Old CPU", (), "AVX2", torch.__version__, 2)
AMX = Device("cpu", "New CPU", ("amx_bf16",), "AVX512_AMX", torch.__version__, 2)


def matmul_in(dtype: torch.dtype):
    """A small real workload in ``dtype`` (bf16 works on every CPU, if slowly where emulated)."""
    left = torch.randn(64, 48).to(dtype)
    right = torch.randn(48, 32).to(dtype)
    return lambda: left @ right


def never_measured(dtype: torch.dtype):
    raise AssertionError("the rule should not have timed anything")


def test_both_precisions_are_timed_and_the_threshold_decides():
    device = this_device()
    always = measured_choice(device, "matmul", matmul_in, min_speedup=0.0)
    never = measured_choice(device, "matmul", matmul_in, min_speedup=1e9)
    assert always.chosen == "bfloat16" and never.chosen == "float32"
    for choice in (always, never):
        assert choice.float32_s > 0 and choice.bfloat16_s > 0 and choice.speedup > 0
        assert choice.device_key == device.key and "measured" in choice.reason


def test_a_measurement_draws_nothing_from_the_jobs_random_stream():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    measured_choice(this_device(), "matmul", matmul_in)
    assert torch.equal(torch.rand(3), expected)


def test_the_record_is_strict_json_keyed_by_machine_and_used_as_it_is(tmp_path):
    measured = PrecisionChoice(
        "matmul", "bfloat16", "measured", 2.5, 0.5, 0.2, "2026-12-02T08:00:00+0000", AMX.key
    )
    path = precision.write_record(tmp_path, AMX, measured)
    record = json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(name))
    assert record["speedup"] == 2.5 and record["device_key"] == AMX.key
    # The cached choice stands: no new measurement, whatever it would find now.
    assert choose(AMX, "matmul", tmp_path, never_measured, worth_measuring=True) == measured
    # Another thread count, torch build or workload is another record.
    assert precision.read_record(tmp_path, replace(AMX, threads=1), "matmul") is None
    assert precision.read_record(tmp_path, replace(AMX, torch_version="0.0"), "matmul") is None
    assert precision.read_record(tmp_path, AMX, "other workload") is None
    path.write_text("{not json")
    assert precision.read_record(tmp_path, AMX, "matmul") is None  # measured again, not an error


def test_without_bf16_units_or_work_enough_float32_is_kept_untimed(tmp_path):
    no_units = choose(NO_BF16, "matmul", tmp_path, never_measured, worth_measuring=True)
    assert no_units.chosen == "float32" and "without bf16 units" in no_units.reason
    small = choose(AMX, "matmul", tmp_path, never_measured, worth_measuring=False)
    assert small.chosen == "float32" and "too small" in small.reason
    assert not (tmp_path / precision.CACHE_FOLDER).exists()  # nothing measured, nothing cached
    cuda = Device("cuda", "GPU", ("cuda",), "", torch.__version__, 2)
    assert choose(cuda, "matmul", tmp_path, never_measured, True).chosen == "bfloat16"


def test_a_cpu_with_bf16_units_measures_once_and_caches(tmp_path):
    timed = []

    def run_in(dtype):
        timed.append(dtype)
        return matmul_in(dtype)

    first = choose(AMX, "matmul", tmp_path, run_in, worth_measuring=True)
    assert timed == [torch.float32, torch.bfloat16] and first.speedup is not None
    again = choose(AMX, "matmul", tmp_path, run_in, worth_measuring=True)
    assert again == first and len(timed) == 2


def test_this_cpu_is_described_from_its_flags():
    device = this_device()
    assert device.kind == "cpu" and device.threads == torch.get_num_threads()
    assert set(device.bf16_units) <= {"amx_bf16", "avx512_bf16"}
    assert device.cpu_capability == torch.backends.cpu.get_cpu_capability()
