"""cluster.yaml is a valid Ray autoscaler config that installs this project on every node."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "cluster.yaml").read_text())
    return loaded


def test_cluster_yaml_validates_against_rays_schema(cluster: dict[str, Any]) -> None:
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(cluster, schema)  # raises ValidationError naming the bad field


def test_schema_check_rejects_a_broken_config(cluster: dict[str, Any]) -> None:
    """The validation above is not vacuous: a wrong type is caught."""
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    broken = dict(cluster, max_workers="many")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_head_cpu_and_gpu_node_types_exist(cluster: dict[str, Any]) -> None:
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] in types
    assert {"head", "cpu_worker", "gpu_worker"} <= set(types)
    assert types["gpu_worker"]["node_config"]["InstanceType"].startswith(("g", "p"))
    assert types["cpu_worker"]["min_workers"] >= 2, "3 replicas need 3 machines"
    assert cluster["provider"]["type"] == "aws"


def test_setup_installs_torch_then_the_project(cluster: dict[str, Any]) -> None:
    commands = cluster["setup_commands"]
    torch_at = next(i for i, c in enumerate(commands) if "install" in c and "torch" in c)
    project_at = next(i for i, c in enumerate(commands) if "pip install" in c and "-e ." in c)
    assert torch_at < project_at
    assert "~/raftps" in cluster["file_mounts"]
    assert cluster["file_mounts"]["~/raftps"] == "."
    assert ".venv" in cluster["rsync_exclude"]


def test_placeholders_are_marked(cluster: dict[str, Any]) -> None:
    text = (REPO / "cluster.yaml").read_text()
    assert cluster["provider"]["region"].startswith("REPLACE_")
    assert "PLACEHOLDERS" in text
