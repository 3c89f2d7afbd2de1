"""params.yaml, profiles/*.yaml and dvc.yaml agree with the typed configs (issue #11).

* every params.yaml section that a stage reads with ``config.load``/``config.build`` builds into
  its dataclass, and every key of the section is a field of it (no key is silently ignored);
  the same for each profile under profiles/;
* every dvc.yaml stage (matrix stages included) lists in ``params:`` only keys that exist in
  params.yaml, and lists its own section (the stage name with ``-`` as ``_``): the whole section,
  or each of its keys that the stage's ``matrix``/``cmd`` does not already interpolate.
* every params.yaml section a stage's own files read (``config.load``, ``config.section``,
  ``load_params()[...]``) is declared in that stage's ``params:`` (the section or a key of it).
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from common import config

ROOT = Path(__file__).resolve().parents[1]

# section -> (module, dataclass): what ``config.load(cls, section)`` / ``config.build`` reads.
SECTIONS: dict[str, tuple[str, str]] = {
    "data": ("training.dataset", "DataConfig"),
    "ingest": ("pipelines.ingest", "IngestConfig"),
    "tiers": ("training.inputs", "TiersConfig"),
    "validate": ("pipelines.validate", "ValidateConfig"),
    "model": ("training.budget", "ModelParams"),
    "train": ("training.trainer", "TrainConfig"),
    "metrics": ("evaluation.metrics", "MetricsParams"),
    "baselines": ("pipelines.baselines", "BaselinesConfig"),
    "hpo": ("training.search.config", "HpoConfig"),
    "report": ("pipelines.report.params", "ReportParams"),
    "select": ("pipelines.select.decide", "SelectConfig"),
    "cross_budget": ("pipelines.cross_budget", "CrossBudgetConfig"),
    "cross_tier": ("pipelines.cross_tier", "CrossTierConfig"),
    "promote": ("pipelines.promote", "PromoteConfig"),
}

PARAM_FILES = [ROOT / "params.yaml", *sorted((ROOT / "profiles").glob("*.yaml"))]


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _cls(section: str) -> type:
    module, name = SECTIONS[section]
    return getattr(importlib.import_module(module), name)


def test_every_params_section_has_a_dataclass() -> None:
    sections = set(_yaml(ROOT / "params.yaml"))
    assert sections == set(SECTIONS), (
        f"params.yaml sections without a dataclass here: {sorted(sections - set(SECTIONS))}; "
        f"dataclasses whose section is gone: {sorted(set(SECTIONS) - sections)}"
    )


def test_the_table_matches_the_config_calls_in_the_code() -> None:
    """Every ``config.load(Cls, "section")`` in pipelines/ and training/ is in SECTIONS."""
    pattern = re.compile(r"config\.load\(\s*(\w+)\s*,\s*[\"'](\w+)[\"']")
    found = set()
    for layer in ("pipelines", "training"):
        for path in (ROOT / layer).rglob("*.py"):
            found |= set(pattern.findall(path.read_text(encoding="utf-8")))
    assert found, "no config.load calls found"
    table = {(cls, section) for section, (_, cls) in SECTIONS.items()}
    assert found <= table, f"config.load calls missing from SECTIONS: {sorted(found - table)}"


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


def _nested_unknown(cls: type, raw: Any, where: str) -> list[str]:
    """Keys of ``raw`` (recursively through nested dataclass fields) that ``cls`` has no field for."""
    if not isinstance(raw, dict):
        return []
    hints = typing.get_type_hints(cls)
    unknown = [f"{where}.{k}" for k in raw if k not in _field_names(cls)]
    for key, value in raw.items():
        hint = hints.get(key)
        if hint is not None and dataclasses.is_dataclass(hint):
            unknown += _nested_unknown(hint, value, f"{where}.{key}")
    return unknown


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: str(p.relative_to(ROOT)))
@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_section_builds_into_its_dataclass(path: Path, section: str) -> None:
    params = _yaml(path)
    assert section in params, f"{path.name} has no '{section}' section"
    raw = params[section] or {}
    cls = _cls(section)
    assert not _nested_unknown(cls, raw, section), f"{path.name}: keys {cls.__name__} ignores"
    built = config.build(cls, raw, where=section)
    assert isinstance(built, cls)


def _interpolated(stage: dict[str, Any]) -> set[str]:
    """``section.key`` names a stage's matrix and cmd interpolate (``${hpo.tiers}``)."""
    text = yaml.safe_dump({"matrix": stage.get("matrix"), "cmd": stage.get("cmd")})
    return set(re.findall(r"\$\{\s*([A-Za-z_][\w.]*)\s*\}", text))


def _params_yaml_keys(stage: dict[str, Any]) -> list[str]:
    keys: list[str] = []
    for entry in stage.get("params") or []:
        if isinstance(entry, str):
            keys.append(entry)
        elif isinstance(entry, dict):
            for file, names in entry.items():
                if Path(file).name == "params.yaml":
                    keys += list(names or [])
    return keys


def _exists(params: dict[str, Any], dotted: str) -> bool:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


DVC_STAGES: dict[str, dict[str, Any]] = _yaml(ROOT / "dvc.yaml")["stages"]


def test_dvc_yaml_has_stages() -> None:
    assert {"tiers", "hpo", "promote", "report"} <= set(DVC_STAGES)


@pytest.mark.parametrize("name", sorted(DVC_STAGES))
def test_dvc_stage_params_exist(name: str) -> None:
    params = _yaml(ROOT / "params.yaml")
    stage = DVC_STAGES[name]
    listed = _params_yaml_keys(stage)
    missing = [key for key in listed if not _exists(params, key)]
    assert not missing, f"dvc.yaml stage {name!r} lists params that params.yaml lacks: {missing}"
    interpolated = sorted(k for k in _interpolated(stage) if not k.startswith("item.") and not _exists(params, k))
    assert not interpolated, f"dvc.yaml stage {name!r} interpolates params that params.yaml lacks: {interpolated}"


@pytest.mark.parametrize("name", sorted(DVC_STAGES))
def test_dvc_stage_lists_its_own_section(name: str) -> None:
    params = _yaml(ROOT / "params.yaml")
    section = name.replace("-", "_")
    if section not in params:
        pytest.skip(f"stage {name!r} has no params.yaml section of its own")
    stage = DVC_STAGES[name]
    listed = set(_params_yaml_keys(stage))
    if section in listed:
        return
    covered = listed | _interpolated(stage)
    missing = [f"{section}.{key}" for key in (params[section] or {}) if f"{section}.{key}" not in covered]
    assert not missing, (
        f"dvc.yaml stage {name!r} does not declare its own section: list {section!r} under params:, "
        f"or these keys: {missing}"
    )


def _stage_files() -> dict[str, list[Path]]:
    """dvc.yaml stage name -> the files of its module or package (from pipelines/cli.py STAGES)."""
    import ast

    tree = ast.parse((ROOT / "pipelines" / "cli.py").read_text(encoding="utf-8"))
    stages = next(
        ast.literal_eval(n.value) for n in tree.body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and n.target.id == "STAGES"
    )
    out: dict[str, list[Path]] = {}
    for name, (module, _help) in stages.items():
        base = ROOT.joinpath(*module.split("."))
        out[name.replace("-", "_")] = sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]
    return out


def _sections_read(path: Path, sections: set[str]) -> dict[str, int]:
    """params.yaml sections a file reads itself: ``config.load(C, "s")``, ``config.section("s")``, and
    ``x["s"]`` / ``x.get("s")`` inside a function that calls ``load_params()``. Section -> first line."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: dict[str, int] = {}

    def note(node: ast.AST, value: Any) -> None:
        if isinstance(value, str) and value in sections:
            found.setdefault(value, node.lineno)

    def attr(call: ast.Call) -> str:
        return call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and attr(node) in ("load", "section") and isinstance(node.func, ast.Attribute) \
                and getattr(node.func.value, "id", "") == "config":
            for arg in node.args[:2]:
                if isinstance(arg, ast.Constant):
                    note(node, arg.value)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            def is_params(expr: ast.AST, bound: set[str]) -> bool:  # config.load_params() or a name bound to it
                if isinstance(expr, ast.Call):
                    return attr(expr) == "load_params"
                return isinstance(expr, ast.Name) and expr.id in bound

            bound = {
                t.id for n in ast.walk(node) if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call)
                and attr(n.value) == "load_params" for t in n.targets if isinstance(t, ast.Name)
            }
            for sub in ast.walk(node):
                if isinstance(sub, ast.Subscript) and isinstance(sub.slice, ast.Constant) and is_params(sub.value, bound):
                    note(sub, sub.slice.value)
                if isinstance(sub, ast.Call) and attr(sub) == "get" and isinstance(sub.func, ast.Attribute) \
                        and is_params(sub.func.value, bound) and sub.args and isinstance(sub.args[0], ast.Constant):
                    note(sub, sub.args[0].value)
    return found


@pytest.mark.parametrize("name", sorted(DVC_STAGES))
def test_dvc_stage_declares_every_section_its_code_reads(name: str) -> None:
    files = _stage_files().get(name)
    if not files:
        pytest.skip(f"dvc.yaml stage {name!r} is not a tierhpo stage of pipelines/cli.py")
    params = _yaml(ROOT / "params.yaml")
    stage = DVC_STAGES[name]
    declared = set(_params_yaml_keys(stage)) | _interpolated(stage)
    undeclared = []
    for path in files:
        for section, line in _sections_read(path, set(params)).items():
            if not any(key == section or key.startswith(section + ".") for key in declared):
                undeclared.append(f"{path.relative_to(ROOT)}:{line}: reads {section!r}")
    assert not undeclared, f"dvc.yaml stage {name!r} does not list in params: what its code reads:\n" + "\n".join(undeclared)


def test_section_reader_sees_the_reads() -> None:
    params = set(_yaml(ROOT / "params.yaml"))
    assert set(_sections_read(ROOT / "pipelines" / "hpo.py", params)) >= {"hpo", "model", "train", "metrics"}
    assert "model" in _sections_read(ROOT / "training" / "transfer.py", params)  # cross-budget/-tier's width solver
    assert "hpo" in _sections_read(ROOT / "pipelines" / "select" / "stage.py", params)
