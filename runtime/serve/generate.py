"""``DecoderSession``: a KV-cache generation loop on plain onnxruntime, over a folder that
``export_genai`` wrote (or any onnxruntime-genai folder with separate past/present tensors
or GPT-2's combined ones).

    session = lowrank_compiler.runtime.load("out/llama")   # a DecoderSession
    tokens = session.generate(input_ids, attention_mask, max_new_tokens=32)

- The names, layer count, KV shapes, ``context_length`` and the bos/eos/pad ids come from
  the folder's ``genai_config.json``; the graph's own input types (int32 or int64 masks
  and positions, float32 or float16 caches) from onnxruntime.
- Batches are left-padded (as HF's ``generate`` wants for decoders): each row's
  ``attention_mask`` is zeros then ones; position ids are ``cumsum(mask) - 1`` (1 where
  the mask is 0), as HF computes them. A right-padded mask is refused.
- The folder's ``decoder.session_options`` apply as onnxruntime-genai applies them: dotted
  string entries (``session.qdq_matmulnbits_accuracy_level``, which keeps a QDQ file at its
  accuracy level) become session config entries; ``intra_op_num_threads`` unless ``threads``.
- Shared buffers (``search.past_present_share_buffer: true``, the GroupQueryAttention graph):
  each layer's key and value live in one ``OrtValue`` ``[batch, kv_heads, M, head_size]``,
  ``M = prompt + max_new_tokens``, bound with IO binding as both the past input and the present
  output, so onnxruntime writes the new keys in place. Such a graph derives positions from the
  mask (``seqlens_k = sum(mask) - 1``; a first prompt sits at 0..S-1 in every row), so each
  left-padded row is moved to the front internally (right padding): the prompt runs as
  ``[batch, longest]`` with mask row sums = each row's length, and the logits read at each
  row's last token; every later step's mask has each row's length in ones and the longest
  total as its width. Tokens and logits are HF's for the left-padded batch.
- A row stops at its first eos token; later steps give it the pad id, and the loop ends
  when every row has stopped or after ``max_new_tokens``. The result is ``[batch,
  prompt + steps]`` int64 (a torch tensor), prompt included, as HF's ``generate`` returns.
- ``prompt + max_new_tokens`` above ``context_length`` is a ``ValueError`` before any work.
- ``streamer``: a callable gets each step's new tokens once, an int64 numpy array
  ``[batch]`` (pad for rows already stopped). An object with ``put`` and ``end`` follows
  HF's streamer protocol: ``put(prompt)`` once, then ``put(tokens)`` (a torch tensor
  ``[batch]``) every step, then ``end()``; HF's ``TextStreamer(tokenizer, skip_prompt=True)``
  and ``TextIteratorStreamer`` work as they do with HF (batch 1).

Imports numpy, torch and onnxruntime only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from ..errors import ModelFileError
from ..onnx.file import read_model
from ..quant.formats import check_accuracy_level
from .adapters import AdapterSlots, constant_tensors, swappable
from .decoding import check_sampling, eos_set, prompt_arrays, sample, streamer_put
from .providers import default_providers

CONFIG = "genai_config.json"
_NP = {
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
}


def _session_options(
    session_options: dict, threads: int | None, accuracy_level: int | None
) -> ort.SessionOptions:
    """The folder's ``decoder.session_options`` as onnxruntime-genai applies them, then ours."""
    options = ort.SessionOptions()
    # as onnxruntime-genai: dotted names are config entries
    for key, value in session_options.items():
        if isinstance(value, str) and "." in key:
            options.add_session_config_entry(key, value)
    # as Session: pins QDQ graphs' level (MatMulNBits nodes carry their own)
    if accuracy_level is not None:
        options.add_session_config_entry(
            "session.qdq_matmulnbits_accuracy_level", str(accuracy_level)
        )
    if threads is None and isinstance(session_options.get("intra_op_num_threads"), int):
        threads = session_options["intra_op_num_threads"]
    if threads is not None:
        options.intra_op_num_threads = threads
    return options


class DecoderSession(AdapterSlots):
    def __init__(
        self,
        path: str | os.PathLike,
        providers: list[str] | None = None,
        threads: int | None = None,
        accuracy_level: int | None = None,
    ):
        self.path = Path(path)
        self._loaded = {}  # adapters by name (load_adapter)
        if accuracy_level is not None:
            check_accuracy_level(accuracy_level)
        decoder, filename = self._read_config(self.path / CONFIG)
        self._read_names(decoder, self.path / CONFIG)
        quiet = swappable(self.path)  # onnxruntime warns once per overridable zero point

        def options() -> ort.SessionOptions:
            made = _session_options(decoder.get("session_options", {}), threads, accuracy_level)
            if quiet:
                made.log_severity_level = 3
            return made

        self._options = options
        self._open(filename, options(), providers)

    def _read_config(self, config_path: Path) -> tuple[dict, str]:
        """The cache's sizes, ``context_length`` and token ids from ``genai_config.json``;
        returns its decoder section and the ONNX file's name."""
        if not config_path.is_file():
            raise ModelFileError(
                f"{str(self.path)!r} has no {CONFIG}: not an onnxruntime-genai folder"
            )
        try:
            config = json.loads(config_path.read_text())
            model = config["model"]
            decoder = model["decoder"]
            self.layers = int(decoder["num_hidden_layers"])
            self.kv_heads = int(decoder["num_key_value_heads"])
            self.head_size = int(decoder["head_size"])
            self.context_length = int(model["context_length"])
            filename = decoder["filename"]
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(f"{str(config_path)!r} lacks what a decoder needs ({e!r})") from e
        self.shared = bool(config.get("search", {}).get("past_present_share_buffer", False))
        self.config = config
        self.type = model.get("type", "decoder")
        self.bos_token_id = model.get("bos_token_id")
        self.eos_token_id = model.get("eos_token_id")
        self.pad_token_id = model.get("pad_token_id")
        return decoder, filename

    def _read_names(self, decoder: dict, config_path: Path) -> None:
        """The graph's input and output names: the config's, else onnxruntime-genai's defaults;
        GPT-2's form (``past_names``) has one combined past tensor per layer."""
        names_in = decoder.get("inputs", {})
        names_out = decoder.get("outputs", {})
        self.combined = bool(names_in.get("past_names"))
        if self.combined and self.shared:
            raise ModelFileError(
                f"{str(config_path)!r}: a shared past/present buffer with combined past_%d tensors "
                f"(GPT-2's form) is not supported"
            )
        if self.combined:
            self.past_names = [names_in["past_names"] % i for i in range(self.layers)]
            self.present_names = [
                names_out.get("present_names", "present_%d") % i for i in range(self.layers)
            ]
        else:
            pk = names_in.get("past_key_names", "past_key_values.%d.key")
            pv = names_in.get("past_value_names", "past_key_values.%d.value")
            ok = names_out.get("present_key_names", "present.%d.key")
            ov = names_out.get("present_value_names", "present.%d.value")
            self.past_names = [n % i for i in range(self.layers) for n in (pk, pv)]
            self.present_names = [n % i for i in range(self.layers) for n in (ok, ov)]
        self.ids_name = names_in.get("input_ids", "input_ids")
        self.mask_name = names_in.get("attention_mask", "attention_mask")
        self.pos_name = names_in.get("position_ids", "position_ids")
        self.logits_name = names_out.get("logits", "logits")

    def _open(self, filename: str, options: ort.SessionOptions, providers: list[str] | None):
        """The onnxruntime session of the folder's graph, and the inputs it takes."""
        # checked first: missing, truncated, or data outside the folder
        self._constants = constant_tensors(read_model(self.path / filename))
        self._file, self._providers = self.path / filename, providers or default_providers()
        try:
            self.session = ort.InferenceSession(str(self._file), options, providers=self._providers)
        except Exception as e:
            raise ModelFileError(f"onnxruntime cannot load {str(self._file)!r}: {e}") from e
        self.input_types = {i.name: _NP.get(i.type) for i in self.session.get_inputs()}
        missing = [n for n in [self.ids_name, *self.past_names] if n not in self.input_types]
        if missing:
            raise ModelFileError(
                f"{filename} has no input(s) {missing}; it takes {list(self.input_types)}"
            )
        self.kv_dtype = self.input_types[self.past_names[0]] or np.float32
        self.output_names = [self.logits_name, *self.present_names]

    def _new_session(self, hook) -> ort.InferenceSession:
        """Another session of the folder's graph with the same options, after ``hook(options)``
        (an adapter's own session: ``AdapterSlots``)."""
        options = self._options()
        hook(options)
        return ort.InferenceSession(str(self._file), options, providers=self._providers)

    def empty_past(self, batch: int, length: int | None = None) -> list:
        """An empty cache: zero-length numpy arrays, or for shared buffers zeroed ``OrtValue``s
        ``[batch, kv_heads, length, head_size]`` (default length: ``context_length``)."""
        if self.shared:
            length = self.context_length if length is None else length
            shape = (batch, self.kv_heads, length, self.head_size)
            return [
                ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, self.kv_dtype))
                for _ in self.past_names
            ]
        shape = (batch, self.kv_heads, 0, self.head_size)
        if self.combined:
            shape = (2, *shape)
        return [np.zeros(shape, self.kv_dtype) for _ in self.past_names]

    def step(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray | None,
        past: list,
        adapter: str | None = None,
    ) -> tuple[np.ndarray, list]:
        """One run of the graph: ``(logits [batch, seq, vocab], presents)``. Shared buffers are
        updated in place and returned as they are (``position_ids`` is then unused). ``adapter``:
        the name of a loaded adapter to apply (``load_adapter``)."""
        feeds = {
            self.ids_name: np.ascontiguousarray(
                input_ids, self.input_types[self.ids_name] or np.int64
            )
        }
        if self.mask_name in self.input_types:
            feeds[self.mask_name] = np.ascontiguousarray(
                attention_mask, self.input_types[self.mask_name]
            )
        if self.pos_name in self.input_types:
            feeds[self.pos_name] = np.ascontiguousarray(
                position_ids, self.input_types[self.pos_name]
            )
        session, overrides = self.adapter_run(adapter)
        feeds.update(overrides)
        if not self.shared:
            feeds.update(zip(self.past_names, past))
            out = session.run(self.output_names, feeds)
            return out[0], out[1:]
        if overrides:  # IO binding takes no overridden initializer: the cache is copied
            values = {n: ort.OrtValue.ortvalue_from_numpy(a) for n, a in feeds.items()}
            out = session.run_with_ort_values(
                self.output_names, {**values, **dict(zip(self.past_names, past))}
            )
            return out[0].numpy(), list(out[1:])
        binding = session.io_binding()
        for name, array in feeds.items():  # feeds stays referenced until the run is over
            binding.bind_cpu_input(name, array)
        binding.bind_output(self.logits_name)  # first: get_outputs() follows the binding order
        for past_name, present_name, buffer in zip(self.past_names, self.present_names, past):
            binding.bind_ortvalue_input(past_name, buffer)
            binding.bind_ortvalue_output(present_name, buffer)  # the same buffer: updated in place
        session.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy(), past

    def generate(
        self,
        input_ids,
        attention_mask=None,
        *,
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        eos_token_id=None,
        pad_token_id: int | None = None,
        streamer=None,
        output_logits: bool = False,
        adapter: str | None = None,
    ):
        """Prompt plus up to ``max_new_tokens`` new tokens per row, ``[batch, prompt + steps]``
        int64.

        Greedy by default; ``do_sample=True`` samples from softmax(logits / temperature) after
        top-k (0: off) and top-p (1.0: off) filtering, from a numpy generator seeded by ``seed``.
        eos_token_id / pad_token_id: default the folder's (``genai_config.json``).
        output_logits: also return each step's last-position logits, a list of ``[batch, vocab]``
        float32 arrays (as HF's ``output_logits=True``).
        adapter: a loaded adapter's name (``load_adapter``), applied to every step; None: the base.
        """
        self.adapter_run(adapter)  # an unknown name fails before any work
        ids, mask = prompt_arrays(input_ids, attention_mask)
        batch, prompt = ids.shape
        self._check_length(prompt, max_new_tokens)
        if do_sample:
            check_sampling(temperature, top_k, top_p)
        eos = eos_set(self.eos_token_id if eos_token_id is None else eos_token_id)
        pad = pad_token_id if pad_token_id is not None else self.pad_token_id
        if pad is None:
            pad = eos[0] if eos else 0
        rng = np.random.default_rng(seed)
        put = streamer_put(streamer)
        if put is not None:
            put(torch.from_numpy(ids.copy()))

        tokens = [ids]
        new_ids, step_mask, step_pos, last_index, past = self._first_step(
            ids, mask, pad, max_new_tokens
        )
        logits_out = []
        finished = np.zeros(batch, dtype=bool)
        for _ in range(max_new_tokens):
            logits, past = self.step(new_ids, step_mask, step_pos, past, adapter)
            last = logits[np.arange(batch), last_index, :].astype(np.float32)  # (B, V)
            last_index = np.zeros(batch, np.int64)  # later steps: one token per row
            if output_logits:
                logits_out.append(last.copy())
            chosen = (
                sample(last, temperature, top_k, top_p, rng) if do_sample else last.argmax(axis=-1)
            )
            chosen = np.where(finished, pad, chosen).astype(np.int64)
            tokens.append(chosen[:, None])
            if put is not None:
                put(torch.from_numpy(chosen.copy()))
            elif streamer is not None:
                streamer(chosen.copy())
            if eos:
                finished |= np.isin(chosen, eos)
                if finished.all():
                    break
            new_ids = chosen[:, None]
            step_mask, step_pos = self._next_step(step_mask)
        if streamer is not None and put is not None and hasattr(streamer, "end"):
            streamer.end()
        result = torch.from_numpy(np.concatenate(tokens, axis=1))
        return (result, logits_out) if output_logits else result

    def _check_length(self, prompt: int, max_new_tokens) -> None:
        if (
            isinstance(max_new_tokens, bool)
            or not isinstance(max_new_tokens, int)
            or max_new_tokens < 0
        ):
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        if prompt + max_new_tokens > self.context_length:
            raise ValueError(
                f"prompt of {prompt} tokens + max_new_tokens {max_new_tokens} = "
                f"{prompt + max_new_tokens} exceeds the model's context_length "
                f"{self.context_length}"
            )

    def _first_step(self, ids: np.ndarray, mask: np.ndarray, pad: int, max_new_tokens: int):
        """The prompt's run: ``(ids, mask, positions, last_index, past)``, ``last_index`` each
        row's last token. Shared buffers: each row's tokens moved to the front (module
        docstring), the buffers long enough for the longest row and every new token."""
        batch = ids.shape[0]
        if self.shared:
            lengths = mask.sum(axis=1)  # (B,)
            width = int(lengths.max())
            new_ids = np.full((batch, width), pad, np.int64)
            for row in range(batch):
                new_ids[row, : lengths[row]] = ids[row, mask[row] == 1]
            step_mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
            past = self.empty_past(batch, width + max_new_tokens)
            return new_ids, step_mask, None, lengths - 1, past
        positions = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 1)
        last_index = np.full(batch, ids.shape[1] - 1)
        return ids, mask, positions, last_index, self.empty_past(batch)

    def _next_step(self, step_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The mask and positions of a step after ``step_mask``'s, one new token per row."""
        if self.shared:  # each row one longer (its mask row sums to its length); width the longest
            lengths = step_mask.sum(axis=1) + 1  # (B,)
            width = int(lengths.max())
            return (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64), None
        step_pos = step_mask.sum(axis=1, keepdims=True)  # the new token's position: tokens so far
        ones = np.ones((step_mask.shape[0], 1), np.int64)
        return np.concatenate([step_mask, ones], axis=1), step_pos


__all__ = ["DecoderSession"]
