"""What LangGraph Studio and the server load: langgraph.json, JSON-only settings, the README diagram."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from graph import Context, diagram, graph

REPO = Path(__file__).resolve().parent.parent


def test_langgraph_json_names_the_graph_its_dependencies_and_an_env_file():
    config = json.loads((REPO / "langgraph.json").read_text())
    assert config["dependencies"] == ["."]
    assert config["env"] == ".env" and ".env" in (REPO / ".gitignore").read_text().split()
    path, attr = config["graphs"]["i2cr"].split(":")
    spec = importlib.util.spec_from_file_location("studio_graph", REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    loaded = getattr(module, attr)
    assert set(loaded.get_graph().nodes) == set(graph.get_graph().nodes)
    assert loaded.checkpointer is None  # the server brings its own


def test_env_example_sets_only_known_settings():
    settings = set(Context.model_fields)
    names = re.findall(r"^#?\s*I2CR_([A-Z_]+)=", (REPO / ".env.example").read_text(), flags=re.M)
    assert names and all(n.lower() in settings for n in names), names


def test_settings_are_plain_json():
    defaults = Context().model_dump()
    assert json.loads(json.dumps(defaults)) == defaults
    assert all(isinstance(f.description, str) and f.description.strip() for f in Context.model_fields.values())


def test_readme_diagram_is_generated_from_the_compiled_graph():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert diagram.readme_block(text) == diagram.block(), "run: python -m graph.diagram --write"
    body = diagram.mermaid()
    assert body.startswith("---") and "finalize -.-> review;" in body and "link_on_text --> reflect;" in body


def test_diagram_command_checks_and_rewrites(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{diagram.START}\nstale\n{diagram.END}\nrest\n", encoding="utf-8")
    assert diagram.main(["--check", "--readme", str(readme)]) == 1
    assert diagram.main(["--write", "--readme", str(readme)]) == 0
    assert readme.read_text(encoding="utf-8") == f"intro\n{diagram.block()}\nrest\n"
    assert diagram.main(["--check", "--readme", str(readme)]) == 0
    readme.write_text("no markers\n")
    assert diagram.main(["--check", "--readme", str(readme)]) == 2
    assert "no diagram block" in capsys.readouterr().err
