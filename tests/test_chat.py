"""The ChatML chat template: sumi's rendering equals transformers' (text, ids, assistant mask)."""

from __future__ import annotations

import pytest

from sumi.chat import CHATML_TEMPLATE, apply_chat_template, encode_chat
from sumi.errors import ConfigError, InputError

CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Who said 🤖 \"let there be light\"?"},
    {"role": "assistant", "content": "God said it, in Genesis 1:3."},
    {"role": "user", "content": "And then?"},
    {"role": "assistant", "content": "And there was light.\n"},
]


@pytest.fixture(scope="module")
def hf_tiny(tiny_tokenizer, tmp_path_factory):
    from transformers import AutoTokenizer

    directory = tmp_path_factory.mktemp("tok")
    tiny_tokenizer.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


def test_chatml_text_exact(tiny_tokenizer):
    text = apply_chat_template(CONVERSATION[:2], tiny_tokenizer, add_generation_prompt=True)
    assert text == ("<|bos|><|im_start|>system\nAnswer briefly.<|im_end|>\n"
                    "<|im_start|>user\nWho said 🤖 \"let there be light\"?<|im_end|>\n<|im_start|>assistant\n")
    assert tiny_tokenizer.apply_chat_template(CONVERSATION[:2]) == text[:-len("<|im_start|>assistant\n")]


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_equals_transformers_text_ids_and_assistant_mask(tiny_tokenizer, hf_tiny, add_generation_prompt):
    assert hf_tiny.chat_template == CHATML_TEMPLATE  # saved in tokenizer_config.json
    for messages in (CONVERSATION, CONVERSATION[:3], CONVERSATION[:4]):
        ours = encode_chat(messages, tiny_tokenizer, add_generation_prompt=add_generation_prompt)
        theirs = hf_tiny.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True,
                                             return_dict=True, return_assistant_tokens_mask=True)
        assert ours.text == hf_tiny.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                        tokenize=False)
        assert ours.input_ids == theirs["input_ids"] == tiny_tokenizer.encode(ours.text)
        assert ours.assistant_mask == theirs["assistant_masks"]


def test_assistant_spans_are_content_and_end_of_turn(tiny_tokenizer):
    enc = encode_chat(CONVERSATION, tiny_tokenizer)
    assert [tiny_tokenizer.decode(enc.input_ids[a:b]) for a, b in enc.assistant_spans] == [
        "God said it, in Genesis 1:3.<|im_end|>", "And there was light.\n<|im_end|>"]
    assert sum(enc.assistant_mask) == sum(b - a for a, b in enc.assistant_spans)
    assert enc.input_ids[0] == tiny_tokenizer.bos_token_id and enc.assistant_mask[0] == 0
    im_end = tiny_tokenizer.token_to_id("<|im_end|>")
    assert [enc.input_ids[b - 1] for _, b in enc.assistant_spans] == [im_end, im_end]


def test_bad_messages_and_missing_template(tiny_tokenizer):
    for bad in ([], "hi", [{"role": "user"}], [{"role": "user", "content": 3}],
                [{"role": "user", "content": "\ue000"}]):
        with pytest.raises(InputError):
            apply_chat_template(bad, tiny_tokenizer)
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert "user\nab<|im_end|>" in apply_chat_template(parts, tiny_tokenizer)

    from sumi.tokenizer import SumiTokenizer

    plain = SumiTokenizer(tiny_tokenizer.backend, bos_token="<|bos|>", eos_token="<|endoftext|>",
                          pad_token="<|pad|>", chat_template="{% for m in messages %}{{ m['content'] }}")
    with pytest.raises(ConfigError, match="not a valid Jinja"):
        apply_chat_template(CONVERSATION, plain)
