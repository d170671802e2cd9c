"""What ``r2 extract`` extracts: folders, video files, list files and annotation files turned into
:class:`~r2.extract.pipeline.VideoJob` / :class:`~r2.extract.pipeline.QueryJob` lists, the Python API
behind the command's INPUTS and ``--annotations``::

    from r2.jobs import jobs_from_annotations
    from r2.extract import extract_features

    jobs = jobs_from_annotations("charades_sta_test.txt", ["videos/"])
    extract_features(jobs.videos, jobs.queries, "cache/", "openai/clip-vit-base-patch32", fps=jobs.fps,
                     known_failures=jobs.failures)

Annotation files are parsed by ``r2.train.annotations.load_annotations`` and the sampling rate
is the data set preset's (``r2.train.presets``), so this lives in the package root, which may
import both ``r2.extract`` and ``r2.train`` (DESIGN.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ExtractionJobs", "InputError", "jobs_from_annotations", "jobs_from_paths", "preset_fps"]


class InputError(Exception):
    """The inputs cannot be turned into jobs (no such folder, two files with one video id, an
    annotation file without records, ...); the message names the file and says what to do."""

    user_error = True


@dataclass
class ExtractionJobs:
    """What to extract, ready for :func:`r2.extract.extract_features`.

    ``failures``: videos that cannot be extracted before decoding starts (a list file's line
    that names no file, an annotated video no file has), reported with the run;
    ``dataset``: the data set of the annotations (or the one given); ``fps``: clips per second for
    the run, None where each video has its own (YouTube Highlights); ``skipped``: files left out
    because their name gives no video id (only dots before the extension).
    """

    videos: list  # [VideoJob]
    queries: list = field(default_factory=list)  # [QueryJob]
    failures: list = field(default_factory=list)  # [Failure]
    dataset: str | None = None
    fps: float | None = None
    skipped: list = field(default_factory=list)  # [str]


def _video_files(folder: Path, skipped: list[str], every_file: bool = False) -> list[Path]:
    """The video files under ``folder``; adds to ``skipped`` the files left out because their
    name is only dots before the extension (``..mp4``: no name left for an id)."""
    from r2.extract.video import VIDEO_EXTENSIONS, iter_video_files

    return [Path(p) for p in iter_video_files(folder, None if every_file else VIDEO_EXTENSIONS, skipped=skipped)]


def _pick_video(candidates: list[Path], video_id: str) -> Path | None:
    """The file to use among those with a video's name: the one with a video extension, else
    the one PyAV opens as a video (a camcorder's ``.MOD``, a file without extension, ...).
    Two such files (``a.mp4`` and ``a.mkv``; ``s1/x.mp4`` and ``s2/x.mp4`` found by name) are
    the error they are without annotations: which one the annotation means is not known."""
    from r2.extract.video import VIDEO_EXTENSIONS, is_video_file

    first: dict = {}
    for f in candidates:  # one file by several names (overlapping input folders, links): its first name
        first.setdefault(_file_identity(f), f)
    unique = list(first.values())
    listed = [f for f in unique if f.suffix.lower() in VIDEO_EXTENSIONS]
    if not listed:
        listed = [f for f in unique if is_video_file(f)]
    if len(listed) > 1:
        raise _two_videos(video_id, listed[0], listed[1], more=len(listed) - 2)
    return listed[0] if listed else None


def _file_identity(path: Path):
    """The file behind ``path``: (device, inode), so that one file reached by two names (a
    symlink, a hardlink, overlapping input folders) counts once; the real path if it cannot
    be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return st.st_dev, st.st_ino


def _two_videos(video_id: str, first, second, more: int = 0, paths=None) -> InputError:
    """The error for two files that get one video id, saying why they collide (``paths``: the
    two files, when ``first``/``second`` carry more, e.g. a list file's line)."""
    a, b = Path(first), Path(second)
    pa, pb = (Path(paths[0]), Path(paths[1])) if paths else (a, b)
    if pa.with_suffix("") == pb.with_suffix(""):
        why = "same name, different extension"
    elif pa.name == pb.name:
        why = "same file name in different folders"
    else:
        why = "same name in different folders"
    also = f" (and {more} more)" if more else ""
    return InputError(f"two videos get the id {video_id!r}: {a} and {b}{also} ({why}); rename one, or move it out "
                      "of the inputs")


def _video_id(path: Path, folder: Path) -> str:
    return path.relative_to(folder).with_suffix("").as_posix()


def _paths(inputs) -> list[Path]:
    """``inputs`` as a list of paths: one path (a str, not its characters), or an iterable of them."""
    if isinstance(inputs, (str, bytes, os.PathLike)):
        return [Path(os.fsdecode(inputs))]
    try:
        return [Path(p) for p in inputs]
    except TypeError:
        raise InputError(f"expected a path or a list of paths, got {type(inputs).__name__}") from None


def jobs_from_paths(inputs, dataset: str | None = None, fps: float | None = None) -> ExtractionJobs:
    """Folders (recursive, following symlinks), video files and list files (one path a line,
    relative to the list file; ``#`` comments) → one video job per file. The video id is the
    path relative to its folder or list file without the extension; a video file given itself:
    its name without extension. A list line that names no file is a failure (with its line).

    ``inputs``: a list of paths, or one path. ``fps``: clips per second (default:
    ``dataset``'s preset, else 0.5).
    """
    from r2.extract.pipeline import Failure, VideoJob
    from r2.extract.video import VIDEO_EXTENSIONS, not_a_video

    inputs = _paths(inputs)
    if not inputs:
        raise InputError("no inputs: give video folders, video files or list files")
    run_fps = fps if fps is not None else preset_fps(dataset)
    if run_fps is None:
        raise InputError("this data set samples per video (YouTube: one frame per annotated clip): use its "
                         "annotation file with --annotations, or give --fps")
    skipped: list[str] = []
    jobs: dict[str, VideoJob] = {}
    failures: list[Failure] = []
    origin: dict[str, str] = {}  # id -> " (line N of list.txt)" for ids from a list file

    def add(video_id, path, where=""):
        if not video_id.rsplit("/", 1)[-1].strip("."):
            raise InputError(f"{path}{where}: its name is only dots before the extension, so it has no video id; "
                             "rename it")
        if video_id in jobs and jobs[video_id].path != str(path):
            raise _two_videos(video_id, f"{jobs[video_id].path}{origin.get(video_id, '')}", f"{path}{where}",
                              paths=(jobs[video_id].path, path))
        jobs[video_id] = VideoJob(video_id, str(path))
        origin[video_id] = where

    for inp in inputs:
        if inp.is_dir():
            files = _video_files(inp, skipped)
            if not files:
                raise InputError(f"{inp}: no video files (looked recursively for {', '.join(VIDEO_EXTENSIONS)}; "
                                 "name a file of another kind on the command line)")
            for f in files:
                add(_video_id(f, inp), f)
        elif inp.is_file() and inp.suffix.lower() in VIDEO_EXTENSIONS:
            add(inp.stem, inp)
        elif inp.is_file():
            base = inp.parent
            try:
                text = inp.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is not part of the first path
            except UnicodeDecodeError:  # binary: a video whatever its extension, if PyAV reads it as one
                why = not_a_video(inp)
                if why is None:
                    add(inp.stem, inp)
                    continue
                raise InputError(f"{inp}: neither a list of video paths (not UTF-8 text) nor a video: {why}; give "
                                 "folders, video files, or text files with one path a line") from None
            for lineno, line in enumerate(text.splitlines(), 1):
                entry = line.strip()
                if not entry or entry.startswith("#"):
                    continue
                p = Path(entry)
                full = p if p.is_absolute() else base / p
                vid = p.stem if p.is_absolute() else p.with_suffix("").as_posix()
                where = f" (line {lineno} of {inp})"
                add(vid, full, where)
                if not full.exists():  # said here, where the line is known (decoding would say "file not found")
                    del jobs[vid]
                    failures.append(Failure(vid, str(full), f"file not found{where}"))
        else:
            raise InputError(f"{inp}: no such file or folder")
    return ExtractionJobs(list(jobs.values()), [], failures, dataset, run_fps, skipped)


def _nfc(name: str) -> str:
    """``name`` in Unicode NFC: an annotation's "café" (NFC, as typed) is the file a macOS copy
    names "café" in NFD (decomposed: e + combining accent)."""
    import unicodedata

    return unicodedata.normalize("NFC", name)


def jobs_from_annotations(annotations, folders, dataset: str | None = None,
                          fps: float | None = None) -> ExtractionJobs:
    """The videos and queries of an annotation file (any benchmark's layout or a custom jsonl),
    the videos looked up by name under ``folders`` (a list of paths, or one path; recursive;
    the file of that name with a video extension, else the one PyAV opens as a video; NFC and
    NFD names match). An annotated video no file has is a failure.

    ``dataset``: how to read the file (default: detected); ``fps``: clips per second (default:
    the data set's preset). YouTube Highlights takes no ``fps``: each video gets its own rate,
    number of annotated clips ÷ (frames ÷ fps), and exactly that many clips (R²-Tuning's
    "auto").
    """
    from r2.extract.pipeline import Failure, QueryJob, VideoJob
    from r2.train.annotations import load_annotations

    annotations, inputs = Path(annotations), _paths(folders)
    if not inputs:
        raise InputError("with annotations, give the folder(s) that hold the videos")
    samples = load_annotations(annotations, dataset=dataset)
    if not samples:
        raise InputError(f"{annotations}: no records")
    ds = samples[0].dataset
    if ds == "youtube" and fps is not None:
        raise InputError(f"--fps {fps:g} with YouTube Highlights annotations ({annotations}): this benchmark takes one "
                         "frame per annotated segment (its own rate per video), so the clips would not line up "
                         "with the annotation; drop --fps")
    per_video_rate = ds == "youtube"
    skipped: list[str] = []
    # every file under the input folders, by relative path and by stem, whatever its extension: the
    # annotation names the video, the file is the one of that name with a video extension, or else
    # the one of that name PyAV opens as a video
    by_rel: dict[str, list[Path]] = {}
    by_stem: dict[str, list[Path]] = {}
    for folder in inputs:
        if not folder.exists():
            raise InputError(f"{folder}: no such folder (with --annotations, inputs are the folders that "
                             "hold the videos)")
        if not folder.is_dir():
            raise InputError(f"{folder}: with --annotations, inputs are the folders that hold the videos")
        for f in _video_files(folder, skipped, every_file=True):  # by the NFC names: a macOS copy names files in NFD
            by_rel.setdefault(_nfc(_video_id(f, folder)), []).append(f)
            by_stem.setdefault(_nfc(f.stem), []).append(f)
    videos, queries, failures, seen_q, missing = {}, [], [], set(), set()
    for s in samples:
        if s.vid not in videos and s.vid not in missing:
            stem = s.video_file_stem
            key = _nfc(stem)
            path = _pick_video(by_rel.get(key, []), s.vid) or _pick_video(by_stem.get(Path(key).name, []), s.vid)
            if path is None and Path(key).suffix:  # a vid written with its file's extension
                named = Path(key).name
                path = next((f for f in by_rel.get(str(Path(key).with_suffix("")), [])
                             + by_stem.get(Path(named).stem, []) if _nfc(f.name) == named), None)
            if path is None:
                where = ", ".join(str(i) for i in inputs)
                failures.append(Failure(s.vid, stem, f"no video file named {stem}.* under {where}"))
                missing.add(s.vid)
            else:
                job = VideoJob(s.vid, str(path))
                if per_video_rate:
                    frames, src_fps = float(s.extras["frames"]), float(s.extras["fps"])
                    count = len(s.saliency.clip_ids)
                    job.fps, job.num_clips = count * src_fps / frames, count
                videos[s.vid] = job
        if s.query_id not in seen_q:
            seen_q.add(s.query_id)
            queries.append(QueryJob(s.query_id, s.query))
    run_fps = fps if fps is not None else preset_fps(ds)
    if run_fps is None and any(v.fps is None for v in videos.values()):
        raise InputError(f"{annotations}: data set {ds} samples each video at its own rate, which the "
                         "annotations do not give here; give --fps")
    return ExtractionJobs(list(videos.values()), queries, failures, ds, run_fps, skipped)


def preset_fps(dataset: str | None) -> float | None:
    """Clips per second of ``dataset``'s preset (None: a rate per video; no data set: 0.5)."""
    if dataset is None:
        return 0.5
    from r2.train.presets import get_preset

    fps = get_preset(dataset).fps
    return None if fps == "auto" else float(fps)


