"""Helpers shared by the benchmarks: process memory from /proc, timing, child processes.

Every measurement runs in a fresh Python process (the benchmark re-runs its own file with
``--child``), so one measurement's allocations, caches and threads never leak into the next, and
the process peak (``VmHWM``) belongs to that measurement alone.
"""

import json
import os
import re
import statistics
import subprocess
import sys
import time
from typing import Callable, List

import torch

MIB = 2**20


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        match = re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field} line: memory cannot be measured on this system")
    return int(match.group(1))


def resident_bytes() -> int:
    """Memory the process holds now."""
    return _status_kib("VmRSS") * 1024


def peak_resident_bytes() -> int:
    """The process's peak resident memory since it started or since the last `reset_peak`."""
    return _status_kib("VmHWM") * 1024


def reset_peak() -> bool:
    """Lower the recorded peak to the current resident size (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def time_call(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median(values: List[float]) -> float:
    return statistics.median(values)


def load_average() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def run_child(script: str, task: dict, timeout: float = 3600, omp_wait_policy: str = None) -> dict:
    """Run ``script --child JSON`` in a fresh interpreter and return the JSON object it prints last.

    ``omp_wait_policy`` ("active"/"passive") is set in the child's environment: it must be known before
    the OpenMP runtime starts."""
    env = dict(os.environ)
    if omp_wait_policy:
        env["OMP_WAIT_POLICY"] = omp_wait_policy.upper()
    result = subprocess.run(
        [sys.executable, script, "--child", json.dumps(task)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if result.returncode != 0:
        raise RuntimeError(f"benchmark child {task} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def child_main(handler: Callable[[dict], dict]) -> None:
    """Entry point of a child: read the task, set the thread count, print the result as JSON."""
    from diffusers.utils import logging as diffusers_logging

    # diffusers warns on every `ModelMixin.to(dtype)`, whatever the model.
    diffusers_logging.set_verbosity_error()
    task = json.loads(sys.argv[sys.argv.index("--child") + 1])
    if task.get("threads"):
        torch.set_num_threads(task["threads"])
    print(json.dumps(handler(task)))


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> None:
    """Random values in every parameter (the official output convolutions start at zero, which would make
    any comparison pass): fan-in scaled weights, GroupNorm scales near one, small biases."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            noise = torch.randn(parameter.shape, generator=generator)
            if isinstance(module, torch.nn.GroupNorm):
                value = 1 + 0.1 * noise if name == "weight" else 0.1 * noise
            elif parameter.ndim > 1:
                value = noise * parameter[0].numel() ** -0.5
            else:
                value = 0.1 * noise
            parameter.copy_(value.to(parameter.dtype))


def format_mib(num_bytes: float) -> str:
    return f"{num_bytes / MIB:,.0f} MiB"
