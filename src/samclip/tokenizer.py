"""CLIP's byte-level BPE tokenizer through the ``tokenizers`` library.

Ways to get one:
- :meth:`ClipTokenizer.from_file` - a ``tokenizer.json`` (Hugging Face folders, our own folders);
- :meth:`ClipTokenizer.from_vocab_merges` - ``vocab.json`` + ``merges.txt`` (Hugging Face CLIP);
- :meth:`ClipTokenizer.from_openai_bpe` - OpenAI's ``bpe_simple_vocab_16e6.txt.gz``;
- :meth:`ClipTokenizer.train` - train a small CLIP-style BPE on your own captions (how the embedded
  default's tokenizer is built): same normaliser, pre-tokeniser and ``</w>`` end-of-word suffix as
  CLIP's, with ``<|startoftext|>`` / ``<|endoftext|>`` as the special tokens.

Calling a tokenizer returns a BxL LongTensor: start token, ids, end token, zero padding; text that
is too long is truncated and still ends with the end token.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
# CLIP's word-splitting pattern (contractions, letter runs, single digits, punctuation runs)
_CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP reversible byte -> printable unicode character table."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def _clip_pipeline(tok: Tokenizer) -> Tokenizer:
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    return tok


class ClipTokenizer:
    """Wraps a ``tokenizers.Tokenizer`` (without post-processor) and adds CLIP's framing."""

    def __init__(self, tokenizer: Tokenizer, context_length: int = 77) -> None:
        self.tokenizer = tokenizer
        self.tokenizer.post_processor = None
        # strip the end-of-word suffix, then undo the byte-level mapping
        self.tokenizer.decoder = decoders.Sequence([decoders.BPEDecoder(suffix="</w>"), decoders.ByteLevel()])
        self.context_length = context_length
        sot, eot = tokenizer.token_to_id(SOT), tokenizer.token_to_id(EOT)
        if sot is None or eot is None:
            raise ValueError(f"tokenizer lacks the special tokens {SOT} / {EOT}")
        self.sot_token_id, self.eot_token_id = sot, eot

    # ----------------------------------------------------------------------------- constructors
    @classmethod
    def from_file(cls, path: str | os.PathLike, context_length: int = 77) -> ClipTokenizer:
        """A ``tokenizer.json``; ValueError naming the file where the ``tokenizers`` library cannot read it."""
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # the library raises a bare Exception on a malformed file
            if isinstance(e, OSError):
                raise
            raise ValueError(f"{path}: not a tokenizer file the tokenizers library can read ({e})") from None
        try:
            return cls(tok, context_length)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def from_vocab_merges(
        cls, vocab: str | os.PathLike | dict[str, int], merges: str | os.PathLike | list[tuple[str, str]],
        context_length: int = 77,
    ) -> ClipTokenizer:
        if not isinstance(vocab, dict):
            vocab = json.loads(Path(vocab).read_text(encoding="utf-8"))
        if not isinstance(merges, list):
            lines = Path(merges).read_text(encoding="utf-8").splitlines()
            merges = [tuple(ln.split()) for ln in lines if ln and not ln.startswith("#version")]
        try:
            bpe = models.BPE(
                vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>",
                unk_token=EOT, fuse_unk=False,
            )
        except Exception as e:  # the library raises a bare Exception on malformed vocabularies / merges
            raise ValueError(f"not a BPE vocabulary + merges the tokenizers library can read ({e})") from None
        return cls(_clip_pipeline(Tokenizer(bpe)), context_length)

    @classmethod
    def from_openai_bpe(cls, path: str | os.PathLike, context_length: int = 77) -> ClipTokenizer:
        """OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` (49152 - 256 - 2 merges are used)."""
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
        symbols = list(_bytes_to_unicode().values())
        symbols += [s + "</w>" for s in symbols]
        symbols += ["".join(m) for m in merges]
        symbols += [SOT, EOT]
        return cls.from_vocab_merges({s: i for i, s in enumerate(symbols)}, merges, context_length)

    @classmethod
    def train(cls, corpus: Iterable[str], vocab_size: int = 512, context_length: int = 32) -> ClipTokenizer:
        """Train a CLIP-style byte-level BPE on ``corpus`` (special tokens take the last two ids).

        Deterministic: the same corpus gives the same tokenizer in every process. (The ``tokenizers`` library's
        BPE trainer numbers the end-of-word tokens in hash-map order and breaks ties between equally frequent
        merges by those numbers, so its vocabularies differ from run to run: huggingface/tokenizers#1794.) The
        words are those of CLIP's normaliser and pre-tokeniser; the vocabulary is the 256 byte symbols, the
        end-of-word symbols the corpus has (``c</w>``, sorted), then merges, each the most frequent adjacent pair
        (ties: the pair of lower ids), until ``vocab_size - 2``; then ``<|startoftext|>``, ``<|endoftext|>``."""
        pipeline = _clip_pipeline(Tokenizer(models.BPE()))
        words: dict[str, int] = {}
        for text in corpus:
            normal = pipeline.normalizer.normalize_str(text)
            for word, _ in pipeline.pre_tokenizer.pre_tokenize_str(normal):
                words[word] = words.get(word, 0) + 1
        symbols = sorted(set(_bytes_to_unicode().values()))
        ends = sorted({w[-1] + "</w>" for w in words if w})
        ids = {sym: i for i, sym in enumerate(symbols + [e for e in ends if e not in symbols])}
        # each distinct word as a list of symbol ids, its last symbol carrying the end-of-word suffix
        seqs = [[ids[c] for c in w[:-1]] + [ids[w[-1] + "</w>"]] for w in words if w]
        counts = [words[w] for w in words if w]
        names = {i: sym for sym, i in ids.items()}
        merges: list[tuple[str, str]] = []
        while len(ids) < vocab_size - 2:
            pairs: dict[tuple[int, int], int] = {}
            for seq, n in zip(seqs, counts):
                for pair in zip(seq, seq[1:]):
                    pairs[pair] = pairs.get(pair, 0) + n
            if not pairs:
                break
            best = min(pairs, key=lambda pr: (-pairs[pr], pr))
            new_id = len(ids)
            merged = names[best[0]] + names[best[1]]
            ids[merged] = new_id
            names[new_id] = merged
            merges.append((names[best[0]], names[best[1]]))
            for k, seq in enumerate(seqs):
                if len(seq) < 2:
                    continue
                out, i = [], 0
                while i < len(seq):
                    if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                        out.append(new_id)
                        i += 2
                    else:
                        out.append(seq[i])
                        i += 1
                seqs[k] = out
        vocab = dict(ids)
        vocab[SOT], vocab[EOT] = len(vocab), len(vocab) + 1
        # no unknown token, as the library's trainer leaves it: a symbol the corpus never ended a word with is
        # dropped (mapping it to <|endoftext|>, the highest id, would move the text tower's end-of-text read)
        bpe = models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>")
        tok = _clip_pipeline(Tokenizer(bpe))
        tok.add_special_tokens([SOT, EOT])
        return cls(tok, context_length)

    # ----------------------------------------------------------------------------------- use
    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def to_json(self) -> str:
        """The ``tokenizer.json`` text (what :meth:`save` writes and :meth:`from_file` reads)."""
        return self.tokenizer.to_str()

    def save(self, path: str | os.PathLike) -> None:
        from .checkpoint import atomic_write_bytes

        atomic_write_bytes(path, self.to_json().encode("utf-8"))

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start/end tokens."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        special = {self.sot_token_id, self.eot_token_id}
        return self.tokenizer.decode([i for i in ids if i not in special]).strip()

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """Texts -> BxL LongTensor (L = context_length)."""
        if isinstance(texts, str):
            texts = [texts]
        n = context_length or self.context_length
        out = torch.zeros(len(texts), n, dtype=torch.long)
        for i, enc in enumerate(self.tokenizer.encode_batch(list(texts), add_special_tokens=False)):
            ids = [self.sot_token_id, *enc.ids[: n - 2], self.eot_token_id]
            out[i, : len(ids)] = torch.tensor(ids)
        return out
