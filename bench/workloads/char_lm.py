"""char-lm: a small decoder-only transformer on real text, loss per target token.

The workload where token-normalised gradient accumulation matters: documents have
different lengths, so micro-batches carry different numbers of target tokens, and
dividing each micro-batch's *mean* loss by k (``normalize = "micro"``) weights tokens
unequally, while dividing each micro-batch's *summed* loss by the window's token count
(``normalize = "sample"``) gives exactly the gradient of the window's mean token loss.

Data. By default the text is the Python standard library's own ``.py`` sources on this
machine (``sysconfig.get_paths()["stdlib"]``, walked in sorted order, ``site-packages``
skipped), so nothing is downloaded. ``corpus`` may instead name a text file or a folder
of text files. The bytes are read in order, only as many as the documents need (building
stays far under a second), and cut into consecutive documents whose lengths (tokens,
inputs and targets together) are drawn uniformly from ``[min_len, seq_len + 1]`` by a
generator seeded with ``data_seed``. Every tenth document, until ``val_samples`` are
taken, is held out for validation, so the validation set does not depend on ``samples``
and is spread over the same text as the training set. The same ``data_seed`` and corpus
give identical tensors; the default corpus differs between Python versions, so each
workload records ``corpus_sha256`` of the bytes it used.

Vocabulary: the 256 byte values plus one padding id (256). Documents are right-padded
to ``seq_len + 1`` tokens: ``tokens[i, :lengths[i]]`` is real, the rest is ``PAD_ID``.
"""

from __future__ import annotations

import hashlib
import math
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from bench.errors import ConfigError
from bench.workloads.base import Batch, Workload, check_fits
from bench.workloads.options import check_float, check_int

PAD_ID = 256
VOCAB_SIZE = 257  # 256 byte values + the padding id
VAL_EVERY = 10  # every VAL_EVERY-th document goes to validation until val_samples are taken
_LENGTH_CHUNK = 4096  # lengths are drawn in fixed chunks so a prefix never depends on N
_IGNORE = -100  # cross_entropy ignore_index for padded targets
_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


# -- model ---------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        # [B, T, D] -> [B, H, T, Q]
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))
        # is_causal: position i attends to j <= i only. Documents are right-padded, so
        # every real position precedes all padding of its row and never sees it: the
        # padding content cannot change a real position's output (masked scores are
        # -inf, their softmax weight exactly 0), and the loss masks padded targets.
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).reshape(b, t, d)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    """Pre-LN transformer block (GPT-2): x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model),
            nn.GELU(),
            nn.Linear(4 * d_model, d_model),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharTransformer(nn.Module):
    """Byte-level decoder-only transformer: learned positions, pre-LN, untied head.

    The head is untied from the token embedding: with a 257-symbol vocabulary it costs
    only 257 x d_model parameters, tying would make the padding row an output class
    that shares its vector with an input that must stay inert, and untied keeps the
    FLOP accounting plain (the two lookup tables do no arithmetic; every other
    parameter, the head included, sits in a matmul or is an elementwise scale/shift).
    """

    def __init__(
        self, *, seq_len: int, d_model: int, n_layers: int, n_heads: int, dropout: float
    ) -> None:
        super().__init__()
        self.seq_len, self.d_model, self.n_layers, self.n_heads = (
            seq_len,
            d_model,
            n_layers,
            n_heads,
        )
        self.tok_emb = nn.Embedding(VOCAB_SIZE, d_model)
        self.pos_emb = nn.Embedding(seq_len, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, dropout) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, VOCAB_SIZE, bias=False)
        self.apply(self._init)
        # GPT-2: residual projections scaled by 1/sqrt(2L) so the residual stream's
        # variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layers))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: [B, T] int64 token ids, T <= seq_len -> logits [B, T, VOCAB_SIZE]."""
        t = idx.shape[1]
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def non_embedding_params(self) -> int:
        """N in the PaLM formula: all parameters except the two lookup tables."""
        lookup = {id(self.tok_emb.weight), id(self.pos_emb.weight)}
        return sum(p.numel() for p in self.parameters() if id(p) not in lookup)


# -- workload ------------------------------------------------------------------------


@dataclass
class CharLMWorkload(Workload):
    """Batches are ``(tokens[B, seq_len+1] int64, lengths[B] int64)``; the unit is the target token."""

    corpus_sha256: str = ""
    corpus_bytes: int = 0

    def loss_sum(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        tokens, lengths = batch
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        logits = model(inputs)
        # Targets at or past a document's end are masked by its length, not by their
        # content, so whatever sits in the padding cannot enter the loss. The mask is
        # built on the device from lengths: no host sync. Masked logits get exactly zero
        # gradient. Under autocast, cross_entropy runs in float32.
        positions = torch.arange(targets.shape[1], device=targets.device)
        real = positions[None, :] < (lengths - 1)[:, None]
        targets = torch.where(real, targets, _IGNORE)
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=_IGNORE,
            reduction="sum",
        )

    def units(self, batch: Batch) -> torch.Tensor:
        # A document of L tokens has L - 1 targets (the same count loss_sum keeps). Kept on the batch's device (0-d
        # tensor) so the training loop does not sync with the host per micro-batch.
        _tokens, lengths = batch
        return (lengths - 1).sum()

    def flops_per_token_formula(self, model: nn.Module) -> float:
        """Training FLOPs per token, PaLM (Chowdhery et al. 2022, appendix B): 6N + 12·L·H·Q·T.

        N: non-embedding parameters (everything except the token and position tables;
        the untied head counts, it is a matmul). 6N: 2 FLOPs per multiply-add forward,
        twice that backward (gradients of inputs and of weights). 12·L·H·Q·T: attention
        scores QK^T and the weighted sum AV, each 2·T·H·Q per token per layer forward,
        times 3 for forward + backward. Assumptions: every position attends over the
        full T = seq_len (the causal half and padding are not discounted, as PaLM does
        not); biases and LayerNorm parameters are counted in N as if they were matmul
        weights (a small overcount); softmax, GELU, LayerNorm and the optimizer are
        not counted. Divide by the fraction of real tokens to get FLOPs per real token.
        """
        m = _unwrap(model)
        layers, heads, t = m.n_layers, m.n_heads, m.seq_len
        head_dim = m.d_model // heads
        return float(6 * m.non_embedding_params() + 12 * layers * heads * head_dim * t)


def _unwrap(model: nn.Module) -> CharTransformer:
    # torch.compile and DDP wrap the module; the formula needs the transformer's shape.
    for attr in ("_orig_mod", "module"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            model = inner
    if not isinstance(model, CharTransformer):
        raise TypeError(f"char-lm FLOP formula needs a CharTransformer, got {type(model).__name__}")
    return model


# -- data ----------------------------------------------------------------------------


def _sorted_files(root: Path, *, suffix: str | None) -> Iterator[Path]:
    """Regular files under root, depth first in sorted name order (deterministic).

    Hidden entries, ``__pycache__`` and installed packages are skipped; symlinked folders
    are not followed (no cycles). A generator, so reading stops as soon as enough bytes
    are in: the stdlib holds thousands of files and listing them all takes over a second.
    """
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise ConfigError(
            f"workload option corpus: cannot list {str(root)!r}: {exc.strerror}"
        ) from None
    for entry in entries:
        if entry.name.startswith(".") or entry.name in _SKIP_DIRS:
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from _sorted_files(Path(entry.path), suffix=suffix)
        elif entry.is_file() and (suffix is None or entry.name.endswith(suffix)):
            yield Path(entry.path)


def read_corpus(corpus: str | os.PathLike, need: int) -> bytes:
    """The first ``need`` bytes of the corpus, or a ConfigError when it has fewer."""
    if os.fspath(corpus) == "stdlib":
        root, suffix, label = Path(sysconfig.get_paths()["stdlib"]), ".py", "the standard library"
        files: Iterator[Path] = _sorted_files(root, suffix=suffix)
    else:
        path = Path(corpus).expanduser()
        label = repr(str(corpus))
        if not path.exists():
            raise ConfigError(
                f"workload option corpus: no such file or folder {str(corpus)!r} "
                "(give 'stdlib', a text file or a folder of text files)"
            )
        files = iter([path]) if path.is_file() else _sorted_files(path, suffix=None)
    parts: list[bytes] = []
    have = 0
    for f in files:
        try:
            with open(f, "rb") as fh:
                data = fh.read(need - have)
        except OSError as exc:
            raise ConfigError(
                f"workload option corpus: cannot read {str(f)!r}: {exc.strerror}"
            ) from None
        parts.append(data)
        have += len(data)
        if have >= need:
            break
    if have < need:
        raise ConfigError(
            f"workload option corpus: {label} has {have} bytes, but samples and val_samples "
            f"need {need}; lower samples, val_samples or seq_len, or give a larger corpus"
        )
    return b"".join(parts)


def document_lengths(count: int, *, min_len: int, max_len: int, data_seed: int) -> torch.Tensor:
    """``count`` lengths uniform in [min_len, max_len], a prefix-stable draw for a seed."""
    g = torch.Generator().manual_seed(data_seed)
    chunks = []
    for _ in range(-(-count // _LENGTH_CHUNK)):
        chunks.append(torch.randint(min_len, max_len + 1, (_LENGTH_CHUNK,), generator=g))
    return torch.cat(chunks)[:count] if chunks else torch.zeros(0, dtype=torch.int64)


def pack_documents(stream: torch.Tensor, lengths: torch.Tensor, width: int) -> torch.Tensor:
    """Consecutive slices of ``stream`` with the given lengths, right-padded to ``width``."""
    offsets = torch.cumsum(lengths, 0) - lengths
    cols = torch.arange(width)
    idx = (offsets[:, None] + cols[None, :]).clamp(max=stream.numel() - 1)
    tokens = stream[idx]
    tokens[cols[None, :] >= lengths[:, None]] = PAD_ID
    return tokens


def build(
    *,
    samples: int | None = None,
    val_samples: int = 512,
    seq_len: int = 128,
    d_model: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    min_len: int = 16,
    corpus: str = "stdlib",
    data_seed: int = 0,
    dropout: float = 0.0,
) -> CharLMWorkload:
    n = check_int("samples", 4096 if samples is None else samples, 1)
    val_samples = check_int("val_samples", val_samples, 1)
    seq_len = check_int("seq_len", seq_len, 1, 65536)
    d_model = check_int("d_model", d_model, 1)
    n_layers = check_int("n_layers", n_layers, 1)
    n_heads = check_int("n_heads", n_heads, 1)
    if d_model % n_heads:
        raise ConfigError(f"workload option n_heads must divide d_model ({d_model}), got {n_heads}")
    # A document needs at least 2 tokens to have one target; at most seq_len + 1.
    min_len = check_int("min_len", min_len, 2, seq_len + 1)
    data_seed = check_int("data_seed", data_seed, 0)
    dropout = check_float("dropout", dropout, 0.0, 0.99)
    if not isinstance(corpus, str | os.PathLike) or not os.fspath(corpus):
        raise ConfigError(
            f"workload option corpus must be 'stdlib' or a path to text, got {corpus!r}"
        )

    # Documents in stream order; document i is held out when i % VAL_EVERY == 0 and
    # fewer than val_samples are held out yet. Enough documents for both splits:
    total = max(n + val_samples, VAL_EVERY * (val_samples - 1) + 1)
    # Lengths (int64) and padded token rows (int64, seq_len + 1 wide), before drawing them.
    check_fits(f"{total} documents of up to {seq_len + 1} tokens", total * (seq_len + 2) * 8)
    lengths = document_lengths(total, min_len=min_len, max_len=seq_len + 1, data_seed=data_seed)
    need = int(lengths.sum())
    data = read_corpus(corpus, need)
    stream = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64)
    tokens = pack_documents(stream, lengths, seq_len + 1)

    index = torch.arange(total)
    is_val = (index % VAL_EVERY == 0) & (index // VAL_EVERY < val_samples)
    val_idx = index[is_val]
    train_idx = index[~is_val][:n]
    model_kw = dict(
        seq_len=seq_len, d_model=d_model, n_layers=n_layers, n_heads=n_heads, dropout=dropout
    )
    return CharLMWorkload(
        name="char-lm",
        train=(tokens[train_idx], lengths[train_idx]),
        val=(tokens[val_idx], lengths[val_idx]),
        make_model=lambda: CharTransformer(**model_kw),
        unit="token",
        options={
            "val_samples": val_samples,
            "seq_len": seq_len,
            "d_model": d_model,
            "n_layers": n_layers,
            "n_heads": n_heads,
            "min_len": min_len,
            "corpus": os.fspath(corpus),
            "data_seed": data_seed,
            "dropout": dropout,
        },
        corpus_sha256=hashlib.sha256(data).hexdigest(),
        corpus_bytes=need,
    )
