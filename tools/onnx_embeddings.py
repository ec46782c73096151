"""A sentence-transformers model run by ONNX Runtime: the ``onnx:`` embedding provider.

``embedding_model=onnx:embedded`` is the packaged MiniLM, ``onnx:<folder>`` any local
sentence-transformers folder (``onnx:<hub id>`` downloads it first, where a hub is reachable).
The model's transformer is exported to ONNX once (``torch.onnx.export``, needs the ``onnx``
package) into ``<cache dir>/onnx/``, keyed by the folder and its weights file's size and time;
later processes load the file. Tokenizer, truncation length and pooling are the folder's own
(``sentence_bert_config.json``, ``1_Pooling/config.json``: mean or CLS pooling), so the vectors
are the sentence-transformers ones up to float rounding (about 2e-7 for MiniLM, measured in
``tests/test_onnx_embeddings.py``), and about twice as fast on a CPU (docs/batch-speed.md).

``onnx-int8:`` (``embedding_model=onnx-int8:embedded``, opt-in) runs the same export with its weights
quantized to 8-bit integers (``onnxruntime.quantization.quantize_dynamic``: QInt8 weights, one scale per
output channel, activations quantized on the fly). The quantized file is made once from the float
export, beside it (``<name>-int8pc.onnx``), and made again when damaged. Activations are quantized with one
scale per run, so texts are run one at a time (:data:`INT8_BATCH`): a text's vector is then its own, not
moved by the texts beside it (by up to 0.045 per coordinate in runs of 32). Its vectors are close to the
float ones but not the same (cosine 0.992 on average, 0.985 at worst on 500 WikiMEL entity texts) and it
embeds about 1.6 times as many texts per second on one CPU thread (docs/batch-speed.md). ONNX Runtime's
transformer optimizer (``onnxruntime.transformers.optimizer``) was tried before quantizing: no attention
fusion on this export, and no faster (ONNX Runtime's own graph optimizations already run at session
start), so it is not used.

Texts are tokenized once and run longest first by token count (float: :data:`BATCH` per run), so a run
pads little; on this machine's CPU that was a third faster than runs of 32 sorted by characters, with the
same vectors.

Vectors of ``onnx:``, ``onnx-int8:`` and of the torch providers are kept apart: the spec is the embedding id
(``tools.embeddings.embedding_id``; ``onnx-int8:`` adds the quantization recipe and run size, :data:`INT8_ID`), so
caches and knowledge bases of one are not used by another.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings

from tools.errors import ConfigError, ModelError

# texts per run, sorted by token count: on 2 cores of this machine 8 was the fastest of 1-64 (a third faster
# than 32 sorted by characters, the same vectors: docs/batch-speed.md)
BATCH = 8
# one text per run with 8-bit weights: dynamic quantization takes one activation scale per tensor, i.e. per
# run, so a text's vector would depend on the texts run beside it (up to 0.045 per coordinate, measured);
# alone, it is its own, wherever it is embedded (and it was not slower)
INT8_BATCH = 1
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# how onnx-int8: quantizes (in its file name and embedding id: another recipe is another file and other vectors)
QUANT_RECIPE = "int8pc"
# the embedding id's part for how onnx-int8: runs (one text per run, INT8_BATCH): the vectors of the earlier
# batched runs were other vectors, so their caches and knowledge bases are not taken as this one's
INT8_ID = f"{QUANT_RECIPE}-1"


def model_folder(name: str, embedded: Path | None = None) -> Path:
    """The local folder of ``name``: ``embedded`` (the packaged MiniLM's folder, given by the caller as
    ``embedded``), a folder, or a hub id (downloaded)."""
    if name in ("", "embedded"):
        if embedded is None:
            raise ConfigError("embedding_model 'onnx:embedded': the packaged model's folder was not given")
        return embedded
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists() or name.startswith((".", "/", "~")):
        raise ConfigError(f"embedding_model 'onnx:{name}': not a sentence-transformers folder")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name))
    except Exception as exc:
        raise ModelError(f"embedding_model 'onnx:{name}': not a local folder, and the hub could not provide it: "
                         f"{type(exc).__name__}: {exc}") from exc


def _pooling(folder: Path) -> str:
    cfg = folder / "1_Pooling" / "config.json"
    if not cfg.is_file():
        return "mean"
    modes = json.loads(cfg.read_text(encoding="utf-8"))
    chosen = [k for k, v in modes.items() if k.startswith("pooling_mode_") and v is True]
    mode = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}.get(chosen[0] if len(chosen) == 1
                                                                                     else "", None)
    if mode is None:
        raise ConfigError(f"embedding_model onnx: {folder} pools with {chosen}; onnx: supports mean or CLS pooling "
                          "(use huggingface: for this model)")
    return mode


def _export_path(folder: Path) -> Path:
    from tools.cache import cache_dir

    weights = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()), None)
    if weights is None:
        raise ConfigError(f"embedding_model onnx: no model.safetensors or pytorch_model.bin in {folder}")
    st = weights.stat()
    key = hashlib.sha1(f"{folder.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir().parent / "onnx" / f"{folder.name}-{key}.onnx"


def export(folder: Path, path: Path) -> None:
    """Export ``folder``'s transformer to ``path`` (written beside, then renamed: never a half file)."""
    try:
        import onnx  # noqa: F401 - torch's exporter needs it; say so here rather than deep inside
    except ImportError as exc:
        raise ModelError("embedding_model onnx: the onnx package is needed to export the model once "
                         "(pip install onnx)") from exc
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(folder)).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))

    class Body(torch.nn.Module):
        def __init__(self, inner: Any):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    sample = tok(["an example", "another, longer example text"], padding=True, return_tensors="pt")
    if "token_type_ids" not in sample:
        sample["token_type_ids"] = torch.zeros_like(sample["input_ids"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    axes = {k: {0: "batch", 1: "tokens"} for k in (*INPUTS, "hidden")}
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shapes it fixes: dynamic axes keep them free
        torch.onnx.export(Body(model), tuple(sample[k] for k in INPUTS), str(tmp), input_names=list(INPUTS),
                          output_names=["hidden"], dynamic_axes=axes, opset_version=17, dynamo=False)
    os.replace(tmp, path)


def quantized_path(path: Path) -> Path:
    """Where the int8 model made from the float export ``path`` is kept: beside it."""
    return path.with_name(f"{path.stem}-{QUANT_RECIPE}.onnx")


class _QuietAdvice(logging.Filter):
    """Drops the quantizer's advice to pre-process the model (a root-logger warning on every call)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantize(folder: Path, path: Path, qpath: Path) -> None:
    """Write the int8 model of ``folder`` to ``qpath`` from its float export ``path`` (exported first when
    missing, and again when it cannot be read). Written beside, then renamed: never a half file."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if not path.is_file():
        export(folder, path)
    tmp = qpath.with_name(f"{qpath.name}.{os.getpid()}.tmp")
    quiet = _QuietAdvice()
    logging.getLogger().addFilter(quiet)
    try:
        for attempt in (1, 2):
            try:
                quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
                break
            except Exception:
                if attempt == 2:
                    raise
                export(folder, path)  # a damaged float export: make it again, once
    finally:
        logging.getLogger().removeFilter(quiet)
    os.replace(tmp, qpath)


class OnnxEmbeddings(Embeddings):
    """LangChain ``Embeddings`` of a sentence-transformers folder, run by ONNX Runtime (unit vectors)."""

    def __init__(self, name: str, embedded: Path | None = None, *, int8: bool = False):
        """``name``: ``embedded`` (then ``embedded`` is the packaged model's folder), a folder or a hub id;
        ``int8``: run the model with 8-bit weights (:func:`quantize`; the ``onnx-int8:`` provider)."""
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.name = name
        folder = model_folder(name, embedded)
        self.pooling = _pooling(folder)
        cfg = folder / "sentence_bert_config.json"
        self.max_length = int(json.loads(cfg.read_text(encoding="utf-8")).get("max_seq_length", 512)) \
            if cfg.is_file() else 512
        float_path = _export_path(folder)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.int8 = bool(int8)
        path = quantized_path(float_path) if self.int8 else float_path

        def make() -> None:
            if self.int8:
                quantize(folder, float_path, path)
            else:
                export(folder, path)

        if not path.is_file():
            make()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = _threads()
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception:  # a damaged file in the cache (a disk error, a hand edit): make it again, once
            make()
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.path = path
        self.inputs = [i.name for i in self.session.get_inputs() if i.name in INPUTS] or list(INPUTS)
        self._lock = threading.Lock()

    def _batch(self, rows: list[list[int]]) -> np.ndarray:
        """Unit vectors of the token-id ``rows`` (longest first), padded to the first one's length."""
        width = len(rows[0])
        ids = np.zeros((len(rows), width), np.int64)
        mask = np.zeros_like(ids)
        for r, row in enumerate(rows):
            ids[r, :len(row)] = row
            mask[r, :len(row)] = 1
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        feed = {k: feed[k] for k in self.inputs}
        with self._lock:  # one run at a time: the session already uses the actor's threads
            hidden = self.session.run(None, feed)[0]
        if self.pooling == "cls":
            vecs = hidden[:, 0]
        else:
            weights = mask[..., None].astype(np.float32)
            vecs = (hidden * weights).sum(axis=1) / weights.sum(axis=1).clip(min=1e-9)
        return vecs / np.linalg.norm(vecs, axis=1, keepdims=True).clip(min=1e-12)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Unit vectors of ``texts``: tokenized once, run longest first in runs of texts of about the same
        length (:data:`BATCH` per run; one per run for ``int8``: see :data:`INT8_BATCH`)."""
        if not texts:
            return []
        rows = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: -len(rows[i]))
        size = INT8_BATCH if self.int8 else BATCH
        vecs = np.concatenate([self._batch([rows[i] for i in order[s:s + size]])
                               for s in range(0, len(order), size)])
        out = np.empty_like(vecs)
        out[order] = vecs
        return out.tolist()

    def embed_query(self, text: str) -> list[float]:
        """The unit vector of one text."""
        return self.embed_documents([text])[0]


def _threads() -> int:
    """ONNX Runtime's threads: torch's setting (``OMP_NUM_THREADS``, which batch actors get), else the cores."""
    try:
        import torch

        return max(1, torch.get_num_threads())
    except Exception:
        return max(1, os.cpu_count() or 1)
