"""Face crop modes for the pipeline: decode, detect (batched), pick the face, crop or align.

MTCNN is CPU-heavy, so it runs in one dedicated worker thread: a batch of images is
detected in one call rather than several calls fighting over the same cores. Detectors are
loaded on first use, so servers without face collections never import torch.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidArgument, RevsearchError
from ..imaging import ImageLimits, decode_image
from ..models import ModelSpec
from ..observability import Metrics, or_null

MAX_FACES_LIMIT = 64


@dataclass(frozen=True)
class FaceOptions:
    margin: float = 0.2
    min_face_size: int = 20
    min_confidence: float = 0.9
    whole_image_if_no_face: bool = False
    # Crop mode "all": at most this many faces per image are stored, the most prominent first, so
    # a crowd photo cannot flood a collection.
    max_faces: int = 16

    def validate(self) -> "FaceOptions":
        if not 0.0 <= self.margin <= 1.0:
            raise InvalidArgument(f"face_options.margin must be within 0..1, got {self.margin}")
        if not 10 <= self.min_face_size <= 2000:
            raise InvalidArgument(f"face_options.min_face_size must be within 10..2000, got {self.min_face_size}")
        if not 0.0 < self.min_confidence < 1.0:
            raise InvalidArgument(f"face_options.min_confidence must be within (0, 1), got {self.min_confidence}")
        if not 1 <= self.max_faces <= MAX_FACES_LIMIT:
            raise InvalidArgument(f"face_options.max_faces must be within 1..{MAX_FACES_LIMIT}, got {self.max_faces}")
        return self


class NoFace(InvalidArgument):
    """No face passed the collection's detection limits."""


@dataclass
class FaceCrop:
    pixels: np.ndarray  # the model's uint8 input
    box: list[float] | None  # [x_min, y_min, x_max, y_max, confidence]; None for the whole-image fallback


class FaceCropper:
    def __init__(self, decode_pool: Executor, limits: ImageLimits, metrics: Metrics | None = None):
        self._decode_pool = decode_pool
        self._metrics = or_null(metrics)
        self._limits = limits
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="faces")
        self._detectors: dict[int, object] = {}

    async def crops_of_arrays(self, images: list[np.ndarray], model: ModelSpec, options: FaceOptions,
                              all_faces: bool = False, detect_max_side: int | None = None
                              ) -> list[list[FaceCrop] | RevsearchError]:
        """crops() for decoded RGB arrays (video frames), in this cropper's worker."""
        with self._metrics.stage("detect"):
            return await asyncio.get_running_loop().run_in_executor(
                self._worker, self.crop_arrays, images, model, options, all_faces, detect_max_side)

    async def crops(self, images: list[bytes], model: ModelSpec, options: FaceOptions, all_faces: bool = False
                    ) -> list[list[FaceCrop] | RevsearchError]:
        """Per image, in order: its crops (the most prominent face only, or with all_faces up to
        options.max_faces faces, most prominent first), or its error."""
        loop = asyncio.get_running_loop()

        async def decode(data: bytes):
            try:
                # Full resolution: boxes are reported in the original image's pixels.
                img = await loop.run_in_executor(self._decode_pool, decode_image, data, self._limits)
                return np.asarray(img, dtype=np.uint8)
            except RevsearchError as exc:
                return exc

        with self._metrics.stage("decode"):
            decoded = await asyncio.gather(*(decode(d) for d in images))
        arrays = [d for d in decoded if isinstance(d, np.ndarray)]
        with self._metrics.stage("detect"):  # detection, then the crops (or aligned chips) of the faces
            crops = iter(await loop.run_in_executor(self._worker, self.crop_arrays, arrays, model, options,
                                                    all_faces))
        return [d if isinstance(d, RevsearchError) else next(crops) for d in decoded]

    def crop_arrays(self, images: list[np.ndarray], model: ModelSpec, options: FaceOptions, all_faces: bool = False,
                    detect_max_side: int | None = None) -> list[list[FaceCrop] | RevsearchError]:
        """crops() for decoded RGB arrays; blocking, so callers run it in this cropper's worker.

        detect_max_side: detect on copies shrunk to this long side (MTCNN's cost grows with the
        pixel count), then crop the faces from the full-resolution images."""
        from .align import align_chip, margin_crop, whole_image
        from .detector import faces_by_prominence

        out: list[list[FaceCrop] | RevsearchError] = []
        for image, faces in zip(images, self._detect(images, options, detect_max_side)):
            if faces is None:
                out.append(InvalidArgument(
                    f"face detection (MTCNN) failed on this {image.shape[1]}x{image.shape[0]} image; check that "
                    "it is a photo, or index it into a collection with crop mode 'none'"))
                continue
            ranked = faces_by_prominence(faces, image.shape[1], image.shape[0])
            if not ranked:
                if options.whole_image_if_no_face:
                    out.append([FaceCrop(whole_image(image, model.input_size), None)])
                else:
                    out.append(NoFace(f"no face found (faces must be at least {options.min_face_size} px with "
                                      f"confidence >= {options.min_confidence})"))
                continue
            chosen = ranked[:options.max_faces] if all_faces else ranked[:1]
            crops = []
            for face in chosen:
                if model.preprocess == "face_chip":  # landmark-aligned chip, the face model's template
                    pixels = align_chip(image, face.landmarks, model.input_size)
                else:  # a box-with-margin crop (whole-image models, box-trained face models)
                    pixels = margin_crop(image, face.box, options.margin, model.input_size)
                crops.append(FaceCrop(pixels, [*face.box, face.confidence]))
            out.append(crops)
        return out

    def _detect(self, images: list[np.ndarray], options: FaceOptions, max_side: int | None = None):
        from .detector import DetectorSettings, FaceDetector, scaled

        detector = self._detectors.get(options.min_face_size)
        if detector is None:
            # Confidence is filtered below per collection; the detector keeps every candidate.
            detector = FaceDetector(DetectorSettings(min_face_size=options.min_face_size, min_confidence=0.0))
            self._detectors[options.min_face_size] = detector
        factors = [1.0] * len(images)
        if max_side:
            import cv2

            small = []
            for n, img in enumerate(images):
                factor = max_side / max(img.shape[:2])
                if factor < 1.0:
                    factors[n] = factor
                    img = cv2.resize(img, (round(img.shape[1] * factor), round(img.shape[0] * factor)),
                                     interpolation=cv2.INTER_AREA)
                small.append(img)
            images = small
        faces = detector.detect(images)
        return [None if fs is None else [scaled(f, 1.0 / k) for f in fs if f.confidence >= options.min_confidence]
                for fs, k in zip(faces, factors)]

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
