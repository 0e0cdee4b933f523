"""Harness for the SDK contract tests (OpenAI and Anthropic).

One upstream-sim and one bourse gateway in front of it, both the real binaries from
`cargo build --workspace --bins`, started once per session on port 0 and stopped at the
end. Tests get a strictly validating `openai.OpenAI` client pointed at the gateway, a
strictly validating `anthropic.Anthropic` client (see `anthropic_client`), and a
`sim_config` helper that reconfigures the sim live and resets it to defaults afterwards.
The gateway also has an admin key, so tests can make tenants and virtual keys with limits
(`admin`, `virtual_key`).

The one sim speaks every dialect on the same port, so the gateway reaches it four ways:
`sim` (OpenAI dialect), `simanth` and `simanth2` (Anthropic dialect; two ids so the
`anth-sims` route has two Anthropic candidates), `simgem` (Gemini dialect). A sim failure
hits all of them at once.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import openai
import pytest

REPO = Path(__file__).resolve().parents[2]
GATEWAY_KEY = "gw-contract-test-key"
ADMIN_KEY = "adm-contract-test-key"
MODEL = "sim/sim-small"
# The same simulated model behind an Anthropic-dialect provider (same-dialect pass-through
# for Anthropic clients), and a route whose only candidates are two such providers.
ANTHROPIC_MODEL = "simanth/sim-small"
ANTHROPIC_ROUTE = "anth-sims"
# The same simulated model behind a Gemini-dialect provider.
GEMINI_MODEL = "simgem/sim-small"
READY_TIMEOUT_S = 30.0

_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy"}


def _target_dir() -> Path:
    configured = os.environ.get("CARGO_TARGET_DIR")
    if configured:
        path = Path(configured)
        return path if path.is_absolute() else REPO / path
    return REPO / "target"


BINARIES = ("bourse", "upstream-sim")


def _binary(name: str) -> Path:
    missing = [
        str(p)
        for p in (_target_dir() / "debug" / b for b in BINARIES)
        if not (p.is_file() and os.access(p, os.X_OK))
    ]
    if missing:
        pytest.fail(
            f"missing {', '.join(missing)}: run `cargo build --workspace --bins` in {REPO} first "
            "(the contract tests drive the real bourse and upstream-sim binaries)",
            pytrace=False,
        )
    return _target_dir() / "debug" / name


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}
    # The gateway must read only the config we hand it.
    env.pop("BOURSE_CONFIG", None)
    env.setdefault("NO_COLOR", "1")
    env.update(extra)
    return env


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


class _Child:
    """A subprocess whose output goes to files (never a pipe that could fill up and
    block it), with a ready line parsed from one of them."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logdir: Path):
        self.name = name
        self.stdout_path = logdir / f"{name}.stdout.log"
        self.stderr_path = logdir / f"{name}.stderr.log"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=str(logdir)
            )

    def logs(self) -> str:
        return (
            f"--- {self.name} stdout ({self.stdout_path}) ---\n{_tail(self.stdout_path)}\n"
            f"--- {self.name} stderr ({self.stderr_path}) ---\n{_tail(self.stderr_path)}"
        )

    def wait_ready(self, log: Path, pattern: re.Pattern[str]) -> re.Match[str]:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            match = pattern.search(_tail(log, 1 << 20))
            if match:
                return match
            if self.proc.poll() is not None:
                self.stop()
                pytest.fail(
                    f"{self.name} exited with status {self.proc.returncode} before it was ready\n{self.logs()}",
                    pytrace=False,
                )
            time.sleep(0.02)
        self.stop()
        pytest.fail(f"{self.name} printed no ready line within {READY_TIMEOUT_S}s\n{self.logs()}", pytrace=False)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _plain_http() -> httpx.Client:
    # trust_env=False: never send test traffic through a proxy from the environment.
    return httpx.Client(trust_env=False, timeout=10.0)


@dataclass
class Sim:
    addr: str
    child: _Child
    http: httpx.Client

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    def set_config(self, config: dict[str, Any]) -> None:
        resp = self.http.put(f"{self.url}/sim/config", json=config)
        assert resp.status_code < 300, f"sim rejected config {config}: {resp.status_code} {resp.text}"

    def reset(self) -> None:
        # Every field has a default, so an empty object restores the start-up config.
        self.set_config({})

    def last_request(self) -> dict[str, Any]:
        resp = self.http.get(f"{self.url}/sim/last-request")
        resp.raise_for_status()
        return resp.json()

    def stats(self) -> dict[str, Any]:
        resp = self.http.get(f"{self.url}/sim/stats")
        resp.raise_for_status()
        return resp.json()


@dataclass
class Gateway:
    addr: str
    key: str
    child: _Child

    @property
    def base_url(self) -> str:
        return f"http://{self.addr}/v1"

    @property
    def root_url(self) -> str:
        """For the Anthropic SDK, which appends `/v1/messages` itself."""
        return f"http://{self.addr}"


@pytest.fixture(scope="session")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("contract")


@pytest.fixture(scope="session")
def sim(logdir: Path) -> Iterator[Sim]:
    binary = _binary("upstream-sim")
    child = _Child("upstream-sim", [str(binary), "--listen", "127.0.0.1:0"], _child_env(), logdir)
    try:
        match = child.wait_ready(
            child.stdout_path, re.compile(r"upstream-sim listening on (?:https?://)?(\S+?:\d+)")
        )
        with _plain_http() as http:
            yield Sim(addr=match.group(1), child=child, http=http)
    finally:
        child.stop()


@pytest.fixture(scope="session")
def gateway(sim: Sim, logdir: Path) -> Iterator[Gateway]:
    binary = _binary("bourse")
    config = logdir / "bourse.toml"
    config.write_text(
        "[server]\n"
        'api_keys = ["env:BOURSE_TEST_GATEWAY_KEY"]\n'
        "# The admin API (/admin/v1): tenants and virtual keys for the budget and rate-limit tests.\n"
        'admin_keys = ["env:BOURSE_TEST_ADMIN_KEY"]\n'
        "\n"
        "[providers.sim]\n"
        'kind = "openai-compatible"\n'
        f'base_url = "{sim.url}/v1"\n'
        'models = ["sim-small"]\n'
        "\n"
        "# Bourse refuses unpriced models; price the simulated ones.\n"
        '[models."sim/sim-small"]\n'
        "input = 1.0\n"
        "cached_input = 0.1\n"
        "output = 2.0\n"
        '[models."sim/text-embedding-sim"]\n'
        'kind = "embedding"\n'
        "input = 0.02\n"
        "\n"
        "# The same sim in the Anthropic dialect (the gateway appends /v1/messages).\n"
        "[providers.simanth]\n"
        'kind = "anthropic-compatible"\n'
        f'base_url = "{sim.url}"\n'
        'models = ["sim-small"]\n'
        "\n"
        "[providers.simanth2]\n"
        'kind = "anthropic-compatible"\n'
        f'base_url = "{sim.url}"\n'
        'models = ["sim-small"]\n'
        "\n"
        '[models."simanth/sim-small"]\n'
        "input = 1.0\n"
        "output = 2.0\n"
        '[models."simanth2/sim-small"]\n'
        "input = 1.0\n"
        "output = 2.0\n"
        "\n"
        "# The same sim in the Gemini dialect (the gateway appends /models/...:generateContent).\n"
        "[providers.simgem]\n"
        'kind = "gemini"\n'
        f'base_url = "{sim.url}/v1beta"\n'
        'api_key = "env:BOURSE_TEST_SIM_KEY"\n'
        'models = ["sim-small"]\n'
        '[models."simgem/sim-small"]\n'
        "input = 1.0\n"
        "output = 2.0\n"
        "\n"
        "# A route with exactly two candidates, both Anthropic-dialect (unrated models: no floor).\n"
        f"[routes.{ANTHROPIC_ROUTE}]\n"
        'min_quality = "basic"\n'
        'policy = "anthropic_sims"\n'
        "\n"
        "[policies.anthropic_sims]\n"
        'allow_providers = ["simanth", "simanth2"]\n'
        "\n"
        "# Tests inject failures on purpose; keep circuits closed so one test's failures never\n"
        "# take a candidate out of another test's route.\n"
        "[router]\n"
        "failure_threshold = 1000\n"
        "\n"
        "[storage]\n"
        f'url = "sqlite:{logdir / "ledger.db"}"\n'
    )
    child = _Child(
        "bourse",
        [str(binary), "serve", "--config", str(config), "--listen", "127.0.0.1:0"],
        _child_env(
            BOURSE_TEST_GATEWAY_KEY=GATEWAY_KEY, BOURSE_TEST_ADMIN_KEY=ADMIN_KEY, BOURSE_TEST_SIM_KEY="sim-key"
        ),
        logdir,
    )
    try:
        match = child.wait_ready(child.stderr_path, re.compile(r"listening on http://([0-9.]+:\d+)"))
        yield Gateway(addr=match.group(1), key=GATEWAY_KEY, child=child)
    finally:
        child.stop()


class Admin:
    """The gateway's admin API (`/admin/v1`), with the admin key from the config."""

    def __init__(self, gateway: Gateway, http: httpx.Client):
        self.url = f"http://{gateway.addr}/admin/v1"
        self.http = http
        self.headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        self._serial = itertools.count(1)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, expect: int = 200) -> dict[str, Any]:
        resp = self.http.request(method, f"{self.url}{path}", json=body, headers=self.headers)
        assert resp.status_code == expect, f"{method} {path} {body}: {resp.status_code} {resp.text}"
        return resp.json()

    def create_tenant(self, **limits: Any) -> str:
        """A new tenant with a name no other test uses (so no two tests share counters);
        `limits` are the admin API's fields (`budget_day_usd="0.05"`, `rpm=2`, ...)."""
        name = f"contract-{os.getpid()}-{next(self._serial)}"
        created = self.call("POST", "/tenants", {"name": name, **limits}, expect=201)
        assert created["name"] == name
        return name

    def patch_tenant(self, name: str, **changes: Any) -> dict[str, Any]:
        return self.call("PATCH", f"/tenants/{name}", changes)

    def create_key(self, tenant: str, **limits: Any) -> str:
        """A new virtual key of `tenant` (its own limits in `limits`); returns the secret."""
        created = self.call("POST", "/keys", {"tenant": tenant, "name": "contract", **limits}, expect=201)
        assert created["id"].startswith("key_") and created["tenant"] == tenant, created
        assert created["key"].startswith("sk-bourse-"), created
        return created["key"]


@pytest.fixture(scope="session")
def admin(gateway: Gateway) -> Iterator[Admin]:
    with _plain_http() as http:
        yield Admin(gateway, http)


@pytest.fixture
def virtual_key(admin: Admin) -> Callable[..., str]:
    """`virtual_key(tenant={...limits}, **key_limits)`: the secret of a new virtual key in a
    new tenant of its own, so one test's budgets and rate counters never touch another's.
    A change is served at once by the gateway that made it: the key works immediately."""

    def make(tenant: dict[str, Any] | None = None, **key_limits: Any) -> str:
        return admin.create_key(admin.create_tenant(**(tenant or {})), **key_limits)

    return make


class RequestLog:
    """httpx event hooks that record every request an SDK client sends (retries included):
    `http_client=openai.DefaultHttpxClient(trust_env=False, event_hooks=log.hooks)`."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    @property
    def hooks(self) -> dict[str, list[Callable[[httpx.Request], None]]]:
        return {"request": [lambda request: self.sent.append(f"{request.method} {request.url.path}")]}


def seconds_to_utc_midnight() -> float:
    """What a daily budget's refusal should put in `Retry-After`: the day resets at 00:00 UTC."""
    now = time.time()
    return 86400 - now % 86400


def strict_options(client: openai.OpenAI, **options: Any) -> openai.OpenAI:
    """`client.with_options(...)` that stays strict.

    `OpenAI.copy()` / `with_options()` does not carry `_strict_response_validation` over
    to the new client (it is not among the constructor arguments it forwards), so a bare
    `with_options` silently turns validation off. Pass it through `_extra_kwargs`.
    """
    derived = client.with_options(**options, _extra_kwargs={"_strict_response_validation": True})
    assert derived._strict_response_validation is True
    return derived


def lenient_options(client: openai.OpenAI, **options: Any) -> openai.OpenAI:
    """`client.with_options(...)` with strict validation explicitly off, for the one SDK
    call that cannot work strictly against any server: `embeddings.create()` without
    `encoding_format` asks for base64 and decodes it in a post-parser that runs *after*
    validation, so strict mode rejects the (correct) base64 string as "not a list"."""
    derived = client.with_options(**options, _extra_kwargs={"_strict_response_validation": False})
    assert derived._strict_response_validation is False
    return derived


@pytest.fixture(scope="session")
def base_client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(
        base_url=gateway.base_url,
        api_key=gateway.key,
        max_retries=0,
        timeout=30.0,
        http_client=openai.DefaultHttpxClient(trust_env=False),
        _strict_response_validation=True,
    )
    yield client
    client.close()


@pytest.fixture
def client(base_client: openai.OpenAI) -> openai.OpenAI:
    """A strictly validating client for the gateway: any response that does not match the
    SDK's types raises `openai.APIResponseValidationError`."""
    return strict_options(base_client, max_retries=0)


@pytest.fixture
def sim_config(sim: Sim) -> Iterator[Callable[..., None]]:
    """`sim_config(failure={...}, ...)` reconfigures the running sim (a full config: fields
    not named take their defaults); the sim is reset to defaults after the test."""
    changed = False

    def configure(**config: Any) -> None:
        nonlocal changed
        changed = True
        sim.set_config(json.loads(json.dumps(config)))

    yield configure
    if changed:
        sim.reset()


# Anthropic SDK ----------------------------------------------------------------------------
# Imported lazily so the OpenAI tests still run where only their requirements are installed.


def make_anthropic(gateway: Gateway, **options: Any):
    """A strictly validating `anthropic.Anthropic` client for the gateway: any response
    or stream event that does not match the SDK's types raises
    `anthropic.APIResponseValidationError`.

    Build a new client per variation rather than `with_options`: like the OpenAI SDK's,
    `Anthropic.copy()` does not carry `_strict_response_validation` over.

    Pass `http_client=anthropic.DefaultHttpxClient(trust_env=False, ...)` to watch the
    requests the SDK sends (e.g. `event_hooks`); keep `trust_env=False`.

    Note: anthropic 2.14.0 sends `api_key=` as `Authorization: Bearer <key>`, not
    `x-api-key`; pass `x_api_key=True` to send the key only as `x-api-key`.
    """
    import anthropic

    x_api_key = options.pop("x_api_key", False)
    http_client = options.pop("http_client", None) or anthropic.DefaultHttpxClient(trust_env=False)
    headers = dict(options.pop("default_headers", None) or {})
    if "auth_token" not in options:
        options.setdefault("api_key", gateway.key)
    if x_api_key:
        headers = {"Authorization": anthropic.omit, "x-api-key": options["api_key"], **headers}
    options.setdefault("max_retries", 0)
    options.setdefault("timeout", 30.0)
    with pytest.MonkeyPatch.context() as env:
        # Only what the test passes: no base URL or extra headers from the environment.
        for var in ("ANTHROPIC_BASE_URL", "ANTHROPIC_CUSTOM_HEADERS"):
            env.delenv(var, raising=False)
        client = anthropic.Anthropic(
            base_url=gateway.root_url,
            http_client=http_client,
            default_headers=headers or None,
            _strict_response_validation=True,
            **options,
        )
    assert client._strict_response_validation is True
    return client


@pytest.fixture
def anthropic_client(gateway: Gateway):
    """A strictly validating Anthropic SDK client with the gateway key (`api_key=`)."""
    client = make_anthropic(gateway)
    yield client
    client.close()
