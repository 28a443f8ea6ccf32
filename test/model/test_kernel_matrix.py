"""The fixture tests (official-code parity, heads, pose decoding, preprocessing) under several CPU
kernel sets, each in its own process: the fixtures were made on one machine and must pass on any
x86-64 CPU (see the tolerance derivations in test_parity.py and test_heads.py).

Kernel sets, all reachable on one machine:

* ``aten-default`` / ``aten-avx2`` / ``aten-avx512``: ATen's vectorised kernels forced to the
  scalar, AVX2 or AVX-512 build (``ATEN_CPU_CAPABILITY``; only those this CPU supports),
* ``no-onednn``: torch with oneDNN (mkldnn) off (``SCAL3R_TEST_MKLDNN=0``, read by
  test/conftest.py): other convolution and bf16-matmul kernels,
* ``avx2-cpu``: what an AVX2-only CPU runs: ATen AVX2, oneDNN capped at AVX2
  (``DNNL_MAX_CPU_ISA``) and MKL's AVX2 code path (``MKL_ENABLE_INSTRUCTIONS``).

Each run reports the capability and the oneDNN switch it actually ran with, and the test fails if
they are not what was asked for (so the matrix cannot silently run one kernel set five times). The
worst relative error per parity stage is printed as a table (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
FIXTURE_TESTS = (
    "test/model/test_parity.py",
    "test/model/test_heads.py",
    "test/model/test_pose_encoding.py",
    "test/model/test_preprocess.py",
)
# environment variables that select kernels: cleared so the parent's settings do not leak in
KERNEL_ENV = (
    "ATEN_CPU_CAPABILITY",
    "SCAL3R_TEST_MKLDNN",
    "DNNL_MAX_CPU_ISA",
    "ONEDNN_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_CBWR",
)
ATEN_LEVELS = ("DEFAULT", "AVX2", "AVX512")  # x86-64 capabilities, lowest first
RUN_TIMEOUT_S = 900  # a guard against a hung child, not a speed check

# Runs pytest on the fixture tests and, at the end of the session (after test/conftest.py has
# applied its switches), reports the kernels torch really used.
_DRIVER = """
import json, sys
import pytest, torch

class KernelReport:
    def pytest_sessionfinish(self, session, exitstatus):
        info = {"capability": torch.backends.cpu.get_cpu_capability(),
                "mkldnn": bool(torch.backends.mkldnn.enabled)}
        print("\\nKERNELS " + json.dumps(info), flush=True)

sys.exit(pytest.main(sys.argv[1:], plugins=[KernelReport()]))
"""


@dataclass(frozen=True)
class KernelSet:
    name: str
    capability: str  # expected torch.backends.cpu.get_cpu_capability()
    env: dict[str, str] = field(default_factory=dict)
    mkldnn: bool = True


def _max_capability() -> str:
    """The best ATen capability of this CPU (asks a clean child if the parent's is forced)."""
    if "ATEN_CPU_CAPABILITY" not in os.environ:
        return torch.backends.cpu.get_cpu_capability()
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1]


def _kernel_sets() -> list[KernelSet]:
    best = _max_capability()
    sets = [KernelSet("aten-default", "DEFAULT", {"ATEN_CPU_CAPABILITY": "default"})]
    if best in ATEN_LEVELS:
        for level in ATEN_LEVELS[1 : ATEN_LEVELS.index(best) + 1]:
            sets.append(
                KernelSet(f"aten-{level.lower()}", level, {"ATEN_CPU_CAPABILITY": level.lower()})
            )
    sets.append(KernelSet("no-onednn", best, {"SCAL3R_TEST_MKLDNN": "0"}, mkldnn=False))
    if best == "AVX512":
        sets.append(
            KernelSet(
                "avx2-cpu",
                "AVX2",
                {
                    "ATEN_CPU_CAPABILITY": "avx2",
                    "DNNL_MAX_CPU_ISA": "AVX2",
                    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                },
            )
        )
    return sets


KERNEL_SETS = _kernel_sets()


def _run(kernels: KernelSet) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_ENV}
    env.update(kernels.env)
    args = ["-q", "-s", "-p", "no:cacheprovider", *FIXTURE_TESTS]
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    return proc.returncode, proc.stdout + proc.stderr


def _parity_table(output: str) -> dict[str, dict[str, float]]:
    """``PARITY <stage> <layout> <worst relative error>`` lines -> {stage: {layout: err}}."""
    table: dict[str, dict[str, float]] = {}
    for stage, layout, err in re.findall(r"^PARITY (\S+) (\S+) (\S+)$", output, re.M):
        table.setdefault(stage, {})[layout] = float(err)
    return table


def test_kernel_sets_cover_more_than_one_build():
    names = [k.name for k in KERNEL_SETS]
    assert "aten-default" in names and "no-onednn" in names
    if torch.backends.cpu.get_cpu_capability() in ATEN_LEVELS[1:]:
        assert "aten-avx2" in names  # every x86-64 CPU with AVX2 gets the AVX2 build too


@pytest.mark.slow
@pytest.mark.parametrize("kernels", KERNEL_SETS, ids=lambda k: k.name)
def test_fixture_tests_pass_under_kernel_set(kernels: KernelSet):
    rc, output = _run(kernels)
    tail = "\n".join(output.splitlines()[-60:])
    assert rc == 0, f"fixture tests failed under {kernels.name} ({kernels.env}):\n{tail}"
    reports = re.findall(r"^KERNELS (\{.*\})$", output, re.M)
    assert reports, f"no kernel report from the child:\n{tail}"
    ran = json.loads(reports[-1])
    assert ran == {"capability": kernels.capability, "mkldnn": kernels.mkldnn}, (
        f"asked for {kernels}, torch ran with {ran}"
    )
    summary = re.findall(r"^(\d+) passed", output, re.M)
    assert summary and int(summary[-1]) > 0, tail
    table = _parity_table(output)
    assert {"prepare", "ns5", "whole_fp32", "whole_free"} <= set(table), sorted(table)
    print(f"\n[{kernels.name}] capability {ran['capability']}, oneDNN {ran['mkldnn']}")
    for stage, per_layout in table.items():
        cells = "  ".join(f"{layout} {err:.2g}" for layout, err in per_layout.items())
        print(f"  {stage:<15} {cells}")
