# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Admission: a request → whether it is enforced, and its
:class:`.spec.EnforcerSpec` (pure; reads vLLM's request objects by duck typing).

Runs in the API server, inside the tool parser's ``adjust_request``, so an
unusable tool schema is refused with a clear message (HTTP 400) before
anything reaches the engine: every schema is normalised, checked, and its
grammar built once without a tokenizer (:mod:`.schemas`); a schema no call
can satisfy within the request's output budget is refused too
(:func:`build_spec`). The spec travels to the engine as JSON in
``vllm_xargs``::

    "vllm_xargs": {"kimi_tools_enforcer": "<the spec as JSON, see .spec>"}

Switches: the server-wide ``KIMI_TOOLS_ENFORCER`` and
``KIMI_TOOLS_STREAM_ARGUMENTS`` (:mod:`vllm_kimi_tools.envs`), and per
request ``"vllm_xargs": {"kimi_tools_enforce": false}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from vllm_kimi_tools import envs
from vllm_kimi_tools.enforcer.schema_checks import ENVELOPE_TOKENS, MAX_CHARS_PER_TOKEN
from vllm_kimi_tools.enforcer.schemas import (
    PreparedSchema,
    UnusableSchemaError,
    prepare_schema,
)
from vllm_kimi_tools.enforcer.spec import (
    AUTO,
    NAMED,
    OPT_OUT_KEY,
    REQUIRED,
    SPEC_KEY,
    EnforcerSpec,
    ToolGrammar,
    opted_out,
)
from vllm_kimi_tools.tools import DeclaredTool, declared_tools, named_tool_choice

# Output tokens assumed possible when neither the request's max_tokens nor
# the server's max_model_len is known: more than any Kimi context (256k).
DEFAULT_TOKEN_CEILING = 1 << 20
# Tools per request: a call header step looks at every declared name.
MAX_TOOLS = 1024


class AdmissionError(ValueError):
    """A request the Enforcer refuses (HTTP 400); ``reason`` labels the
    ``enforcer_refused_requests_total`` counter: ``schema``, ``budget`` or
    ``request``."""

    def __init__(self, message: str, reason: str = "schema") -> None:
        super().__init__(message)
        self.reason = reason


def output_budget(request: Any) -> int | None:
    """A request's output budget (Chat: ``max_completion_tokens`` or
    ``max_tokens``; Responses: ``max_output_tokens``); None when unset."""
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = getattr(request, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def tokens_needed(prepared: PreparedSchema) -> float:
    """A lower bound on the output tokens of one call to this tool."""
    return ENVELOPE_TOKENS + math.ceil(prepared.min_chars / MAX_CHARS_PER_TOKEN)


def build_spec(
    tools: Sequence[DeclaredTool],
    *,
    first_index: int,
    choice: str = AUTO,
    named: str | None = None,
    parallel: bool = True,
    max_tokens: int | None = None,
    max_model_len: int | None = None,
    reply: Any = None,
) -> tuple[EnforcerSpec, list[str]]:
    """The Enforcer spec for a request, and notes on degraded schemas.

    ``reply``: the JSON Schema the reply's text must follow (a JSON
    ``response_format``), None for free text.

    ``max_tokens``: the request's output budget (None: not set);
    ``max_model_len``: the server's (None: :data:`DEFAULT_TOKEN_CEILING`).
    A tool whose shortest call needs more tokens than any request could have
    is refused; with ``tool_choice`` required or named, so is a request
    where no candidate tool's call fits in ``max_tokens``.

    Raises ``ValueError`` (HTTP 400) for unusable tools.
    """
    notes: list[str] = []
    grammars: list[ToolGrammar] = []
    needs: dict[str, tuple[float, str]] = {}
    seen: set[str] = set()
    ceiling = max_model_len or DEFAULT_TOKEN_CEILING
    if len(tools) > MAX_TOOLS:
        raise AdmissionError(
            f"{len(tools)} tools declared; the Enforcer takes at most {MAX_TOOLS}",
            "request",
        )
    for tool in tools:
        if not tool.name or not isinstance(tool.name, str):
            raise AdmissionError(
                "every tool needs a non-empty function name", "request"
            )
        if tool.name in seen:
            raise AdmissionError(f"tool {tool.name!r} is declared twice", "request")
        seen.add(tool.name)
        if named is not None and tool.name != named:
            continue
        try:
            prepared = prepare_schema(tool.parameters, strict=tool.strict is not False)
        except UnusableSchemaError as e:
            raise AdmissionError(f"tool {tool.name!r}: {e}") from e
        need = tokens_needed(prepared)
        if need > ceiling:
            raise AdmissionError(
                f"tool {tool.name!r}: {prepared.min_chars_at}: no call fits in the "
                f"model: its arguments need at least {prepared.min_chars:.0f} "
                f"characters, at least {need:.0f} output tokens (more than "
                f"{ceiling})",
                "budget",
            )
        needs[tool.name] = (need, prepared.min_chars_at)
        notes.extend(f"tool {tool.name!r} {note}" for note in prepared.degraded)
        if choice == AUTO and named is None and need > (max_tokens or math.inf):
            # No call to it can finish in this request: not offered (a
            # started call would only be cut off by max_tokens).
            notes.append(
                f"tool {tool.name!r} is not offered: its shortest call needs "
                f"at least {need:.0f} output tokens ({prepared.min_chars_at}), "
                f"more than max_tokens {max_tokens}"
            )
            continue
        track = prepared.has_length_bounds and prepared.track_lengths
        grammars.append(
            ToolGrammar(
                tool.name,
                prepared.grammar_json,
                prepared.schema if track else None,
                exact=prepared.exact,
            )
        )
    if named is not None:
        if not grammars:
            raise AdmissionError(
                f"tool_choice names {named!r}, which is not declared", "request"
            )
        choice = NAMED
    elif choice not in (AUTO, REQUIRED):
        raise AdmissionError(f"unsupported tool_choice {choice!r}", "request")
    if choice != AUTO and max_tokens is not None:
        _check_forced_budget(needs, max_tokens, choice)
    spec = EnforcerSpec(
        tools=tuple(grammars),
        first_index=first_index,
        choice=choice,
        parallel=parallel,
        reply=None if reply is None else _reply_grammar(reply, notes),
    )
    return spec, notes


def _reply_grammar(schema: Any, notes: list[str]) -> ToolGrammar:
    try:
        prepared = prepare_schema(schema, strict=True)
    except UnusableSchemaError as e:
        raise AdmissionError(f"response_format: {e}") from e
    notes.extend(f"response_format {note}" for note in prepared.degraded)
    track = prepared.has_length_bounds and prepared.track_lengths
    return ToolGrammar(
        "",
        prepared.grammar_json,
        prepared.schema if track else None,
        exact=prepared.exact,
    )


def reply_schema(request: Any) -> Any:
    """The JSON Schema of a request's JSON ``response_format`` (``json_object``:
    any object); None for text or none."""
    fmt = getattr(request, "response_format", None)
    kind = getattr(fmt, "type", None)
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        js = getattr(fmt, "json_schema", None)
        schema = getattr(js, "json_schema", None)
        return schema if schema is not None else {}
    return None


def _check_forced_budget(
    needs: dict[str, tuple[float, str]], max_tokens: int, choice: str
) -> None:
    """A forced call must fit in the request's output budget."""
    if any(need <= max_tokens for need, _ in needs.values()):
        return
    name, (need, where) = min(needs.items(), key=lambda item: item[1][0])
    if choice == NAMED:
        raise AdmissionError(
            f"tool_choice names {name!r}, whose call needs at least {need:.0f} "
            f"output tokens ({where}), more than max_tokens {max_tokens}",
            "budget",
        )
    raise AdmissionError(
        f"tool_choice 'required': no declared tool can be called within "
        f"max_tokens {max_tokens}; the shortest call, to {name!r}, needs at "
        f"least {need:.0f} output tokens ({where})",
        "budget",
    )


def argument_checkers(
    tools: Sequence[DeclaredTool],
) -> dict[str, Callable[[Any], list[str]]]:
    """Per tool, a function giving the ``jsonschema`` errors of an arguments
    value against the tool's prepared schema (types read as the Enforcer
    reads them; ``strict: false``: any object). For the API server to check
    the calls of an enforced request (docs/enforcer.md, "Validation of the
    calls"); a tool whose schema is refused gets no checker."""
    from jsonschema import Draft202012Validator
    from referencing import Registry

    out: dict[str, Callable[[Any], list[str]]] = {}
    for tool in tools:
        try:
            prepared = prepare_schema(tool.parameters, strict=tool.strict is not False)
        except UnusableSchemaError:
            continue
        # An empty registry: a remote ``$ref`` is never fetched (a client's
        # URL must not make the server connect anywhere).
        validator = Draft202012Validator(prepared.schema, registry=Registry())

        def errors(value: Any, validator: Any = validator) -> list[str]:
            try:
                return [e.message for e in validator.iter_errors(value)]
            except Exception as e:  # e.g. an unresolvable $ref: not checkable
                return [f"schema not checkable: {type(e).__name__}"]

        out[tool.name] = errors
    return out


# -- a request -------------------------------------------------------------


def _xargs(request: Any) -> dict[str, Any]:
    return getattr(request, "vllm_xargs", None) or {}


def enforced(request: Any) -> bool:
    """Whether the Enforcer constrains this request (docs/enforcer.md)."""
    if not envs.KIMI_TOOLS_ENFORCER or not declared_tools(request):
        return False
    if request.tool_choice == "none":
        return False
    return not opted_out(_xargs(request).get(OPT_OUT_KEY))


def spec_for(
    request: Any, *, first_index: int, max_model_len: int | None = None
) -> tuple[EnforcerSpec, list[str]]:
    """The request's spec and notes on degraded schemas (:func:`build_spec`).

    Raises :class:`AdmissionError` (HTTP 400), also for an unexpected failure
    (``reason`` "error", the failure as ``__cause__``): a bug must not become
    an HTTP 500 or worse.
    """
    choice = request.tool_choice if isinstance(request.tool_choice, str) else AUTO
    try:
        return build_spec(
            declared_tools(request),
            first_index=first_index,
            choice=choice,
            named=named_tool_choice(request),
            parallel=request.parallel_tool_calls is not False,
            max_tokens=output_budget(request),
            max_model_len=max_model_len,
            reply=reply_schema(request),
        )
    except AdmissionError:
        raise
    except Exception as e:
        raise AdmissionError(
            "the tool schemas could not be prepared for constrained decoding "
            f'({type(e).__name__}); send "vllm_xargs": {{"{OPT_OUT_KEY}": '
            "false} to decode without it",
            "error",
        ) from e


def attached_spec(request: Any) -> EnforcerSpec | None:
    """The spec admission attached to ``request`` (None: not enforced)."""
    text = _xargs(request).get(SPEC_KEY)
    if not isinstance(text, str):
        return None
    try:
        return EnforcerSpec.from_json(text)
    except ValueError:
        return None


def streamed_tools(request: Any) -> frozenset[str]:
    """Tools whose calls stream as they are written: those the Enforcer
    constrains exactly in this request (a started call can only become
    valid). Without the Enforcer, none: a call is sent once it is whole and
    valid, so a client never receives one that is then dropped."""
    if not envs.KIMI_TOOLS_STREAM_ARGUMENTS:
        return frozenset()
    spec = attached_spec(request)
    if spec is None:
        return frozenset()
    return frozenset(tool.name for tool in spec.tools if tool.exact)


def enforced_checkers(request: Any) -> dict[str, Callable[[Any], list[str]]] | None:
    """For an enforced request, per tool the schema check every returned call
    must pass (docs/enforcer.md, "Validation of the calls"); else None."""
    if SPEC_KEY not in _xargs(request):
        return None
    return argument_checkers(declared_tools(request))
