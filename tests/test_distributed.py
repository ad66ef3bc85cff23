"""Scale-up: a compiled QA-LoRA model trains under DistributedDataParallel and FSDP2 (gloo, 2
processes).

The ranks start from different adapter inits and see different data; afterwards their
adapters must be equal bit for bit (and moved from the start), only adapter weights may
train, and the unwrapped module must fold (rank 0). The trained adapters, loaded into the
same compiled model here, reproduce rank 0's output, fold, and export to pure INT4 ONNX.

FSDP2 (``fully_shard`` per decoder layer and the root) trains the real stories260K on two ranks;
the adapters gathered with ``get_model_state_dict(..., full_state_dict=True)`` equal a
single-process run on the same global batches within float tolerance (measured 5.5e-5
relative: the ranks' gradients are summed in another order, and AdamW's first steps magnify
that), and the folded models agree.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from models import ids, rel_err, tiny_gpt
from safetensors.torch import load_file

import lowrank_compiler as lrc

RANK_SCRIPT = Path(__file__).resolve().parent / "ddp_rank.py"
FSDP_SCRIPT = Path(__file__).resolve().parent / "fsdp_rank.py"
WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(script: Path, out: Path, ranks) -> None:
    """Run ``script RANK WORLD OUT`` for each rank at once; fail with the log of a rank that
    failed."""
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "OMP_NUM_THREADS": "1",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), str(WORLD), str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in ranks
    ]
    try:
        logs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, p, log in zip(ranks, procs, logs):
        assert p.returncode == 0, f"rank {rank} failed:\n{log[-3000:]}"


def test_ddp_keeps_adapters_in_sync_and_fold_export_work(tmp_path):
    run_ranks(RANK_SCRIPT, tmp_path, range(WORLD))
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(WORLD)]
    names = sorted(k[len("end.") :] for k in ranks[0] if k.startswith("end."))
    assert names and all(n.endswith(("lora_A", "lora_B")) for n in names)  # only adapters train
    for n in names:
        assert torch.equal(ranks[0][f"start.{n}"], ranks[1][f"start.{n}"]), (
            n
        )  # DDP broadcast rank 0's init
        assert torch.equal(ranks[0][f"end.{n}"], ranks[1][f"end.{n}"]), n  # and kept them in sync
    assert all(
        not torch.equal(ranks[0][f"start.{n}"], ranks[0][f"end.{n}"])
        for n in names
        if n.endswith("lora_B")
    )
    result = json.loads((tmp_path / "rank0.json").read_text())
    assert result["trainable"] == names and result["fold_err"] <= 1e-5
    model = lrc.compile(tiny_gpt(seed=0), lrc.Policy(method="qalora", group_size=16, rank=4))
    missing, unexpected = model.load_state_dict(
        {n: ranks[0][f"end.{n}"] for n in names}, strict=False
    )
    assert not unexpected and not set(names) & set(missing)
    x = ids(3, 5, seed=7)
    with torch.no_grad():
        assert torch.equal(model(x), torch.tensor(result["trained"]))
    deployed = lrc.fold(model)
    path = lrc.export_onnx(deployed, tmp_path / "m.onnx", example_inputs=(ids(),))
    with torch.no_grad():
        assert rel_err(lrc.runtime.load(path)(x), deployed(x)) <= 1e-4
    assert lrc.inspect_onnx(path).is_pure_int4


def test_fsdp2_trains_gathers_and_folds_like_one_process(tmp_path):
    import fsdp_rank

    run_ranks(FSDP_SCRIPT, tmp_path, [0, 1, -1])  # two FSDP ranks and the single-process run
    sharded = load_file(str(tmp_path / "fsdp.safetensors"))
    single = load_file(str(tmp_path / "single.safetensors"))
    assert sharded.keys() == single.keys() and len(single) == 70  # 35 layers' A and B
    for name in single:
        assert rel_err(sharded[name], single[name]) <= 1e-3, name
    assert not all(torch.equal(single[n], torch.zeros_like(single[n])) for n in single)
    folded = []
    for adapters in (sharded, single):
        model = fsdp_rank.compiled()
        missing, unexpected = model.load_state_dict(adapters, strict=False)
        assert not unexpected and not set(adapters) & set(missing)
        folded.append(lrc.fold(model.eval()))
    x = fsdp_rank.global_batch(7)
    with torch.no_grad():
        assert rel_err(folded[0](x).logits, folded[1](x).logits) <= 1e-4
