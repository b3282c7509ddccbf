"""The embedding models the server can use, read from the model repository's build records.

`scripts/build_models.py` writes `<model_repository>/<name>/build_info.json` next to the
ONNX file. A model whose record says it is untrained is only served with --allow-untrained.
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
    # "imagenet": whole image, short side to resize_to, centre crop. "face_chip": an aligned face
    # crop of input_size. "face_margin": the MTCNN box plus a margin, square, resized to input_size,
    # not aligned (facenet-pytorch's own crops). Face inputs need a collection crop mode that finds faces.
    preprocess: str = "imagenet"

    @property
    def needs_face_crop(self) -> bool:
        return self.preprocess in FACE_PREPROCESS

    @property
    def flip_average(self) -> bool:
        """Face models embed a chip and its mirror image and average them: measured on LFW,
        +0.4 P@1 and +1.3 mAP@20 for twice the (cheap) face-model time."""
        return self.needs_face_crop

    @classmethod
    def from_build_info(cls, model_dir: Path) -> "ModelSpec":
        info = json.loads((model_dir / BUILD_INFO).read_text())
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
        )


class ModelsUnavailable(RuntimeError):
    """No model can be served; the message says how to build one."""


def load_models(repository: Path, allow_untrained: bool) -> dict[str, ModelSpec]:
    """All built models in the repository that may be served under the untrained policy."""
    if not repository.is_dir():
        raise ModelsUnavailable(f"model repository {repository} does not exist; run `make models`")
    models: dict[str, ModelSpec] = {}
    for info_file in sorted(repository.glob(f"*/{BUILD_INFO}")):
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


@dataclass(frozen=True)
class ServedModels:
    """The models this server serves, by name, and the one used when a request names none."""
    by_name: dict[str, ModelSpec]
    default: str

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
