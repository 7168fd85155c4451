"""A character-level transformer language model on a text that ships with Python.

``--model workers.examples.char_lm:char_transformer`` builds the model, ``--data
workers.examples.char_lm:python_license`` loads the text: the interpreter's own LICENSE.txt
(next to the standard library, ``os.path.dirname(os.__file__)``), or the source of the
``os`` module where an installation lacks it. Nothing is downloaded.

Characters are ASCII codes (``VOCAB`` = 128; anything else reads as ``?``). A sample is
``CONTEXT`` consecutive characters as int64 token ids ``(N, T)``, its target the next
character at each position ``(N, T)``; the default loss (``cross_entropy``) is then the
per-sample mean next-character cross-entropy, and ``accuracy`` the fraction of characters
predicted. The first 90 % of the text gives the training windows, the rest the test ones.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

VOCAB = 128
CONTEXT = 32
STRIDE = 8
TRAIN_FRACTION = 0.9


def text_path() -> Path:
    """The text the loader reads: the standard library's LICENSE.txt, else ``os.py``."""
    stdlib = Path(os.path.dirname(os.__file__))
    license_file = stdlib / "LICENSE.txt"
    return license_file if license_file.is_file() else Path(os.__file__)


def encode(text: str) -> np.ndarray:
    """ASCII codes of ``text`` as int64 (non-ASCII characters become ``?``)."""
    return np.frombuffer(text.encode("ascii", "replace"), dtype=np.uint8).astype(np.int64)


def windows(tokens: np.ndarray, context: int = CONTEXT,
            stride: int = STRIDE) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``tokens[s:s+T]`` and targets ``tokens[s+1:s+T+1]`` for starts every
    ``stride`` characters: two int64 arrays ``(N, T)``."""
    starts = np.arange(0, len(tokens) - context - 1, stride)
    index = starts[:, None] + np.arange(context)[None, :]
    return tokens[index], tokens[index + 1]


def python_license() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The data loader: ``(x_train, y_train, x_test, y_test)``, int64 ``(N, CONTEXT)``."""
    tokens = encode(text_path().read_text(encoding="utf-8", errors="replace"))
    cut = int(len(tokens) * TRAIN_FRACTION)
    x_train, y_train = windows(tokens[:cut])
    x_test, y_test = windows(tokens[cut:])
    return x_train, y_train, x_test, y_test


class CausalBlock(nn.Module):
    """Pre-norm transformer block: causal self-attention, then a two-layer MLP."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``(b, T, width)`` → ``(b, T, width)``; position t attends to positions <= t."""
        b, t, width = h.shape
        q, k, v = self.qkv(self.norm1(h)).split(width, dim=2)
        q, k, v = (z.reshape(b, t, self.heads, width // self.heads).transpose(1, 2)
                   for z in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.proj(attended.transpose(1, 2).reshape(b, t, width))
        out: torch.Tensor = h + self.mlp(self.norm2(h))
        return out


class CharTransformer(nn.Module):
    """Token ids ``(b, T)`` → next-token logits ``(b, T, vocab)``."""

    def __init__(self, vocab: int, context: int, width: int, heads: int, layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.randn(context, width) / math.sqrt(width))
        self.blocks = nn.Sequential(*(CausalBlock(width, heads) for _ in range(layers)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits for the character after each position of ``tokens``."""
        h = self.embed(tokens) + self.position[: tokens.shape[1]]
        out: torch.Tensor = self.head(self.norm(self.blocks(h)))
        return out


def char_transformer(width: int = 32, heads: int = 2, layers: int = 1,
                     context: int = CONTEXT) -> nn.Module:
    """The model factory (``--model-arg width=64`` etc.): a small causal transformer over
    ``VOCAB`` characters, for contexts of up to ``context`` characters."""
    if width < 1 or heads < 1 or width % heads or layers < 1 or context < 1:
        raise ValueError(f"char_transformer needs width divisible by heads and positive "
                         f"sizes, got width={width}, heads={heads}, layers={layers}, "
                         f"context={context}")
    return CharTransformer(VOCAB, context, width, heads, layers)
