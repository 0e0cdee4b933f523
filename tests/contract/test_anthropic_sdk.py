"""Contract tests: the official Anthropic Python SDK, with strict response validation,
against Bourse's `POST /v1/messages` surface in front of upstream-sim.

Every behaviour is checked through both kinds of upstream (the `model` fixture):

* `simanth/sim-small`: an Anthropic-dialect provider, so the gateway passes the request
  through (only `model` rewritten) and relays the answer;
* `sim/sim-small`: an OpenAI-dialect provider, so the gateway translates the request to a
  chat completion and the answer (and every stream event) back to Anthropic's shapes.

Strict validation (`_strict_response_validation=True`, see `conftest.make_anthropic`)
makes the SDK validate every response and stream event against its pydantic types, so a
missing or mistyped field in anything the gateway sends raises
`anthropic.APIResponseValidationError` and fails the test.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable, Iterator

import anthropic
import httpx
import pytest
from anthropic.types import Message, MessageTokensCount, RawMessageStreamEvent, TextBlock, ToolUseBlock
from pydantic import BaseModel

from conftest import (
    ANTHROPIC_MODEL,
    ANTHROPIC_ROUTE,
    MODEL,
    RequestLog,
    make_anthropic,
    seconds_to_utc_midnight,
)

PASSTHROUGH = ANTHROPIC_MODEL  # Anthropic upstream: same dialect, relayed
TRANSLATED = MODEL  # OpenAI upstream: Anthropic <-> OpenAI translation

MESSAGES = [{"role": "user", "content": "Say hello to the exchange."}]
MAX_TOKENS = 256
# upstream-sim's default answer length, in tokens (one streamed text delta each).
DEFAULT_OUTPUT_TOKENS = 12
GATEWAY_ANTHROPIC_VERSION = "2023-06-01"

WEATHER_TOOL: dict[str, Any] = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
# What upstream-sim fills a string property named "city" with.
SIM_TOOL_INPUT = {"city": "Paris"}

# Anthropic's documented `error.type` values.
ANTHROPIC_ERROR_TYPES = {
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
    "timeout_error",
    "billing_error",
}


@pytest.fixture(params=[PASSTHROUGH, TRANSLATED], ids=["anthropic-upstream", "openai-upstream"])
def model(request: pytest.FixtureRequest) -> str:
    return request.param


# helpers ------------------------------------------------------------------------------


def _upstream(sim) -> dict[str, Any]:
    """The sim's record of the last request the gateway made, body parsed."""
    rec = sim.last_request()
    assert rec, "the gateway sent nothing upstream"
    if isinstance(rec.get("body"), str):
        rec["body"] = json.loads(rec["body"])
    return rec


def _header_values(rec: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in rec["headers"] if key.lower() == name]


def _requests(sim) -> int:
    """Model requests the sim has served; after a call, also the sim's `N` in its ids."""
    return sim.stats()["requests"]


def _expected_id(model: str, n: int) -> str:
    # The sim numbers ids by request: Anthropic dialect `msg_sim_N`, OpenAI `chatcmpl-sim-N`.
    return f"msg_sim_{n}" if model == PASSTHROUGH else f"chatcmpl-sim-{n}"


def _expected_path(model: str) -> str:
    return "/v1/messages" if model == PASSTHROUGH else "/v1/chat/completions"


def _openai_text(content: Any) -> str:
    """The text of an OpenAI message `content` (a string or a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if p.get("type") == "text")


def _text(message: Message) -> str:
    blocks = [b for b in message.content if b.type == "text"]
    assert blocks, message
    return "".join(b.text for b in blocks)


def _cost(input_tokens: int, output_tokens: int) -> str:
    # Both sim models are priced at $1/M in and $2/M out (conftest).
    nanos = input_tokens * 1000 + output_tokens * 2000
    return f"{nanos // 10**9}.{nanos % 10**9:09d}"


def _assert_error(e: anthropic.APIStatusError, status: int, error_type: str) -> dict[str, Any]:
    """The gateway answered in Anthropic's error shape, which the SDK parsed."""
    assert e.status_code == status, (e.status_code, e.body)
    assert isinstance(e.body, dict), e.body
    assert e.body.get("type") == "error", e.body
    error = e.body.get("error")
    assert isinstance(error, dict), e.body
    assert error.get("type") == error_type, e.body
    assert isinstance(error.get("message"), str) and error["message"], e.body
    assert e.type == error_type  # what the SDK extracted
    assert e.response.headers.get("content-type", "").startswith("application/json")
    assert e.response.headers.get("x-request-id")
    return error


def _overloaded_class() -> type[anthropic.APIStatusError]:
    return getattr(anthropic, "OverloadedError", anthropic.InternalServerError)


def _sse_events(resp: httpx.Response) -> Iterator[tuple[str | None, str]]:
    """(event name, data) for each SSE event on the wire; comments are skipped."""
    name: str | None = None
    data: list[str] = []
    for line in resp.iter_lines():
        if line == "":
            if name is not None or data:
                yield name, "\n".join(data)
            name, data = None, []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            name = line[len("event:") :].strip()
        elif line.startswith("data:"):
            data.append(line[len("data:") :].removeprefix(" "))
    if name is not None or data:
        yield name, "\n".join(data)


def _assert_event_grammar(types: list[str]) -> None:
    """message_start, then one block (start, deltas, stop), message_delta, message_stop."""
    assert types[0] == "message_start", types
    assert types[-1] == "message_stop", types
    assert types[-2] == "message_delta", types
    blocks = types[1:-2]
    assert blocks[0] == "content_block_start", types
    assert blocks[-1] == "content_block_stop", types
    assert len(blocks) >= 3 and set(blocks[1:-1]) == {"content_block_delta"}, types


def test_anthropic_client_is_strict(anthropic_client: anthropic.Anthropic, gateway) -> None:
    # Everything below relies on this (see conftest.make_anthropic).
    assert anthropic_client._strict_response_validation is True
    assert anthropic_client.max_retries == 0
    assert str(anthropic_client.base_url).rstrip("/") == gateway.root_url


# 1. messages.create, non-streaming -----------------------------------------------------


def test_create(anthropic_client: anthropic.Anthropic, sim, model: str) -> None:
    """A plain `messages.create` returns a valid `Message`, whichever dialect the upstream
    speaks: assistant text, `end_turn`, the upstream's own usage and the upstream's own id
    (preserved through translation, not invented). The upstream got the right dialect,
    with only the model name rewritten."""
    resp = anthropic_client.messages.create(model=model, max_tokens=MAX_TOKENS, messages=MESSAGES)
    n = _requests(sim)
    assert isinstance(resp, Message)
    assert resp.type == "message"
    assert resp.role == "assistant"
    assert len(resp.content) == 1
    block = resp.content[0]
    assert isinstance(block, TextBlock) and block.type == "text"
    assert block.text.strip()
    assert resp.stop_reason == "end_turn"
    assert resp.stop_sequence is None
    assert resp.usage.input_tokens > 0
    assert resp.usage.output_tokens == DEFAULT_OUTPUT_TOKENS
    assert resp.id == _expected_id(model, n)

    upstream = _upstream(sim)
    assert upstream["path"] == _expected_path(model)
    body = upstream["body"]
    assert body["model"] == "sim-small"
    if model == PASSTHROUGH:
        assert body["messages"] == MESSAGES
        assert body["max_tokens"] == MAX_TOKENS
    else:
        assert [(m["role"], _openai_text(m.get("content"))) for m in body["messages"]] == [
            ("user", MESSAGES[0]["content"])
        ]
        assert body.get("max_completion_tokens", body.get("max_tokens")) == MAX_TOKENS


def test_create_raw_response_headers(anthropic_client: anthropic.Anthropic, model: str) -> None:
    """The Anthropic surface carries the gateway's provenance and cost headers like the
    OpenAI one: the usage the client sees is the usage that was metered and priced."""
    raw = anthropic_client.messages.with_raw_response.create(model=model, max_tokens=MAX_TOKENS, messages=MESSAGES)
    assert raw.status_code == 200
    provider, upstream_model = model.split("/")
    assert raw.headers.get("x-bourse-provider") == provider
    assert raw.headers.get("x-bourse-model") == upstream_model
    assert raw.headers.get("x-request-id")
    message = raw.parse()
    assert isinstance(message, Message)
    # The SDK's own request id (read from `request-id`) is the gateway's.
    assert message._request_id == raw.headers.get("x-request-id")
    assert raw.headers.get("x-bourse-cost-usd") == _cost(message.usage.input_tokens, message.usage.output_tokens)


def test_cached_prompt_usage(anthropic_client: anthropic.Anthropic, sim_config, model: str) -> None:
    """Usage follows Anthropic's accounting on both paths, streamed or not: `input_tokens`
    excludes the cached part of the prompt, reported as `cache_read_input_tokens`. The
    OpenAI upstream reports the cache inside `prompt_tokens`, so translation must
    subtract it."""
    sim_config(prompt_tokens=100, cached_tokens=40)
    resp = anthropic_client.messages.create(model=model, max_tokens=MAX_TOKENS, messages=MESSAGES)
    with anthropic_client.messages.stream(model=model, max_tokens=MAX_TOKENS, messages=MESSAGES) as stream:
        streamed = stream.get_final_message()
    for message in (resp, streamed):
        assert message.usage.input_tokens == 60
        assert message.usage.cache_read_input_tokens == 40
        assert message.usage.output_tokens == DEFAULT_OUTPUT_TOKENS


# 2. streaming -------------------------------------------------------------------------


def test_stream_helper_text_and_final_message(anthropic_client: anthropic.Anthropic, sim, model: str) -> None:
    """`messages.stream()`: the text arrives in several deltas, concatenates to the final
    message's text (and to the non-streamed answer: the sim is deterministic), and the
    accumulated final message has `end_turn`, the full usage and the upstream's id."""
    expected = anthropic_client.messages.create(model=model, max_tokens=MAX_TOKENS, messages=MESSAGES)
    with anthropic_client.messages.stream(model=model, max_tokens=MAX_TOKENS, messages=MESSAGES) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    n = _requests(sim)
    assert len([p for p in pieces if p]) > 1, f"not streamed incrementally: {pieces}"
    assert "".join(pieces) == _text(final) == _text(expected)
    assert isinstance(final, Message)
    assert final.role == "assistant"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == DEFAULT_OUTPUT_TOKENS
    # Input tokens reach the final message too (for a translated stream they are only known
    # from the upstream's last chunk, so they must come in message_delta).
    assert final.usage.input_tokens == expected.usage.input_tokens > 0
    assert final.id == _expected_id(model, n)
    assert _upstream(sim)["body"].get("stream") is True


def test_raw_stream_event_sequence(anthropic_client: anthropic.Anthropic, model: str) -> None:
    """`create(stream=True)`: every event validates strictly, in Anthropic's order —
    message_start, content_block_start, content_block_delta..., content_block_stop,
    message_delta, message_stop — with consistent indices, text deltas that add up to
    the answer, and the stop reason and output usage in message_delta."""
    expected = _text(anthropic_client.messages.create(model=model, max_tokens=MAX_TOKENS, messages=MESSAGES))
    events: list[RawMessageStreamEvent] = list(
        anthropic_client.messages.create(model=model, max_tokens=MAX_TOKENS, messages=MESSAGES, stream=True)
    )
    types = [e.type for e in events]
    _assert_event_grammar(types)

    start = events[0]
    assert start.message.role == "assistant"
    assert start.message.content == []
    assert start.message.stop_reason is None
    block_start = events[1]
    assert block_start.index == 0
    assert block_start.content_block.type == "text"
    deltas = [e for e in events if e.type == "content_block_delta"]
    assert all(d.index == 0 and d.delta.type == "text_delta" for d in deltas)
    assert "".join(d.delta.text for d in deltas) == expected
    assert events[-3].index == 0
    message_delta = events[-2]
    assert message_delta.delta.stop_reason == "end_turn"
    assert message_delta.usage.output_tokens == DEFAULT_OUTPUT_TOKENS


def test_sse_wire_events_are_named(gateway, model: str) -> None:
    """On the wire every SSE event has an `event:` line equal to its data's `type` (the SDK
    silently skips unnamed events), pings may appear anywhere, and the stream is
    `text/event-stream`. Sent with raw httpx, `x-api-key` and no `anthropic-version`."""
    with httpx.Client(trust_env=False, timeout=30.0) as http:
        with http.stream(
            "POST",
            f"{gateway.root_url}/v1/messages",
            headers={"x-api-key": gateway.key},
            json={"model": model, "max_tokens": MAX_TOKENS, "messages": MESSAGES, "stream": True},
        ) as resp:
            assert resp.status_code == 200, resp.read()
            assert resp.headers["content-type"].startswith("text/event-stream")
            events = list(_sse_events(resp))
    assert events
    types = []
    for name, data in events:
        assert name, f"unnamed SSE event: {data!r}"
        payload = json.loads(data)
        assert payload["type"] == name, (name, payload)
        if name != "ping":
            types.append(name)
    _assert_event_grammar(types)


def test_stream_broken_upstream_raises(anthropic_client: anthropic.Anthropic, sim_config, model: str) -> None:
    """An upstream that dies mid-stream ends the client's stream with an Anthropic `error`
    event (which the SDK raises) after the text already relayed — never a clean
    message_stop that would pass a truncated answer off as complete."""
    full = _text(anthropic_client.messages.create(model=model, max_tokens=MAX_TOKENS, messages=MESSAGES))
    # A delay between chunks so the first ones really leave the sim before it aborts.
    sim_config(chunk_delay_ms=20, failure={"kind": "drop_mid_stream", "after_chunks": 3})
    got: list[str] = []
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        for event in anthropic_client.messages.create(
            model=model, max_tokens=MAX_TOKENS, messages=MESSAGES, stream=True
        ):
            seen.append(event.type)
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                got.append(event.delta.text)
    partial = "".join(got)
    assert partial and full.startswith(partial) and partial != full, (partial, full)
    assert "message_stop" not in seen
    body = info.value.body
    assert isinstance(body, dict) and body.get("type") == "error", body
    assert body["error"]["type"] in ANTHROPIC_ERROR_TYPES, body
    assert body["error"]["message"]


def test_stream_malformed_upstream_event_is_error_event(
    anthropic_client: anthropic.Anthropic, sim_config, model: str
) -> None:
    """An upstream stream event that is not valid JSON ends the client's stream with an
    Anthropic `error` event, which the SDK raises as an `APIStatusError` — not a broken
    `data:` line that makes the SDK fail with a bare `json.JSONDecodeError`."""
    sim_config(failure={"kind": "malformed_json"})
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        for event in anthropic_client.messages.create(
            model=model, max_tokens=MAX_TOKENS, messages=MESSAGES, stream=True
        ):
            seen.append(event.type)
    assert "message_stop" not in seen
    body = info.value.body
    assert isinstance(body, dict) and body.get("type") == "error", body
    assert body["error"]["type"] == "api_error", body


# 3. tool use --------------------------------------------------------------------------


def test_tool_use_round_trip(anthropic_client: anthropic.Anthropic, sim, model: str) -> None:
    """Tool use end to end: a `tool_use` block (id, name, parsed dict input) with stop
    reason `tool_use`; sending back the assistant turn and a `tool_result` for that id
    gets a final text answer. Through the OpenAI upstream, the tool definition becomes a
    function, the tool_use an assistant `tool_calls` entry and the result a `tool`
    message — with the same id all the way."""
    first = anthropic_client.messages.create(
        model=model, max_tokens=MAX_TOKENS, messages=WEATHER_QUESTION, tools=[WEATHER_TOOL]
    )
    assert first.stop_reason == "tool_use"
    uses = [b for b in first.content if b.type == "tool_use"]
    assert len(uses) == 1, first.content
    use = uses[0]
    assert isinstance(use, ToolUseBlock)
    assert use.id
    assert use.name == "get_weather"
    assert isinstance(use.input, dict) and "city" in use.input
    assert use.input == SIM_TOOL_INPUT

    sent = _upstream(sim)["body"]
    if model == PASSTHROUGH:
        assert sent["tools"] == [WEATHER_TOOL]
    else:
        assert [t["type"] for t in sent["tools"]] == ["function"]
        function = sent["tools"][0]["function"]
        assert function["name"] == WEATHER_TOOL["name"]
        assert function["description"] == WEATHER_TOOL["description"]
        assert function["parameters"] == WEATHER_TOOL["input_schema"]

    result_text = "18 degrees and sunny"
    second = anthropic_client.messages.create(
        model=model,
        max_tokens=MAX_TOKENS,
        tools=[WEATHER_TOOL],
        messages=[
            *WEATHER_QUESTION,
            first.to_param(),
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": result_text}]},
        ],
    )
    assert second.stop_reason == "end_turn"
    assert _text(second).strip()
    assert not [b for b in second.content if b.type == "tool_use"]

    sent = _upstream(sim)["body"]
    if model == PASSTHROUGH:
        assert sent["messages"][-1]["content"][0]["tool_use_id"] == use.id
        assert sent["messages"][-2]["content"][0]["id"] == use.id
    else:
        assistant = [m for m in sent["messages"] if m["role"] == "assistant"]
        assert len(assistant) == 1, sent["messages"]
        calls = assistant[0]["tool_calls"]
        assert [c["id"] for c in calls] == [use.id]
        assert calls[0]["type"] == "function"
        assert calls[0]["function"]["name"] == "get_weather"
        assert json.loads(calls[0]["function"]["arguments"]) == use.input
        tool_msgs = [m for m in sent["messages"] if m["role"] == "tool"]
        assert [m["tool_call_id"] for m in tool_msgs] == [use.id], sent["messages"]
        assert _openai_text(tool_msgs[0]["content"]) == result_text
        # The tool result is the last turn, right after the assistant's call.
        assert [m["role"] for m in sent["messages"]][-2:] == ["assistant", "tool"]


def test_tool_use_stream_helper(anthropic_client: anthropic.Anthropic, model: str) -> None:
    """Streamed tool use: the input arrives as `input_json_delta` fragments that the SDK's
    accumulator parses into the same dict input a non-streamed call returns."""
    with anthropic_client.messages.stream(
        model=model, max_tokens=MAX_TOKENS, messages=WEATHER_QUESTION, tools=[WEATHER_TOOL]
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    uses = [b for b in final.content if b.type == "tool_use"]
    assert len(uses) == 1, final.content
    assert uses[0].id and uses[0].name == "get_weather"
    assert uses[0].input == SIM_TOOL_INPUT
    fragments = [e.partial_json for e in events if e.type == "input_json"]
    assert json.loads("".join(fragments)) == SIM_TOOL_INPUT


def test_reasoning_upstream_gives_thinking_blocks_that_round_trip(
    anthropic_client: anthropic.Anthropic, sim, sim_config
) -> None:
    """An OpenAI-dialect reasoning model (DeepSeek-style `reasoning_content`) answers an
    Anthropic client with a `thinking` block before the text — valid for the SDK,
    streamed or not, with the reasoning counted in output tokens — and sending that
    assistant turn back is accepted, the thinking returned as `reasoning_content`."""
    sim_config(reasoning_tokens=3)
    first = anthropic_client.messages.create(model=TRANSLATED, max_tokens=MAX_TOKENS, messages=MESSAGES)
    with anthropic_client.messages.stream(model=TRANSLATED, max_tokens=MAX_TOKENS, messages=MESSAGES) as stream:
        streamed = stream.get_final_message()
    for message in (first, streamed):
        assert [b.type for b in message.content] == ["thinking", "text"], message.content
        assert message.content[0].thinking.strip()
        assert message.content[1].text.strip()
        assert message.usage.output_tokens == DEFAULT_OUTPUT_TOKENS + 3
    assert streamed.content[0].thinking == first.content[0].thinking

    second = anthropic_client.messages.create(
        model=TRANSLATED,
        max_tokens=MAX_TOKENS,
        messages=[*MESSAGES, first.to_param(), {"role": "user", "content": "Go on."}],
    )
    assert second.stop_reason == "end_turn"
    assistant = [m for m in _upstream(sim)["body"]["messages"] if m["role"] == "assistant"]
    assert len(assistant) == 1
    assert _openai_text(assistant[0]["content"]) == first.content[1].text
    assert assistant[0].get("reasoning_content") == first.content[0].thinking


class Answer(BaseModel):
    answer: str


def test_structured_output_parse(anthropic_client: anthropic.Anthropic, sim, model: str) -> None:
    """`messages.parse(output_format=Model)` (structured outputs via `output_config.format`)
    gives a parsed pydantic object, streamed or not: the schema is forwarded as is to an
    Anthropic upstream and as an OpenAI `json_schema` response_format in translation.
    (upstream-sim answers structured-output requests with {"answer": "<text>"}.)"""
    parsed = anthropic_client.messages.parse(
        model=model, max_tokens=MAX_TOKENS, messages=MESSAGES, output_format=Answer
    )
    assert isinstance(parsed.parsed_output, Answer)
    assert parsed.parsed_output.answer

    body = _upstream(sim)["body"]
    if model == PASSTHROUGH:
        sent_schema = body["output_config"]["format"]["schema"]
        assert body["output_config"]["format"]["type"] == "json_schema"
    else:
        assert body["response_format"]["type"] == "json_schema"
        sent_schema = body["response_format"]["json_schema"]["schema"]
    assert sent_schema["properties"].keys() == {"answer"}
    assert sent_schema["required"] == ["answer"]

    with anthropic_client.messages.stream(
        model=model, max_tokens=MAX_TOKENS, messages=MESSAGES, output_format=Answer
    ) as stream:
        final = stream.get_final_message()
    assert final.parsed_output == parsed.parsed_output


# 4. request options and headers -------------------------------------------------------


SYSTEM_STRING = "You are a terse broker."
SYSTEM_BLOCKS = [
    {"type": "text", "text": "You are a terse broker."},
    {"type": "text", "text": "Answer in one line."},
]


@pytest.mark.parametrize("system", [SYSTEM_STRING, SYSTEM_BLOCKS], ids=["system-string", "system-blocks"])
def test_system_and_sampling_options_accepted(
    anthropic_client: anthropic.Anthropic, sim, model: str, system: Any
) -> None:
    """A system prompt (string or text blocks), stop_sequences, temperature and
    metadata.user_id are accepted and reach the upstream in its own dialect: as is on
    the pass-through; in translation as a leading system message, `stop`, `temperature`
    and `user` (and no Anthropic-only fields)."""
    stop = ["\n\nHuman:"]
    resp = anthropic_client.messages.create(
        model=model,
        max_tokens=MAX_TOKENS,
        system=system,
        messages=MESSAGES,
        stop_sequences=stop,
        metadata={"user_id": "contract-user-7"},
        # anthropic 2.14.0 dropped `temperature` from create()'s keywords; the API and
        # older SDKs (and Claude-built tools) still send it.
        extra_body={"temperature": 0.3},
    )
    assert resp.stop_reason == "end_turn"
    assert _text(resp).strip()

    body = _upstream(sim)["body"]
    if model == PASSTHROUGH:
        assert body["system"] == system
        assert body["stop_sequences"] == stop
        assert body["temperature"] == 0.3
        assert body["metadata"] == {"user_id": "contract-user-7"}
        return
    roles = [m["role"] for m in body["messages"]]
    system_count = roles.count("system")
    assert system_count >= 1 and roles[:system_count] == ["system"] * system_count, roles
    assert roles[system_count:] == ["user"], roles
    system_text = "\n".join(_openai_text(m["content"]) for m in body["messages"][:system_count])
    texts = [system] if isinstance(system, str) else [b["text"] for b in system]
    positions = [system_text.find(t) for t in texts]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), (system_text, texts)
    assert body.get("stop") in (stop, stop[0]), body.get("stop")
    assert body["temperature"] == 0.3
    assert body.get("user") == "contract-user-7"
    for anthropic_only in ("system", "stop_sequences", "metadata"):
        assert anthropic_only not in body, (anthropic_only, body)


def test_any_anthropic_version_accepted(gateway, sim, model: str) -> None:
    """Any `anthropic-version` is accepted (SDKs newer than the gateway send new dates);
    an Anthropic upstream is still spoken to in the version the gateway knows, never the
    client's date, which a real upstream would reject."""
    client = make_anthropic(gateway, default_headers={"anthropic-version": "2099-01-01"})
    try:
        raw = client.messages.with_raw_response.create(model=model, max_tokens=MAX_TOKENS, messages=MESSAGES)
    finally:
        client.close()
    assert raw.http_request.headers.get("anthropic-version") == "2099-01-01"
    assert _text(raw.parse()).strip()
    upstream = _upstream(sim)
    if model == PASSTHROUGH:
        assert _header_values(upstream, "anthropic-version") == [GATEWAY_ANTHROPIC_VERSION]
    else:
        assert _header_values(upstream, "anthropic-version") == []


def test_anthropic_beta_relayed_only_to_anthropic_upstream(anthropic_client: anthropic.Anthropic, sim, model: str) -> None:
    """`anthropic-beta` switches on features the client expects, so a same-dialect upstream
    gets it as sent; an OpenAI upstream, which would not understand it, does not."""
    beta = "contract-test-2099-01-01"
    anthropic_client.messages.create(
        model=model, max_tokens=MAX_TOKENS, messages=MESSAGES, extra_headers={"anthropic-beta": beta}
    )
    expected = [beta] if model == PASSTHROUGH else []
    assert _header_values(_upstream(sim), "anthropic-beta") == expected


def test_gateway_key_never_reaches_upstream(gateway, sim, model: str) -> None:
    """The gateway key authenticates the client to Bourse only: whether it came as bearer
    or as `x-api-key`, no upstream request carries it."""
    for x_api_key in (False, True):
        client = make_anthropic(gateway, x_api_key=x_api_key)
        try:
            client.messages.create(model=model, max_tokens=MAX_TOKENS, messages=MESSAGES)
        finally:
            client.close()
        leaked = [(k, v) for k, v in _upstream(sim)["headers"] if gateway.key in v]
        assert leaked == [], leaked


# 5. count_tokens ----------------------------------------------------------------------


def test_count_tokens(anthropic_client: anthropic.Anthropic, sim, model: str) -> None:
    """`messages.count_tokens` answers a valid `MessageTokensCount` without a max_tokens,
    counts more for a longer prompt and for an added system prompt, and is free: no
    upstream request is made."""
    before = _requests(sim)
    short = anthropic_client.messages.count_tokens(model=model, messages=[{"role": "user", "content": "Hi"}])
    long = anthropic_client.messages.count_tokens(
        model=model, messages=[{"role": "user", "content": "Tell me about the exchange today. " * 40}]
    )
    with_system = anthropic_client.messages.count_tokens(
        model=model, system=SYSTEM_BLOCKS, messages=[{"role": "user", "content": "Hi"}]
    )
    assert isinstance(short, MessageTokensCount)
    assert short.input_tokens > 0
    assert long.input_tokens > short.input_tokens + 100
    assert with_system.input_tokens > short.input_tokens
    assert _requests(sim) == before


# 6. typed errors ----------------------------------------------------------------------


@pytest.mark.parametrize("x_api_key", [False, True], ids=["bearer", "x-api-key"])
def test_wrong_gateway_key_is_authentication_error(gateway, sim, x_api_key: bool) -> None:
    """A wrong gateway key, sent either way, is a 401 `authentication_error` in Anthropic's
    shape on both endpoints, and nothing reaches the upstream."""
    bad = make_anthropic(gateway, api_key="not-the-gateway-key", x_api_key=x_api_key)
    before = _requests(sim)
    try:
        with pytest.raises(anthropic.AuthenticationError) as info:
            bad.messages.create(model=PASSTHROUGH, max_tokens=MAX_TOKENS, messages=MESSAGES)
        _assert_error(info.value, 401, "authentication_error")
        with pytest.raises(anthropic.AuthenticationError) as info:
            bad.messages.count_tokens(model=PASSTHROUGH, messages=MESSAGES)
        _assert_error(info.value, 401, "authentication_error")
    finally:
        bad.close()
    assert _requests(sim) == before


def test_missing_gateway_key_is_authentication_error(gateway) -> None:
    """No key at all: the same typed 401, in Anthropic's shape."""
    with httpx.Client(trust_env=False, timeout=30.0) as http:
        resp = http.post(
            f"{gateway.root_url}/v1/messages",
            json={"model": PASSTHROUGH, "max_tokens": MAX_TOKENS, "messages": MESSAGES},
        )
    assert resp.status_code == 401
    body = resp.json()
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error", body
    assert body["error"]["message"]


@pytest.mark.parametrize("how", ["x-api-key", "auth_token"])
def test_gateway_key_accepted_as_x_api_key_or_bearer(gateway, how: str) -> None:
    """The right key works as `x-api-key` (what Claude-built tools send) and as a bearer
    `auth_token=`."""
    options = {"x_api_key": True} if how == "x-api-key" else {"auth_token": gateway.key}
    client = make_anthropic(gateway, **options)
    try:
        raw = client.messages.with_raw_response.create(model=PASSTHROUGH, max_tokens=MAX_TOKENS, messages=MESSAGES)
    finally:
        client.close()
    sent = raw.http_request.headers
    if how == "x-api-key":
        assert sent.get("x-api-key") == gateway.key and "authorization" not in sent
    else:
        assert sent.get("authorization") == f"Bearer {gateway.key}" and "x-api-key" not in sent
    assert _text(raw.parse()).strip()


def test_unknown_model_is_not_found(anthropic_client: anthropic.Anthropic) -> None:
    """An unknown model is a typed 404 `not_found_error` naming the model, streaming or not."""
    for stream in (False, True):
        with pytest.raises(anthropic.NotFoundError) as info:
            anthropic_client.messages.create(model="nowhere/x", max_tokens=MAX_TOKENS, messages=MESSAGES, stream=stream)
        error = _assert_error(info.value, 404, "not_found_error")
        assert "nowhere/x" in error["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": MESSAGES}, "max_tokens"),
        ({"max_tokens": "many", "messages": MESSAGES}, "max_tokens"),
        ({"max_tokens": MAX_TOKENS, "messages": [{"role": "wizard", "content": "x"}]}, "role"),
        ({"max_tokens": MAX_TOKENS, "messages": []}, "messages"),
        ({"max_tokens": MAX_TOKENS}, "messages"),
        ({"max_tokens": 0, "messages": MESSAGES}, "max_tokens"),
        ({"max_tokens": MAX_TOKENS, "messages": MESSAGES, "temperature": 7}, "temperature"),
    ],
    ids=[
        "missing-max_tokens",
        "string-max_tokens",
        "bad-role",
        "no-messages",
        "missing-messages",
        "zero-max_tokens",
        "temperature-out-of-range",
    ],
)
def test_invalid_request_is_bad_request(
    anthropic_client: anthropic.Anthropic, sim, body: dict[str, Any], field: str
) -> None:
    """Requests the SDK's types would not let through (sent with `client.post`) are a typed
    400 `invalid_request_error` that names the offending field, and never reach the
    upstream."""
    before = _requests(sim)
    with pytest.raises(anthropic.BadRequestError) as info:
        anthropic_client.post("/v1/messages", cast_to=Message, body={"model": PASSTHROUGH, **body})
    error = _assert_error(info.value, 400, "invalid_request_error")
    assert field in error["message"], error
    assert _requests(sim) == before, "an invalid request must not reach the upstream"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("status", [529, 503])
def test_upstream_overloaded_is_529(
    anthropic_client: anthropic.Anthropic, sim_config, model: str, status: int, stream: bool
) -> None:
    """An overloaded upstream (Anthropic's 529 or anyone's 503) reaches an Anthropic client
    as 529 `overloaded_error`, which the SDK raises as `OverloadedError` (an
    `InternalServerError`), before any stream starts."""
    sim_config(failure={"kind": "status", "status": status})
    with pytest.raises(anthropic.InternalServerError) as info:
        anthropic_client.messages.create(model=model, max_tokens=MAX_TOKENS, messages=MESSAGES, stream=stream)
    assert isinstance(info.value, _overloaded_class()), type(info.value)
    _assert_error(info.value, 529, "overloaded_error")


def test_upstream_429_is_rate_limit_error(anthropic_client: anthropic.Anthropic, sim_config, model: str) -> None:
    """An upstream 429 is a typed `RateLimitError` with `rate_limit_error` and the upstream's
    Retry-After, so the SDK's own retry waits as told."""
    sim_config(failure={"kind": "status", "status": 429, "retry_after": 3})
    for stream in (False, True):
        with pytest.raises(anthropic.RateLimitError) as info:
            anthropic_client.messages.create(model=model, max_tokens=MAX_TOKENS, messages=MESSAGES, stream=stream)
        _assert_error(info.value, 429, "rate_limit_error")
        assert info.value.response.headers.get("retry-after") == "3"


def test_sdk_retry_recovers_from_529(gateway, sim_config, model: str) -> None:
    """One overloaded answer (Retry-After 0 keeps the wait short), then success: the SDK's
    own retry, driven by the relayed 529, gets the answer."""
    sim_config(failure={"kind": "status", "status": 529, "retry_after": 0}, fail_first_n=1)
    client = make_anthropic(gateway, max_retries=1)
    try:
        resp = client.messages.create(model=model, max_tokens=MAX_TOKENS, messages=MESSAGES)
    finally:
        client.close()
    assert resp.stop_reason == "end_turn"


def test_route_every_candidate_overloaded_is_529(anthropic_client: anthropic.Anthropic, sim, sim_config) -> None:
    """A route whose two Anthropic candidates are both overloaded tries each once, then
    answers 529 `overloaded_error` saying so (not just the last candidate's words)."""
    sim_config(failure={"kind": "status", "status": 529})
    before = _requests(sim)
    with pytest.raises(anthropic.InternalServerError) as info:
        anthropic_client.messages.create(model=ANTHROPIC_ROUTE, max_tokens=MAX_TOKENS, messages=MESSAGES)
    assert isinstance(info.value, _overloaded_class()), type(info.value)
    error = _assert_error(info.value, 529, "overloaded_error")
    assert "overloaded" in error["message"].lower()
    assert _requests(sim) - before == 2, "both candidates should have been tried"


def test_route_falls_back_to_second_anthropic_candidate(
    anthropic_client: anthropic.Anthropic, sim, sim_config
) -> None:
    """When the first candidate of a route is overloaded, the gateway moves on to the next
    one before anything reached the client, and the client just gets the answer."""
    sim_config(failure={"kind": "status", "status": 529}, fail_first_n=1)
    before = _requests(sim)
    raw = anthropic_client.messages.with_raw_response.create(
        model=ANTHROPIC_ROUTE, max_tokens=MAX_TOKENS, messages=MESSAGES
    )
    n = _requests(sim)
    assert n - before == 2
    assert raw.headers.get("x-bourse-provider") in {"simanth", "simanth2"}
    message = raw.parse()
    assert message.id == f"msg_sim_{n}"
    assert message.stop_reason == "end_turn"
    assert _upstream(sim)["path"] == "/v1/messages"


# 7. budgets and rate limits (virtual keys) ----------------------------------------------
#
# Each test makes its own tenant and virtual key (conftest `virtual_key`), so no two tests
# share counters. The sim models cost $1/M input and $2/M output tokens; a budget is checked
# against the request's worst case (prompt estimate at the input price plus max_tokens at
# the output price), so a budget of one nano-dollar refuses every request.

TINY_BUDGET = "0.000000001"


@pytest.fixture
def limited(gateway, virtual_key) -> Iterator[Callable[..., anthropic.Anthropic]]:
    """`limited(tenant={...}, rpm=2, ...)`: a strict Anthropic client whose key is a new
    virtual key with those limits, sent as `x-api-key` like Claude-built tools do (pass
    `x_api_key=False` for a bearer token); `max_retries` and `http_client` go to the client."""
    clients: list[anthropic.Anthropic] = []

    def make(tenant: dict[str, Any] | None = None, x_api_key: bool = True, **limits: Any) -> anthropic.Anthropic:
        options = {k: limits.pop(k) for k in ("max_retries", "http_client") if k in limits}
        key = virtual_key(tenant=tenant, **limits)
        client = make_anthropic(gateway, api_key=key, x_api_key=x_api_key, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def _usd(headers: Any, name: str) -> Decimal:
    value = headers.get(name)
    assert value is not None and re.fullmatch(r"\d+\.\d+", value), (name, value)
    return Decimal(value)


def _reset_in(headers: Any, rate: str) -> float:
    """Seconds from now to `anthropic-ratelimit-{rate}-reset` (an RFC 3339 time)."""
    value = headers.get(f"anthropic-ratelimit-{rate}-reset")
    assert value and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", value), value
    return datetime.fromisoformat(value).astimezone(timezone.utc).timestamp() - time.time()


def _assert_budget_refusal(e: anthropic.APIStatusError, window: str = "daily") -> None:
    """429 `budget_exceeded` in Anthropic's error shape (not one of Anthropic's own types:
    the SDK goes by the status, so it is a `RateLimitError` whose `type` says why)."""
    assert isinstance(e, anthropic.RateLimitError), type(e)
    error = _assert_error(e, 429, "budget_exceeded")
    assert error["message"].startswith("budget exceeded") and f"{window} budget" in error["message"], error
    headers = e.response.headers
    assert headers.get("x-should-retry") == "false", "the SDK would retry a budget that cannot come back"
    if window == "daily":
        retry_after = int(headers["retry-after"])
        assert abs(retry_after - seconds_to_utc_midnight()) <= 2, retry_after
    elif window == "total":
        assert "retry-after" not in headers, "a total budget never resets"


def _assert_rate_refusal(e: anthropic.APIStatusError, what: str) -> None:
    assert isinstance(e, anthropic.RateLimitError), type(e)
    error = _assert_error(e, 429, "rate_limit_error")
    assert error["message"].startswith("rate limit reached") and what in error["message"], error
    headers = e.response.headers
    assert headers.get("x-should-retry") != "false"
    assert 1 <= int(headers["retry-after"]) <= 60, headers.get("retry-after")


@pytest.mark.parametrize(
    "target", [PASSTHROUGH, TRANSLATED, ANTHROPIC_ROUTE], ids=["anthropic-upstream", "openai-upstream", "route"]
)
def test_budget_refusal_is_rate_limit_error(limited, sim, target: str) -> None:
    """A tenant's spent daily budget: `anthropic.RateLimitError`, `error.type`
    `budget_exceeded`, Retry-After until midnight UTC, `x-should-retry: false`; nothing
    reaches the upstream."""
    client = limited(tenant={"budget_day_usd": TINY_BUDGET})
    before = _requests(sim)
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(model=target, max_tokens=MAX_TOKENS, messages=MESSAGES)
    _assert_budget_refusal(info.value)
    assert info.value.body["error"]["type"] == "budget_exceeded"
    assert "of tenant" in info.value.body["error"]["message"]
    assert _requests(sim) == before


def test_budget_spent_then_refused(limited, sim) -> None:
    """A key's total budget, spent by real requests: `x-bourse-budget-remaining-usd` is the
    budget less what was spent before and this request's worst case, and the first request
    whose worst case no longer fits is refused (no Retry-After: it never resets)."""
    budget = Decimal("0.0001")
    client = limited(budget_total_usd=str(budget), x_api_key=False)
    first = client.messages.with_raw_response.create(model=PASSTHROUGH, max_tokens=20, messages=MESSAGES)
    remaining = _usd(first.headers, "x-bourse-budget-remaining-usd")
    cost = _usd(first.headers, "x-bourse-cost-usd")
    worst = budget - remaining
    assert Decimal(0) < cost <= worst < budget, (cost, worst, budget)
    spent = cost
    answered = 1
    while spent + worst <= budget:
        raw = client.messages.with_raw_response.create(model=PASSTHROUGH, max_tokens=20, messages=MESSAGES)
        assert _usd(raw.headers, "x-bourse-budget-remaining-usd") == budget - spent - worst
        spent += _usd(raw.headers, "x-bourse-cost-usd")
        answered += 1
        assert answered < 10, "the budget never ran out"
    before = _requests(sim)
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(model=PASSTHROUGH, max_tokens=20, messages=MESSAGES)
    _assert_budget_refusal(info.value, window="total")
    assert _requests(sim) == before


def test_requests_per_minute_refusal(limited, sim) -> None:
    """rpm = 2: two answers count the limit down in `anthropic-ratelimit-requests-*`, the
    third is `anthropic.RateLimitError` with `rate_limit_error` and a Retry-After within
    the minute, and never reaches the upstream."""
    client = limited(rpm=2)
    remaining = []
    for _ in range(2):
        raw = client.messages.with_raw_response.create(model=PASSTHROUGH, max_tokens=MAX_TOKENS, messages=MESSAGES)
        assert _text(raw.parse()).strip()
        assert raw.headers.get("anthropic-ratelimit-requests-limit") == "2"
        remaining.append(int(raw.headers["anthropic-ratelimit-requests-remaining"]))
        assert -1 <= _reset_in(raw.headers, "requests") <= 61
        # Only what is limited is reported: no tokens per minute, no budget.
        assert "anthropic-ratelimit-tokens-limit" not in raw.headers
        assert "x-bourse-budget-remaining-usd" not in raw.headers
    assert remaining == [1, 0]
    before = _requests(sim)
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(model=PASSTHROUGH, max_tokens=MAX_TOKENS, messages=MESSAGES)
    _assert_rate_refusal(info.value, "2 requests per minute")
    assert _requests(sim) == before


def test_limit_headers_on_success(limited, gateway, model: str) -> None:
    """A virtual key with limits gets Anthropic's `anthropic-ratelimit-*` headers (the
    tightest of its own and its tenant's limits; never OpenAI's `x-ratelimit-*` names) and
    the budget left, on plain and streamed answers; the gateway key gets none."""
    client = limited(rpm=3, tenant={"rpm": 5, "tpm": 100000, "budget_day_usd": "1"})
    seen = []
    for stream in (False, False, True):
        raw = client.messages.with_raw_response.create(
            model=model, max_tokens=MAX_TOKENS, messages=MESSAGES, stream=stream
        )
        if stream:
            assert [e.type for e in raw.parse()][-1] == "message_stop"
        else:
            assert _text(raw.parse()).strip()
        h = raw.headers
        assert h.get("anthropic-ratelimit-requests-limit") == "3", "the key's rpm is tighter than the tenant's"
        assert h.get("anthropic-ratelimit-tokens-limit") == "100000"
        for rate in ("requests", "tokens"):
            assert -1 <= _reset_in(h, rate) <= 61
        assert not [k for k in h if k.startswith("x-ratelimit-")]
        seen.append(
            (
                int(h["anthropic-ratelimit-requests-remaining"]),
                int(h["anthropic-ratelimit-tokens-remaining"]),
                _usd(h, "x-bourse-budget-remaining-usd"),
            )
        )
    assert [r for r, _, _ in seen] == [2, 1, 0]
    tokens = [t for _, t, _ in seen]
    assert 100000 > tokens[0] > tokens[1] > tokens[2], tokens
    budgets = [b for _, _, b in seen]
    assert Decimal(1) > budgets[0] > budgets[1] > budgets[2] > Decimal("0.99"), budgets

    plain = make_anthropic(gateway)
    try:
        raw = plain.messages.with_raw_response.create(model=model, max_tokens=MAX_TOKENS, messages=MESSAGES)
    finally:
        plain.close()
    assert not [k for k in raw.headers if "ratelimit" in k or k.startswith("x-bourse-budget")]


@pytest.mark.parametrize("refusal", ["budget", "rpm"])
def test_refused_stream_raises_before_any_event(limited, sim, refusal: str) -> None:
    """A refused streaming request is a JSON 429, not an event stream:
    `create(stream=True)` and the `messages.stream()` helper raise
    `anthropic.RateLimitError` before any event."""
    if refusal == "budget":
        client = limited(budget_day_usd=TINY_BUDGET)
    else:
        client = limited(rpm=1)
        client.messages.create(model=PASSTHROUGH, max_tokens=MAX_TOKENS, messages=MESSAGES)
    before = _requests(sim)
    events: list[Any] = []
    with pytest.raises(anthropic.RateLimitError) as info:
        events.extend(client.messages.create(model=PASSTHROUGH, max_tokens=MAX_TOKENS, messages=MESSAGES, stream=True))
    assert events == []
    if refusal == "budget":
        _assert_budget_refusal(info.value)
    else:
        _assert_rate_refusal(info.value, "1 requests per minute")
    with pytest.raises(anthropic.RateLimitError) as info:
        with client.messages.stream(model=TRANSLATED, max_tokens=MAX_TOKENS, messages=MESSAGES) as stream:
            events.extend(stream)
    assert events == []
    assert info.value.type == ("budget_exceeded" if refusal == "budget" else "rate_limit_error")
    assert _requests(sim) == before


def test_budget_refusal_not_retried_by_default(limited) -> None:
    """With the SDK's default retries, a budget refusal is raised at once: one request sent
    (the SDK obeys `x-should-retry: false` over the 429 it would otherwise retry)."""
    log = RequestLog()
    client = limited(
        budget_day_usd=TINY_BUDGET,
        max_retries=anthropic.DEFAULT_MAX_RETRIES,
        http_client=anthropic.DefaultHttpxClient(trust_env=False, event_hooks=log.hooks),
    )
    assert client.max_retries >= 2
    started = time.monotonic()
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.with_raw_response.create(model=PASSTHROUGH, max_tokens=MAX_TOKENS, messages=MESSAGES)
    elapsed = time.monotonic() - started
    assert info.value.response.headers.get("x-should-retry") == "false"
    assert info.value.type == "budget_exceeded"
    assert log.sent == ["POST /v1/messages"], log.sent
    assert elapsed < 2.0, elapsed
