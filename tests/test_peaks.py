"""Peak FLOP/s: the table by device kind, the CPU measurement, MFU."""
import time
import types

import jax
import pytest

from mlm_jax import peaks

T = 1e12


@pytest.mark.parametrize("kind, tera, name", [
    ("TPU v2", 22.5, "TPU v2"),          # one of 2 TensorCores per device
    ("TPU v3", 61.5, "TPU v3"),
    ("TPU v4", 275, "TPU v4"),           # megacore: the whole chip
    ("TPU v4 lite", 137, "TPU v4 lite"),
    ("TPU v5 lite", 197, "TPU v5e"),
    ("TPU v5e", 197, "TPU v5e"),
    ("TPU v5", 459, "TPU v5p"),
    ("TPU v5p", 459, "TPU v5p"),
    ("TPU v6 lite", 918, "TPU v6e"),
    ("TPU7x", 1153.5, "TPU7x"),
    ("Tesla V100-SXM2-16GB", 125, "V100 SXM"),
    ("Tesla V100-PCIE-32GB", 112, "V100 PCIe"),
    ("Tesla V100S-PCIE-32GB", 130, "V100S"),
    ("Tesla T4", 65, "T4"),
    ("NVIDIA A100-SXM4-40GB", 312, "A100"),
    ("NVIDIA A100 80GB PCIe", 312, "A100"),
    ("NVIDIA A10G", 70, "A10G"),
    ("NVIDIA A10", 125, "A10"),
    ("NVIDIA L4", 121, "L4"),
    ("NVIDIA L40S", 362, "L40S"),
    ("NVIDIA H100 80GB HBM3", 989, "H100 SXM"),
    ("NVIDIA H100 PCIe", 756, "H100 PCIe"),
    ("NVIDIA H100 NVL", 835, "H100 NVL"),
    ("NVIDIA H200", 989, "H200"),
    ("NVIDIA GH200 480GB", 989, "GH200"),
    ("NVIDIA B200", 2250, "B200"),
    ("NVIDIA GB200", 2500, "GB200"),
])
def test_table_peak_by_device_kind(kind, tera, name):
  flops, label = peaks.table_peak(kind)
  assert flops == pytest.approx(tera * T)
  assert label.startswith(f"table: {name}")


def test_device_cores_split_a_chip():
  # v4 in split mode: each TensorCore its own device, half the chip each.
  flops, label = peaks.table_peak("TPU v4", num_cores=1)
  assert flops == pytest.approx(137.5 * T)
  assert label == "table: TPU v4 (1 of its 2 TensorCores per device)"
  assert peaks.table_peak("TPU v4", num_cores=2)[0] == pytest.approx(275 * T)
  # A nonsense count falls back to the chip's default.
  assert peaks.table_peak("TPU v5p", num_cores=8)[0] == pytest.approx(459 * T)


@pytest.mark.parametrize("kind", ["cpu", "NVIDIA GeForce RTX 4090", "TPU v9",
                                  "AMD Instinct MI300X", ""])
def test_unknown_kinds_are_not_in_the_table(kind):
  assert peaks.table_peak(kind) is None


def test_unknown_device_falls_back_to_measurement(monkeypatch):
  measured = []
  monkeypatch.setattr(peaks, "measure_matmul_flops",
                      lambda device: measured.append(device) or 5e13)
  gpu = types.SimpleNamespace(device_kind="NVIDIA GeForce RTX 4090",
                              platform="gpu")
  assert peaks.peak_flops_per_device(gpu) == (
      5e13, "measured: NVIDIA GeForce RTX 4090 float32 matmul")
  assert measured == [gpu]
  tpu = types.SimpleNamespace(device_kind="TPU v4", platform="tpu",
                              num_cores=2)
  assert peaks.peak_flops_per_device(tpu) == (275 * T, "table: TPU v4")
  assert measured == [gpu]  # a known kind is not measured


def test_cpu_peak_is_measured_quickly_and_shared_by_the_host_devices():
  cpu = jax.devices("cpu")[0]
  start = time.perf_counter()
  flops, label = peaks.peak_flops_per_device(cpu)
  seconds = time.perf_counter() - start
  assert seconds < 2.0
  assert label.startswith("measured: CPU float32 matmul")
  shared = len(jax.local_devices(backend="cpu"))  # 4 under conftest
  assert shared == 1 or f"shared by {shared} devices" in label
  # Somewhere between a slow laptop core and a big server.
  assert 1e8 < flops * shared < 1e14
  print(f"CPU peak {flops * shared / 1e9:.0f} GFLOP/s in {seconds:.2f} s")


def test_mfu():
  # 1e12 FLOPs a step at 2 steps/s on 4 devices of 1e12 FLOP/s: half.
  assert peaks.mfu(1e12, 2.0, 4, 1e12) == pytest.approx(0.5)
  assert peaks.mfu(3e9, 10.0, 1, 6e10) == pytest.approx(0.5)
  with pytest.raises(ValueError, match="peak > 0"):
    peaks.mfu(1e12, 2.0, 4, 0.0)
  with pytest.raises(ValueError, match="num_devices >= 1"):
    peaks.mfu(1e12, 2.0, 0, 1e12)
