"""The CLIP byte-level BPE tokenizer, offline, from the shipped merges file.

Ids equal ``open_clip.tokenize``: ``<start_of_text>`` 49406, ``<end_of_text>`` 49407,
zero padding to the context length (77), and truncation that keeps the end token
at the last position. Text cleanup: ftfy, double html unescape, whitespace
collapse, lower case. ``pad_token_id`` serves the Hugging Face layout
(``CLIPTokenizer`` padding with another id, e.g. the end token).
"""
from __future__ import annotations

import functools
import gzip
import html
import json
import os
import pathlib
import warnings
from typing import Iterable, Optional, Sequence, Union

import numpy as np

DEFAULT_BPE = pathlib.Path(__file__).resolve().parents[1] / "assets" / "bpe_simple_vocab_16e6.txt.gz"
CONTEXT_LENGTH = 77
NUM_MERGES = 49152 - 256 - 2  # merges used by CLIP (lines 1..48894 of the file)

_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


@functools.lru_cache()
def byte_to_unicode() -> dict[int, str]:
    """Reversible map of the 256 byte values to printable unicode characters (GPT-2/CLIP)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def clean_text(text: str) -> str:
    """ftfy fix, double html unescape, collapse whitespace, lower case (open_clip 'lower')."""
    import ftfy

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).strip().lower()


def _pairs(word: Sequence[str]) -> set[tuple[str, str]]:
    return {(a, b) for a, b in zip(word[:-1], word[1:])}


class CLIPTokenizer:
    """CLIP BPE tokenizer; ``tokenizer(texts) -> int32 (n, context_length)``."""

    SOT = "<start_of_text>"
    EOT = "<end_of_text>"

    def __init__(
        self,
        bpe_path: Union[str, os.PathLike, None] = None,
        *,
        context_length: int = CONTEXT_LENGTH,
        pad_token_id: int = 0,
    ):
        import regex

        path = pathlib.Path(bpe_path) if bpe_path is not None else DEFAULT_BPE
        if not path.exists():
            raise ValueError(f"BPE merges file not found: {path}")
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2, got {context_length}")
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            lines = fh.read().split("\n")
        self.merges: list[tuple[str, str]] = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
        units = list(byte_to_unicode().values())
        vocab = units + [u + "</w>" for u in units] + ["".join(m) for m in self.merges] + [self.SOT, self.EOT]
        self.encoder: dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        self.decoder: dict[int, str] = {i: tok for tok, i in self.encoder.items()}
        self.ranks = {m: i for i, m in enumerate(self.merges)}
        self.byte_encoder = byte_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        specials = f"{regex.escape(self.SOT)}|{regex.escape(self.EOT)}|"
        self._pattern = regex.compile(specials + _SPLIT_PATTERN, regex.IGNORECASE)
        self._cache: dict[str, str] = {self.SOT: self.SOT, self.EOT: self.EOT}
        self.sot_token_id = self.encoder[self.SOT]
        self.eot_token_id = self.encoder[self.EOT]
        self.vocab_size = len(self.encoder)
        if not 0 <= pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id {pad_token_id} outside the vocabulary (0..{self.vocab_size - 1})")
        self.context_length = int(context_length)
        self.pad_token_id = int(pad_token_id)

    # -- BPE -----------------------------------------------------------------------------------
    def bpe(self, token: str) -> str:
        """Space-separated BPE units of one pre-tokenized word (last unit ends with </w>)."""
        if token in self._cache:
            return self._cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = _pairs(word)
        while pairs:
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
            if len(word) == 1:
                break
            pairs = _pairs(word)
        out = " ".join(word)
        self._cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without start/end tokens."""
        ids: list[int] = []
        for piece in self._pattern.findall(clean_text(text)):
            unicode_piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[unit] for unit in self.bpe(unicode_piece).split(" "))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``: the start token is skipped, decoding stops at the first end token."""
        units = []
        for i in ids:
            i = int(i)
            if i == self.eot_token_id:
                break
            if i != self.sot_token_id:
                units.append(self.decoder[i])
        text = "".join(units)
        raw = bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace")
        return raw.replace("</w>", " ").strip()

    # -- batches -------------------------------------------------------------------------------
    def __call__(
        self, texts: Union[str, Sequence[str]], context_length: Optional[int] = None
    ) -> np.ndarray:
        """Ids (n, context_length) int32: sot, text, eot, then ``pad_token_id``.

        Longer prompts are truncated (the end token stays at the last position) with a warning
        naming how many tokens were dropped.
        """
        if isinstance(texts, str):
            texts = [texts]
        length = int(context_length or self.context_length)
        out = np.full((len(texts), length), self.pad_token_id, dtype=np.int32)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"prompt {row} is not a string: {type(text).__name__}")
            ids = [self.sot_token_id] + self.encode(text) + [self.eot_token_id]
            if len(ids) > length:
                dropped = len(ids) - length
                warnings.warn(
                    f"prompt {row} is {len(ids)} tokens long; truncated to {length}, "
                    f"{dropped} token(s) dropped: {text[:60]!r}...",
                    UserWarning,
                    stacklevel=2,
                )
                ids = ids[:length]
                ids[-1] = self.eot_token_id
            out[row, : len(ids)] = ids
        return out

    # -- Hugging Face interop --------------------------------------------------------------------
    def hf_vocab(self) -> dict[str, int]:
        """The vocabulary with Hugging Face's special-token spellings (for ``transformers.CLIPTokenizer``)."""
        vocab = dict(self.encoder)
        vocab["<|startoftext|>"] = vocab.pop(self.SOT)
        vocab["<|endoftext|>"] = vocab.pop(self.EOT)
        return vocab

    def hf_merges(self) -> list[str]:
        """Merges lines in the ``merges.txt`` layout (without the version header)."""
        return [" ".join(m) for m in self.merges]


@functools.lru_cache(maxsize=4)
def get_tokenizer(pad_token_id: int = 0, context_length: int = CONTEXT_LENGTH) -> CLIPTokenizer:
    """A cached tokenizer from the shipped merges file."""
    return CLIPTokenizer(context_length=context_length, pad_token_id=pad_token_id)


def tokenize(texts: Union[str, Sequence[str]], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
    """``open_clip.tokenize`` equivalent: int32 (n, context_length), zero padded."""
    return get_tokenizer(0, context_length)(texts)


def pad_token_id_from_hf(tokenizer_dir: Union[str, os.PathLike]) -> int:
    """The pad id of a Hugging Face CLIP tokenizer folder (``special_tokens_map.json`` /
    ``tokenizer_config.json`` + ``vocab.json``); the end token id if none is named."""
    folder = pathlib.Path(tokenizer_dir)
    pad = None
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        f = folder / name
        if f.exists():
            entry = json.loads(f.read_text()).get("pad_token")
            if isinstance(entry, dict):
                entry = entry.get("content")
            if entry:
                pad = entry
                break
    vocab_file = folder / "vocab.json"
    if not vocab_file.exists():
        raise ValueError(f"no vocab.json in tokenizer folder {folder}")
    vocab = json.loads(vocab_file.read_text())
    if pad is None:
        return vocab["<|endoftext|>"]
    if pad not in vocab:
        raise ValueError(f"pad token {pad!r} of {folder} is not in its vocab.json")
    return int(vocab[pad])
