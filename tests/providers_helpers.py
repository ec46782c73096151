"""Offline fixtures for the provider tests: a tiny random causal LM, a tiny GGUF, a fake OpenAI server.

Nothing here touches a model hub: tokenizers are built with the ``tokenizers``
library, weights are random (seeded), and the GGUF is written with gguf-py.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

WORDS = ("the a of and to in is was for on with as by at from it that this river city king film band "
         "player team club album song paris london berlin john mary smith french german english "
         "capital country year one two three yes no answer").split()
SPECIALS = ["[UNK]", "[PAD]", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def build_tiny_tokenizer() -> Any:
    """A word-level fast tokenizer over ``WORDS`` with a chat template (no eos: answers run to max tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   additional_special_tokens=SPECIALS[2:])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tiny_llama(path: Path, seed: int = 0) -> Path:
    """Save a 2-layer, 16-wide random Llama and its tokenizer to ``path``; return ``path``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=None, eos_token_id=None, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = None
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_tiny_gguf(path: Path, seed: int = 0, *, qtype: str | None = None, hidden: int = 16, ff: int = 32,
                    chat_template: str | None = None, add_bos: bool | None = None) -> Path:
    """Write a 2-layer random Llama as a GGUF file (byte-level BPE vocab).

    Tensors are F32, or with ``qtype`` (``"Q4_0"``, ``"Q8_0"``, ...) the 2-D
    weights are quantized with gguf-py's own quantizer (their rows must be a
    multiple of the type's block size: 32 for Q4_0); norms stay F32.
    ``chat_template`` replaces the default template; ``add_bos`` sets whether tokenizing adds the BOS token.
    """
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter, TokenType
    from gguf.quants import quantize
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    rng = np.random.default_rng(seed)
    byte_chars = list(bytes_to_unicode().values())
    merges = ["Ġ t", "h e", "Ġt he"]
    tokens = ["<|endoftext|>", "<|user|>", "<|assistant|>", *byte_chars, "Ġt", "he", "Ġthe"]
    types = [TokenType.CONTROL] * 3 + [TokenType.NORMAL] * (len(tokens) - 3)
    n_vocab, layers, heads = len(tokens), 2, 2
    quant = GGMLQuantizationType[qtype] if qtype else None

    w = GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_rope_dimension_count(hidden // heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_chat_template(chat_template or "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
                        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    if add_bos is not None:
        w.add_add_bos_token(add_bos)

    def tensor(name: str, *shape: int) -> None:
        data = (rng.standard_normal(shape) * 0.2).astype(np.float32)
        if quant is None:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, quantize(data, quant), raw_dtype=quant)

    tensor("token_embd.weight", n_vocab, hidden)
    for i in range(layers):
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensor(f"blk.{i}.{part}.weight", hidden, hidden)
        tensor(f"blk.{i}.ffn_gate.weight", ff, hidden)
        tensor(f"blk.{i}.ffn_up.weight", ff, hidden)
        tensor(f"blk.{i}.ffn_down.weight", hidden, ff)
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    tensor("output.weight", n_vocab, hidden)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_tiny_quantized_gguf(path: Path, seed: int = 0, qtype: str = "Q4_0") -> Path:
    """A 2-layer, 64-wide (feed-forward 128) random Llama GGUF with ``qtype`` (Q4_0) weights.

    The widths are multiples of 32 (Q4_0's block) and of 8 (the row groups
    llama.cpp's CPU repacking needs), so llama.cpp's extra buffer types can
    take these weights as they take the embedded Q4_K_M model's.
    """
    return write_tiny_gguf(path, seed, qtype=qtype, hidden=64, ff=128)


class FakeOpenAI:
    """A local HTTP server speaking enough of the OpenAI API for the tests.

    ``fail_first`` requests get HTTP 500 (``-1``: all of them); ``delay`` seconds
    are slept before answering. Each request body is kept in ``requests``.
    """

    def __init__(self, *, fail_first: int = 0, delay: float = 0.0, reply: str = "2", dim: int = 8,
                 top_logprobs: dict[str, float] | None = None):
        self.fail_first, self.delay, self.reply, self.dim = fail_first, delay, reply, dim
        self.top_logprobs = top_logprobs  # answered when a request asks for logprobs
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, path: str, body: dict) -> tuple[int, dict]:
        with self._lock:
            self.requests.append({"path": path, **body})
            n = len(self.requests)
        if self.fail_first < 0 or n <= self.fail_first:
            return 500, {"error": {"message": "boom", "type": "server_error"}}
        if path.endswith("/embeddings"):
            texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
            data = [{"object": "embedding", "index": i, "embedding": _fake_vector(str(t), self.dim)}
                    for i, t in enumerate(texts)]
            return 200, {"object": "list", "data": data, "model": body.get("model"),
                         "usage": {"prompt_tokens": 1, "total_tokens": 1}}
        choice: dict = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": self.reply}}
        if body.get("logprobs") and self.top_logprobs:
            top = [{"token": t, "logprob": lp, "bytes": None} for t, lp in self.top_logprobs.items()]
            choice["logprobs"] = {"content": [{"token": self.reply, "logprob": max(self.top_logprobs.values()),
                                               "bytes": None, "top_logprobs": top}]}
        return 200, {"id": "x", "object": "chat.completion", "created": 0, "model": body.get("model"),
                     "choices": [choice],
                     "usage": {"prompt_tokens": 11, "completion_tokens": 1, "total_tokens": 12}}

    def _handler(self) -> type:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if fake.delay:
                    time.sleep(fake.delay)
                status, payload = fake._answer(self.path, body)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: object) -> None:
                pass

        return Handler


def _fake_vector(text: str, dim: int) -> list[float]:
    """A deterministic bag-of-letters vector (shared letters -> higher cosine)."""
    vec = [0.0] * dim
    for ch in text.lower():
        if ch.isalpha():
            vec[ord(ch) % dim] += 1.0
    return vec

