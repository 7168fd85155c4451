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


CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"


def _torch_then_project(commands: list[str]) -> str:
    """The torch install command of ``commands``, checked to come before the project's."""
    torch_at = next(i for i, c in enumerate(commands) if "install" in c and "torch" in c)
    project_at = next(i for i, c in enumerate(commands) if "pip install" in c and "-e ." in c)
    assert torch_at < project_at
    return commands[torch_at]


def test_setup_installs_torch_then_the_project(cluster: dict[str, Any]) -> None:
    _torch_then_project(cluster["setup_commands"])
    assert "~/raftps" in cluster["file_mounts"]
    assert cluster["file_mounts"]["~/raftps"] == "."
    assert ".venv" in cluster["rsync_exclude"]


def test_cpu_nodes_get_the_cpu_wheel_and_gpu_nodes_the_cuda_build(
    cluster: dict[str, Any]
) -> None:
    """pip does not detect the hardware (PyPI's Linux torch is the CUDA build everywhere):
    the head and CPU workers must name the CPU index, and the GPU workers, whose own
    worker_setup_commands replace setup_commands, must not."""
    types = cluster["available_node_types"]
    assert CPU_INDEX in _torch_then_project(cluster["setup_commands"])
    assert "worker_setup_commands" not in types["cpu_worker"]
    assert not cluster["head_setup_commands"] and not cluster["worker_setup_commands"]
    gpu_torch = _torch_then_project(types["gpu_worker"]["worker_setup_commands"])
    assert "index-url" not in gpu_torch and "torch==" in gpu_torch
    assert "picked by pip" not in (REPO / "cluster.yaml").read_text()


def test_the_gpu_workers_scale_from_zero_on_demand(cluster: dict[str, Any]) -> None:
    """No GPU node runs until a --gpu job asks the autoscaler for one (jobs.gpus)."""
    gpu = cluster["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] == 0 < gpu["max_workers"] <= cluster["max_workers"]
    head = next(c for c in cluster["head_start_ray_commands"] if "ray start --head" in c)
    assert "--autoscaling-config=" in head


def test_placeholders_are_marked(cluster: dict[str, Any]) -> None:
    text = (REPO / "cluster.yaml").read_text()
    assert cluster["provider"]["region"].startswith("REPLACE_")
    assert "PLACEHOLDERS" in text


def _start_commands(cluster: dict[str, Any]) -> list[str]:
    return [c for key in ("head_start_ray_commands", "worker_start_ray_commands")
            for c in cluster[key] if "ray start" in c]


def test_the_dashboard_listens_on_the_heads_localhost_only(cluster: dict[str, Any]) -> None:
    head = next(c for c in cluster["head_start_ray_commands"] if "ray start --head" in c)
    assert "--dashboard-host=127.0.0.1" in head
    assert not any("0.0.0.0" in c for c in _start_commands(cluster))


def test_following_the_token_auth_steps_gives_a_valid_config() -> None:
    """Steps 2 and 3 of the SECURITY comment, applied as written, keep the file valid and
    put token mode on every `ray start` and the token on every node."""
    import ray.autoscaler

    text = (REPO / "cluster.yaml").read_text()
    assert "RAY_AUTH_MODE=token; ray get-auth-token --generate" in text  # step 1
    mount = "  # ~/.ray/auth_token: ~/.ray/auth_token"
    assert mount in text
    secured = text.replace(mount, mount.replace("# ", "", 1))
    loaded: dict[str, Any] = yaml.safe_load(secured)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        loaded[key] = [c.replace("ray start", "RAY_AUTH_MODE=token ray start")
                       for c in loaded[key]]
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(loaded, schema)
    assert loaded["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert len(_start_commands(loaded)) == 2
    assert all("RAY_AUTH_MODE=token ray start" in c for c in _start_commands(loaded))
