"""deploy/kubernetes/: the manifests parse, and what they name exists (Services and their ports,
volumes, the Secret's keys), with the commands and settings the code and CLIs accept."""

from typing import Any

import pytest
import yaml

from tests.utils.deployment import ROOT, check_cli, commands, host_port, settings_env_names

MANIFESTS = ROOT / "deploy" / "kubernetes"
SECRET = "reptile-secrets"  # created by hand (README), never committed
SECRET_KEYS = {"ray-auth-token", "postgres-password"}


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object of the kustomization's resources, by (kind, name)."""
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    files = {path.name for path in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    found = {}
    for name in kustomization["resources"]:
        for document in yaml.safe_load_all((MANIFESTS / name).read_text()):
            assert {"apiVersion", "kind", "metadata"} <= document.keys(), name
            found[(document["kind"], document["metadata"]["name"])] = document
    return found


def _pod_specs(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each pod template's spec, by "<kind>/<name>[/<group>]"."""
    specs = {}
    for (kind, name), document in objects.items():
        if kind == "Deployment":
            specs[f"{kind}/{name}"] = document["spec"]["template"]
        elif kind == "RayCluster":
            specs[f"{kind}/{name}/head"] = document["spec"]["headGroupSpec"]["template"]
            for group in document["spec"]["workerGroupSpecs"]:
                specs[f"{kind}/{name}/{group['groupName']}"] = group["template"]
    return specs


def _containers(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        f"{where}/{container['name']}": container
        for where, template in _pod_specs(objects).items()
        for container in template["spec"]["containers"]
    }


def _env(container: dict[str, Any]) -> dict[str, Any]:
    """name → value, or → (secret name, key) for a secretKeyRef."""
    env = {}
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        else:
            ref = variable["valueFrom"]["secretKeyRef"]
            env[variable["name"]] = (ref["name"], ref["key"])
    return env


def _service_ports(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, set[int]]:
    """Service name → ports, with the head Service KubeRay makes for each RayCluster."""
    ports = {
        name: {port["port"] for port in document["spec"]["ports"]}
        for (kind, name), document in objects.items()
        if kind == "Service"
    }
    for (kind, name), document in objects.items():
        if kind == "RayCluster":
            (head,) = document["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
            ports[f"{name}-head-svc"] = {port["containerPort"] for port in head["ports"]}
    return ports


def test_services_select_pods_and_target_their_ports(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    for (kind, name), service in objects.items():
        if kind != "Service":
            continue
        deployment = objects[("Deployment", name)]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items(), name
        assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
        named = {
            port["name"]
            for container in deployment["spec"]["template"]["spec"]["containers"]
            for port in container["ports"]
        }
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= named, name


def test_addresses_name_services_and_their_ports(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    ports = _service_ports(objects)
    addresses = {"RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_BACKEND_STORE_URI"}
    seen = set()
    for where, container in _containers(objects).items():
        for name, value in _env(container).items():
            if name in addresses:
                host, port = host_port(value)
                assert port in ports.get(host, set()), (where, name, value)
                seen.add(name)
    assert seen == addresses
    api = _env(objects[("Deployment", "reptile-api")]["spec"]["template"]["spec"]["containers"][0])
    assert host_port(api["RAY_ADDRESS"]) == ("reptile-head-svc", 6379)
    assert host_port(api["MLFLOW_TRACKING_URI"]) == ("mlflow", 5000)


def test_volumes_claims_and_secrets_exist(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    claims = {name for kind, name in objects if kind == "PersistentVolumeClaim"}
    used = set()
    for where, template in _pod_specs(objects).items():
        volumes = {volume["name"]: volume for volume in template["spec"].get("volumes", [])}
        for container in template["spec"]["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, (where, mount)
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                used.add(volume["persistentVolumeClaim"]["claimName"])
    assert used == claims
    references = {
        value
        for container in _containers(objects).values()
        for value in _env(container).values()
        if isinstance(value, tuple)
    }
    autoscaler = objects[("RayCluster", "reptile")]["spec"]["autoscalerOptions"]
    references |= {v for v in _env(autoscaler).values() if isinstance(v, tuple)}
    assert references == {(SECRET, key) for key in SECRET_KEYS}
    readme = (ROOT / "README.md").read_text()
    assert f"kubectl create secret generic {SECRET}" in readme
    assert all(f"--from-literal={key}=" in readme for key in SECRET_KEYS)


def test_ray_nodes_autoscaler_and_controller_share_token_auth_and_the_image(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    cluster = objects[("RayCluster", "reptile")]["spec"]
    assert cluster["enableInTreeAutoscaling"] is True
    for group in cluster["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    ray_containers = [
        container
        for where, container in _containers(objects).items()
        if where.startswith("RayCluster/") or where.startswith("Deployment/reptile-api/")
    ]
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": (SECRET, "ray-auth-token")}
    for env in [_env(c) for c in ray_containers] + [_env(cluster["autoscalerOptions"])]:
        assert auth.items() <= env.items()
    # one image, so one Ray and Python, on every node (and for the MLflow server)
    images = {container["image"] for container in _containers(objects).values()}
    assert images == {"reptile-service:latest", "postgres:16-bookworm"}


def test_commands_and_settings_are_what_the_code_reads(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    cluster = objects[("RayCluster", "reptile")]["spec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:  # KubeRay's `ray start` flags: "true" is a bare --key, else --key=value
        params = [
            f"--{key}" if value == "true" else f"--{key}={value}"
            for key, value in group["rayStartParams"].items()
        ]
        check_cli(["ray", "start", *params])
    api = objects[("Deployment", "reptile-api")]["spec"]["template"]["spec"]["containers"][0]
    programs = dict(check_cli(argv) for argv in commands(api["command"]))
    assert programs.keys() == {"ray start", "reptile serve"}
    assert programs["reptile serve"]["port"] == api["ports"][0]["containerPort"]
    reptile = {name for name in _env(api) if name.startswith("REPTILE_")}
    assert reptile <= settings_env_names(), reptile - settings_env_names()
    mlflow = objects[("Deployment", "mlflow")]["spec"]["template"]["spec"]["containers"][0]
    (options,) = [check_cli(argv)[1] for argv in commands(mlflow["command"])]
    assert options["serve_artifacts"] is True
    mounts = {mount["mountPath"] for mount in mlflow["volumeMounts"]}
    assert options["artifacts_destination"] in mounts
