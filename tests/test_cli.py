"""``i2cr link`` end to end through the real ``openai:`` route against a local chat-completions server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from graph.cli import main

from providers_helpers import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]
RECORD = str(ROOT / "evals" / "data" / "example_wikimel_25999.json")


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_link_prints_entity_status_round_and_trace(capsys):
    with FakeOpenAI(reply="1") as server:
        code, out, err = run_cli(
            capsys, "link", "--mention", "Stoltenberg", "--context", "Stoltenberg speaks at a service.",
            "--candidates", RECORD, "--model", "openai:tiny-test-model",
            "--set", f"openai_base_url={server.base_url}", "--set", "embedding_model=openai:tiny-embed",
            "--set", "reflection_threshold=0", "--set", "verification_threshold=0", "--set", "linker_mode=llm")
    assert code == 0, err
    result = json.loads(out)
    assert result["entity"] == {"qid": "Q57665", "name": "Jens Stoltenberg"}
    assert result["status"] == "text_verified" and result["stop_round"] == 1
    steps = [t["step"] for t in result["trace"]]
    assert steps == ["retrieve", "link", "reflect", "verify", "final"]
    assert result["trace"][2]["reflection_score"] is not None
    assert result["trace"][3]["verification_score"] is not None
    chat = [r for r in server.requests if r["path"].endswith("/chat/completions")]
    assert chat[0]["model"] == "tiny-test-model" and chat[0]["temperature"] == 0
    assert "1. Jens Stoltenberg" in chat[0]["messages"][-1]["content"]
    assert result["usage"] == {"llm_calls": 1, "input_tokens": 11, "output_tokens": 1}


def test_link_reports_bad_input_in_one_line(capsys, tmp_path):
    bad = tmp_path / "cands.json"
    bad.write_text("[{\"qid\": \"Q1\"}]")
    code, out, err = run_cli(capsys, "link", "--mention", "X", "--context", "", "--candidates", str(bad))
    assert code == 2 and out == ""
    assert err.strip() == f"i2cr: error: --candidates {bad}: candidates[0]: candidate has no name (got {{'qid': 'Q1'}})"
    code, _, err = run_cli(capsys, "link", "--mention", "X", "--context", "", "--candidates", str(tmp_path / "nope"))
    assert code == 2 and "--candidates: file not found" in err
    bad.write_text("{oops")
    code, _, err = run_cli(capsys, "link", "--mention", "X", "--context", "", "--candidates", str(bad))
    assert code == 2 and "is not valid JSON" in err
    code, _, err = run_cli(capsys, "link", "--mention", "X", "--set", "max_rounds=many")
    assert code == 2 and "--set max_rounds='many'" in err


def test_script_exit_status_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "graph.cli", "link", "--mention", "X", "--context", "y",
                           "--image", str(tmp_path / "missing.jpg"), "--strict-image"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert "image: file not found" in proc.stderr and "Traceback" not in proc.stderr



@pytest.mark.parametrize("module, args", [("tools.kb_cli", ["count"]), ("evals.cli", ["data.json"])])
def test_module_entry_points_report_a_bad_setting_in_one_line(module, args, tmp_path):
    """``python -m tools.kb_cli`` / ``python -m evals.cli`` work without graph.cli: a bad setting is one line, exit 2."""
    import os

    env = {**os.environ, "I2CR_KB_PORT": "0", "I2CR_MAX_ROUNDS": "-1"}
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "I2CR_KB_PORT='0'" in proc.stderr or "I2CR_MAX_ROUNDS='-1'" in proc.stderr

def test_model_server_down_names_the_model(capsys):
    with FakeOpenAI(fail_first=-1) as server:
        code, _, err = run_cli(
            capsys, "link", "--mention", "Stoltenberg", "--context", "x", "--candidates", RECORD,
            "--model", "openai:down-model", "--set", f"openai_base_url={server.base_url}",
            "--set", "max_retries=1", "--set", "embedding_model=openai:e", "--set", "linker_mode=llm")
    assert code == 2 and "down-model" in err and "Traceback" not in err
    with FakeOpenAI(fail_first=-1) as server:  # the fused linker embeds first: the embedder is named
        code, _, err = run_cli(
            capsys, "link", "--mention", "Stoltenberg", "--context", "x", "--candidates", RECORD,
            "--model", "openai:down-model", "--set", f"openai_base_url={server.base_url}",
            "--set", "max_retries=1", "--set", "embedding_model=openai:down-embedder")
    assert code == 2 and f"embedding_model 'openai:down-embedder' at {server.base_url.rstrip('/')} failed" in err
    assert "Traceback" not in err


def test_every_setting_is_in_the_configuration_table():
    """docs/configuration.md lists each field of the run context (``--set`` and ``link(...)`` keywords) with its default."""
    from graph.context import Context

    table = [line for line in (Path(__file__).parents[1] / "docs" / "configuration.md").read_text().splitlines()
             if line.startswith("| `")]
    listed = {name for line in table for name in line.split("|")[1].replace("`", " ").replace(",", " ").split()}
    assert set(Context.model_fields) - listed == set()
