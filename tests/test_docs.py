"""The documents state the code's defaults: each default lives in one module (the task YAMLs and
the docs restate some of them for readers), and these tests keep the restatements equal to it."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from conftest import REPO

from abscot_plugin.args import AbsCoTArgs
from abscot_plugin.core.traces import TraceSettings
from abscot_plugin.eval.eval_cli import task_generation_kwargs
from abscot_plugin.orchestration.run_config import GenerationConfig


def test_abstract_task_yamls_state_the_python_defaults():
    """Every abstract task decodes as the defaults would (TraceSettings, DEFAULT_ANSWER_TOKENS):
    the YAMLs keep the values so that lm-eval records them with each run's results."""
    from abscot_plugin.eval.lm_eval_models import DecodeSpec

    for name, kwargs in task_generation_kwargs(["abscot_math"]).items():
        defaults = DecodeSpec.from_gen_kwargs({"abscot_mode": "abstract", "until": kwargs["until"]})
        assert DecodeSpec.from_gen_kwargs(kwargs) == defaults, name
        assert set(kwargs) - {"abscot_mode", "until", "max_gen_toks"} == {
            "m_min",
            "m_max",
            "trace_temperature",
            "trace_top_p",
            "trace_seed",
        }, name


def test_readme_states_the_plugin_defaults():
    """README's plugin config lists every key it shows at its default."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"## How it plugs into axolotl\n\n```yaml\n(.*?)```", text, re.DOTALL).group(1)
    shown = {k: v for k, v in yaml.safe_load(block).items() if k.startswith("abscot_")}
    assert len(shown) >= 6
    for key, value in shown.items():
        assert AbsCoTArgs.model_fields[key].default == value, key


def test_docs_state_the_trace_defaults():
    """eval_tasks/README.md and docs/orchestrate.md quote m_min, m_max and the temperature."""
    defaults = TraceSettings()
    assert GenerationConfig().trace_settings() == defaults
    decode = (REPO / "eval_tasks" / "README.md").read_text()
    stated = re.search(r"`m_min` = (\d+) symbols and forced at `m_max` = (\d+), temperature\s+([\d.]+)", decode)
    assert tuple(map(float, stated.groups())) == (defaults.m_min, defaults.m_max, defaults.temperature)
    orchestrate = (REPO / "docs" / "orchestrate.md").read_text()
    stated = re.search(r"`m_min` (\d+), `m_max` (\d+), `temperature` ([\d.]+)", orchestrate)
    assert tuple(map(float, stated.groups())) == (defaults.m_min, defaults.m_max, defaults.temperature)


def _documents() -> dict[Path, str]:
    """Every text file of the repository that a reader opens (sources, docs, configs, scripts)."""
    skip = {".git", ".venv", ".venv-vllm", "build", "outputs", "__pycache__", ".pytest_cache"}
    suffixes = {".py", ".md", ".yml", ".yaml", ".toml", ".txt", ".sh", ".json", "_yaml"}
    found = {}
    for path in sorted(REPO.rglob("*")):
        if skip & set(path.relative_to(REPO).parts) or not path.is_file():
            continue
        if path.suffix in suffixes or path.name.endswith("_yaml") or path.name in {"Makefile", "run"}:
            found[path] = path.read_text(encoding="utf-8")
    return found


def test_method_pitfalls_name_tests_that_exist():
    """docs/method.md's pitfall table names, for each pitfall, tests that exist."""
    text = (REPO / "docs" / "method.md").read_text()
    table = text[text.index("## Pitfalls") :]
    named = re.findall(r"(tests/\w+\.py)::(\w+)", table)
    assert len(named) >= 16
    for file, test in named:
        assert re.search(rf"^def {test}\(", (REPO / file).read_text(), re.MULTILINE), f"{file}::{test}"


def test_method_states_the_trace_defaults():
    text = (REPO / "docs" / "method.md").read_text()
    stated = re.search(r"m_min = (\d+), m_max = (\d+) and temperature ([\d.]+)", text)
    defaults = TraceSettings()
    assert tuple(map(float, stated.groups())) == (defaults.m_min, defaults.m_max, defaults.temperature)


def test_documents_cite_only_documents_in_the_repository():
    """No file points at notes outside the repository; every document path it names exists."""
    outside = re.compile(r"METHOD\.md|\.\./shared|ENVIRONMENT\.md|\bseeds[/]\d")
    cited = re.compile(r"(?<![\w/.-])((?:docs|eval_tasks|bench)/[\w.-]+\.md|README\.md)")
    this_file = Path(__file__).resolve()
    documents = _documents()
    assert REPO / "docs" / "method.md" in documents
    for path, text in documents.items():
        if path == this_file:
            continue
        assert not outside.search(text), f"{path.relative_to(REPO)} cites {outside.search(text).group(0)}"
        for name in cited.findall(text):
            assert (REPO / name).is_file() or (path.parent / name).is_file(), f"{path.relative_to(REPO)}: {name}"


def test_the_readme_layout_table_matches_the_folders():
    """README's layout table names every folder of the package and only paths that exist, and a
    folder's row names each of its modules (orchestration/ has docs/orchestrate.md instead)."""
    text = (REPO / "README.md").read_text()
    table = text[text.index("## Layout") : text.index("## How it plugs into axolotl")]
    rows = [line.split("|")[1:3] for line in table.splitlines() if line.startswith("| `")]
    for path_cell, _ in rows:
        for path in re.findall(r"`([\w./]+)`", path_cell):
            assert (REPO / path).exists(), f"README's layout table names {path}, which does not exist"
    package = REPO / "abscot_plugin"
    folders = {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    in_table = {f for path_cell, _ in rows for f in re.findall(r"`abscot_plugin/(\w+)/`", path_cell)}
    assert folders <= in_table, f"folders {sorted(folders - in_table)} missing from the table"
    for path_cell, what in rows:
        for folder in set(re.findall(r"`abscot_plugin/(\w+)/`", path_cell)) - {"orchestration"}:
            modules = {p.stem for p in (package / folder).glob("*.py")} - {"__init__"}
            missing = modules - set(re.findall(r"`(\w+)`", what))
            assert not missing, f"README's layout row of {folder}/ does not name {sorted(missing)}"
