"""Contract tests: the official OpenAI Python SDK's Responses API (`client.responses`), with
strict response validation, against Bourse in front of upstream-sim in each upstream dialect
(OpenAI, Anthropic, Gemini).

Strict validation makes the SDK validate every Response object and every stream event
against its pydantic types, so a missing or mistyped field fails the test.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseFailedEvent,
    ResponseFunctionToolCall,
)
from pydantic import BaseModel

from conftest import ANTHROPIC_MODEL, GEMINI_MODEL, MODEL

MODELS = [MODEL, ANTHROPIC_MODEL, GEMINI_MODEL]
PROMPT = "Say hello to the exchange."

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
        "additionalProperties": False,
    },
    "strict": True,
}


class Answer(BaseModel):
    # upstream-sim answers JSON mode with {"answer": "<text>"}.
    answer: str


def _upstream_body(sim) -> dict[str, Any]:
    body = sim.last_request()["body"]
    return json.loads(body) if isinstance(body, str) else body


def _sequence_ok(events: list[Any]) -> None:
    numbers = [e.sequence_number for e in events]
    assert numbers == list(range(len(numbers))), numbers
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    terminal = [e for e in events if e.type in ("response.completed", "response.incomplete", "response.failed")]
    assert terminal == [events[-1]], [e.type for e in events]


@pytest.mark.parametrize("model", MODELS)
def test_create(client: openai.OpenAI, sim, model: str) -> None:
    resp = client.responses.create(model=model, input=PROMPT, instructions="Be brief.", max_output_tokens=200)
    assert isinstance(resp, Response)
    assert resp.object == "response" and resp.id.startswith("resp_")
    assert resp.status == "completed"
    assert resp.output_text
    assert resp.instructions == "Be brief."
    assert resp.usage is not None and resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    # The instructions reached the upstream as its system text, whatever its dialect.
    assert "Be brief." in json.dumps(_upstream_body(sim))


@pytest.mark.parametrize("model", MODELS)
def test_create_with_raw_response_has_the_exchange_headers(client: openai.OpenAI, model: str) -> None:
    raw = client.responses.with_raw_response.create(model=model, input=PROMPT)
    assert raw.headers["x-bourse-provider"] == model.split("/")[0]
    assert float(raw.headers["x-bourse-cost-usd"]) > 0
    assert raw.parse().status == "completed"


@pytest.mark.parametrize("model", MODELS)
def test_create_stream(client: openai.OpenAI, model: str) -> None:
    events = list(client.responses.create(model=model, input=PROMPT, stream=True))
    _sequence_ok(events)
    final = events[-1]
    assert isinstance(final, ResponseCompletedEvent)
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas and deltas == final.response.output_text
    done = [e for e in events if e.type == "response.output_text.done"]
    assert [d.text for d in done] == [deltas]
    assert final.response.usage is not None and final.response.usage.output_tokens > 0
    types = [e.type for e in events]
    for t in ("response.output_item.added", "response.content_part.added", "response.output_item.done"):
        assert t in types, types


@pytest.mark.parametrize("model", MODELS)
def test_stream_helper(client: openai.OpenAI, model: str) -> None:
    with client.responses.stream(model=model, input=PROMPT) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text and final.output_text == text
    assert final.status == "completed"


@pytest.mark.parametrize("model", MODELS)
def test_parse_with_pydantic_model(client: openai.OpenAI, sim, model: str) -> None:
    resp = client.responses.parse(model=model, input=PROMPT, text_format=Answer)
    assert isinstance(resp.output_parsed, Answer)
    assert resp.output_parsed.answer
    if model == MODEL:
        # The SDK's strict json_schema format became the chat request's response_format.
        sent = _upstream_body(sim)["response_format"]
        assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "Answer"
        assert sent["json_schema"]["strict"] is True


@pytest.mark.parametrize("model", MODELS)
def test_stream_helper_with_pydantic_model(client: openai.OpenAI, model: str) -> None:
    with client.responses.stream(model=model, input=PROMPT, text_format=Answer) as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert isinstance(final.output_parsed, Answer) and final.output_parsed.answer


def _call(resp: Response) -> ResponseFunctionToolCall:
    calls = [o for o in resp.output if o.type == "function_call"]
    assert len(calls) == 1, resp.output
    call = calls[0]
    assert call.name == "get_weather" and call.call_id
    assert isinstance(json.loads(call.arguments), dict)
    return call


@pytest.mark.parametrize("model", MODELS)
def test_function_tool_round_trip_with_previous_response_id(client: openai.OpenAI, sim, model: str) -> None:
    first = client.responses.create(model=model, input="What is the weather in Paris?", tools=[WEATHER_TOOL])
    call = _call(first)
    assert first.tools and first.tools[0].type == "function"
    second = client.responses.create(
        model=model,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21C"}],
        tools=[WEATHER_TOOL],
    )
    assert second.previous_response_id == first.id
    assert second.status == "completed" and second.output_text
    assert not [o for o in second.output if o.type == "function_call"], "a tool result is answered in text"
    sent = json.dumps(_upstream_body(sim))
    assert "What is the weather in Paris?" in sent and "sunny, 21C" in sent


@pytest.mark.parametrize("model", MODELS)
def test_function_tool_round_trip_with_explicit_items(client: openai.OpenAI, sim, model: str) -> None:
    question = {"role": "user", "content": [{"type": "input_text", "text": "What is the weather in Paris?"}]}
    first = client.responses.create(model=model, input=[question], tools=[WEATHER_TOOL], store=False)
    call = _call(first)
    items = [question, *[o.model_dump(exclude_none=True) for o in first.output]]
    items.append({"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21C"})
    second = client.responses.create(model=model, input=items, tools=[WEATHER_TOOL], store=False)
    assert second.status == "completed" and second.output_text
    assert "sunny, 21C" in json.dumps(_upstream_body(sim))


@pytest.mark.parametrize("model", MODELS)
def test_streamed_function_call(client: openai.OpenAI, model: str) -> None:
    with client.responses.stream(
        model=model, input="What is the weather in Paris?", tools=[WEATHER_TOOL]
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    _sequence_ok(events)
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and done[0].arguments == args and done[0].name == "get_weather"
    assert _call(final).arguments == args


@pytest.mark.parametrize("model", MODELS)
def test_previous_response_id_continues_the_conversation(client: openai.OpenAI, sim, model: str) -> None:
    first = client.responses.create(model=model, input="My name is Ada.", instructions="Old instructions.")
    # A streamed follow-up, which is stored too.
    with client.responses.stream(model=model, input="What is my name?", previous_response_id=first.id) as s:
        second = s.get_final_response()
    sent = json.dumps(_upstream_body(sim))
    assert "My name is Ada." in sent and first.output_text in sent and "What is my name?" in sent
    assert "Old instructions." not in sent, "instructions are not carried over"
    third = client.responses.create(model=model, input="Thanks.", previous_response_id=second.id)
    assert third.status == "completed"
    sent = json.dumps(_upstream_body(sim))
    assert "My name is Ada." in sent and second.output_text in sent


def test_unknown_previous_response_id_is_not_found(client: openai.OpenAI, sim) -> None:
    before = sim.stats()["requests"]
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model=MODEL, input="x", previous_response_id="resp_does_not_exist")
    assert info.value.status_code == 404
    assert isinstance(info.value.body, dict)
    assert info.value.body.get("code") == "previous_response_not_found"
    assert info.value.body.get("param") == "previous_response_id"
    assert sim.stats()["requests"] == before


def test_store_false_response_cannot_be_continued(client: openai.OpenAI) -> None:
    first = client.responses.create(model=MODEL, input=PROMPT, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="more", previous_response_id=first.id)


@pytest.mark.parametrize("model", MODELS)
def test_stream_broken_upstream_ends_with_response_failed(client: openai.OpenAI, sim_config, model: str) -> None:
    sim_config(chunk_delay_ms=20, failure={"kind": "drop_mid_stream", "after_chunks": 3})
    events = list(client.responses.create(model=model, input=PROMPT, stream=True))
    _sequence_ok(events)
    final = events[-1]
    assert isinstance(final, ResponseFailedEvent)
    assert final.response.status == "failed"
    assert final.response.error is not None and final.response.error.code == "server_error"
    assert any(e.type == "response.output_text.delta" for e in events)


def test_invalid_parameter_is_bad_request(client: openai.OpenAI, sim) -> None:
    before = sim.stats()["requests"]
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input=PROMPT, tools=[{"type": "web_search"}])
    assert info.value.body.get("param") == "tools[0].type"
    assert sim.stats()["requests"] == before


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="nowhere/x", input=PROMPT)
    assert info.value.code == "model_not_found" and info.value.param == "model"


def test_reasoning_items_stream_and_round_trip(client: openai.OpenAI, sim, sim_config) -> None:
    # Reasoning the upstream shows (here DeepSeek-style reasoning_content: upstream-sim
    # writes reasoning text only in the OpenAI dialect) comes back as a reasoning item
    # whose content is the reasoning text.
    model = MODEL
    sim_config(reasoning_tokens=5)
    with client.responses.stream(model=model, input=PROMPT, reasoning={"effort": "low"}) as stream:
        events = list(stream)
        final = stream.get_final_response()
    _sequence_ok(events)
    reasoning = [o for o in final.output if o.type == "reasoning"]
    assert len(reasoning) == 1 and reasoning[0].content and reasoning[0].content[0].text
    streamed = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert streamed == reasoning[0].content[0].text
    assert final.output_text
    assert _upstream_body(sim)["reasoning_effort"] == "low"
    assert final.usage is not None and final.usage.output_tokens_details.reasoning_tokens == 5
    # The output, reasoning item included, is valid input for the next turn.
    items = [{"role": "user", "content": PROMPT}, *[o.model_dump(exclude_none=True) for o in final.output]]
    items.append({"role": "user", "content": "And again?"})
    again = client.responses.create(model=model, input=items, store=False)
    assert again.status == "completed"
    # It went back upstream as the assistant turn's reasoning_content.
    assistant = [m for m in _upstream_body(sim)["messages"] if m["role"] == "assistant"]
    assert assistant[0]["reasoning_content"] == reasoning[0].content[0].text


def test_retrieve_a_stored_response(client: openai.OpenAI) -> None:
    made = client.responses.create(model=ANTHROPIC_MODEL, input=PROMPT)
    got = client.responses.retrieve(made.id)
    assert isinstance(got, Response)
    assert got.id == made.id and got.output_text == made.output_text and got.status == "completed"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_does_not_exist")
    unstored = client.responses.create(model=MODEL, input=PROMPT, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
