"""Chat conversations as text and token ids: the ChatML template and the assistant-token mask.

A conversation is a list of ``{"role": str, "content": str}`` messages (OpenAI's and transformers' form).
The template is the tokenizer's ``chat_template`` (saved in ``tokenizer_config.json``, so
``transformers.AutoTokenizer.apply_chat_template`` renders the same text and ids); sumi's default is ChatML
with the vocabulary's ``<|im_start|>`` / ``<|im_end|>``::

    {bos}<|im_start|>system\\nYou are …<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n
    <|im_start|>assistant\\nHello<|im_end|>\\n     (one string; broken here for width)

Assistant turns are wrapped in ``{% generation %}…{% endgeneration %}`` (transformers' marker for
``return_assistant_tokens_mask``): the content and its closing ``<|im_end|>`` are the tokens a fine-tuned
model must produce; the ``<|im_start|>assistant\\n`` header and the newline after ``<|im_end|>`` are prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from sumi.errors import ConfigError, InputError

CHATML_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML, with BOS first (the release prepends BOS to every text) and assistant turns marked for masks."""

END_OF_TURN = "<|im_end|>"
"""The string that closes a ChatML turn: generation for a chat stops there."""

# Private-use code points that bracket assistant spans while rendering; removed from the returned text.
_SPAN_OPEN, _SPAN_CLOSE = "\ue000", "\ue001"


@dataclass(frozen=True)
class ChatEncoding:
    """A rendered conversation.

    Attributes:
        text: the template's output (BOS string first, special tokens as text).
        input_ids: ``tokenizer.encode(text)`` — the ids ``AutoTokenizer.apply_chat_template`` gives, [S].
        assistant_mask: [S] ints, 1 for tokens of assistant turns (their content and closing ``<|im_end|>``),
            0 for everything else (BOS, system/user turns, role headers). For SFT loss masks.
        assistant_spans: ``(start, end)`` token index ranges (end exclusive) of the assistant turns.
    """

    text: str
    input_ids: list[int]
    assistant_mask: list[int]
    assistant_spans: list[tuple[int, int]]


def _check_messages(messages) -> list[dict]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise InputError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise InputError(f"message {i} must be a dict with 'role' and 'content', got {message!r:.80}")
        role, content = message["role"], message["content"]
        if isinstance(content, list):  # OpenAI's content parts: keep the text parts
            if not all(isinstance(p, Mapping) and p.get("type") == "text" for p in content):
                raise InputError(f"message {i}: only text content parts are supported")
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(role, str) or not isinstance(content, str):
            raise InputError(f"message {i}: role and content must be strings")
        if _SPAN_OPEN in content or _SPAN_CLOSE in content:
            raise InputError(f"message {i} contains the reserved characters U+E000/U+E001")
        checked.append({**message, "role": role, "content": content})
    return checked


@lru_cache(maxsize=8)
def _compile(template: str):
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationMarks(Extension):
        """``{% generation %}body{% endgeneration %}`` renders body between the span sentinels."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)

        def _mark(self, caller):
            return _SPAN_OPEN + caller() + _SPAN_CLOSE

    def raise_exception(message):
        raise InputError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationMarks])
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template)
    except Exception as exc:  # jinja's TemplateSyntaxError names the line
        raise ConfigError(f"the tokenizer's chat_template is not a valid Jinja template: {exc}") from exc


def _render(messages, tokenizer, add_generation_prompt: bool) -> tuple[str, list[tuple[int, int]]]:
    """Rendered text and the character spans of assistant turns."""
    template = getattr(tokenizer, "chat_template", None)
    if template is None:
        raise ConfigError("this tokenizer has no chat template and no <|im_start|>/<|im_end|> tokens; train it "
                          "with sumi >= this version (ChatML tokens are added) or set chat_template in "
                          "tokenizer_config.json")
    raw = _compile(template).render(messages=_check_messages(messages), add_generation_prompt=add_generation_prompt,
                                    bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token)
    text, spans, start = [], [], None
    length = 0
    for char in raw:
        if char == _SPAN_OPEN:
            start = length
        elif char == _SPAN_CLOSE:
            spans.append((start, length))
        else:
            text.append(char)
            length += 1
    return "".join(text), spans


def apply_chat_template(messages: Sequence[Mapping], tokenizer, *, add_generation_prompt: bool = False) -> str:
    """Render ``messages`` with the tokenizer's chat template (ChatML by default) as text.

    Args:
        messages: ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``.
        tokenizer: a :class:`sumi.tokenizer.SumiTokenizer` (its ``chat_template`` and ``bos_token``).
        add_generation_prompt: end with ``<|im_start|>assistant\\n`` so the model writes the next turn.

    Returns:
        The text, equal to ``AutoTokenizer.apply_chat_template(messages, tokenize=False)`` on the saved files.
        Encode it with ``tokenizer.encode(text)`` (no extra BOS: the template starts with it), or use
        :func:`encode_chat` for ids plus the assistant mask.
    """
    return _render(messages, tokenizer, add_generation_prompt)[0]


def encode_chat(messages: Sequence[Mapping], tokenizer, *, add_generation_prompt: bool = False) -> ChatEncoding:
    """Render and tokenise ``messages``, marking the tokens of assistant turns.

    ``input_ids`` equal ``AutoTokenizer.apply_chat_template(messages, tokenize=True)`` and ``assistant_mask``
    equals its ``return_assistant_tokens_mask`` output. A token is an assistant token when its characters lie
    inside an assistant span (special tokens delimit the spans, so no token straddles a boundary).
    """
    text, spans = _render(messages, tokenizer, add_generation_prompt)
    encoding = tokenizer._backend(True).encode(text, add_special_tokens=False)
    ids, offsets = list(encoding.ids), encoding.offsets
    mask = [0] * len(ids)
    token_spans = []
    for char_start, char_end in spans:
        inside = [i for i, (a, b) in enumerate(offsets) if a >= char_start and b <= char_end]
        for i in inside:
            mask[i] = 1
        if inside:
            token_spans.append((inside[0], inside[-1] + 1))
    return ChatEncoding(text=text, input_ids=ids, assistant_mask=mask, assistant_spans=token_spans)
