"""One rank of tests/test_distributed.py: a compiled QA-LoRA TinyGPT trained under
DistributedDataParallel.

    python tests/ddp_rank.py RANK WORLD OUT_DIR    (MASTER_ADDR / MASTER_PORT in the environment)

Every rank builds the same base model, but its adapters start from a rank-specific seed:
DDP's broadcast from rank 0 at construction must make them equal. Each rank then trains on
its own batches; the all-reduced gradients keep the adapters equal. Each rank writes its
adapters (after the broadcast and after training) to ``OUT_DIR/rank<r>.safetensors``;
rank 0 then folds the unwrapped module and writes ``OUT_DIR/rank0.json`` (its fold error
and its output on a probe batch). The test exports the result in its own process: a
first ONNX export in a fresh process spends most of its time importing the exporter.
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from models import ids, lm_loss, rel_err, tiny_gpt
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel as DDP

import lowrank_compiler as lrc

STEPS = 3


def main(rank: int, world: int, out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = tiny_gpt(seed=0)  # the same base weights on every rank
    torch.manual_seed(1 + rank)  # different adapter inits: DDP must broadcast rank 0's
    lrc.compile(model, lrc.Policy(method="qalora", group_size=16, rank=4))
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    ddp = DDP(
        model, broadcast_buffers=False
    )  # the integer buffers are frozen and equal on every rank
    start = {f"start.{n}": p.detach().clone() for n, p in trainable}
    opt = torch.optim.AdamW([p for _, p in trainable], lr=1e-2)
    for step in range(STEPS):
        loss = lm_loss(ddp, ids(batch=2, seq=8, seed=1000 * rank + step))  # each rank its own data
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = {f"end.{n}": p.detach().clone() for n, p in trainable}
    save_file({**start, **end}, str(out / f"rank{rank}.safetensors"))
    if rank == 0:
        deployed = lrc.fold(ddp.module)  # fold the unwrapped module
        x = ids(3, 5, seed=7)
        with torch.no_grad():
            trained, folded = model(x), deployed(x)
        (out / "rank0.json").write_text(
            json.dumps(
                {
                    "trainable": sorted(n for n, _ in trainable),
                    "fold_err": rel_err(folded, trained),
                    "trained": trained.tolist(),
                }
            )
        )
    dist.barrier()
    dist.destroy_process_group()
    # Every result is written: exit without interpreter teardown, where gloo's threads
    # have aborted a finished rank (std::terminate, SIGABRT) on a CI machine.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
