"""Contract tests: the official OpenAI Python SDK, with strict response validation, against
Bourse in front of upstream-sim.

Strict validation (`_strict_response_validation=True`) makes the SDK validate every
response and stream chunk against its pydantic types instead of constructing them
leniently, so a missing or mistyped field in anything the gateway sends raises
`openai.APIResponseValidationError` and fails the test.
"""

from __future__ import annotations

import json
import math
import re
import time
from decimal import Decimal
from typing import Any

import openai
import pytest
from pydantic import BaseModel
from openai.types import CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from conftest import (
    ANTHROPIC_ROUTE,
    MODEL,
    RequestLog,
    lenient_options,
    seconds_to_utc_midnight,
    strict_options,
)

MESSAGES = [{"role": "user", "content": "Say hello to the exchange."}]
# upstream-sim's default answer length, in tokens (one streamed content chunk each).
DEFAULT_OUTPUT_TOKENS = 12

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    },
}


def _upstream_body(sim) -> dict[str, Any]:
    body = sim.last_request()["body"]
    return json.loads(body) if isinstance(body, str) else body


def test_client_is_strict(client: openai.OpenAI) -> None:
    # Everything below relies on this; `with_options` alone would drop it (see conftest).
    assert client._strict_response_validation is True
    assert client.max_retries == 0


# 1. models ---------------------------------------------------------------------------


def test_models_list_contains_configured_model(client: openai.OpenAI) -> None:
    page = client.models.list()
    models = list(page)
    assert all(isinstance(m, Model) and m.object == "model" for m in models)
    ids = [m.id for m in models]
    assert MODEL in ids, ids
    listed = next(m for m in models if m.id == MODEL)
    assert listed.owned_by == "sim"
    assert listed.created > 0


def test_models_retrieve_by_provider_slash_model(client: openai.OpenAI) -> None:
    # The SDK percent-encodes the slash: GET /v1/models/sim%2Fsim-small.
    model = client.models.retrieve(MODEL)
    assert isinstance(model, Model)
    assert model.id == MODEL
    assert model.owned_by == "sim"


def test_models_retrieve_unlisted_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("sim/not-listed")
    assert info.value.status_code == 404
    assert info.value.code == "model_not_found"


# 2. chat completions, non-streaming ---------------------------------------------------


def test_chat_completion(client: openai.OpenAI, sim) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert isinstance(resp, ChatCompletion)
    assert resp.object == "chat.completion"
    assert resp.id
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.index == 0
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip()
    assert resp.usage is not None
    assert resp.usage.prompt_tokens > 0
    assert resp.usage.completion_tokens == DEFAULT_OUTPUT_TOKENS
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    # Only the model name is rewritten on the way upstream.
    upstream = _upstream_body(sim)
    assert upstream["model"] == "sim-small"
    assert upstream["messages"] == MESSAGES


def test_chat_completion_raw_response_headers(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    assert raw.status_code == 200
    assert raw.headers.get("x-bourse-provider") == "sim"
    assert raw.headers.get("x-bourse-model") == "sim-small"
    assert raw.headers.get("x-request-id")
    completion = raw.parse()
    assert isinstance(completion, ChatCompletion)
    assert completion.choices[0].message.content
    # Priced at $1/M in, $2/M out (conftest); the reference (gpt-4o) costs more.
    usage = completion.usage
    assert usage is not None
    expected_nanos = usage.prompt_tokens * 1000 + usage.completion_tokens * 2000
    assert raw.headers.get("x-bourse-cost-usd") == f"{expected_nanos // 10**9}.{expected_nanos % 10**9:09d}"
    assert float(raw.headers["x-bourse-saved-usd"]) > 0


def test_client_request_id_is_echoed(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, extra_headers={"x-request-id": "contract-test-42"}
    )
    assert raw.headers.get("x-request-id") == "contract-test-42"


def test_bare_model_name_resolves(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="sim-small", messages=MESSAGES)
    assert raw.headers.get("x-bourse-provider") == "sim"
    assert raw.parse().choices[0].message.content


# 3. streaming -------------------------------------------------------------------------


def test_stream_with_usage(client: openai.OpenAI) -> None:
    expected = client.chat.completions.create(model=MODEL, messages=MESSAGES).choices[0].message.content

    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks and all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == expected  # the sim is deterministic: same answer streamed or not
    finishes = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
    assert finishes == ["stop"]

    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == DEFAULT_OUTPUT_TOKENS
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_usage_has_no_usage_chunk(client: openai.OpenAI, sim) -> None:
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    assert chunks
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks), "a usage-only chunk leaked to a client that did not ask"
    assert "".join(c.choices[0].delta.content or "" for c in chunks)
    # The gateway still asked the upstream for usage (for metering) and dropped it.
    assert _upstream_body(sim)["stream_options"]["include_usage"] is True


def test_stream_helper_final_completion(client: openai.OpenAI) -> None:
    expected = client.chat.completions.create(model=MODEL, messages=MESSAGES).choices[0].message.content
    deltas: list[str] = []
    done: list[str] = []
    with client.chat.completions.stream(
        model=MODEL, messages=MESSAGES, stream_options={"include_usage": True}
    ) as stream:
        for event in stream:
            if event.type == "content.delta":
                deltas.append(event.delta)
            elif event.type == "content.done":
                done.append(event.content)
        final = stream.get_final_completion()
    assert "".join(deltas) == expected
    assert done == [expected]
    assert final.choices[0].message.content == expected
    assert final.choices[0].finish_reason == "stop"
    assert final.usage is not None and final.usage.completion_tokens == DEFAULT_OUTPUT_TOKENS


@pytest.mark.parametrize("choices_shape", ["null", "absent"])
def test_stream_usage_chunk_is_valid_whatever_the_vendor_sends(
    client: openai.OpenAI, sim_config, choices_shape: str
) -> None:
    # Some vendors end with a usage chunk whose `choices` is null or missing; an OpenAI
    # client must still get `choices: []` (the SDK types require the list).
    sim_config(usage_chunk_choices=choices_shape)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage is not None
    assert chunks[-1].choices == []


def test_stream_broken_upstream_raises(client: openai.OpenAI, sim_config) -> None:
    full = client.chat.completions.create(model=MODEL, messages=MESSAGES).choices[0].message.content
    # A delay between chunks so the first ones really leave the sim before it aborts the
    # connection (with no delay the sim writes them and the abort in one go).
    sim_config(chunk_delay_ms=20, failure={"kind": "drop_mid_stream", "after_chunks": 3})
    got: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
            if chunk.choices:
                got.append(chunk.choices[0].delta.content or "")
    partial = "".join(got)
    assert partial and full.startswith(partial) and partial != full, (partial, full)
    # The gateway ended the stream with an OpenAI error event, which the SDK raised.
    assert "upstream" in info.value.message.lower()
    assert isinstance(info.value.body, dict) and info.value.body.get("code") == "upstream_unreachable"


# 4. tools -----------------------------------------------------------------------------


def test_tool_call(client: openai.OpenAI, sim) -> None:
    resp = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls, resp
    call = calls[0]
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments), dict)
    assert _upstream_body(sim)["tools"] == [WEATHER_TOOL]


def test_tool_call_streaming_deltas_reassemble(client: openai.OpenAI) -> None:
    calls: dict[int, dict[str, str]] = {}
    finishes = []
    for chunk in client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        stream=True,
    ):
        for choice in chunk.choices:
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
            for delta in choice.delta.tool_calls or []:
                acc = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                acc["id"] += delta.id or ""
                if delta.function:
                    acc["name"] += delta.function.name or ""
                    acc["arguments"] += delta.function.arguments or ""
    assert finishes == ["tool_calls"]
    assert list(calls) == [0]
    assert calls[0]["id"]
    assert calls[0]["name"] == "get_weather"
    assert isinstance(json.loads(calls[0]["arguments"]), dict)


def test_tool_call_stream_helper(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
    ) as stream:
        names = [e.name for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    assert names == ["get_weather"]
    call = final.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments), dict)


# 5. JSON mode -------------------------------------------------------------------------


def test_json_object_mode(client: openai.OpenAI, sim) -> None:
    resp = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, response_format={"type": "json_object"}
    )
    value = json.loads(resp.choices[0].message.content)
    assert isinstance(value, dict) and value, value
    assert _upstream_body(sim)["response_format"] == {"type": "json_object"}


# upstream-sim answers JSON mode with {"answer": "<text>"}, so this schema (and the
# pydantic model below) fit what it sends.
JSON_SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"answer": {"type": "string"}},
            "required": ["answer"],
            "additionalProperties": False,
        },
    },
}


class Answer(BaseModel):
    answer: str


class GetWeather(BaseModel):
    location: str


def _assert_fits_schema(content: str | None) -> None:
    value = json.loads(content or "")
    assert isinstance(value, dict) and set(value) == {"answer"}, value
    assert isinstance(value["answer"], str) and value["answer"]


def test_json_schema_mode(client: openai.OpenAI, sim) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, response_format=JSON_SCHEMA_FORMAT)
    _assert_fits_schema(resp.choices[0].message.content)
    assert _upstream_body(sim)["response_format"] == JSON_SCHEMA_FORMAT


def test_json_schema_mode_streaming(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, response_format=JSON_SCHEMA_FORMAT, stream=True
        )
    )
    _assert_fits_schema("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))


def test_parse_with_pydantic_model(client: openai.OpenAI, sim) -> None:
    completion = client.chat.completions.parse(model=MODEL, messages=MESSAGES, response_format=Answer)
    message = completion.choices[0].message
    assert isinstance(message.parsed, Answer)
    assert message.parsed.answer
    # The SDK turned the model into a strict json_schema request, forwarded as is.
    sent = _upstream_body(sim)["response_format"]
    assert sent["type"] == "json_schema"
    assert sent["json_schema"]["name"] == "Answer"
    assert sent["json_schema"]["strict"] is True


def test_stream_helper_with_pydantic_model(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(model=MODEL, messages=MESSAGES, response_format=Answer) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Answer)
    assert final.choices[0].message.parsed.answer


def test_parse_with_pydantic_tool(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[openai.pydantic_function_tool(GetWeather, name="get_weather")],
    )
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert isinstance(call.function.parsed_arguments, GetWeather)
    assert call.function.parsed_arguments.location


# 6. embeddings ------------------------------------------------------------------------


def _close(a: list[float], b: list[float], tol: float = 1e-6) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=0, abs_tol=tol) for x, y in zip(a, b))


def test_embeddings_base64_default_matches_float(client: openai.OpenAI, sim) -> None:
    # Default call: the SDK asks for base64 on the wire and decodes it into floats. Its
    # decoder runs after validation, so this one call needs a lenient client (see
    # conftest.lenient_options); the wire shape is checked by hand instead.
    lenient = lenient_options(client)
    raw = lenient.embeddings.with_raw_response.create(model=MODEL, input=["a", "b"])
    assert _upstream_body(sim)["encoding_format"] == "base64"
    wire = raw.http_response.json()
    assert [type(d["embedding"]) for d in wire["data"]] == [str, str], "base64 strings relayed as is"
    default = raw.parse()

    floats = client.embeddings.create(model=MODEL, input=["a", "b"], encoding_format="float")
    assert _upstream_body(sim)["encoding_format"] == "float"

    for resp in (default, floats):
        assert isinstance(resp, CreateEmbeddingResponse)
        assert resp.object == "list"
        assert [d.index for d in resp.data] == [0, 1]
        assert all(d.object == "embedding" for d in resp.data)
        assert all(len(d.embedding) == 8 for d in resp.data)  # sim default embedding_dims
        assert resp.usage.prompt_tokens > 0
    for d64, dfl in zip(default.data, floats.data):
        assert all(isinstance(x, float) for x in d64.embedding)
        assert _close(d64.embedding, dfl.embedding), (d64.embedding, dfl.embedding)
    assert not _close(floats.data[0].embedding, floats.data[1].embedding), "different inputs, same vector"
    norm = math.sqrt(sum(x * x for x in floats.data[0].embedding))
    assert abs(norm - 1.0) < 1e-4


def test_embeddings_dimensions_forwarded(client: openai.OpenAI) -> None:
    resp = client.embeddings.create(model=MODEL, input="a", dimensions=4, encoding_format="float")
    assert len(resp.data) == 1
    assert len(resp.data[0].embedding) == 4


# 7. typed errors ----------------------------------------------------------------------


def _assert_error_body(e: openai.APIStatusError) -> dict[str, Any]:
    assert isinstance(e.body, dict), e.body
    # The SDK unwraps {"error": {...}} into e.body; all four OpenAI keys are there.
    for key in ("message", "type", "param", "code"):
        assert key in e.body, (key, e.body)
    assert e.body["message"]
    assert e.response.headers.get("x-request-id")
    return e.body


def test_wrong_gateway_key_is_authentication_error(client: openai.OpenAI) -> None:
    bad = strict_options(client, api_key="not-the-gateway-key")
    with pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(model=MODEL, messages=MESSAGES)
    e = info.value
    assert e.status_code == 401
    assert e.code == "invalid_api_key"
    assert e.type == "authentication_error"
    _assert_error_body(e)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nowhere/x", messages=MESSAGES)
    e = info.value
    assert e.status_code == 404
    assert e.code == "model_not_found"
    assert e.param == "model"
    assert "nowhere/x" in e.message
    _assert_error_body(e)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nowhere/x", input="a")


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"messages": MESSAGES, "temperature": "hot"}, "temperature"),
        ({"messages": MESSAGES, "temperature": 7}, "temperature"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ],
)
def test_invalid_parameter_is_bad_request(client: openai.OpenAI, sim, kwargs: dict[str, Any], param: str) -> None:
    before = sim.stats()["requests"]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, **kwargs)
    e = info.value
    assert e.status_code == 400
    assert e.param == param
    assert param.split("[")[0] in e.message
    body = _assert_error_body(e)
    assert body["type"] == "invalid_request_error"
    assert sim.stats()["requests"] == before, "an invalid request must not reach the upstream"


def test_invalid_embeddings_parameter_is_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MODEL, input="a", encoding_format="int8")  # type: ignore[arg-type]
    assert info.value.param == "encoding_format"


def test_upstream_429_is_rate_limit_error_with_retry_after(client: openai.OpenAI, sim_config) -> None:
    sim_config(failure={"kind": "status", "status": 429, "retry_after": 3, "code": "rate_limit_exceeded"})
    for stream in (False, True):
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=stream)
        e = info.value
        assert e.status_code == 429
        assert e.response.headers.get("retry-after") == "3"
        assert e.code == "rate_limit_exceeded"
        _assert_error_body(e)


def test_upstream_500_is_internal_server_error(client: openai.OpenAI, sim_config) -> None:
    sim_config(failure={"kind": "status", "status": 500})
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert info.value.status_code == 500
    _assert_error_body(info.value)
    with pytest.raises(openai.InternalServerError):
        client.embeddings.create(model=MODEL, input="a")


def test_sdk_retry_recovers_through_gateway(client: openai.OpenAI, sim_config) -> None:
    # One 503 (Retry-After: 0 keeps the SDK's wait short), then success: the SDK's own
    # retry, driven by the relayed status, gets the answer.
    sim_config(failure={"kind": "status", "status": 503, "retry_after": 0}, fail_first_n=1)
    retrying = strict_options(client, max_retries=1)
    resp = retrying.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert resp.choices[0].message.content


# 8. budgets and rate limits (virtual keys) ----------------------------------------------
#
# Each test makes its own tenant and virtual key (conftest `virtual_key`), so no two tests
# share counters. sim/sim-small costs $1/M input and $2/M output tokens (conftest); a budget
# is checked against the request's worst case (prompt estimate at the input price plus
# max_tokens at the output price), so a budget of one nano-dollar refuses every request.

TINY_BUDGET = "0.000000001"
OPENAI_RESET = re.compile(r"^(?:(\d+)ms|(\d+)s|(\d+)m(\d+)s)$")


def _as_client(client: openai.OpenAI, key: str, **options: Any) -> openai.OpenAI:
    """The strict test client with a virtual key instead of the gateway key."""
    return strict_options(client, api_key=key, **options)


def _reset_seconds(value: str | None) -> float:
    """OpenAI's `x-ratelimit-reset-*` duration (`20ms`, `6s`, `1m0s`) in seconds."""
    match = OPENAI_RESET.match(value or "")
    assert match, f"not an OpenAI reset duration: {value!r}"
    ms, s, m, ms_s = match.groups()
    if ms is not None:
        return int(ms) / 1000
    if s is not None:
        return int(s)
    return int(m) * 60 + int(ms_s)


def _usd(headers: Any, name: str) -> Decimal:
    value = headers.get(name)
    assert value is not None and re.fullmatch(r"\d+\.\d+", value), (name, value)
    return Decimal(value)


def _assert_budget_refusal(e: openai.RateLimitError, window: str = "daily") -> None:
    assert e.status_code == 429
    assert e.code == "budget_exceeded"
    assert e.type == "budget_exceeded"
    assert e.param is None
    message = _assert_error_body(e)["message"]
    assert message.startswith("budget exceeded"), message
    assert f"{window} budget" in message, message
    headers = e.response.headers
    # A budget does not come back before its window resets: the SDKs must not retry.
    assert headers.get("x-should-retry") == "false"
    if window == "daily":
        retry_after = int(headers["retry-after"])
        assert abs(retry_after - seconds_to_utc_midnight()) <= 2, retry_after
    elif window == "total":
        assert "retry-after" not in headers, "a total budget never resets"


def _assert_rate_refusal(e: openai.RateLimitError, what: str) -> int:
    assert e.status_code == 429
    assert e.code == "rate_limit_exceeded"
    assert e.type == "rate_limit_exceeded"
    message = _assert_error_body(e)["message"]
    assert message.startswith("rate limit reached") and what in message, message
    headers = e.response.headers
    # Unlike a budget, a rate limit frees up: the SDK may retry after Retry-After.
    assert headers.get("x-should-retry") != "false"
    retry_after = int(headers["retry-after"])
    assert 1 <= retry_after <= 60, retry_after
    return retry_after


@pytest.mark.parametrize("model", [MODEL, ANTHROPIC_ROUTE], ids=["explicit-model", "route"])
def test_budget_refusal_is_rate_limit_error(client: openai.OpenAI, sim, virtual_key, model: str) -> None:
    """A tenant's spent daily budget: `openai.RateLimitError` with `budget_exceeded`,
    Retry-After until midnight UTC, `x-should-retry: false`; nothing reaches the upstream
    (for a route: after every candidate was found too expensive)."""
    vk = _as_client(client, virtual_key(tenant={"budget_day_usd": TINY_BUDGET}))
    before = sim.stats()["requests"]
    with pytest.raises(openai.RateLimitError) as info:
        vk.chat.completions.create(model=model, messages=MESSAGES, max_tokens=20)
    _assert_budget_refusal(info.value)
    assert "of tenant" in info.value.body["message"]
    assert sim.stats()["requests"] == before


def test_budget_spent_then_refused(client: openai.OpenAI, sim, virtual_key) -> None:
    """A key's total budget is spent by real requests: each answer's
    `x-bourse-budget-remaining-usd` is the budget less what was spent before and this
    request's worst case, and the first request whose worst case no longer fits is refused
    (no Retry-After: a total budget never resets)."""
    budget = Decimal("0.0001")
    vk = _as_client(client, virtual_key(budget_total_usd=str(budget)))
    first = vk.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=20)
    remaining = _usd(first.headers, "x-bourse-budget-remaining-usd")
    cost = _usd(first.headers, "x-bourse-cost-usd")
    worst = budget - remaining
    assert Decimal(0) < cost <= worst < budget, (cost, worst, budget)
    # The same request again and again: each costs `cost` and reserves `worst`.
    spent = cost
    answered = 1
    while spent + worst <= budget:
        raw = vk.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=20)
        assert _usd(raw.headers, "x-bourse-budget-remaining-usd") == budget - spent - worst
        assert _usd(raw.headers, "x-bourse-cost-usd") == cost
        spent += cost
        answered += 1
        assert answered < 10, "the budget never ran out"
    before = sim.stats()["requests"]
    with pytest.raises(openai.RateLimitError) as info:
        vk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20)
    _assert_budget_refusal(info.value, window="total")
    assert sim.stats()["requests"] == before
    # A cheaper request (a smaller worst case: 19 fewer output tokens at $2/M) that fits
    # what is left still goes through.
    assert spent + worst - 19 * Decimal("0.000002") <= budget
    cheap = vk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
    assert cheap.usage is not None and cheap.usage.completion_tokens >= 1


def test_requests_per_minute_refusal(client: openai.OpenAI, sim, virtual_key) -> None:
    """rpm = 2: two answers count the limit down in `x-ratelimit-*-requests`, the third is
    `openai.RateLimitError` with `rate_limit_exceeded` and a Retry-After within the minute,
    and never reaches the upstream."""
    vk = _as_client(client, virtual_key(rpm=2))
    remaining = []
    for _ in range(2):
        raw = vk.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
        assert raw.parse().choices[0].message.content
        assert raw.headers.get("x-ratelimit-limit-requests") == "2"
        remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
        assert 0 < _reset_seconds(raw.headers.get("x-ratelimit-reset-requests")) <= 60
        # Only what is limited is reported: no tokens per minute, no budget.
        assert "x-ratelimit-limit-tokens" not in raw.headers
        assert "x-bourse-budget-remaining-usd" not in raw.headers
    assert remaining == [1, 0]
    before = sim.stats()["requests"]
    with pytest.raises(openai.RateLimitError) as info:
        vk.chat.completions.create(model=MODEL, messages=MESSAGES)
    _assert_rate_refusal(info.value, "2 requests per minute")
    assert sim.stats()["requests"] == before


def test_tokens_per_minute_refusal(client: openai.OpenAI, sim, virtual_key) -> None:
    """tpm: a request whose tokens (prompt estimate plus max_tokens) no longer fit what is
    left of the minute is refused as `rate_limit_exceeded`; one that fits goes through."""
    vk = _as_client(client, virtual_key(tpm=1000))
    raw = vk.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=20)
    assert raw.headers.get("x-ratelimit-limit-tokens") == "1000"
    # What the answer reports is left after its reservation (prompt estimate + max_tokens).
    left = int(raw.headers["x-ratelimit-remaining-tokens"])
    prompt_estimate = 1000 - 20 - left
    assert 0 < prompt_estimate < 100, left
    # Alone this request would fit the limit exactly; after the first one it cannot.
    before = sim.stats()["requests"]
    with pytest.raises(openai.RateLimitError) as info:
        vk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1000 - prompt_estimate)
    _assert_rate_refusal(info.value, "1000 tokens per minute")
    assert sim.stats()["requests"] == before
    assert vk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20).choices


def test_concurrency_refusal(client: openai.OpenAI, sim_config, virtual_key) -> None:
    """concurrency = 1: while a stream is open a second request is `rate_limit_exceeded`
    (Retry-After 1); once the stream has ended the key is free again."""
    vk = _as_client(client, virtual_key(concurrency=1))
    sim_config(chunk_delay_ms=20)
    stream = vk.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    with stream:
        chunks = iter(stream)
        assert next(chunks).choices  # the request is in flight, holding its lease
        with pytest.raises(openai.RateLimitError) as info:
            vk.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert _assert_rate_refusal(info.value, "1 concurrent requests") == 1
        rest = list(chunks)
    assert rest and rest[-1].choices[0].finish_reason == "stop"
    assert vk.chat.completions.create(model=MODEL, messages=MESSAGES).choices


def test_limit_headers_on_success(client: openai.OpenAI, virtual_key) -> None:
    """A virtual key with limits gets OpenAI's `x-ratelimit-*` headers (the tightest of its
    own and its tenant's limits) and the budget left, on plain and streamed answers; the
    gateway key, which has no limits, gets none."""
    vk = _as_client(
        client, virtual_key(rpm=3, tenant={"rpm": 5, "tpm": 100000, "budget_day_usd": "1"})
    )
    seen = []
    for stream in (False, False, True):
        raw = vk.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, max_tokens=20, stream=stream
        )
        if stream:
            assert [c for c in raw.parse() if c.choices]
        else:
            assert raw.parse().choices[0].message.content
        h = raw.headers
        assert h.get("x-ratelimit-limit-requests") == "3", "the key's rpm is tighter than the tenant's"
        assert h.get("x-ratelimit-limit-tokens") == "100000"
        for rate in ("requests", "tokens"):
            assert 0 < _reset_seconds(h.get(f"x-ratelimit-reset-{rate}")) <= 60
        seen.append(
            (
                int(h["x-ratelimit-remaining-requests"]),
                int(h["x-ratelimit-remaining-tokens"]),
                _usd(h, "x-bourse-budget-remaining-usd"),
            )
        )
    assert [r for r, _, _ in seen] == [2, 1, 0]
    tokens = [t for _, t, _ in seen]
    assert 100000 > tokens[0] > tokens[1] > tokens[2], tokens
    budgets = [b for _, _, b in seen]
    assert Decimal(1) > budgets[0] > budgets[1] > budgets[2] > Decimal("0.99"), budgets

    plain = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    assert not [k for k in plain.headers if k.startswith("x-ratelimit-") or k.startswith("x-bourse-budget")]


def test_limit_change_served_at_once(client: openai.OpenAI, admin) -> None:
    """The admin API's changes apply to the very next request: a budget set on the tenant
    refuses it, clearing it (null) lets requests through again."""
    tenant = admin.create_tenant()
    vk = _as_client(client, admin.create_key(tenant))
    assert vk.chat.completions.create(model=MODEL, messages=MESSAGES).choices
    admin.patch_tenant(tenant, budget_day_usd=TINY_BUDGET)
    with pytest.raises(openai.RateLimitError) as info:
        vk.chat.completions.create(model=MODEL, messages=MESSAGES)
    _assert_budget_refusal(info.value)
    admin.patch_tenant(tenant, budget_day_usd=None)
    raw = vk.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    assert raw.parse().choices
    assert "x-bourse-budget-remaining-usd" not in raw.headers


@pytest.mark.parametrize("refusal", ["budget", "rpm"])
def test_refused_stream_raises_before_any_chunk(client: openai.OpenAI, sim, virtual_key, refusal: str) -> None:
    """A refused streaming request is a JSON 429, not a stream: `create(stream=True)` and
    the `stream()` helper raise `openai.RateLimitError` before yielding anything."""
    if refusal == "budget":
        vk = _as_client(client, virtual_key(budget_day_usd=TINY_BUDGET))
    else:
        vk = _as_client(client, virtual_key(rpm=1))
        assert vk.chat.completions.create(model=MODEL, messages=MESSAGES).choices
    before = sim.stats()["requests"]
    got: list[Any] = []
    with pytest.raises(openai.RateLimitError) as info:
        got.extend(vk.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    assert got == []
    assert info.value.response.headers.get("content-type", "").startswith("application/json")
    if refusal == "budget":
        _assert_budget_refusal(info.value)
    else:
        _assert_rate_refusal(info.value, "1 requests per minute")
    with pytest.raises(openai.RateLimitError) as info:
        with vk.chat.completions.stream(model=MODEL, messages=MESSAGES) as stream:
            got.extend(stream)
    assert got == []
    assert info.value.code == ("budget_exceeded" if refusal == "budget" else "rate_limit_exceeded")
    assert sim.stats()["requests"] == before


def test_budget_refusal_not_retried_by_default(client: openai.OpenAI, virtual_key) -> None:
    """With the SDK's default retries, a budget refusal is raised at once: one request sent
    (the SDK obeys `x-should-retry: false` over the 429 it would otherwise retry)."""
    log = RequestLog()
    vk = _as_client(
        client,
        virtual_key(budget_day_usd=TINY_BUDGET),
        max_retries=openai.DEFAULT_MAX_RETRIES,
        http_client=openai.DefaultHttpxClient(trust_env=False, event_hooks=log.hooks),
    )
    assert vk.max_retries >= 2
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as info:
        vk.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    elapsed = time.monotonic() - started
    assert info.value.response.headers.get("x-should-retry") == "false"
    assert info.value.code == "budget_exceeded"
    assert log.sent == ["POST /v1/chat/completions"], log.sent
    assert elapsed < 2.0, elapsed
