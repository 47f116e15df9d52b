# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The Enforcer's rules as an xgrammar structural tag, for vLLM's own
structured outputs (pure: no vLLM).

Under speculative decoding vLLM loads no logits processor, so the Enforcer
cannot run; vLLM's structured-output path still does, and it checks draft
tokens against a grammar. :func:`spec_structural_tag` turns a request's
:class:`~.spec.EnforcerSpec` (declared tools, ``tool_choice``, the parallel
flag, the history's call count) into a tag that carries what of the
Enforcer's rules a grammar can hold. The output it accepts, markers as single
token ids (``⟨…⟩``; their text spelled out in ordinary tokens is text)::

    [⟨<think>⟩] [THOUGHT ⟨</think>⟩]        as `start` says (TagOptions)
    TEXT                                      auto: no stray markup in it
    ⟨<|tool_calls_section_begin|>⟩             (or a bare first call)
      ⟨<|tool_call_begin|>⟩functions.NAME:IDX⟨<|tool_call_argument_begin|>⟩
        {ARGS: NAME's normalised schema, no "<|" inside a string,
         blank runs of at most 20}
      ⟨<|tool_call_end|>⟩
      ...                                     IDX = first_index, +1, ...
    ⟨<|tool_calls_section_end|>⟩               then only the end of the turn

``tool_choice`` required or named: no TEXT, the section opens at once (or
after the thought); named or ``parallel_tool_calls=false``: one call. A tool
whose shortest call does not fit ``max_tokens`` is not offered (admission).

What it cannot hold (docs/speculative.md): string length bounds (xgrammar
unrolls them: seconds to compile), special ids inside strings whose text
does not start ``<|`` (``<think>``, ``[BOS]``, ...), the index of calls past
the pinned ones, where the output starts (vLLM's hook for the tag does not
see the prompt: ``start=None`` takes any start where nothing is forced), and
what the Enforcer decides while decoding (degrades, stand-downs, counters).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from xgrammar.structural_tag import (
    AnyTokensFormat,
    ConstStringFormat,
    Format,
    JSONSchemaFormat,
    OptionalFormat,
    OrFormat,
    RegexFormat,
    SequenceFormat,
    StarFormat,
    StructuralTag,
    TokenDispatchFormat,
    TokenFormat,
)

from vllm_kimi_tools import tokens as kt
from vllm_kimi_tools.enforcer.machine import MAX_BLANK_RUN
from vllm_kimi_tools.enforcer.prompt import OutputStart
from vllm_kimi_tools.enforcer.spec import AUTO, EnforcerSpec, ToolGrammar
from vllm_kimi_tools.enforcer.vocab import Markers
from vllm_kimi_tools.parser.tool_ids import make_tool_call_id

# Calls whose index the tag pins (first_index, first_index + 1, ...); later
# calls of the turn take any canonical number. xgrammar compiles a tool's
# argument grammar once however many slots hold it, but each slot repeats
# the tools in the tag's JSON (which vLLM's API server parses and checks on
# every request) and nests it 3 levels deeper.
PINNED_CALLS = 4
# vLLM 0.32 refuses a structural tag whose JSON nests deeper than 80 levels
# (MAX_STRUCTURED_OUTPUT_JSON_NESTING + STRUCTURAL_TAG_WRAPPER_NESTING) and
# may wrap it in an OrFormat (2 levels) with a response_format's: fewer calls
# are pinned where the schemas are deep.
MAX_TAG_NESTING = 78
# Substrings no argument string may hold: the text of every marker, chat and
# reserved token, which xgrammar reads as plain text.
STRING_EXCLUDES = ("<|",)
_CANONICAL_INDEX = r"0|[1-9][0-9]*"


class TagTooDeepError(ValueError):
    """The schemas leave no room for the tag within :data:`MAX_TAG_NESTING`."""


@dataclass(frozen=True)
class TagOptions:
    """How the tag is built.

    ``start``: where the output starts, as the Enforcer reads it from the
    prompt (:class:`.prompt.OutputStart`); None: not known, so with
    ``tool_choice`` auto any start is taken (an optional ``<think>``, an
    optional thought closed by ``</think>``), and a forced call starts as
    on K2 (the section, or ``<think>`` first). ``THOUGHT`` also fits a
    server whose reasoning parser has vLLM apply the grammar only once the
    thinking ended.
    """

    start: OutputStart | None = None
    pinned_calls: int = PINNED_CALLS
    string_excludes: tuple[str, ...] = STRING_EXCLUDES
    # Blank runs between JSON tokens, as the Enforcer bounds them.
    max_whitespace: int | None = MAX_BLANK_RUN
    max_nesting: int = MAX_TAG_NESTING


def _markers(vocab: Mapping[str, int]) -> Markers:
    """The vocabulary's Kimi markers; the tag needs the think markers too."""
    markers = Markers.from_vocab(vocab)
    missing = [t for t in (kt.THINK_BEGIN, kt.THINK_END) if t not in vocab]
    if missing:
        raise ValueError(f"not a Kimi vocabulary; missing {', '.join(missing)}")
    return markers


def spec_structural_tag(
    spec: EnforcerSpec,
    *,
    vocab: Mapping[str, int] | None = None,
    options: TagOptions | None = None,
) -> StructuralTag:
    """The structural tag for one request's spec (module docstring).

    ``vocab``: the tokenizer's (for the marker ids); default Kimi's.
    Raises ``ValueError`` for a forced call with no tool to call, and
    :class:`TagTooDeepError` where no tag fits ``options.max_nesting``.
    """
    options = options or TagOptions()
    ids = _markers(vocab or kt.SPECIAL_TOKEN_IDS)
    if spec.choice != AUTO and not spec.tools:
        raise ValueError("tool_choice forces a call, but no tool can be called")
    pinned = max(1, options.pinned_calls)
    while True:
        tag = _Builder(spec, ids, replace(options, pinned_calls=pinned)).tag()
        over = nesting(tag.model_dump()) - options.max_nesting
        if over <= 0:
            return tag
        if pinned == 1:
            raise TagTooDeepError(
                f"the tool schemas nest too deeply for a structural tag "
                f"(deeper than {options.max_nesting} levels with it)"
            )
        pinned = max(1, pinned - math.ceil(over / 3))  # a slot nests 3 deeper


def structural_tag_json(
    spec: EnforcerSpec,
    *,
    vocab: Mapping[str, int] | None = None,
    options: TagOptions | None = None,
) -> str:
    """:func:`spec_structural_tag` as the JSON text vLLM's
    ``structured_outputs.structural_tag`` holds (and xgrammar caches by)."""
    tag = spec_structural_tag(spec, vocab=vocab, options=options)
    return json.dumps(tag.model_dump())


def nesting(value: Any) -> int:
    """How deep JSON containers nest in ``value`` (as vLLM measures it)."""
    depth, level = 0, [value]
    while True:
        level = [node for node in level if isinstance(node, dict | list | tuple)]
        if not level:
            return depth
        depth += 1
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
        ]


class _Builder:
    def __init__(self, spec: EnforcerSpec, ids: Markers, options: TagOptions) -> None:
        self.spec, self.ids, self.options = spec, ids, options
        self.forced = spec.choice != AUTO
        self.single = self.forced or not spec.parallel
        i = ids
        # Never outside a section (a bare <|tool_call_begin|> opens one).
        self.stray = (i.argument_begin, i.call_end, i.section_end)
        self.think = (i.think_begin, i.think_end)
        self._args: dict[str, JSONSchemaFormat] = {}

    def tag(self) -> StructuralTag:
        return StructuralTag(format=self._start())

    # -- where the output starts ---------------------------------------------

    def _start(self) -> Format:
        start, i = self.options.start, self.ids
        if start is OutputStart.THOUGHT:
            return self._after_thought()
        if start is OutputStart.THINKING:
            return self._in_thought()
        opened = _seq(TokenFormat(token=i.think_begin), self._in_thought())
        if start is OutputStart.TEXT or self.forced:
            # Unknown and forced: as K2's (a thought the prompt opened would
            # let any text come before the section).
            return OrFormat(elements=[self._after_thought(), opened])
        # Unknown: any start (K2.5's thought opens in the prompt).
        begin = OptionalFormat(content=TokenFormat(token=i.think_begin))
        return _seq(begin, self._in_thought())

    def _thought(self) -> Format:
        """Thinking text: no tool markup; forced, no end of the turn either."""
        i = self.ids
        banned = [*self.stray, i.section_begin, i.call_begin, *self.think]
        if self.forced:
            banned += i.stops
        return AnyTokensFormat(exclude_tokens=banned)

    def _in_thought(self) -> Format:
        """Output inside a thought: ``</think>`` ends it; so does the section
        (K2-Thinking opens it without closing the thought)."""
        end = TokenFormat(token=self.ids.think_end)
        if not self.forced:
            # Thought and free text ban the same tokens: "thought, then the
            # section" reads as text, then the section.
            closed = OptionalFormat(content=_seq(self._thought(), end))
            return _seq(closed, self._after_thought())
        then = [_seq(end, self._explicit()), self._explicit(), self._implicit()]
        return _seq(self._thought(), OrFormat(elements=then))

    # -- after the thought -----------------------------------------------------

    def _after_thought(self) -> Format:
        i = self.ids
        if self.forced:
            return self._explicit()
        reply = self.spec.reply
        if reply is not None:
            # The text is the JSON reply, or the calls instead.
            options: list[Format] = [self._json(reply)]
            if self.spec.tools:
                options += [self._explicit(), self._implicit()]
            return options[0] if len(options) == 1 else OrFormat(elements=options)
        if not self.spec.tools:
            # None can be called: no section may open.
            banned = [*self.stray, i.section_begin, i.call_begin, *self.think]
            return AnyTokensFormat(exclude_tokens=banned)
        return TokenDispatchFormat(
            rules=[
                (i.section_begin, self._explicit_rest()),
                (i.call_begin, self._implicit_rest()),
            ],
            loop=False,  # nothing but the end of the turn after the calls
            exclude_tokens=[*self.stray, *self.think],
        )

    def _explicit(self) -> Format:
        return _seq(TokenFormat(token=self.ids.section_begin), self._explicit_rest())

    def _explicit_rest(self) -> Format:
        first = self.spec.first_index
        end = TokenFormat(token=self.ids.section_end)
        return _seq(TokenFormat(token=self.ids.call_begin), self._calls(first), end)

    def _implicit(self) -> Format:
        return _seq(TokenFormat(token=self.ids.call_begin), self._implicit_rest())

    def _implicit_rest(self) -> Format:
        """After a bare ``<|tool_call_begin|>``: the section it opened may
        end with ``<|tool_calls_section_end|>`` or with the turn."""
        end = TokenFormat(token=self.ids.section_end)
        return _seq(self._calls(self.spec.first_index), OptionalFormat(content=end))

    # -- calls -----------------------------------------------------------------

    def _calls(self, index: int) -> Format:
        """A call's ``functions.NAME:IDX…⟨call_end⟩`` (its
        ``⟨call_begin⟩`` already written), then, parallel, more calls: the
        pinned indices, then any."""
        if self.single:
            return self._call(index)
        last = self.spec.first_index + self.options.pinned_calls - 1
        more: Format = StarFormat(
            content=_seq(TokenFormat(token=self.ids.call_begin), self._call(None))
        )
        for at in range(last, index - 1, -1):
            rest = more if at == last else OptionalFormat(content=more)
            more = _seq(self._call(at), rest)
            if at > index:
                more = _seq(TokenFormat(token=self.ids.call_begin), more)
        return more

    def _call(self, index: int | None) -> Format:
        """``functions.NAME:IDX⟨arg_begin⟩{ARGS}⟨call_end⟩``; ``index``
        None: any canonical number."""
        i = self.ids
        options: list[Format] = []
        for tool in self.spec.tools:
            if index is None:
                head: list[Format] = [
                    ConstStringFormat(value=make_tool_call_id(tool.name, 0)[:-1]),
                    RegexFormat(pattern=_CANONICAL_INDEX),
                ]
            else:
                head = [ConstStringFormat(value=make_tool_call_id(tool.name, index))]
            begin = TokenFormat(token=i.argument_begin)
            options.append(_seq(*head, begin, self._json(tool)))
        choice = options[0] if len(options) == 1 else OrFormat(elements=options)
        return _seq(choice, TokenFormat(token=i.call_end))

    def _json(self, tool: ToolGrammar) -> JSONSchemaFormat:
        found = self._args.get(tool.grammar)
        if found is None:
            found = self._args[tool.grammar] = JSONSchemaFormat(
                json_schema=json.loads(tool.grammar),
                excludes=list(self.options.string_excludes),
                max_whitespace_cnt=self.options.max_whitespace,
            )
        return found


def _seq(*parts: Format) -> Format:
    """A sequence, nested sequences spliced in (the tag nests less)."""
    flat: list[Format] = []
    for part in parts:
        if isinstance(part, SequenceFormat):
            flat.extend(part.elements)
        else:
            flat.append(part)
    return flat[0] if len(flat) == 1 else SequenceFormat(elements=flat)


__all__ = [
    "MAX_TAG_NESTING",
    "PINNED_CALLS",
    "STRING_EXCLUDES",
    "TagOptions",
    "TagTooDeepError",
    "nesting",
    "spec_structural_tag",
    "structural_tag_json",
]
