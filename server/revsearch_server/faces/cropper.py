"""Face crop modes: decode, detect (batched), pick the face, crop or align.

MTCNN is CPU-heavy, so it runs in one dedicated worker (a single-thread pool from pools.py): a
batch of images is detected in one call rather than several calls fighting over the same cores,
and calls that arrive while it is busy are joined into its next call (faces/detect_batcher.py).
Choosing the faces and cutting their crops or aligned chips runs in the decode pool afterwards.
Detectors come from the factory given at construction (one per minimum face size) and are made
on first use, so servers without face collections never load one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..domain import FaceBox, FaceOptions
from ..errors import InvalidArgument, RevsearchError
from ..imaging import ImageLimits, Reduced, decode_reduced
from ..models import ModelSpec
from ..observability import Metrics, or_null
from .detect_batcher import DetectionBatcher


class FaceDetector(Protocol):
    """Finds faces: boxes, confidences and five landmarks (MTCNN: faces/onnx_mtcnn.py, or
    facenet-pytorch's in faces/detector.py)."""

    def detect(self, images: list[np.ndarray]) -> list[list | None]:
        """RGB uint8 HxWx3 arrays -> per image its DetectedFace list (most confident first), or None
        for an image the detector failed on. Blocking."""


class NoFace(InvalidArgument):
    """No face passed the collection's detection limits."""


@dataclass
class FaceCrop:
    pixels: np.ndarray  # the model's uint8 input
    box: FaceBox | None  # None for the whole image (no face crop, or the no-face fallback)


class FaceCropper:
    def __init__(self, decode_pool: Executor, worker: Executor, detector_for: Callable[[int], FaceDetector],
                 limits: ImageLimits, metrics: Metrics | None = None, max_side: int = 0, batch_images: int = 64):
        """worker: where detection runs (one thread); detector_for(min_face_size) makes a detector.
        max_side: JPEGs at least twice as large on their long side are decoded at 1/2, 1/4 or 1/8
        (imaging.decode_reduced), detected and cropped at that size; 0 decodes at full size.
        batch_images: the most images of concurrent calls joined into one detector call."""
        self._max_side = max_side
        self._decode_pool = decode_pool
        self._metrics = or_null(metrics)
        self._limits = limits
        self._worker = worker
        self._detector_for = detector_for
        self._detectors: dict[int, FaceDetector] = {}
        # Concurrent calls' detection joined into one detector call per (min face size, detect size).
        self.batcher = DetectionBatcher(worker, lambda key, images: self._detect_raw(images, *key), batch_images)

    async def crops_of_arrays(self, images: list[np.ndarray], model: ModelSpec, options: FaceOptions,
                              all_faces: bool = False, detect_max_side: int | None = None
                              ) -> list[list[FaceCrop] | RevsearchError]:
        """crops() for decoded RGB arrays (video frames): detected in this cropper's worker, with
        other calls' images when they come at the same time, then cropped in the decode pool."""
        with self._metrics.stage("detect"):
            return await self._detect_and_crop(images, model, options, all_faces, detect_max_side)

    async def _detect_and_crop(self, images: list[np.ndarray], model: ModelSpec, options: FaceOptions,
                               all_faces: bool, detect_max_side: int | None) -> list[list[FaceCrop] | RevsearchError]:
        found = await self.batcher.detect((options.min_face_size, detect_max_side), images)
        # Cropping in the decode pool: in the faces worker it would wait behind the next detection.
        return await asyncio.get_running_loop().run_in_executor(
            self._decode_pool, self._crop_found, images, found, model, options, all_faces)

    async def crops(self, images: list[bytes], model: ModelSpec, options: FaceOptions, all_faces: bool = False
                    ) -> list[list[FaceCrop] | RevsearchError]:
        """Per image, in order: its crops (the most prominent face only, or with all_faces up to
        options.max_faces faces, most prominent first), or its error."""
        loop = asyncio.get_running_loop()

        async def decode(data: bytes):
            try:
                return await loop.run_in_executor(self._decode_pool, decode_reduced, data, self._limits,
                                                  self._max_side)
            except RevsearchError as exc:
                return exc

        with self._metrics.stage("decode"):
            decoded = await asyncio.gather(*(decode(d) for d in images))
        done = [d for d in decoded if isinstance(d, Reduced)]
        arrays = [np.asarray(d.image, dtype=np.uint8) for d in done]
        with self._metrics.stage("detect"):  # detection, then the crops (or aligned chips) of the faces
            found = await self._detect_and_crop(arrays, model, options, all_faces, None)
        # Boxes in the pixels of the image the user sent, whatever size it was decoded at.
        crops = iter(in_original_pixels(c, d) for c, d in zip(found, done))
        return [d if isinstance(d, RevsearchError) else next(crops) for d in decoded]

    def crop_arrays(self, images: list[np.ndarray], model: ModelSpec, options: FaceOptions, all_faces: bool = False,
                    detect_max_side: int | None = None) -> list[list[FaceCrop] | RevsearchError]:
        """crops() for decoded RGB arrays; blocking, so callers run it in this cropper's worker.

        detect_max_side: detect on copies shrunk to this long side (MTCNN's cost grows with the
        pixel count), then crop the faces from the full-resolution images."""
        return self._crop_found(images, self._detect_raw(images, options.min_face_size, detect_max_side), model,
                                options, all_faces)

    def _crop_found(self, images: list[np.ndarray], found: list, model: ModelSpec, options: FaceOptions,
                    all_faces: bool) -> list[list[FaceCrop] | RevsearchError]:
        """The crops of each image's detected faces (found: the detector's answer per image, in the
        image's pixels), after the collection's confidence filter. Blocking."""
        from .align import align_chip, margin_crop, whole_image
        from .geometry import faces_by_prominence

        out: list[list[FaceCrop] | RevsearchError] = []
        for image, faces in zip(images, found):
            if faces is not None:
                faces = [f for f in faces if f.confidence >= options.min_confidence]
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
                crops.append(FaceCrop(pixels, FaceBox(*face.box, face.confidence)))
            out.append(crops)
        return out

    def _detect_raw(self, images: list[np.ndarray], min_face_size: int, max_side: int | None = None):
        """The detector's faces per image (None where it failed), in the images' pixels, every
        confidence. Blocking, in the worker."""
        from .geometry import scaled

        detector = self._detectors.get(min_face_size)
        if detector is None:
            detector = self._detectors[min_face_size] = self._detector_for(min_face_size)
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
        return [None if fs is None else [scaled(f, 1.0 / k) for f in fs] for fs, k in zip(faces, factors)]


def in_original_pixels(crops: list[FaceCrop] | RevsearchError, decoded: Reduced) -> list[FaceCrop] | RevsearchError:
    """Crops of an image decoded at reduced size with their boxes scaled to the original's pixels."""
    if isinstance(crops, RevsearchError) or not decoded.reduced:
        return crops
    sx, sy = decoded.scale_x, decoded.scale_y
    return [c if c.box is None else
            FaceCrop(c.pixels, FaceBox(c.box.x_min * sx, c.box.y_min * sy, c.box.x_max * sx, c.box.y_max * sy,
                                       c.box.confidence))
            for c in crops]
