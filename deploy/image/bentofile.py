"""Write the bentofile that `make image` / `make image-gpu` build from.

The repository's bentofile.yaml stays the one source of truth (service, included and excluded
files, the serving packages). This adds what an image needs on top:

* `models:` the published models the service would serve (BERTSERVE_MODELS, per task
  `BERTSERVE_MODEL_<TASK>`, or the latest published; the same rule as `make serve`), so that they are copied into the Bento
  and the image serves them with nothing mounted;
* the serving packages with their whole dependency closure pinned to the versions in
  requirements.lock (the tested set), so the image does not pick up newer transitive releases;
  for the GPU image `onnxruntime` is swapped for the given `onnxruntime-gpu` requirement;
* `docker.base_image`, `docker.dockerfile_template` (deploy/image/Dockerfile.j2) and, for the GPU
  image, `LD_LIBRARY_PATH` pointing at the CUDA libraries that `onnxruntime-gpu[cuda,cudnn]`
  installs from PyPI (onnxruntime does not look for them itself).

Run with the project's environment (it reads the BentoML store and the installed packages):

    .venv/bin/python deploy/image/bentofile.py --variant cpu --base-image IMAGE --output FILE
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import sys
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
# Python of the image (Debian bookworm's, and the project's `requires-python`).
VENV_SITE = "/app/.venv/lib/python3.11/site-packages"
# Where `onnxruntime-gpu[cuda,cudnn]`'s libraries land (CUDA 13 wheels: nvidia/cu13; earlier CUDA
# majors: one package per library). Entries that do not exist are ignored by the loader.
CUDA_LIB_DIRS = ["nvidia/cu13/lib", "nvidia/cudnn/lib", "nvidia/cublas/lib", "nvidia/cuda_runtime/lib",
                 "nvidia/cuda_nvrtc/lib", "nvidia/cufft/lib", "nvidia/curand/lib"]
ORT_NAMES = {"onnxruntime", "onnxruntime-gpu"}
TEMPLATE = Path(__file__).resolve().with_name("Dockerfile.j2")


def read_bentofile(path: Path = ROOT / "bentofile.yaml") -> dict:
    return yaml.safe_load(path.read_text())


def read_lock(path: Path = ROOT / "requirements.lock") -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonicalize_name(name)] = version.strip()
    return pins


def closure(requirements: list[str], lock: dict[str, str]) -> list[str]:
    """`name==version` for the requirements and everything they need (markers evaluated here,
    for the image's platform: Linux x86-64, Python 3.11), versions from the lock, else installed."""
    pinned: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{req.name} is not installed in {sys.prefix}: run `make setup`") from None
        version = lock.get(name, dist.version)
        if not req.specifier.contains(version, prereleases=True):
            raise SystemExit(f"{req} does not admit {name}=={version} (requirements.lock)")
        pinned[name] = version
        for dep in dist.requires or []:
            dep_req = Requirement(dep)
            extras = req.extras or {""}
            if dep_req.marker is None or any(dep_req.marker.evaluate({"extra": e}) for e in extras):
                todo.append(dep_req)
    return [f"{name}=={version}" for name, version in sorted(pinned.items())]


def serving_packages(bentofile: dict) -> list[str]:
    return list(bentofile["python"]["packages"])


def image_packages(bentofile: dict, ort_package: str | None = None) -> list[str]:
    """The image's requirement lines: the pinned closure of bentofile's packages, with onnxruntime
    replaced by `ort_package` (and its own dependencies left to the installer) when given."""
    lock = read_lock()
    packages = serving_packages(bentofile)
    lines = closure(packages, lock)
    if ort_package:
        lines = [line for line in lines if canonicalize_name(line.split("==")[0]) not in ORT_NAMES]
        lines.append(ort_package)
    return lines


def served_models() -> list[str]:
    """The tags the service would serve under `make serve` with this environment (the service's own
    rule: BERTSERVE_MODELS, BERTSERVE_MODEL_<TASK>, else each task's latest published)."""
    from service.models import verified_models
    from service.settings import ServiceSettings

    return [entry.tag for entry in verified_models(ServiceSettings())]


def gpu_requirement(ort_package: str, extras: str) -> str:
    """`onnxruntime-gpu==1.31.1` and `cuda,cudnn` -> `onnxruntime-gpu[cuda,cudnn]==1.31.1`."""
    req = Requirement(ort_package)
    if canonicalize_name(req.name) != "onnxruntime-gpu":
        raise SystemExit(f"the GPU image needs onnxruntime-gpu, not {ort_package!r}")
    names = sorted({*req.extras, *(e.strip() for e in extras.split(",") if e.strip())})
    return f"{req.name}{'[' + ','.join(names) + ']' if names else ''}{req.specifier}"


def build(variant: str, base_image: str | None, ort_package: str | None, models: list[str]) -> dict:
    bentofile = read_bentofile()
    config = dict(bentofile)
    if variant == "gpu":
        config["name"] = f"{bentofile['name']}-gpu"
    config["labels"] = {**bentofile.get("labels", {}), "variant": variant}
    config["python"] = {"packages": image_packages(bentofile, ort_package if variant == "gpu" else None),
                        "lock_packages": False}
    config["models"] = models
    # BentoML's Dockerfile for custom base images (deploy/image/Dockerfile.j2 says why)
    config["docker"] = {**bentofile.get("docker", {}),
                        "dockerfile_template": str(TEMPLATE.relative_to(ROOT))}
    if base_image:  # its python3 must be the one the closure was pinned for (3.11)
        config["docker"]["base_image"] = base_image
    if ort_package and "[" in ort_package:  # CUDA libraries from PyPI: tell the loader where they are
        config["envs"] = [*bentofile.get("envs", []),
                          {"name": "LD_LIBRARY_PATH", "value": ":".join(f"{VENV_SITE}/{d}" for d in CUDA_LIB_DIRS)}]
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--base-image", default="", help="docker.base_image; empty: BentoML's default")
    parser.add_argument("--ort-package", default="onnxruntime-gpu==1.31.1",
                        help="the onnxruntime requirement of the GPU image (the Makefile's ORT_PKG_gpu)")
    parser.add_argument("--ort-extras", default="cuda,cudnn",
                        help="extras of onnxruntime-gpu: cuda,cudnn install the CUDA libraries from PyPI; "
                        "empty for a base image that has CUDA and cuDNN")
    parser.add_argument("--models", default=None,
                        help="space-separated store tags to package; default: what `make serve` would serve")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)

    models = args.models.split() if args.models else served_models()
    if not models:
        print("no published model: run `bertserve quickstart` or `bertserve export` first", file=sys.stderr)
        return 1
    ort = gpu_requirement(args.ort_package, args.ort_extras) if args.variant == "gpu" else None
    config = build(args.variant, args.base_image or None, ort, models)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Generated by deploy/image/bentofile.py from bentofile.yaml; do not edit.\n"
                   + yaml.safe_dump(config, sort_keys=False))
    print(f"{out}: {args.variant}, base {args.base_image or '(BentoML default)'}, "
          f"{len(config['python']['packages'])} packages, models {' '.join(models)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
