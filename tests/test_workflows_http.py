"""Workflows over HTTP (a real uvicorn): the pipeline end to end, and every refusal clear."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from bus.testing import run_app
from services.edge import create_app
from services.pipeline import app
from tests.edge import KEYS, READ, WRITE, serve
from tests.test_pipeline_workflow import RISKY

BASE = "/api/v1/workflows"


@pytest.fixture
async def http(nats_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The pipeline's handlers and projections in process, its edge under uvicorn."""
    async with run_app(app, nats_url):
        api = create_app(app, nats_url, api_keys=KEYS, body_limit=64 * 1024)
        async for client in serve(api):
            yield client


async def finished(http: httpx.AsyncClient, run_id: str, seq: int) -> dict[str, object]:
    """The run once finished: read-your-writes on each event as it lands."""
    while True:
        r = await http.get(f"{BASE}/code_analysis/runs/{run_id}", params={"after_seq": seq},
                           headers=READ)  # fmt: skip
        assert r.status_code == 200, r.text
        run = r.json()
        if run["status"] != "running":
            return run
        seq += 1


async def test_the_pipeline_end_to_end_over_http(http: httpx.AsyncClient) -> None:
    r = await http.post(f"{BASE}/code_analysis/runs", json={"code": RISKY, "language": "python"},
                        headers=WRITE)  # fmt: skip
    assert r.status_code == 201, r.text
    started = r.json()
    assert set(started) == {"run_id", "workflow", "status", "stream", "seq"}
    assert started["workflow"] == "code_analysis"
    assert started["status"] == "running"
    run = await finished(http, started["run_id"], started["seq"])
    assert run["status"] == "completed", run
    assert set(run["steps"]) == {"parse", "analyze_complexity", "security_scan", "generate_report"}
    for step in run["steps"].values():
        assert step["status"] == "completed"
        assert step["attempts"] == 1
        assert step["started_at"] <= step["ended_at"]
    assert run["output"]["grade"]
    assert run["input"] == {"code": RISKY, "language": "python"}

    listed = (await http.get(f"{BASE}/code_analysis/runs", headers=READ)).json()
    assert [r["run_id"] for r in listed["items"]] == [started["run_id"]]
    assert listed["cursor"] is None
    done = await http.get(f"{BASE}/code_analysis/runs", params={"status": "completed"},
                          headers=READ)  # fmt: skip
    assert len(done.json()["items"]) == 1
    defs = (await http.get(BASE, headers=READ)).json()["items"]
    assert defs[0]["name"] == "code_analysis"
    assert [s["name"] for s in defs[0]["steps"]] == list(app.workflows["code_analysis"].order)
    assert defs[0]["steps"][3]["depends_on"] == ["analyze_complexity", "security_scan"]

    r = await http.post(f"{BASE}/code_analysis/runs/{started['run_id']}:cancel", headers=WRITE)
    assert r.status_code == 202
    assert r.json()["status"] == "completed"  # finished runs stay as they are


async def test_bad_source_fails_parse_over_http(http: httpx.AsyncClient) -> None:
    r = await http.post(f"{BASE}/code_analysis/runs", json={"code": "def (:"}, headers=WRITE)
    run = await finished(http, r.json()["run_id"], r.json()["seq"])
    assert run["status"] == "failed"
    assert run["steps"]["parse"]["status"] == "failed"
    assert run["steps"]["generate_report"]["status"] == "skipped"


async def test_counts_runs_and_steps_by_status(http: httpx.AsyncClient) -> None:
    async def counts() -> dict[str, Any]:
        r = await http.get(f"{BASE}/counts", headers=READ)
        assert r.status_code == 200, r.text
        [only] = r.json()["items"]
        assert only["name"] == "code_analysis"
        return only  # type: ignore[no-any-return]

    assert (await http.get(f"{BASE}/counts")).status_code == 401
    before = await counts()
    r = await http.post(f"{BASE}/code_analysis/runs", json={"code": "def (:"}, headers=WRITE)
    await finished(http, r.json()["run_id"], r.json()["seq"])
    after = await counts()
    assert after["runs"].get("failed", 0) == before["runs"].get("failed", 0) + 1
    skipped = after["steps"]["generate_report"].get("skipped", 0)
    assert skipped == before["steps"].get("generate_report", {}).get("skipped", 0) + 1


async def test_the_same_idempotency_key_answers_the_same_run(http: httpx.AsyncClient) -> None:
    body = {"code": "x = 1\n"}
    headers = {**WRITE, "Idempotency-Key": "analysis-1"}
    first = await http.post(f"{BASE}/code_analysis/runs", json=body, headers=headers)
    again = await http.post(f"{BASE}/code_analysis/runs", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json()["run_id"] == first.json()["run_id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other = await http.post(f"{BASE}/code_analysis/runs", json={"code": "y = 2\n"},
                            headers=headers)  # fmt: skip
    assert other.status_code == 422


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("post", "/code_analysis/runs", {"content": b"{not json"}, 400),
        ("post", "/code_analysis/runs", {"json": {"language": "python"}}, 422),
        ("post", "/code_analysis/runs", {"json": {"code": 5}}, 422),
        ("post", "/code_analysis/runs", {"json": [1, 2]}, 422),
        ("post", "/code_analysis/runs", {"json": "code"}, 422),
        ("post", "/code_analysis/runs", {"json": {"code": "x", "language": ""}}, 422),
        ("post", "/code_analysis/runs", {"json": {"code": "x" * 70_000}}, 413),
        ("post", "/nope/runs", {"json": {"code": "x"}}, 404),
        ("post", "/code_analysis/runs", {"json": {"code": "x"},
                                        "headers": {"Idempotency-Key": "a b"}}, 400),
        ("get", "/code_analysis/runs/code_analysis-missing", {}, 404),
        ("get", "/code_analysis/runs/other-x", {}, 404),
        ("get", "/code_analysis/runs/code_analysis-x*", {}, 400),
        ("get", "/code_analysis/runs/code_analysis-x", {"params": {"after_seq": "0"}}, 422),
        ("get", "/code_analysis/runs/code_analysis-x", {"params": {"after_seq": "x"}}, 422),
        ("get", "/code_analysis/runs", {"params": {"status": "weird"}}, 422),
        ("get", "/code_analysis/runs", {"params": {"limit": "0"}}, 422),
        ("get", "/code_analysis/runs", {"params": {"limit": "100000"}}, 422),
        ("get", "/nope/runs", {}, 404),
        ("post", "/code_analysis/runs/code_analysis-missing:cancel", {}, 404),
        ("get", "/code_analysis/runs/code_analysis-x:cancel", {}, 405),
        ("post", "/code_analysis/runs/code_analysis-x>:cancel", {}, 400),
    ],
)  # fmt: skip
async def test_bad_requests_get_clear_problems_and_change_nothing(
    http: httpx.AsyncClient, method: str, path: str, kwargs: dict[str, object], status: int
) -> None:
    headers = {**WRITE, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    r = await http.request(method.upper(), BASE + path, headers=headers, **kwargs)  # type: ignore[arg-type]
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == status
    listed = await http.get(f"{BASE}/code_analysis/runs", headers=READ)
    assert listed.json()["items"] == []


async def test_reads_need_a_key_and_writes_the_write_scope(http: httpx.AsyncClient) -> None:
    assert (await http.get(BASE)).status_code == 401
    r = await http.post(f"{BASE}/code_analysis/runs", json={"code": "x"}, headers=READ)
    assert r.status_code == 403
    assert (await http.get(BASE, headers=READ)).status_code == 200


async def call_tool(
    http: httpx.AsyncClient, tool: str, headers: dict[str, str], **args: object
) -> tuple[bool, Any]:
    r = await http.post("/mcp/v2/tools/call", json={"name": tool, "arguments": args},
                        headers=headers)  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    text = body["content"][0]["text"]
    return body["isError"], (text if body["isError"] else json.loads(text))


async def test_the_pipeline_over_mcp(http: httpx.AsyncClient) -> None:
    error, defs = await call_tool(http, "list_workflows", READ)
    assert not error
    assert defs["items"][0]["name"] == "code_analysis"
    error, started = await call_tool(http, "start_workflow", WRITE, name="code_analysis",
                                     input={"code": RISKY})  # fmt: skip
    assert not error, started
    seq = started["seq"]
    while True:
        error, run = await call_tool(http, "get_workflow_run", READ, run_id=started["run_id"],
                                     after_seq=seq)  # fmt: skip
        assert not error, run
        if run["status"] != "running":
            break
        seq += 1
    assert run["status"] == "completed"
    assert run["output"]["summary"]["functions"] == 2


@pytest.mark.parametrize(
    ("tool", "headers", "args", "needle"),
    [
        ("start_workflow", READ, {"name": "code_analysis", "input": {"code": "x"}}, "403"),
        ("start_workflow", WRITE, {"name": "nope", "input": {"code": "x"}}, "404"),
        ("start_workflow", WRITE, {"name": "code_analysis", "input": {"code": 1}}, "422"),
        ("start_workflow", WRITE, {"name": "code_analysis", "input": "x"}, "input"),
        ("start_workflow", WRITE, {"name": "code_analysis", "input": {"code": "x"},
                                   "idempotency_key": "a.b"}, "idempotency_key"),
        ("get_workflow_run", READ, {"run_id": "code_analysis-none"}, "404"),
        ("get_workflow_run", READ, {"run_id": "nope-1"}, "404"),
        ("get_workflow_run", READ, {"run_id": "code_analysis-x.y"}, "400"),
        ("get_workflow_run", READ, {"run_id": "code_analysis-x", "after_seq": 0}, "after_seq"),
    ],
)  # fmt: skip
async def test_bad_tool_calls_are_tool_errors_and_start_nothing(
    http: httpx.AsyncClient, tool: str, headers: dict[str, str], args: dict[str, object],
    needle: str,
) -> None:  # fmt: skip
    error, text = await call_tool(http, tool, headers, **args)
    assert error
    assert needle in text
    listed = await http.get(f"{BASE}/code_analysis/runs", headers=READ)
    assert listed.json()["items"] == []
