"""The graph behind a real ``langgraph dev`` server, driven over HTTP as LangGraph Studio and the SDK do.

One server (``--no-browser --no-reload``, a free 127.0.0.1 port, telemetry and
tracing off) is started for the module with its models pointed at a local
fake OpenAI server through the env file ``langgraph.json`` names; it is
stopped by process group at the end. Select these tests with ``-m server``.
"""

from __future__ import annotations

import os
import re

import pytest

pytest.importorskip("langgraph_api", reason="langgraph dev needs langgraph-cli[inmem] (Python >= 3.11)")

from langgraph_sdk import get_sync_client  # noqa: E402

from graph import Context, graph  # noqa: E402

from providers_helpers import FakeOpenAI  # noqa: E402
from server_helpers import REPO, DevServer  # noqa: E402

pytestmark = pytest.mark.server

CANDS = [
    {"qid": "Q41421", "name": "Michael Jordan", "desc": "American basketball player for the Chicago Bulls"},
    {"qid": "Q810", "name": "Jordan", "desc": "country in Western Asia"},
    {"qid": "Q1", "name": "Jordan River", "desc": "river in the Middle East"},
]
DESC = {"Caption": "a man holding a basketball", "OCR text": "BULLS 23",
        "Objects": [{"object_name": "person"}], "Tags": "basketball; sport; indoor"}
INPUT = {"mention": "Jordan", "context": "Jordan scored 30 points for the Bulls", "candidates": CANDS,
         "image_desc": DESC}
# per-run override: every pick passes reflection, no pick passes verification, two clue rounds at most
# the LLM linker (linker_mode=llm) decides every round, whatever the fused weights would say: candidate 2
OVERRIDE = {"max_rounds": 2, "reflection_threshold": 0.0, "verification_threshold": 1.0, "llm_in_clue_rounds": True,
            "gate_threshold": 1.0, "linker_mode": "llm"}
EXPECTED_NODES = ["retrieve_candidates", "link_on_text", "reflect", "verify",
                  "clue_round", "link_on_text", "reflect", "verify",
                  "clue_round", "link_on_text", "reflect", "verify", "finalize"]


@pytest.fixture(scope="module")
def fake_openai():
    with FakeOpenAI(reply="2") as fake:  # the linker always answers candidate 2 ("Jordan", the country)
        yield fake


@pytest.fixture(scope="module")
def models(fake_openai):
    """The model settings of the server's env file (and of the in-process runs compared with it)."""
    return {"linker_model": "openai:fake-linker", "embedding_model": "openai:fake-embedder",
            "openai_base_url": fake_openai.base_url}


@pytest.fixture(scope="module")
def server(tmp_path_factory, models):
    env = {f"I2CR_{k.upper()}": v for k, v in models.items()}
    with DevServer(tmp_path_factory.mktemp("langgraph-dev"), env) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return get_sync_client(url=server.url)


@pytest.fixture(scope="module")
def assistant(client):
    found = client.assistants.search(graph_id="i2cr")
    assert len(found) == 1, found
    return found[0]


def in_process(models, **extra):
    return Context(**models, **OVERRIDE, **extra)


def test_assistant_is_listed(assistant):
    assert assistant["graph_id"] == "i2cr" and assistant["name"] == "I2CR entity linker"


def test_graph_served_with_every_node_and_conditional_edge(client, assistant):
    served = client.assistants.get_graph(assistant["assistant_id"])
    local = graph.get_graph()
    assert {n["id"] for n in served["nodes"]} == set(local.nodes)
    edges = {(e["source"], e["target"], bool(e.get("conditional"))) for e in served["edges"]}
    assert edges == {(e.source, e.target, bool(e.conditional)) for e in local.edges}
    conditional = {(s, t) for s, t, c in edges if c}
    assert {("reflect", "link_on_text"), ("reflect", "verify"), ("verify", "clue_round"), ("verify", "finalize"),
            ("clue_round", "link_on_text"), ("clue_round", "finalize"), ("finalize", "review")} <= conditional
    assert ("link_on_text", "reflect", False) in edges


def test_every_state_and_context_field_is_described_in_the_served_schemas(client, assistant):
    schemas = client.assistants.get_schemas(assistant["assistant_id"])
    for name in ("input_schema", "output_schema", "state_schema", "context_schema"):
        props = schemas[name]["properties"]
        undescribed = [field for field, spec in props.items() if not str(spec.get("description", "")).strip()]
        assert not undescribed, f"{name}: no description for {undescribed}"
    candidate = schemas["input_schema"]["$defs"]["Candidate"]["properties"]
    assert all(spec.get("description") for spec in candidate.values())
    assert set(schemas["context_schema"]["properties"]) == set(Context.model_fields)
    assert {"mention", "context", "candidates", "image", "image_desc", "id"} == set(
        schemas["input_schema"]["properties"])
    assert {"round", "trace", "verdict", "verification_cache"} <= set(schemas["state_schema"]["properties"])


def test_run_on_a_thread_with_a_context_override_matches_the_python_call(client, assistant, models):
    thread = client.threads.create()
    served = client.runs.wait(thread["thread_id"], assistant["assistant_id"], input=INPUT, context=OVERRIDE)
    local = graph.invoke(INPUT, context=in_process(models))
    assert served == local
    assert served["status"] == "fallback" and served["stop_round"] == 3  # the override's max_rounds=2 applied
    assert served["entity"]["qid"] == "Q810" and served["usage"]["llm_calls"] == 3
    state = client.threads.get_state(thread["thread_id"])
    assert state["values"]["status"] == "fallback" and state["next"] == []
    assert [r["status"] for r in client.runs.list(thread["thread_id"])] == ["success"]


def test_streamed_run_yields_node_updates_in_order_and_progress_events(client, assistant, models):
    thread = client.threads.create()
    nodes, events = [], []
    for part in client.runs.stream(thread["thread_id"], assistant["assistant_id"], input=INPUT, context=OVERRIDE,
                                   stream_mode=["updates", "custom"]):
        if part.event == "updates":
            nodes.extend(part.data)
        elif part.event == "custom":
            events.append(part.data)
        assert part.event != "error", part.data
    assert nodes == EXPECTED_NODES
    local = list(graph.stream(INPUT, context=in_process(models), stream_mode="custom"))
    assert events == local
    kinds = [e["event"] for e in events]
    assert kinds[0] == "candidates" and kinds[-1] == "final"
    assert [e["clue"] for e in events if e["event"] == "clue_start"] == ["ocr", "objects"]
    assert events[-1] == {"event": "final", "node": "finalize", "status": "fallback",
                          "entity": {"qid": "Q810", "name": "Jordan"}, "stop_round": 3}


def test_human_review_interrupt_is_resumed_over_the_api(client, assistant, models):
    thread = client.threads.create()
    context = {**OVERRIDE, "human_review": True}
    client.runs.wait(thread["thread_id"], assistant["assistant_id"], input=INPUT, context=context)
    state = client.threads.get_state(thread["thread_id"])
    assert state["next"] == ["review"]
    [pending] = state["interrupts"]
    assert pending["value"]["proposed"]["qid"] == "Q810"
    assert [c["qid"] for c in pending["value"]["candidates"]] == ["Q41421", "Q810", "Q1"]
    out = client.runs.wait(thread["thread_id"], assistant["assistant_id"], command={"resume": "Q41421"},
                           context=context)
    assert out["status"] == "reviewed" and out["entity"]["name"] == "Michael Jordan"
    assert out["trace"][-1]["note"] == "reviewer picked Michael Jordan"
    assert out["usage"]["llm_calls"] == 3  # resuming ran the review step only


def readme_sdk_example() -> str:
    """The Python block of docs/studio.md (linked from the README) that follows the ``sdk-example`` marker."""
    text = (REPO / "docs" / "studio.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- sdk-example[^>]*-->\s*```python\n(.*?)```", text, flags=re.S)
    assert found, "docs/studio.md: no sdk-example block"
    return found.group(1)


def test_readme_sdk_example_runs_against_the_server(server, models, capsys):
    code = readme_sdk_example()
    assert 'url="http://127.0.0.1:2024"' in code
    namespace: dict = {}
    exec(compile(code.replace("http://127.0.0.1:2024", server.url), "docs/studio.md sdk-example", "exec"), namespace)
    out, printed = namespace["out"], capsys.readouterr().out
    # the server's answer is the graph's, in process, with the server's models and the run's settings
    local = graph.invoke(namespace["mention"], context=Context(**models, max_rounds=2, reflection_threshold=0.5))
    assert out["entity"]["qid"] == local["entity"]["qid"] and out["status"] == "text_only"  # no image: text stands
    assert [t["step"] for t in out["trace"]] == [t["step"] for t in local["trace"]]
    assert "node retrieve_candidates" in printed and "'event': 'final'" in printed
    assert namespace["state"]["values"]["status"] == "text_only"
    assert len(namespace["history"]) == 2 * 7  # per run: its input, START, then one per node (5 nodes)


def test_server_is_stopped_by_pid(tmp_path):
    with DevServer(tmp_path, {}) as srv:
        pid = srv.proc.pid
        assert get_sync_client(url=srv.url).assistants.search(graph_id="i2cr")
    assert srv.proc.poll() is not None
    with pytest.raises(ProcessLookupError):  # no process of its group is left
        os.killpg(pid, 0)
