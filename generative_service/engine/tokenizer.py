"""A CLIP tokenizer built locally (no hub): byte-level BPE whose merges are learned from a corpus.

Used by the tiny model builder and by the demo-model trainer. The result behaves like OpenAI's
CLIP tokenizer (lower-casing, `</w>` end-of-word suffix, `<|startoftext|>`/`<|endoftext|>`) and
saves/loads with `save_pretrained`/`from_pretrained`.

NOTE: the text encoder's `bos_token_id`/`eos_token_id`/`pad_token_id` must equal this tokenizer's
(`clip_special_ids`), or the pooled embedding is taken at the wrong position without any error.
"""

from __future__ import annotations

from collections import Counter

from tokenizers import Regex, normalizers, pre_tokenizers
from transformers import CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MAX_LENGTH = 77  # NOTE: unset, model_max_length becomes 1e30 and the pipeline overflows.
_SUFFIX = "</w>"
# The same word split CLIPTokenizer uses, so learned merges match what it will see.
_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def build_clip_tokenizer(corpus: list[str], vocab_size: int) -> CLIPTokenizer:
    """Build a CLIP tokenizer with at most `vocab_size` tokens, merges learned from `corpus`.

    The vocabulary holds every byte symbol (alone and with `</w>`, so no text is ever unknown),
    the learned merges in order, then `<|startoftext|>` and `<|endoftext|>` (also the pad token).
    Deterministic for a given corpus and size.

    Raises:
        ValueError: `vocab_size` leaves no room for the 512 byte symbols and 2 special tokens.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    base = alphabet + [symbol + _SUFFIX for symbol in alphabet]
    n_merges = vocab_size - len(base) - 2
    if n_merges < 0:
        raise ValueError(f"vocab_size must be at least {len(base) + 2}, got {vocab_size}")
    merges = _learn_merges(corpus, n_merges=n_merges)
    vocab: dict[str, int] = {token: index for index, token in enumerate(base)}
    kept: list[tuple[str, str]] = []
    for left, right in merges:
        if left in vocab and right in vocab and left + right not in vocab:
            vocab[left + right] = len(vocab)
            kept.append((left, right))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return CLIPTokenizer(
        vocab=vocab,
        merges=kept,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        model_max_length=MAX_LENGTH,
    )


def clip_special_ids(tokenizer: CLIPTokenizer) -> dict[str, int]:
    """The ids a CLIP text config must carry: `bos_token_id`, `eos_token_id`, `pad_token_id`."""
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _learn_merges(corpus: list[str], *, n_merges: int) -> list[tuple[str, str]]:
    """BPE merges over the corpus, split and byte-mapped exactly as CLIPTokenizer splits text.

    A small explicit learner rather than `tokenizers`' trainer: the trainer breaks count ties in
    hash order, so two builds of the "same" tokenizer could differ. Ties here go to the
    lexicographically smallest pair, so the result depends on the corpus alone.
    """
    words = Counter(_words(corpus))
    symbols = {word: _initial_symbols(word) for word in words}
    merges: list[tuple[str, str]] = []
    while len(merges) < n_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            parts = symbols[word]
            for pair in zip(parts, parts[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        if pairs[best] < 2:
            break
        merges.append(best)
        for word in words:
            symbols[word] = _merge(symbols[word], best)
    return merges


def _words(corpus: list[str]) -> list[str]:
    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    splitter = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    out: list[str] = []
    for text in corpus:
        out.extend(piece for piece, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    return out


def _initial_symbols(word: str) -> list[str]:
    return list(word[:-1]) + [word[-1] + _SUFFIX]


def _merge(parts: list[str], pair: tuple[str, str]) -> list[str]:
    out: list[str] = []
    index = 0
    while index < len(parts):
        if index + 1 < len(parts) and (parts[index], parts[index + 1]) == pair:
            out.append(parts[index] + parts[index + 1])
            index += 2
        else:
            out.append(parts[index])
            index += 1
    return out
