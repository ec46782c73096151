"""Knowledge base (tools/kb.py, tools/kb_cli.py): ingest, idempotence, errors, hybrid search, server mode.

Offline and fast: deterministic fake embedders stand in for the real one (a
hashed bag of words, whose similarity means word overlap, and LangChain's
random-vector-per-text one, which knows nothing), except in the last test. The server test starts a real
``chroma run`` on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings

from tools.errors import ConfigError, InputError
from tools.kb import KnowledgeBase, name_vector, normalize_name, retrieve_candidates

SURNAMES = ["Smith", "Johnson", "Brown", "Taylor", "Anderson", "Thomas", "Jackson", "White", "Harris",
            "Martin", "Thompson", "Garcia", "Martinez", "Robinson", "Clark", "Lewis", "Lee", "Walker",
            "Hall", "Allen", "Young", "King", "Wright", "Scott", "Green", "Baker", "Adams", "Nelson",
            "Hill", "Campbell", "Mitchell", "Roberts", "Carter", "Phillips", "Evans", "Turner"]
RECORDS = [{"qid": f"Q{i}", "name": f"John {s}", "desc": f"Name: John {s}. Occupation: politician."}
           for i, s in enumerate(SURNAMES)] + [
    {"qid": "Q9000", "name": "Sadegh Ghotbzadeh", "desc": "Name: Sadegh Ghotbzadeh. Occupation: politician.",
     "aliases": ["Ghotbzadeh"]},
    {"qid": "Q9001", "name": "Karl Marx", "desc": "Name: Karl Marx. Occupation: philosopher, economist."},
    {"qid": "Q9002", "name": "Groucho Marx", "desc": "Name: Groucho Marx. Occupation: comedian, actor."},
]


class HashBagEmbeddings(Embeddings):
    """Deterministic bag-of-words embedder: each lower-cased word adds 1 to a hashed dimension."""

    def __init__(self, dim: int = 64):
        self.dim = dim

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        out = []
        for text in texts:
            v = np.zeros(self.dim)
            for w in re.findall(r"\w+", text.lower()):
                v[zlib.crc32(w.encode()) % self.dim] += 1.0
            out.append((v / max(np.linalg.norm(v), 1e-9)).tolist())
        return out

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


@pytest.fixture
def fake() -> Embeddings:
    return HashBagEmbeddings()


@pytest.fixture
def kb(tmp_path: Path, fake) -> KnowledgeBase:
    return KnowledgeBase(path=tmp_path / "kb", collection="entities", embeddings=fake)


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


# ------------------------------------------------------------------ ingest ---
def test_ingest_and_search(kb):
    stats = kb.ingest(RECORDS, batch_size=8)
    assert (stats.added, stats.skipped) == (len(RECORDS), 0)
    assert kb.count() == len(RECORDS)
    rows = kb.search("Ghotbzadeh", "the foreign minister spoke", k=5)
    assert rows[0]["qid"] == "Q9000"
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    assert {"qid", "name", "desc", "score", "dense", "lexical", "aliases"} <= rows[0].keys()
    assert rows[0]["score"] >= rows[1]["score"]


def test_reingest_is_idempotent_and_updates_changed_records(kb):
    kb.ingest(RECORDS, batch_size=10)
    again = kb.ingest(RECORDS, batch_size=10)
    assert (again.added, again.updated, again.unchanged) == (0, 0, len(RECORDS))
    assert kb.count() == len(RECORDS)
    changed = [dict(r) for r in RECORDS]
    changed[-3] = {**changed[-3], "desc": "Name: Sadegh Ghotbzadeh. Occupation: foreign minister.", "aliases": []}
    stats = kb.ingest(changed, batch_size=10)
    assert (stats.added, stats.updated, stats.unchanged) == (0, 1, len(RECORDS) - 1)
    assert kb.count() == len(RECORDS)
    top = kb.search("Sadegh Ghotbzadeh", "", k=1, mode="lexical")[0]
    assert top["desc"].endswith("foreign minister.") and top["aliases"] == []
    assert kb._names.get(ids=["Q9000#1"])["ids"] == []  # the dropped alias left the names index


def test_malformed_lines_skip_reports_line_numbers(tmp_path, kb):
    f = write_jsonl(tmp_path / "e.jsonl", [RECORDS[0], "{not json", RECORDS[1], {"qid": "Q7"}, "", RECORDS[2]])
    seen = []
    stats = kb.ingest_file(f, on_error="skip", report=lambda no, msg: seen.append((no, msg)))
    assert [no for no, _ in seen] == [2, 4] == [no for no, _ in stats.errors]
    assert "invalid JSON" in seen[0][1] and "'name'" in seen[1][1]
    assert (stats.added, stats.skipped) == (3, 2)
    assert kb.count() == 3


def test_malformed_lines_fail_writes_nothing(tmp_path, kb):
    f = write_jsonl(tmp_path / "e.jsonl", [RECORDS[0], RECORDS[1], {"qid": "Q7", "name": "X", "aliases": "X"}])
    with pytest.raises(InputError, match=r"e\.jsonl:3: 'aliases' must be a list"):
        kb.ingest_file(f, on_error="fail", batch_size=1)
    assert kb.count() == 0


def test_interrupted_ingest_keeps_committed_batches(kb):
    def source():
        yield from RECORDS[:10]
        raise RuntimeError("disk unplugged")

    with pytest.raises(RuntimeError, match="disk unplugged"):
        kb.ingest(source(), batch_size=4)
    assert kb.count() == 10  # 2 full batches + the pending partial one
    resumed = kb.ingest(RECORDS, batch_size=4)
    assert (resumed.unchanged, resumed.added) == (10, len(RECORDS) - 10)


def test_bad_settings_are_config_errors(tmp_path, fake, kb):
    with pytest.raises(ConfigError, match="kb_collection"):
        KnowledgeBase(path=tmp_path / "kb", collection="x", embeddings=fake)
    with pytest.raises(ConfigError, match="on_error"):
        kb.ingest(RECORDS, on_error="ignore")
    kb.ingest(RECORDS[:3])
    with pytest.raises(ConfigError, match="built with"):  # another embedding model than the KB's
        KnowledgeBase(path=tmp_path / "kb", collection="entities", embeddings=DeterministicFakeEmbedding(size=16)).count()


# ------------------------------------------------------------------ search ---
def test_lexical_signal_finds_rare_name_dense_only_misses(tmp_path):
    kb = KnowledgeBase(path=tmp_path / "kb", embeddings=DeterministicFakeEmbedding(size=16))
    kb.ingest(RECORDS)
    dense = [r["qid"] for r in kb.search("Ghotbzadeh", "he met reporters in Paris", k=10, mode="dense")]
    hybrid = [r["qid"] for r in kb.search("Ghotbzadeh", "he met reporters in Paris", k=10)]
    assert "Q9000" not in dense  # the (fake) dense signal knows nothing about the name
    assert hybrid[0] == "Q9000"
    marx = kb.search("Marx", "", k=2, mode="lexical")
    assert {r["qid"] for r in marx} == {"Q9001", "Q9002"}


def test_lexical_normalisation():
    assert normalize_name("Casimir Pierre Périer") == "casimir pierre perier"
    v1, v2 = name_vector("Périer"), name_vector("perier")
    assert float(v1 @ v2) == pytest.approx(1.0)


def test_retrieve_candidates_and_empty_kb(tmp_path, fake):
    ctx = SimpleNamespace(kb_path=str(tmp_path / "kb2"), kb_host=None, kb_port=8000, kb_collection="people",
                          top_k=3, embedding_model=fake, openai_base_url=None, openai_api_key=None)
    with pytest.raises(InputError, match="i2cr kb ingest"):
        retrieve_candidates("Marx", "", ctx)
    assert not (tmp_path / "kb2").exists()  # a search leaves no empty store behind
    KnowledgeBase.from_context(ctx).ingest(RECORDS)
    found = retrieve_candidates("Groucho Marx", "a comedian", ctx)
    assert len(found) == 3 and found[0]["qid"] == "Q9002"
    with pytest.raises(InputError, match="mention"):
        retrieve_candidates("  ", "", ctx)


# --------------------------------------------------------------------- CLI ---
def test_cli_ingest_and_search(tmp_path, fake, monkeypatch, capsys):
    from graph.cli import main as i2cr_main
    from tools import embeddings as emb_mod

    def main(argv):
        return i2cr_main(["kb", *argv])

    monkeypatch.setattr(emb_mod, "load_embeddings", lambda *a, **k: fake)
    f = write_jsonl(tmp_path / "e.jsonl", RECORDS + ["[1, 2]"])
    store = ["--path", str(tmp_path / "kb"), "--collection", "cli-test"]
    assert main(["search", "Marx", *store]) == 2
    assert "i2cr kb ingest" in capsys.readouterr().err
    assert main(["ingest", str(f), *store, "--batch-size", "7", "--no-progress", "--json"]) == 0
    out = capsys.readouterr()
    summary = json.loads(out.out)
    assert summary["added"] == len(RECORDS) and summary["errors"][0]["line"] == len(RECORDS) + 1
    assert f"e.jsonl:{len(RECORDS) + 1}: skipped" in out.err
    assert main(["ingest", str(f), *store, "--on-error", "fail", "--no-progress"]) == 2
    assert "nothing ingested" in capsys.readouterr().err
    assert main(["search", "Ghotbzadeh", "--context", "minister", "-k", "3", "--json", *store]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and rows[0]["name"] == "Sadegh Ghotbzadeh"
    assert main(["search", "Ghotbzadeh", *store]) == 0
    assert "Sadegh Ghotbzadeh" in capsys.readouterr().out.splitlines()[0]


# ------------------------------------------------------------ server mode ---
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory):
    exe = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
    if not Path(exe).exists():
        pytest.skip("the 'chroma' command of chromadb is not installed")
    port = _free_port()
    log = tmp_path_factory.mktemp("chroma") / "server.log"
    with log.open("w") as fh:
        proc = subprocess.Popen([exe, "run", "--path", str(log.parent / "data"), "--host", "127.0.0.1",
                                 "--port", str(port)], stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"chroma server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.3)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_http_client_against_real_server(chroma_server, fake):
    ctx = SimpleNamespace(kb_path=None, kb_host="127.0.0.1", kb_port=chroma_server, kb_collection="srv-test",
                          top_k=5, embedding_model=fake, openai_base_url=None, openai_api_key=None)
    kb = KnowledgeBase.from_context(ctx)
    assert "127.0.0.1" in kb.where and kb.count() == 0
    assert kb.ingest(RECORDS, batch_size=16).added == len(RECORDS)
    assert kb.ingest(RECORDS, batch_size=16).unchanged == len(RECORDS)
    assert kb.count() == len(RECORDS)
    assert kb.search("Ghotbzadeh", "he met reporters", k=5)[0]["qid"] == "Q9000"
    assert {r["qid"] for r in kb.search("Marx", "", k=2, mode="lexical")} == {"Q9001", "Q9002"}
    assert retrieve_candidates("Groucho Marx", "", ctx)[0]["qid"] == "Q9002"


def test_unreachable_server_is_a_config_error(fake):
    with pytest.raises(ConfigError, match="kb_host"):
        KnowledgeBase(host="127.0.0.1", port=_free_port(), embeddings=fake)


# ------------------------------------------------------- real embedder ----
def test_real_embedder_disambiguates_by_context(tmp_path):
    kb = KnowledgeBase(path=tmp_path / "kb", embeddings="embedded")
    kb.ingest(RECORDS[-3:] + RECORDS[:5])
    top = kb.search("Marx", "the comedian starred in the film Duck Soup with his brothers", k=2)
    assert top[0]["qid"] == "Q9002", top
    top = kb.search("Marx", "the philosopher wrote Das Kapital about political economy", k=2)
    assert top[0]["qid"] == "Q9001", top
