"""``transformers.Trainer`` with a compiled model: checkpoints of the adapters alone.

A compiled model trains under ``Trainer`` as it is (only the adapters require grad, so only they
get optimizer state), and ``resume_from_checkpoint`` restores an unbroken run exactly. Its
checkpoints hold the whole model, though: the frozen base too. ``adapter_checkpoints()`` returns
a ``TrainerCallback`` that writes ``save_adapters`` files (safetensors, KB to MB) at every save
step instead, ``<output_dir>/adapters-<step>/``, and by default skips the Trainer's own
checkpoint; ``load_adapters`` restores one into a fresh compile of the same base.
"""

from __future__ import annotations

from pathlib import Path

from .adapters import save_adapters


def adapter_checkpoints(*, keep_trainer_checkpoints: bool = False):
    """A ``transformers.TrainerCallback`` writing ``<output_dir>/adapters-<step>/`` at each save.

    keep_trainer_checkpoints: also let the Trainer write its ``checkpoint-<step>`` (the whole
        model, optimizer and scheduler: what ``resume_from_checkpoint`` needs).
    """
    try:
        from transformers import TrainerCallback
    except ImportError:
        raise ImportError('adapter_checkpoints needs transformers: pip install ".[hf]"') from None

    class AdapterCheckpoints(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if control.should_save and state.is_world_process_zero:
                save_adapters(model, Path(args.output_dir) / f"adapters-{state.global_step}")
            if not keep_trainer_checkpoints:
                control.should_save = False
            return control

    return AdapterCheckpoints()


__all__ = ["adapter_checkpoints"]
