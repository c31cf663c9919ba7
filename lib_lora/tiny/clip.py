"""A generated CLIP BPE vocabulary and tiny CLIP text encoders (random weights, real transformers classes)."""

from __future__ import annotations

import json
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

# Words whose whole-word merges the tiny vocabulary contains, so captions tokenize into few tokens.
_WORDS = (
    "a photo of girl boy 1girl solo long short hair blue red green black white eyes smile looking at viewer "
    "outdoors indoors sky cloud tree flower dress shirt skirt standing sitting simple background upper body "
    "portrait landscape cat dog car house city night day sun water ocean mountain style art painting"
).split()

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MAX_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable-character table of byte-level BPE (as GPT-2 and CLIP define it)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def tiny_vocab() -> tuple[dict[str, int], list[str]]:
    """(vocab, merges): every byte alone and word-final, whole-word merges for _WORDS, then the two specials."""
    base = list(_bytes_to_unicode().values())
    tokens = base + [c + "</w>" for c in base]
    merges: list[str] = []
    for word in dict.fromkeys(_WORDS):
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            pair = f"{symbols[0]} {symbols[1]}"
            merged = symbols[0] + symbols[1]
            if pair not in merges:
                merges.append(pair)
            if merged not in tokens:
                tokens.append(merged)
            symbols = [merged] + symbols[2:]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_tiny_tokenizer_files(directory: Path) -> Path:
    """Write vocab.json and merges.txt for the tiny vocabulary into `directory`; returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = tiny_vocab()
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return directory


@lru_cache(maxsize=1)
def _tokenizer_dir() -> Path:
    return write_tiny_tokenizer_files(Path(tempfile.mkdtemp(prefix="lora_studio_tiny_clip_")))


def build_tiny_tokenizer(pad_token: str = EOS_TOKEN):
    """A real `CLIPTokenizer` over the generated vocabulary (SDXL's second tokenizer pads with "!")."""
    from transformers import CLIPTokenizer

    directory = _tokenizer_dir()
    return CLIPTokenizer(
        str(directory / "vocab.json"),
        str(directory / "merges.txt"),
        pad_token=pad_token,
        model_max_length=MAX_LENGTH,
    )


def tiny_clip_config(*, hidden_size: int = 32, projection_dim: int = 32, hidden_act: str = "quick_gelu"):
    """A `CLIPTextConfig` for the tiny vocabulary: 3 layers (so clip skip 2 is meaningful), 77 positions."""
    from transformers import CLIPTextConfig

    vocab, _ = tiny_vocab()
    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=projection_dim,
        hidden_act=hidden_act,
        bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=vocab[EOS_TOKEN],
        pad_token_id=vocab[EOS_TOKEN],
    )


def build_tiny_text_encoder(seed: int = 0, *, with_projection: bool = False, hidden_size: int = 32):
    """A `CLIPTextModel` (or `CLIPTextModelWithProjection`, SDXL's second encoder) with seeded random weights."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    hidden_act = "gelu" if with_projection else "quick_gelu"
    return cls(tiny_clip_config(hidden_size=hidden_size, hidden_act=hidden_act)).eval()
