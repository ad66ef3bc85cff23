"""One rank of tests/test_distributed.py's FSDP2 test, or (RANK -1) the single-process run it is
compared with: stories260K compiled with QA-LoRA, trained for ``STEPS`` AdamW steps on the same
global batches.

    python tests/fsdp_rank.py RANK WORLD OUT_DIR    (MASTER_ADDR / MASTER_PORT in the environment)

Each rank compiles the same base with the same seed (``fully_shard`` does not broadcast), shards
every decoder layer and the root (``torch.distributed.fsdp.fully_shard``, gloo), and trains on
its own rows of each global batch; rows have no padding, so the mean of the ranks' mean losses is
the global batch's mean loss. After training the full state dict is gathered
(``get_model_state_dict(..., full_state_dict=True)``) and rank 0 writes the adapters to
``OUT_DIR/fsdp.safetensors``; the single-process run writes ``OUT_DIR/single.safetensors``.
"""

import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import lowrank_compiler as lrc
from lowrank_compiler.app.pretrained import load_stories260k

STEPS, BATCH, SEQ = 3, 4, 24


def global_batch(step: int) -> torch.Tensor:
    """``[BATCH, SEQ]`` token ids, different each step (no padding, every position a label)."""
    g = torch.Generator().manual_seed(100 + step)
    return torch.randint(3, 512, (BATCH, SEQ), generator=g)


def compiled():
    model, _ = load_stories260k()
    torch.manual_seed(0)
    lrc.compile(model, lrc.Policy(method="qalora", rank=8), example_inputs=(global_batch(0)[:2],))
    return model.train()


def train(model, rows: slice) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(STEPS):
        ids = global_batch(step)[rows]
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


def adapter_entries(state: dict) -> dict:
    return {
        k: v.detach().contiguous().clone()
        for k, v in state.items()
        if k.endswith(("lora_A", "lora_B"))
    }


def main(rank: int, world: int, out: Path) -> None:
    torch.set_num_threads(1)
    if rank < 0:
        model = compiled()
        train(model, slice(None))
        save_file(adapter_entries(model.state_dict()), str(out / "single.safetensors"))
        return
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = compiled()
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    per = BATCH // world
    train(model, slice(rank * per, (rank + 1) * per))
    state = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if rank == 0:
        save_file(adapter_entries(state), str(out / "fsdp.safetensors"))
    dist.barrier()
    dist.destroy_process_group()
    # Every result is written: exit without interpreter teardown, where gloo's threads
    # have aborted a finished rank (std::terminate, SIGABRT) on a CI machine.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
