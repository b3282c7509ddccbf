"""The embedding models the server can use, read from the model repository's build records.

`scripts/build_models.py` writes `<model_repository>/<name>/build_info.json` next to the
ONNX file. A model whose record says it is untrained is only served with --allow-untrained.
A record's `kind` says what the model is: "embedding" (the default; these are ModelSpecs) or
"detector" (MTCNN's nets, DetectorNet: run by the face detector, never an embedding model).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidArgument

log = logging.getLogger(__name__)

BUILD_INFO = "build_info.json"
FACE_PREPROCESS = ("face_chip", "face_margin")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    dimension: int
    input_size: int
    resize_to: int
    input_name: str
    output_name: str
    onnx_path: Path
    trained: bool
    weights_source: str
    weights_sha256: str
    # "imagenet": whole image, short side to resize_to, centre crop. "whole_image": the whole image
    # resized to input_size x input_size (efficientnet_lite0). "face_chip": an aligned face
    # crop of input_size. "face_margin": the MTCNN box plus a margin, square, resized to input_size,
    # not aligned (facenet-pytorch's own crops). Face inputs need a collection crop mode that finds faces.
    preprocess: str = "imagenet"
    # The numbers the graph computes in: "fp32", "int8" (statically quantized from the fp32 model by
    # scripts/quantize_int8.py; build_info.json records its measured quality) or "bf16".
    precision: str = "fp32"
    # Copy detection's descriptors (build record "copy_descriptor"; copy_vectors.py): the graph output
    # with the GeM vectors of `copy_regions` regions ([N, regions, dimension], the whole image first)
    # from the same forward pass, and the PCA-whitening file that takes them to copy_dimension. "" / 0
    # / None: the model has none (then copy detection is off for it).
    copy_output: str = ""
    copy_regions: int = 0
    copy_dimension: int = 0
    copy_whitening: Path | None = None
    copy_whitening_sha256: str = ""
    # The side of copy detection's zoomed-out query input (0: none): the query shrunk to it gives a
    # vector at the scale of a stored quadrant, which a crop of half a side finds (copies.py).
    copy_query_side: int = 0

    @property
    def has_copy_descriptor(self) -> bool:
        return bool(self.copy_output and self.copy_regions and self.copy_dimension and self.copy_whitening)

    @property
    def needs_face_crop(self) -> bool:
        return self.preprocess in FACE_PREPROCESS

    @property
    def whole_image(self) -> bool:
        """"whole_image": the whole image resized to input_size square, nothing cropped (what copy
        detection needs: a copy cropped at a side still shares the side with the stored image)."""
        return self.preprocess == "whole_image"

    @property
    def flip_average(self) -> bool:
        """Face models embed a chip and its mirror image and average them: measured on LFW,
        +0.4 P@1 and +1.3 mAP@20 for twice the (cheap) face-model time."""
        return self.needs_face_crop

    @classmethod
    def from_build_info(cls, model_dir: Path) -> "ModelSpec":
        info = json.loads((model_dir / BUILD_INFO).read_text())
        head = info.get("copy_descriptor") or {}
        return cls(
            name=info["name"],
            version=str(info["version"]),
            dimension=int(info["dimension"]),
            input_size=int(info["input_size"]),
            resize_to=int(info["resize_to"]),
            input_name=info["input_name"],
            output_name=info["output_name"],
            onnx_path=model_dir / str(info["version"]) / "model.onnx",
            trained=bool(info["trained"]),
            weights_source=info.get("weights_source", ""),
            weights_sha256=info.get("weights_sha256", ""),
            preprocess=info.get("preprocess", "imagenet"),
            precision=info.get("precision", "fp32"),
            copy_output=head.get("output", ""),
            copy_regions=int(head.get("regions", 0)),
            copy_dimension=int(head.get("dimension", 0)),
            copy_whitening=model_dir / head["whitening"] if head.get("whitening") else None,
            copy_whitening_sha256=head.get("whitening_sha256", ""),
            copy_query_side=int(head.get("query_side", 0)),
        )


class ModelsUnavailable(RuntimeError):
    """No model can be served; the message says how to build one."""


def load_models(repository: Path, allow_untrained: bool) -> dict[str, ModelSpec]:
    """All built models in the repository that may be served under the untrained policy."""
    if not repository.is_dir():
        raise ModelsUnavailable(f"model repository {repository} does not exist; run `make models`")
    models: dict[str, ModelSpec] = {}
    for info_file in sorted(repository.glob(f"*/{BUILD_INFO}")):
        if _kind(info_file) != "embedding":
            continue
        spec = ModelSpec.from_build_info(info_file.parent)
        if not spec.onnx_path.is_file():
            log.warning("model %s: %s is missing; run `make models`", spec.name, spec.onnx_path)
            continue
        if not spec.trained:
            if not allow_untrained:
                log.error("model %s is UNTRAINED (built without pretrained weights) and is not served; "
                          "pass --allow-untrained to serve it anyway (tests only)", spec.name)
                continue
            log.warning("model %s is UNTRAINED: it was built without pretrained weights, so its "
                        "search results are not meaningful (serving it because of --allow-untrained)",
                        spec.name)
        models[spec.name] = spec
    if not models:
        raise ModelsUnavailable(
            f"no servable model in {repository}: build one with `make models` "
            "(or `python scripts/build_models.py --allow-untrained` and serve with --allow-untrained)")
    return models


def _kind(info_file: Path) -> str:
    return json.loads(info_file.read_text()).get("kind", "embedding")


@dataclass(frozen=True)
class DetectorNet:
    """A face detector's net in the model repository (build record kind "detector")."""
    name: str
    version: str
    detector: str  # which detector it belongs to: "mtcnn"
    input_name: str
    output_names: tuple[str, ...]
    onnx_path: Path


def detector_nets(repository: Path) -> dict[str, DetectorNet]:
    """The built detector nets of the repository by name (those whose model.onnx exists)."""
    nets: dict[str, DetectorNet] = {}
    for info_file in sorted(repository.glob(f"*/{BUILD_INFO}")) if repository.is_dir() else []:
        info = json.loads(info_file.read_text())
        if info.get("kind", "embedding") != "detector":
            continue
        net = DetectorNet(name=info["name"], version=str(info["version"]), detector=info.get("detector", ""),
                          input_name=info["input_name"], output_names=tuple(info["output_names"]),
                          onnx_path=info_file.parent / str(info["version"]) / "model.onnx")
        if net.onnx_path.is_file():
            nets[net.name] = net
        else:
            log.warning("detector net %s: %s is missing; run `make models`", net.name, net.onnx_path)
    return nets


# --default-model "auto": the first of these that is served and trained (resnet50 only with real
# ImageNet weights; efficientnet_lite0's come from the package registry, so it is there offline).
AUTO = "auto"
AUTO_ORDER = ("resnet50", "efficientnet_lite0")


def resolve_default(by_name: dict[str, ModelSpec], requested: str) -> tuple[str, str]:
    """(default model, why) for --default-model; ModelsUnavailable when a named one is not served."""
    if requested and requested != AUTO:
        if requested not in by_name:
            raise ModelsUnavailable(f"default model {requested!r} is not servable; available: "
                                    f"{', '.join(sorted(by_name))} (--default-model picks another, or auto)")
        return requested, f"--default-model {requested}"
    for name in AUTO_ORDER:
        spec = by_name.get(name)
        if spec is not None and spec.trained:
            skipped = [n for n in AUTO_ORDER[:AUTO_ORDER.index(name)]]
            why = f"auto: {name} is the first trained general-image model of {', '.join(AUTO_ORDER)}"
            if skipped:
                states = ", ".join(f"{n} {'is untrained' if n in by_name else 'is not served (no weights)'}"
                                   for n in skipped)
                why += f" ({states})"
            return name, why
    general = [n for n in AUTO_ORDER if n in by_name] or sorted(n for n, m in by_name.items()
                                                                if not m.needs_face_crop) or sorted(by_name)
    return general[0], (f"auto: no trained model of {', '.join(AUTO_ORDER)} is served; {general[0]} is "
                        f"{'trained' if by_name[general[0]].trained else 'UNTRAINED (--allow-untrained)'}")


@dataclass(frozen=True)
class ServedModels:
    """The models this server serves, by name, and the one used when a request names none."""
    by_name: dict[str, ModelSpec]
    default: str
    # Why that one (GetServerInfo's default_model_reason), e.g. "auto: ...".
    default_reason: str = ""

    @classmethod
    def resolve(cls, by_name: dict[str, ModelSpec], requested: str = AUTO) -> "ServedModels":
        default, why = resolve_default(by_name, requested)
        return cls(by_name, default, why)

    def get(self, name: str = "") -> ModelSpec:
        """The named model (the default for ""), or InvalidArgument listing what is served."""
        name = name or self.default
        spec = self.by_name.get(name)
        if spec is None:
            raise InvalidArgument(f"unknown model {name!r}; available: {', '.join(sorted(self.by_name))}")
        return spec

    def __contains__(self, name: str) -> bool:
        return name in self.by_name

    def values(self):
        return self.by_name.values()
