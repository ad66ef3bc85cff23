"""The same seed and inputs give byte-identical files: adapters (safetensors) and ONNX, in one
process and across processes (different ``PYTHONHASHSEED``, so no set/dict order can leak in)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from models import train
from torch import nn

import lowrank_compiler as lrc

HERE = Path(__file__).resolve().parent


def artifacts(out: Path, formats=("matmulnbits", "qdq")) -> dict[str, str]:
    """compile (seeded) -> 3 training steps -> save_adapters -> fold -> ONNX; file name -> sha256.

    A small MLP with a norm between its layers keeps the export quick (a GPT's takes 5x longer);
    the files still hold every part whose bytes could vary: packed codes, split corrections,
    names the exporter and our lowering give, the metadata.
    """
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.LayerNorm(64), nn.Linear(64, 32))
    x, target = torch.randn(8, 64), torch.randn(8, 32)
    lrc.compile(model, lrc.Policy(method="qalora", target=["0", "3"], group_size=16, rank=4))
    train(model, x, steps=3, loss_fn=lambda m, x: (m(x) - target).pow(2).mean())
    lrc.save_adapters(model, out)
    deployed = lrc.fold(model)
    for fmt in formats:
        lrc.export_onnx(deployed, out / f"{fmt}.onnx", example_inputs=(x[:2],), format=fmt)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    return artifacts(tmp_path_factory.mktemp("first"))


def test_same_files_twice_in_one_process(first, tmp_path):
    assert set(first) == {
        "adapters.safetensors",
        "adapter_config.json",
        "matmulnbits.onnx",
        "qdq.onnx",
    }
    assert artifacts(tmp_path) == first


def test_same_files_in_two_processes(first, tmp_path):
    code = (
        f"import json, sys; sys.path.insert(0, {str(HERE)!r}); from pathlib import Path; "
        f"from test_determinism import artifacts; "
        f"print(json.dumps(artifacts(Path(sys.argv[1]), formats=('matmulnbits',))))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / str(seed))],
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONHASHSEED": str(seed), "OMP_NUM_THREADS": "1"},
        )
        for seed in (1, 2)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    expected = {k: v for k, v in first.items() if k != "qdq.onnx"}
    assert results[0] == results[1] == expected
