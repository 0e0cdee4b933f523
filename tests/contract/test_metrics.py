"""`/metrics` read by the official Prometheus Python client's parsers: the classic text
parser (`prometheus_client.parser`, what Prometheus's own text format readers accept) and the
strict OpenMetrics one (`prometheus_client.openmetrics.parser`, the format the gateway
declares). Counters move by exactly what known requests did, and 1,000 requests with new ids
and invented model names create no series.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

import httpx
import openai
from prometheus_client.openmetrics import parser as om_parser
from prometheus_client import parser as text_parser

from conftest import GATEWAY_KEY, MODEL

MESSAGES = [{"role": "user", "content": "Say hello to the exchange."}]
PAIR = {"route": "", "provider": "sim", "model": "sim-small"}
GENAI = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "sim", "gen_ai_request_model": "sim-small"}


def scrape(gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as (name, sorted labels) -> value, after both parsers agree on it."""
    with httpx.Client(trust_env=False, timeout=10.0) as http:
        resp = http.get(f"http://{gateway.addr}/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    text = resp.text
    classic = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_parser.text_string_to_metric_families(text)
        for s in family.samples
    }
    strict = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in om_parser.text_string_to_metric_families(text)
        for s in family.samples
    }
    assert classic == strict
    assert classic, text
    return classic


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_parse_and_counters_move_by_what_requests_did(gateway, client: openai.OpenAI) -> None:
    before = scrape(gateway)
    prompt = completion = 0
    cost = saved = energy = co2e = Decimal(0)
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
        chat = raw.parse()
        prompt += chat.usage.prompt_tokens
        completion += chat.usage.completion_tokens
        cost += Decimal(raw.headers["x-bourse-cost-usd"])
        saved += Decimal(raw.headers["x-bourse-saved-usd"])
        energy += Decimal(raw.headers["x-bourse-energy-wh"])
        co2e += Decimal(raw.headers["x-bourse-co2e-g"])
        assert raw.headers["x-bourse-energy-method"].startswith("estimate;")
    after = scrape(gateway)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("bourse_requests_total", **PAIR, status_class="2xx") == 3
    assert delta("gen_ai_client_token_usage_sum", **GENAI, gen_ai_token_type="input") == prompt
    assert delta("gen_ai_client_token_usage_sum", **GENAI, gen_ai_token_type="output") == completion
    assert delta("gen_ai_client_token_usage_count", **GENAI, gen_ai_token_type="output") == 3
    assert delta("gen_ai_client_operation_duration_seconds_count", **GENAI) == 3
    assert abs(Decimal(str(delta("bourse_cost_usd_total", **PAIR))) - cost) < Decimal("1e-12")
    assert abs(Decimal(str(delta("bourse_savings_usd_total", **PAIR))) - saved) < Decimal("1e-12")
    assert delta("bourse_gateway_latency_seconds_count", route="") == 3
    # The energy estimate: the counters move by what the headers said (micro-units, exact).
    assert energy > 0
    assert abs(Decimal(str(delta("bourse_energy_wh_total", **PAIR))) - energy) < Decimal("1e-9")
    assert abs(Decimal(str(delta("bourse_co2e_grams_total", **PAIR))) - co2e) < Decimal("1e-9")
    # Every histogram's +Inf bucket is its count.
    for (name, labels), v in after.items():
        if name.endswith("_bucket") and dict(labels)["le"] == "+Inf":
            base = name[: -len("_bucket")]
            rest = tuple(kv for kv in labels if kv[0] != "le")
            assert after[(f"{base}_count", rest)] == v, name
    # The ledger writer's queue is exported (the contract gateway has a ledger).
    assert ("bourse_ledger_written_rows_total", ()) in after


def test_label_sets_stay_bounded_under_1000_request_ids_and_invented_models(gateway) -> None:
    headers = {"Authorization": f"Bearer {GATEWAY_KEY}"}
    models = [MODEL, "sim/invented-model", "invented-bare-model", "sim-small"]

    def send(http: httpx.Client, i: int) -> int:
        body = {"model": models[i % len(models)], "messages": MESSAGES}
        rid = f"bounded-{uuid.uuid4().hex}"
        resp = http.post(f"{gateway.base_url}/chat/completions", json=body, headers={**headers, "x-request-id": rid})
        return resp.status_code

    with httpx.Client(trust_env=False, timeout=30.0) as http:
        # One of each kind first: the series they make are all any number of them may make.
        for i in range(len(models)):
            send(http, i)
        series = set(scrape(gateway))
        statuses = [send(http, i) for i in range(1000)]
    assert statuses.count(200) == 500, statuses
    after = scrape(gateway)
    assert set(after) == series, sorted(set(after) ^ series)
    for name, labels in after:
        for _, v in labels:
            assert "invented" not in v and "bounded-" not in v, (name, labels)
