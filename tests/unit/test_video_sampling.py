"""Video frame sampling: uniform/jitter/scene positions, seek accuracy, containers, limits, bad input."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from revsearch_server.errors import InvalidArgument, ResourceExhausted
from revsearch_server.video import sampling as S
from revsearch_server.video.sampling import SamplingOptions, VideoLimits, probe, sample_frames
from tests.helpers import SHARED_DATA

VIDEO_DIR = SHARED_DATA / "video"
REAL_CLIPS = sorted(VIDEO_DIR.glob("*.mp4"))
HAMILTON = VIDEO_DIR / "face_recognition_short_hamilton_clip.mp4"  # 640x360 H.264, 275 frames, 3 hard cuts
FACENET = VIDEO_DIR / "facenet-pytorch_examples_video.mp4"  # 1920x1080 H.264, 105 frames
LIMITS = VideoLimits()

pytestmark = pytest.mark.skipif(not REAL_CLIPS, reason=f"shared test videos missing: {VIDEO_DIR}")


def write_clip(path: Path, frames: list[np.ndarray], fourcc: str = "MJPG", fps: float = 25.0) -> Path:
    """Writes BGR frames with cv2.VideoWriter; skips the test when this build cannot write the pair."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    if not writer.isOpened():
        pytest.skip(f"this OpenCV build's VideoWriter cannot write {fourcc} into {path.suffix}")
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def bar_frames(count: int, height: int = 96) -> list[np.ndarray]:
    """Frame i shows a white bar centred at x = 3*i + 7.5 on black: its position gives the index back."""
    width = (3 * count + 16 + 15) // 16 * 16
    frames = []
    for i in range(count):
        img = np.zeros((height, width, 3), np.uint8)
        img[:, 3 * i + 4:3 * i + 12] = 255
        frames.append(img)
    return frames


def bar_index(rgb: np.ndarray) -> int:
    column = rgb.mean(axis=(0, 2))
    centre = float((np.arange(column.size) * column).sum() / column.sum())
    return round((centre - 7.5) / 3)


def three_scenes(tmp_path: Path, length: int = 40) -> Path:
    """Three 40-frame scenes with hard cuts at frames 40 and 80: red noise, blue noise, green gradient."""
    rng = np.random.default_rng(7)
    frames = []
    for i in range(3 * length):
        scene = i // length
        if scene == 0:
            img = np.clip(rng.normal((40, 40, 200), 20, (120, 160, 3)), 0, 255)  # BGR: red
        elif scene == 1:
            img = np.clip(rng.normal((200, 60, 30), 20, (120, 160, 3)), 0, 255)  # blue
        else:
            img = np.zeros((120, 160, 3))
            img[..., 1] = np.linspace(120, 240, 160)[None, :] + (i % length)  # green, slowly brightening
        frames.append(img.astype(np.uint8))
    return write_clip(tmp_path / "scenes.avi", frames)


# --- uniform and jitter -------------------------------------------------------------------------


@pytest.mark.parametrize("clip", REAL_CLIPS, ids=lambda p: p.stem)
def test_uniform_gives_five_frames_with_increasing_timestamps_inside_the_duration(clip):
    info, frames = sample_frames(clip, SamplingOptions(), LIMITS)
    assert len(frames) == 5
    stamps = [f.timestamp_s for f in frames]
    assert stamps == sorted(stamps) and len(set(stamps)) == 5
    assert 0 < stamps[0] and stamps[-1] < info.duration_s
    assert [f.frame_index for f in frames] == S.uniform_targets(info.frame_count, 5)
    for f in frames:
        assert f.timestamp_s == pytest.approx(f.frame_index / info.fps)
        assert f.image.shape == (info.height, info.width, 3) and f.image.dtype == np.uint8
    assert info.codec == "h264" and info.fps > 0 and info.duration_s == pytest.approx(info.frame_count / info.fps)


def test_uniform_positions_are_the_centres_of_equal_slots():
    assert S.uniform_targets(100, 5) == [10, 30, 50, 70, 90]
    assert S.uniform_targets(275, 5) == [27, 82, 137, 192, 247]
    assert S.uniform_targets(3, 5) == [0, 1, 2]  # fewer frames than asked: each frame once
    assert S.uniform_targets(0, 5) == []


def test_jitter_is_deterministic_per_seed_differs_between_seeds_and_stays_in_its_slot():
    first = S.uniform_targets(275, 5, jitter=True, seed=1)
    assert first == S.uniform_targets(275, 5, jitter=True, seed=1)
    assert first != S.uniform_targets(275, 5, jitter=True, seed=2)
    assert first != S.uniform_targets(275, 5)
    for k, index in enumerate(first):
        assert k * 275 // 5 <= index < (k + 1) * 275 // 5


def test_jitter_sampling_a_real_clip_repeats_the_same_pixels_for_the_same_seed():
    opts = SamplingOptions(frames=4, mode="jitter", seed=42)
    _, a = sample_frames(HAMILTON, opts, LIMITS)
    _, b = sample_frames(HAMILTON, opts, LIMITS)
    _, c = sample_frames(HAMILTON, SamplingOptions(frames=4, mode="jitter", seed=43), LIMITS)
    assert [f.frame_index for f in a] == [f.frame_index for f in b] != [f.frame_index for f in c]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))


def test_seeking_is_planned_only_when_a_keyframe_lies_far_enough_ahead():
    # Hamilton's keyframes; OpenCV seeks to the keyframe at or before target-16.
    keyframes = [0, 60, 120, 163, 211, 271]
    assert S.plan_reads([27, 82, 137, 192, 247], keyframes, position=1) == [
        ("grab", 27), ("seek", 82), ("seek", 137), ("seek", 192), ("seek", 247)]
    assert S.plan_reads([10, 31, 52, 73, 94], [0], position=1) == [("grab", t) for t in (10, 31, 52, 73, 94)]
    assert S.plan_reads([50, 90], None) == [("grab", 50), ("grab", 90)]


def test_seeked_frames_are_identical_to_frames_decoded_in_sequence():
    opened = S._open(str(HAMILTON), LIMITS, None)
    try:
        targets = S.uniform_targets(opened.info.frame_count, 5)
        assert "seek" in [a for a, _ in S.plan_reads(targets, opened.keyframes, opened.position)]
        auto = S._read_targets(opened, targets, LIMITS)
    finally:
        opened.cap.release()
    cap, sequential = cv2.VideoCapture(str(HAMILTON)), {}
    for i in range(max(targets) + 1):
        ok, img = cap.read()
        assert ok
        if i in targets:
            sequential[i] = img
    cap.release()
    assert [i for i, _ in auto] == targets
    assert all(np.array_equal(img, sequential[i]) for i, img in auto)


# --- scene mode ---------------------------------------------------------------------------------


def test_scene_mode_returns_a_frame_from_each_scene_of_a_clip_with_two_hard_cuts(tmp_path):
    clip = three_scenes(tmp_path)
    _, frames = sample_frames(clip, SamplingOptions(frames=3, mode="scene"), LIMITS)
    indices = [f.frame_index for f in frames]
    assert indices[0] == 0 and 40 <= indices[1] <= 44 and 80 <= indices[2] <= 84  # analysed every 4th frame
    dominant = [int(np.argmax(f.image.reshape(-1, 3).mean(axis=0))) for f in frames]  # RGB channel
    assert dominant == [0, 2, 1]  # red, blue, green


def test_scene_mode_pads_with_uniform_frames_when_there_are_fewer_changes_than_asked(tmp_path):
    clip = three_scenes(tmp_path)
    _, frames = sample_frames(clip, SamplingOptions(frames=5, mode="scene"), LIMITS)
    indices = [f.frame_index for f in frames]
    assert len(indices) == 5 and indices == sorted(set(indices))
    assert indices[0] == 0 and any(40 <= i <= 44 for i in indices) and any(80 <= i <= 84 for i in indices)
    padding = [i for i in indices if not (i == 0 or 40 <= i <= 44 or 80 <= i <= 84)]
    assert set(padding) <= set(S.uniform_targets(120, 5)) and len(padding) == 2


def test_scene_mode_finds_the_three_cuts_in_the_hamilton_clip():
    _, frames = sample_frames(HAMILTON, SamplingOptions(frames=4, mode="scene"), LIMITS)
    indices = [f.frame_index for f in frames]
    assert indices[0] == 0
    assert [any(lo <= i <= lo + 10 for i in indices) for lo in (15, 80, 210)] == [True, True, True]


# --- containers and codecs -----------------------------------------------------------------------


@pytest.mark.parametrize("suffix,fourcc", [(".avi", "MJPG"), (".mkv", "VP90"), (".webm", "VP80"), (".mov", "mp4v"),
                                           (".mp4", "mp4v"), (".avi", "mp4v"), (".mkv", "MJPG")])
def test_videos_written_by_opencv_in_each_container_are_sampled_at_the_right_frames(tmp_path, suffix, fourcc):
    clip = write_clip(tmp_path / f"bars{suffix}", bar_frames(200), fourcc)  # 200 frames: far enough to seek
    info, frames = sample_frames(clip, SamplingOptions(), LIMITS)
    assert (info.frame_count, info.width, info.height, info.fps) == (200, 624, 96, 25.0)
    assert [f.frame_index for f in frames] == [20, 60, 100, 140, 180]
    assert [bar_index(f.image) for f in frames] == [20, 60, 100, 140, 180]


def test_a_webm_without_a_duration_in_its_header_is_counted_from_its_packets(tmp_path):
    data = write_clip(tmp_path / "bars.webm", bar_frames(100), "VP90").read_bytes()
    if data.count(b"\x44\x89") != 1:
        pytest.skip("the WebM writer did not store one Duration element")
    live = tmp_path / "live.webm"  # as streamed recordings are: Duration renamed to an unknown element
    live.write_bytes(data.replace(b"\x44\x89", b"\x44\x88"))
    assert cv2.VideoCapture(str(live)).get(cv2.CAP_PROP_FRAME_COUNT) <= 0  # OpenCV has no count for it
    info, frames = sample_frames(live, SamplingOptions(), LIMITS)
    assert (info.frame_count, info.duration_s) == (100, 4.0)
    assert [bar_index(f.image) for f in frames] == [10, 30, 50, 70, 90]
    with pytest.raises(ResourceExhausted, match="live.webm is longer than the duration limit of 2 s"):
        probe(live, VideoLimits(max_duration_s=2))


def test_a_container_whose_codec_has_no_decoder_is_reported_as_an_unsupported_codec(tmp_path):
    clip = write_clip(tmp_path / "mpeg4.mkv", bar_frames(20), "mp4v")
    data = clip.read_bytes()
    if data.count(b"V_MPEG4/ISO/ASP") != 1:
        pytest.skip("the Matroska writer did not store the MPEG-4 codec id as expected")
    bad = tmp_path / "unknown_codec.mkv"
    bad.write_bytes(data.replace(b"V_MPEG4/ISO/ASP", b"V_ZZZZZ/ISO/ASP"))
    with pytest.raises(InvalidArgument, match="codec is not supported by OpenCV's FFmpeg build; re-encode"):
        sample_frames(bad, SamplingOptions(), LIMITS)


# --- bad input ------------------------------------------------------------------------------------


def test_a_png_is_rejected_as_an_image_not_a_video():
    png = VIDEO_DIR / "face_recognition_alex-lacamoire.png"  # FFmpeg itself would "open" it as a 1-frame video
    with pytest.raises(InvalidArgument, match="is a PNG image, not a video"):
        sample_frames(png, SamplingOptions(), LIMITS)


def test_random_bytes_and_empty_files_are_not_videos(tmp_path):
    noise = tmp_path / "upload.mp4"
    noise.write_bytes(np.random.default_rng(0).bytes(50_000))
    with pytest.raises(InvalidArgument, match=r"could not open upload.mp4 as a video: .*mp4 \(m4v\), mov, avi, mkv or webm"):
        probe(noise, LIMITS)
    empty = tmp_path / "empty.webm"
    empty.write_bytes(b"")
    with pytest.raises(InvalidArgument, match="empty"):
        probe(empty, LIMITS)


def test_error_messages_use_the_given_name_instead_of_the_spool_file(tmp_path):
    spooled = tmp_path / "tmp8x1k2.bin"
    spooled.write_bytes(b"hello, not a video" * 10)
    with pytest.raises(InvalidArgument, match="holiday.mp4"):
        probe(spooled, LIMITS, name="holiday.mp4")


def test_a_truncated_mp4_is_reported_as_truncated(tmp_path):
    data = HAMILTON.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:int(len(data) * 0.3)])  # the index (moov) sits at the end of these files
    with pytest.raises(InvalidArgument, match=r"truncated .*moov box\) is missing\); upload the complete file"):
        sample_frames(cut, SamplingOptions(), LIMITS)


def test_a_stream_that_stops_before_half_the_frames_is_an_error_after_that_a_shorter_list(tmp_path):
    data = write_clip(tmp_path / "full.avi", bar_frames(100)).read_bytes()
    short = tmp_path / "short.avi"
    short.write_bytes(data[:int(len(data) * 0.3)])
    with pytest.raises(InvalidArgument, match=r"stream stops at frame 2\d .* of 100 .*only 1 of 5 frames decode"):
        sample_frames(short, SamplingOptions(), LIMITS)
    with pytest.raises(InvalidArgument, match="stops at frame"):
        sample_frames(short, SamplingOptions(mode="scene"), LIMITS)
    most = tmp_path / "most.avi"
    most.write_bytes(data[:int(len(data) * 0.8)])
    info, frames = sample_frames(most, SamplingOptions(), LIMITS)
    assert info.frame_count == 100  # the declared length; the frames past the cut are missing
    assert [f.frame_index for f in frames] == [10, 30, 50, 70]
    assert [bar_index(f.image) for f in frames] == [10, 30, 50, 70]


def test_a_stream_whose_frames_stop_decoding_midway_follows_the_same_rule(tmp_path):
    data = bytearray(write_clip(tmp_path / "full.avi", bar_frames(100)).read_bytes())
    start, end, frame = data.find(b"movi"), data.find(b"idx1"), 0
    pos = start
    while (pos := data.find(b"00dc", pos, end)) >= 0:  # zero the JPEG data of frames 45 and later
        size = int.from_bytes(data[pos + 4:pos + 8], "little")
        if frame >= 45:
            data[pos + 8:pos + 8 + size] = bytes(size)
        frame, pos = frame + 1, pos + 8 + size
    broken = tmp_path / "broken.avi"
    broken.write_bytes(bytes(data))
    with pytest.raises(InvalidArgument, match=r"stops at frame 45 .*only 2 of 5 frames decode"):
        sample_frames(broken, SamplingOptions(), LIMITS)
    _, frames = sample_frames(broken, SamplingOptions(frames=2), LIMITS)  # targets 25 and 75: half decode
    assert [f.frame_index for f in frames] == [25] and bar_index(frames[0].image) == 25


def test_a_video_with_no_decodable_frame_is_rejected(tmp_path):
    data = bytearray(write_clip(tmp_path / "full.avi", bar_frames(10)).read_bytes())
    start, end = data.find(b"movi"), data.find(b"idx1")
    pos = start
    while (pos := data.find(b"00dc", pos, end)) >= 0:
        size = int.from_bytes(data[pos + 4:pos + 8], "little")
        data[pos + 8:pos + 8 + size] = bytes(size)
        pos += 8 + size
    dead = tmp_path / "dead.avi"
    dead.write_bytes(bytes(data))
    with pytest.raises(InvalidArgument, match="zero decodable frames"):
        sample_frames(dead, SamplingOptions(), LIMITS)


# --- limits and options -----------------------------------------------------------------------------


def test_a_video_over_the_duration_limit_is_resource_exhausted():
    with pytest.raises(ResourceExhausted, match=r"9.2 s long, over the duration limit of 5 s"):
        probe(HAMILTON, VideoLimits(max_duration_s=5))


def test_a_video_over_the_resolution_limit_is_resource_exhausted_in_either_orientation(tmp_path):
    with pytest.raises(ResourceExhausted, match="1920x1080, over the resolution limit of 1280x720"):
        probe(FACENET, VideoLimits(max_width=1280, max_height=720))
    portrait = write_clip(tmp_path / "portrait.avi", [np.zeros((320, 96, 3), np.uint8)] * 5)
    assert probe(portrait, VideoLimits(max_width=320, max_height=96)).height == 320  # rotated fits
    with pytest.raises(ResourceExhausted, match="96x320"):
        probe(portrait, VideoLimits(max_width=300, max_height=96))


def test_options_are_validated_with_clear_messages():
    assert SamplingOptions().validate(LIMITS) == SamplingOptions(frames=5, mode="uniform", seed=0)
    with pytest.raises(ResourceExhausted, match="asked for 65 frames per video, over the limit of 64"):
        SamplingOptions(frames=65).validate(LIMITS)
    with pytest.raises(InvalidArgument, match="at least 1"):
        SamplingOptions(frames=0).validate(LIMITS)
    with pytest.raises(InvalidArgument, match="use one of uniform, jitter, scene"):
        SamplingOptions(mode="random").validate(LIMITS)
    with pytest.raises(InvalidArgument, match="seed"):
        SamplingOptions(seed=-1).validate(LIMITS)
    with pytest.raises(ResourceExhausted, match="over the limit of 3"):
        sample_frames(HAMILTON, SamplingOptions(frames=4), VideoLimits(max_frames=3))
