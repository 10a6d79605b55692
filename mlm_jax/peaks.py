"""Peak matmul FLOP/s per device, for model FLOPs utilization (MFU).

On TPUs and NVIDIA GPUs the peak is the vendor's dense bf16 matmul figure
(fp16 on V100 and T4, which have no bf16 tensor cores), from `PEAKS`, looked
up by `jax.Device.device_kind`. On a CPU, or a device the table does not
know, it is measured: the best time of a float32 square matmul, well under
2 seconds with compilation. `peak_flops_per_device` returns either, with a
label saying which; `mfu` divides a run's model FLOP/s by it.

"Per device" is per JAX device: a GPU; on a TPU a chip, except where each
TensorCore is its own device (v2, v3, TPU7x, and v4/v5p in split mode),
which gets its share of the chip's peak. On a CPU the devices (several with
`--xla_force_host_platform_device_count`) share the host's cores, so each
gets an equal share of the host's measured peak: num_devices * peak is the
host's.
"""
from __future__ import annotations

import dataclasses
import math
import re
import time

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ChipPeak:
  """One accelerator's peak dense matmul throughput."""
  # How the table names it in a peak's label.
  name: str
  # `device_kind` spellings, each a set of words that must all appear in the
  # device kind (case-insensitive; words split at anything not a letter or
  # digit, so "A10" does not match "A100", nor "H200" "GH200").
  kinds: tuple[str, ...]
  # Dense (no 2:4 sparsity) bf16 matmul FLOP/s of the whole chip.
  flops: float
  # Physical TensorCores per chip (TPU), and whether one JAX device drives
  # them all by default (megacore) rather than one device per TensorCore.
  tensorcores: int = 1
  megacore: bool = False


# First match wins: a kind with a qualifier ("H100 PCIe") comes before the
# bare one ("H100"). Sources, per chip:
#  TPU v2: 180 TFLOP/s per 4-chip Cloud TPU (Google's 2017 announcement);
#    jax/_src/pallas/mosaic/tpu_info.py has 46e12.
#  TPU v3 123, v4 275, v5e 197, v5p 459, v6e 918, TPU7x 2307 TFLOP/s bf16:
#    "Peak compute per chip" of cloud.google.com/tpu/docs/{v3,v4,v5e,v5p,
#    v6e,tpu7x}. TensorCores per chip and megacore: the ChipVersion table of
#    jax/_src/pallas/mosaic/tpu_info.py, which also gives TPU v4 lite (v4i,
#    no Cloud page) 137e12 and gives TPU7 the numbers of TPU7x.
#  NVIDIA: the datasheets' Tensor Core BF16 (V100, T4: FP16) figures, halved
#    where they are quoted with sparsity: V100 SXM2 125, PCIe 112, V100S 130;
#    T4 65; A100 (SXM and PCIe) 312; A10 125; L4 121; L40 181; L40S 362;
#    H100 SXM 989, PCIe 756, NVL 835; H200 989, H200 NVL 835; GH200 989;
#    HGX B200 2250 (at 1,000 W); GB200 2500 (per GPU). A10G (AWS only, no
#    NVIDIA datasheet): 70, Baseten's "NVIDIA A10 vs A10G" comparison.
PEAKS: tuple[ChipPeak, ...] = (
    ChipPeak("TPU v2", ("tpu v2",), 45e12, tensorcores=2),
    ChipPeak("TPU v3", ("tpu v3",), 123e12, tensorcores=2),
    ChipPeak("TPU v4 lite", ("tpu v4 lite", "tpu v4i"), 137e12),
    ChipPeak("TPU v4", ("tpu v4",), 275e12, tensorcores=2, megacore=True),
    ChipPeak("TPU v5e", ("tpu v5 lite", "tpu v5e"), 197e12),
    ChipPeak("TPU v5p", ("tpu v5p", "tpu v5"), 459e12, tensorcores=2,
             megacore=True),
    ChipPeak("TPU v6e", ("tpu v6 lite", "tpu v6e"), 918e12),
    ChipPeak("TPU7x", ("tpu7x", "tpu7"), 2307e12, tensorcores=2),
    ChipPeak("V100S", ("v100s",), 130e12),
    ChipPeak("V100 PCIe", ("v100 pcie",), 112e12),
    ChipPeak("V100 SXM", ("v100",), 125e12),
    ChipPeak("T4", ("t4",), 65e12),
    ChipPeak("A100", ("a100",), 312e12),
    ChipPeak("A10G", ("a10g",), 70e12),
    ChipPeak("A10", ("a10",), 125e12),
    ChipPeak("L4", ("l4",), 121e12),
    ChipPeak("L40S", ("l40s",), 362e12),
    ChipPeak("L40", ("l40",), 181e12),
    ChipPeak("H100 PCIe", ("h100 pcie",), 756e12),
    ChipPeak("H100 NVL", ("h100 nvl",), 835e12),
    ChipPeak("H100 SXM", ("h100",), 989e12),
    ChipPeak("H200 NVL", ("h200 nvl",), 835e12),
    ChipPeak("H200", ("h200",), 989e12),
    ChipPeak("GH200", ("gh200",), 989e12),
    ChipPeak("GB200", ("gb200",), 2500e12),
    ChipPeak("B200", ("b200",), 2250e12),
)


def _words(text: str) -> set[str]:
  return set(re.split(r"[^a-z0-9]+", text.lower())) - {""}


def find_chip(device_kind: str) -> ChipPeak | None:
  """The first entry of `PEAKS` one of whose kinds matches, or None."""
  words = _words(device_kind)
  for chip in PEAKS:
    if any(_words(kind) <= words for kind in chip.kinds):
      return chip
  return None


def table_peak(device_kind: str, num_cores: int | None = None
               ) -> tuple[float, str] | None:
  """(FLOP/s per device, "table: <name>") from `PEAKS`, or None if unknown.

  `num_cores`: the TensorCores one device drives (`jax.Device.num_cores` on
  a TPU); None, or a value out of range, means the chip's default (all of
  them on a megacore chip, else one).
  """
  chip = find_chip(device_kind)
  if chip is None:
    return None
  cores = chip.tensorcores if chip.megacore else 1
  if isinstance(num_cores, int) and 1 <= num_cores <= chip.tensorcores:
    cores = num_cores
  label = f"table: {chip.name}"
  if cores < chip.tensorcores:
    label += f" ({cores} of its {chip.tensorcores} TensorCores per device)"
  return chip.flops * cores / chip.tensorcores, label


def measure_matmul_flops(device: jax.Device | None = None, *, n: int = 1024,
                         budget_seconds: float = 0.5,
                         max_repeats: int = 20) -> float:
  """FLOP/s of a float32 [n, n] @ [n, n] matmul on `device`, best of repeats.

  Compiles once, then repeats until `budget_seconds` have passed (at least
  one, at most `max_repeats` runs): the best run is the peak, the others
  absorb a shared machine's noise. n=1024 takes ~10 ms at 250 GFLOP/s.
  """
  device = device or jax.devices()[0]
  x = jax.device_put(jnp.ones((n, n), jnp.float32), device)
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(x, x))  # compile and warm up
  best, start = math.inf, time.perf_counter()
  for _ in range(max_repeats):
    tick = time.perf_counter()
    jax.block_until_ready(matmul(x, x))
    best = min(best, time.perf_counter() - tick)
    if time.perf_counter() - start > budget_seconds:
      break
  return 2.0 * n ** 3 / best


def peak_flops_per_device(device: jax.Device | None = None
                          ) -> tuple[float, str]:
  """(peak matmul FLOP/s of one device, where that number comes from).

  From `PEAKS` for a known accelerator ("table: TPU v4"), else measured on
  `device` (default: the first device) with `measure_matmul_flops`
  ("measured: CPU float32 matmul"). On a CPU with several devices each gets
  its share of the host's measured peak (they share its cores).
  """
  device = device or jax.devices()[0]
  found = table_peak(device.device_kind, getattr(device, "num_cores", None))
  if found is not None:
    return found
  measured = measure_matmul_flops(device)
  if device.platform != "cpu":
    return measured, f"measured: {device.device_kind} float32 matmul"
  shared = len(jax.local_devices(backend="cpu"))
  label = "measured: CPU float32 matmul"
  if shared > 1:
    label += f", {measured / 1e9:,.0f} GFLOP/s shared by {shared} devices"
  return measured / shared, label


def mfu(flops_per_step: float, steps_per_s: float, num_devices: int,
        peak: float) -> float:
  """Model FLOPs utilization: achieved / peak FLOP/s of all devices.

  `flops_per_step`: model FLOPs of one training step of the global batch
  (forward and backward, e.g. `benchmark.train_flops_per_step(config)`);
  `peak`: FLOP/s per device (`peak_flops_per_device()[0]`).
  """
  if num_devices < 1 or not peak > 0:
    raise ValueError(f"mfu needs num_devices >= 1 and peak > 0, got "
                     f"{num_devices} and {peak}; pass jax.device_count() and "
                     "peak_flops_per_device()[0].")
  return flops_per_step * steps_per_s / (num_devices * peak)
