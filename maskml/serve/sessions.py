"""The sessions of `maskml serve`, without the web framework: one upload each (an image or a video), its
objects, clicks and masks, in a work folder of its own under a temporary folder the manager owns.

    manager = SessionManager(prompter=maskml.load_model("mobile_sam"), tracker=maskml.load_model("cutie_small"))
    upload = manager.start_upload("clip.mp4")          # a folder for it; only the suffix of the name is used
    upload.write(data)                                 # any number of times: the upload limit is counted
    session = manager.open(upload)                     # decoded and checked against the limits
    session.add_prompt(frame=0, object_id=1, point=(320, 200))     # the masks of frame 0, at once
    for progress in session.track(): ...               # from the earliest changed frame to the end
    session.export("masks.zip")                        # the files `maskml track` writes for the same clicks

Tracking is `maskml track`'s loop (Pipeline.step over every frame with that frame's clicks, written by
ResultWriter), so the exports are its files. A change on frame F (a click, an undo, an object
deleted) makes the results from F on stale; the next track() starts from the tracker's state saved
before F (a copy of its memory every few frames), not from the first frame.
"""
from __future__ import annotations

import copy
import secrets
import shutil
import tempfile
import threading
import time
import weakref
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from maskml.errors import MaskmlError
from maskml.io.draw import draw_masks, palette_color
from maskml.io.images import read_image, write_image
from maskml.io.masks import read_mask, write_mask
from maskml.io.rle import encode_objects
from maskml.io.video import VIDEO_SUFFIXES, open_video
from maskml.predict.checks import DEFAULT_MAX_OBJECTS
from maskml.predict.cutie.tracker import TrackerOutput
from maskml.predict.pipeline import Pipeline, Prompt, tracker_for

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
EXPORTS = ("masks.zip", "annotations.json", "overlay.mp4", "overlay.png")
LOCK_WAIT_SECONDS = 600.0  # the longest a request waits for another one's work in its session
REMOVE_WAIT_SECONDS = 10.0  # how long closing a session waits for its tracking to stop (one frame, or an export)
MAX_SNAPSHOTS = 20  # tracker states kept per video, spread over it: a re-track starts at most len / 20 frames early


class RequestError(MaskmlError):
    """Bad input with the HTTP status that says which kind: 404 no such session, 409 busy or out of
    date, 410 expired, 413 over a size limit, 415 not an image or a video, 429 too many sessions."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 500 * 1024 * 1024
    max_frames: int = 2000
    max_sessions: int = 8
    idle_seconds: float = 3600.0


class ImageSource:
    """One image as a video source of one frame, named 00000."""

    fps = 1.0
    names = ["00000"]

    def __init__(self, image: np.ndarray) -> None:
        self.image = image
        self.size = image.shape[:2]

    def __len__(self) -> int:
        return 1

    def frame(self, index: int) -> np.ndarray:
        return self.image

    def __iter__(self):
        yield 0, self.names[0], self.image


class Upload:
    """A file arriving in a session's folder, counted against the upload limit as it comes."""

    def __init__(self, folder: Path, suffix: str, limit: int, client_name: str) -> None:
        self.folder, self.limit, self.client_name = folder, limit, client_name
        self.kind = "video" if suffix in VIDEO_SUFFIXES else "image"
        self.path = folder / f"upload{suffix}"  # the client's name never becomes a path: only its checked suffix
        self.size = 0
        self._file = open(self.path, "wb")

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise too_large(self.client_name, self.limit)
        self._file.write(data)

    def close(self) -> None:
        self._file.close()

    def discard(self) -> None:
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def too_large(client_name: str, limit: int) -> RequestError:
    return RequestError(f"{client_name} is larger than this server's upload limit of {limit / 2**20:.0f} MiB "
                        f"(maskml serve --max-upload-mb): cut it shorter or smaller", 413)


class SessionManager:
    def __init__(self, prompter, tracker=None, limits: Limits = Limits(), tracker_options: dict | None = None,
                 clock=time.monotonic) -> None:
        """prompter: the image model that turns clicks into masks; tracker: a Cutie model for videos
        (None: images only); tracker_options: VideoTracker's options by their official names."""
        self.prompter, self.tracker, self.limits = prompter, tracker, limits
        self.tracker_options = tracker_options or {}
        self.clock = clock
        self.root = Path(tempfile.mkdtemp(prefix="maskml-serve-"))  # 0700: other users do not read the uploads
        self._remove_root = weakref.finalize(self, shutil.rmtree, self.root, True)  # at the latest when Python exits
        self.sessions: dict[str, Session] = {}
        self.expired: set[str] = set()
        self._reserved = 0  # uploads under way, counted with the sessions
        self._lock = threading.Lock()

    def start_upload(self, client_name: str, declared_bytes: int | None = None) -> Upload:
        suffix = Path(client_name or "").suffix.lower()
        if suffix not in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
            raise RequestError(f"{client_name or 'the upload'} is not a file type maskml serve opens: upload an "
                               f"image ({', '.join(IMAGE_SUFFIXES)}) or a video ({', '.join(VIDEO_SUFFIXES)})", 415)
        if suffix in VIDEO_SUFFIXES and self.tracker is None:
            raise RequestError("this server was started without a tracker, so it opens images only", 415)
        if declared_bytes is not None and declared_bytes > self.limits.max_upload_bytes:
            raise too_large(client_name, self.limits.max_upload_bytes)
        self.expire_idle()
        with self._lock:
            if len(self.sessions) + self._reserved >= self.limits.max_sessions:
                raise RequestError(f"this server holds {self.limits.max_sessions} sessions, its limit (maskml serve "
                                   f"--max-sessions): close another tab's session or wait until one expires", 429)
            self._reserved += 1
        folder = self.root / secrets.token_hex(8)
        folder.mkdir()
        return Upload(folder, suffix, self.limits.max_upload_bytes, client_name)

    def open(self, upload: Upload) -> Session:
        """The uploaded file decoded into a new session; a MaskmlError (and the folder removed) if it
        cannot be read or is over the frame limit."""
        try:
            upload.close()
            source, display = self._read(upload)
            session = Session(secrets.token_urlsafe(16), upload, source, display, self)
        except BaseException:
            self.discard(upload)
            raise
        with self._lock:
            self._reserved -= 1
            self.sessions[session.id] = session
        return session

    def discard(self, upload: Upload) -> None:
        """An upload that did not become a session: its folder goes, its place is free again."""
        upload.discard()
        with self._lock:
            self._reserved -= 1

    def _read(self, upload: Upload):
        name = upload.client_name
        if upload.kind == "image":
            try:
                source = ImageSource(read_image(upload.path))
            except MaskmlError:
                raise RequestError(f"{name} cannot be read as an image (it is damaged, or not the type its name "
                                   f"says): save it again as .png or .jpg", 415) from None
            return source, source
        try:
            source, display = open_video(upload.path), open_video(upload.path)  # one for tracking, one to show
        except MaskmlError:
            raise RequestError(f"{name} cannot be decoded as a video (it is damaged, or its codec is one OpenCV "
                               f"does not read): re-encode it, e.g. ffmpeg -i {Path(name).name} out.mp4", 415) from None
        count = 0
        for _ in source:  # the container's frame count is a promise: count them, and find damage now
            count += 1
            if count > self.limits.max_frames:
                raise RequestError(f"{name} has more than {self.limits.max_frames} frames, this server's limit "
                                   f"(maskml serve --max-frames): cut it shorter", 413)
        for video in (source, display):
            video.names = video.names[:count]
        return source, display

    def get(self, session_id: str) -> Session:
        self.expire_idle()
        session = self.sessions.get(session_id)
        if session is None:
            if session_id in self.expired:
                minutes = self.limits.idle_seconds / 60
                raise RequestError(f"session {session_id} expired after {minutes:g} minutes without use and its "
                                   f"files were deleted: open the file again", 410)
            raise RequestError(f"there is no session {session_id} on this server (it was closed, or the server "
                               f"restarted): open the file again", 404)
        session.last_used = self.clock()
        return session

    def close(self, session_id: str) -> None:
        with self._lock:
            session = self.sessions.pop(session_id, None)
        if session is not None:
            session.remove()

    def expire_idle(self) -> None:
        """Sessions unused for the idle time go, with their files; one busy tracking or exporting stays."""
        now = self.clock()
        with self._lock:
            idle = [s for s in self.sessions.values()
                    if now - s.last_used > self.limits.idle_seconds and not s.busy.locked()]
            for session in idle:
                del self.sessions[session.id]
                self.expired.add(session.id)
        for session in idle:
            session.remove()

    def shutdown(self) -> None:
        for session_id in list(self.sessions):
            self.close(session_id)
        self._remove_root()


class Session:
    def __init__(self, session_id: str, upload: Upload, source, display, manager: SessionManager) -> None:
        self.id, self.kind, self.folder = session_id, upload.kind, upload.folder
        self.client_name = upload.client_name
        self.source, self.display = source, display
        self.manager = manager
        self.size = tuple(source.size)
        self.frames = len(source)
        self.labels_dir = self.folder / "labels"
        self.labels_dir.mkdir()
        self.objects: dict[int, str] = {}  # id -> name, of the objects clicked on
        self.prompts: dict[tuple[int, int], Prompt] = {}  # (frame, object id) -> all its clicks and box there
        self.history: list[tuple[tuple[int, int], Prompt | None, bool, np.ndarray]] = []  # for undo
        self.stale_from: int | None = 0  # results from this frame on predate a change (None: all current)
        self.version = 0  # counts changes, so exports are made once per state
        # One pipeline makes the clicks' masks and tracks: a frame embedded for clicks is not embedded again
        # when tracking reaches it (the pipeline knows a frame by its array: `embedded` keeps that array).
        # An image needs no tracker: its pipeline only segments.
        tracker = tracker_for(manager.tracker, **manager.tracker_options) if self.kind == "video" else None
        self.pipeline = Pipeline(tracker, manager.prompter)
        self.embedded: tuple[int, np.ndarray] | None = None  # (index, frame) the pipeline holds the embedding of
        self.snapshots: dict[int, tuple] = {}  # frame -> (tracker, object ids) before that frame was tracked
        # frame -> labels of the frames clicked on since tracking last wrote them: kept in memory, as a
        # click's answer must be quick (a PNG of a large frame takes longer to write than the mask to decode)
        self.previews: dict[int, np.ndarray] = {}
        self.cancel = threading.Event()
        self.busy = threading.Lock()  # one piece of model work at a time in a session
        self.tracking = False
        self.display_lock = threading.Lock()
        self.last_used = manager.clock()

    # state ----------------------------------------------------------------------------------------

    def describe(self) -> dict:
        h, w = self.size
        return {"id": self.id, "kind": self.kind, "name": self.client_name, "width": w, "height": h,
                "frames": self.frames, "fps": self.source.fps, "stale_from": self.stale_from,
                "objects": [{"id": i, "name": n, "color": "#%02x%02x%02x" % palette_color(i)}
                            for i, n in sorted(self.objects.items())],
                "prompts": [{"frame": f, "object": o, "points": [list(p) for p in prompt.points],
                             "labels": list(prompt.labels), "box": list(prompt.box) if prompt.box else None}
                            for (f, o), prompt in sorted(self.prompts.items())],
                "can_undo": bool(self.history)}

    def check_frame(self, frame: int) -> int:
        if not 0 <= frame < self.frames:
            raise MaskmlError(f"there is no frame {frame}: {self.client_name} has frames 0 to {self.frames - 1}")
        return frame

    def labels(self, frame: int) -> np.ndarray:
        """The masks of a frame as an H x W uint8 id map (all 0 where nothing was computed yet)."""
        if frame in self.previews:
            return self.previews[frame].copy()
        path = self.labels_dir / f"{self.source.names[self.check_frame(frame)]}.png"
        return read_mask(path) if path.exists() else np.zeros(self.size, np.uint8)

    def masks(self, frame: int) -> dict:
        """The masks of a frame, one COCO RLE (uncompressed counts) per object present."""
        objects = encode_objects(torch.from_numpy(self.labels(frame)))
        return {"frame": frame, "size": list(self.size), "stale": self.stale_from is not None and frame >= self.stale_from,
                "objects": [{"id": i, "counts": rle["counts"].tolist()} for i, rle in objects]}

    def frame_image(self, frame: int) -> np.ndarray:
        with self.display_lock:
            return self.display.frame(self.check_frame(frame))

    # clicks ---------------------------------------------------------------------------------------

    def working(self):
        """The session's lock for model work: a request waits for a click or an export under way, and is
        refused while the session tracks (that can take long; cancel it first)."""
        session = self

        class Held:
            def __enter__(self):
                session.refuse_while_tracking()
                if not session.busy.acquire(timeout=LOCK_WAIT_SECONDS):
                    raise RequestError("this session is busy (an export of a long video?): try again", 409)
                if session.tracking:  # began while this request waited
                    session.busy.release()
                    session.refuse_while_tracking()

            def __exit__(self, *exc):
                session.busy.release()
                session.last_used = session.manager.clock()

        return Held()

    def refuse_while_tracking(self) -> None:
        if self.tracking:
            raise RequestError("this session is tracking: wait for it, or cancel it, then click", 409)

    def embed(self, frame: int) -> bool:
        """Compute the frame's image embedding now, so the clicks on it only run the mask decoder. Only a
        head start: while the session works (tracking, or another frame's embedding while the user
        scrubs) it is skipped, and False returned; a click embeds its frame anyway."""
        self.check_frame(frame)
        if self.tracking or not self.busy.acquire(blocking=False):
            return False
        try:
            self._embed(frame)
        finally:
            self.busy.release()
        return True

    def _embed(self, frame: int) -> np.ndarray:
        """The frame, as the array the pipeline holds the embedding of."""
        if self.embedded is None or self.embedded[0] != frame:
            image = self.source.frame(self.check_frame(frame))
            self.pipeline.segment(image, ())  # embeds it
            self.embedded = (frame, image)
        return self.embedded[1]

    def add_prompt(self, frame: int, object_id: int, point=None, label: int = 1, box=None) -> dict:
        """A click (point, label 1 object / 0 background) or a box for an object on a frame; the object is
        new or a correction there. Returns the frame's masks. A click that gives no mask is not kept."""
        with self.working():
            self.check_frame(frame)
            key = (frame, object_id)
            old = self.prompts.get(key)
            if object_id not in self.objects and len(self.objects) >= DEFAULT_MAX_OBJECTS:
                raise MaskmlError(f"a session tracks at most {DEFAULT_MAX_OBJECTS} objects: delete one first")
            points, labels = (old.points, old.labels) if old else ((), ())
            if point is not None:
                points, labels = points + (tuple(point),), labels + (label,)
            prompt = Prompt(object_id, points=points, labels=labels,
                            box=box if box is not None else old.box if old else None)
            prompt.check_inside(self.size)
            mask = self.pipeline.segment(self._embed(frame), [prompt]) > 0
            before = self.labels(frame)
            ids = before.copy()
            ids[ids == object_id] = 0  # the object's new mask replaces its old one, over the other objects
            ids[mask.cpu().numpy()] = object_id
            self.previews[frame] = ids
            created = object_id not in self.objects
            self.objects.setdefault(object_id, f"object {object_id}")
            self.prompts[key] = prompt
            self.history.append((key, old, created, before))
            self._changed(frame)
            return self.masks(frame)

    def undo(self) -> dict:
        """Take back the last click or box; returns the masks of its frame as they were before it."""
        with self.working():
            if not self.history:
                raise RequestError("there is no click to undo", 409)
            (frame, object_id), old, created, before = self.history.pop()
            if old is None:
                del self.prompts[(frame, object_id)]
            else:
                self.prompts[(frame, object_id)] = old
            if created:
                del self.objects[object_id]
            self.previews[frame] = before
            self._changed(frame)
            return self.masks(frame)

    def rename(self, object_id: int, name: str) -> None:
        self._check_object(object_id)
        name = " ".join(name.split())[:80]
        if not name:
            raise MaskmlError("an object's name cannot be empty")
        self.objects[object_id] = name
        self.version += 1

    def delete_object(self, object_id: int) -> None:
        """The object, its clicks and its masks on every frame go; what was tracked after its first click is stale."""
        with self.working():
            self._check_object(object_id)
            first = min(f for f, o in self.prompts if o == object_id)
            self.prompts = {k: p for k, p in self.prompts.items() if k[1] != object_id}
            self.history = [h for h in self.history if h[0][1] != object_id]
            del self.objects[object_id]
            self.previews = {f: np.where(ids == object_id, 0, ids) for f, ids in self.previews.items()}
            for path in self.labels_dir.glob("*.png"):
                ids = read_mask(path)
                if (ids == object_id).any():
                    write_mask(path, np.where(ids == object_id, 0, ids))
            self._changed(first)

    def _check_object(self, object_id: int) -> None:
        if object_id not in self.objects:
            raise RequestError(f"there is no object {object_id} in this session", 404)

    def _write_labels(self, frame: int, ids: np.ndarray) -> None:
        write_mask(self.labels_dir / f"{self.source.names[frame]}.png", ids)
        self.previews.pop(frame, None)

    def _changed(self, frame: int) -> None:
        self.stale_from = frame if self.stale_from is None else min(self.stale_from, frame)
        self.snapshots = {k: s for k, s in self.snapshots.items() if k <= frame}
        self.version += 1

    # tracking -------------------------------------------------------------------------------------

    def track(self) -> Iterator[dict]:
        """Track from the tracker state saved before the earliest changed frame to the end, yielding
        {"start", "total"} first, then {"frame", "done", "total"} per frame, and last {"finished": true}
        or, after cancel.set(), {"cancelled": true, "frame"}: the frames done are kept. What stops it
        from starting is raised here, before the first step."""
        if self.kind != "video":
            raise MaskmlError("an image has nothing to track: its masks are there as you click")
        if not self.prompts:
            raise MaskmlError("nothing to track yet: click on an object first")
        self.refuse_while_tracking()
        return self._track()

    def _track(self) -> Iterator[dict]:
        with self.working():  # released before the last message, so the session is free when it arrives
            self.tracking = True
            try:
                last = yield from self._track_steps()
            finally:
                self.tracking = False
        yield last

    def _track_steps(self) -> Iterator[dict]:
        """The steps' messages; returns the last one."""
        self.cancel.clear()
        stale = self.stale_from if self.stale_from is not None else self.frames
        start = max((k for k in self.snapshots if k <= stale), default=0)
        self._restore(start)
        every = max(1, -(-self.frames // MAX_SNAPSHOTS))
        by_frame: dict[int, list[Prompt]] = {}
        for (frame, _), prompt in sorted(self.prompts.items()):  # by object id within a frame, as maskml track
            by_frame.setdefault(frame, []).append(prompt)
        yield {"start": start, "total": self.frames - start}
        for index in range(start, self.frames):
            if index % every == 0 and index not in self.snapshots:
                self.snapshots[index] = self._snapshot()
            if self.cancel.is_set():
                return {"cancelled": True, "frame": index}
            embedded = self.embedded is not None and self.embedded[0] == index
            result = self.pipeline.step(self.embedded[1] if embedded else self.source.frame(index),
                                        by_frame.get(index, ()))
            self._write_labels(index, result.labels.cpu().numpy().astype(np.uint8))
            if self.stale_from is not None and self.stale_from <= index:
                self.stale_from = index + 1
            self.last_used = self.manager.clock()
            yield {"frame": index, "done": index - start + 1, "total": self.frames - start}
        self.stale_from = None
        self.version += 1
        return {"finished": True}

    def _snapshot(self) -> tuple:
        tracker = self.pipeline.tracker
        return copy.deepcopy(tracker, {id(tracker.model): tracker.model}), list(self.pipeline.object_ids)

    def _restore(self, start: int) -> None:
        """The tracker as it was before frame `start` was tracked (empty for the first frame); the
        prompter's embedding stays."""
        if start in self.snapshots:
            tracker, object_ids = self.snapshots[start]
            self.pipeline.tracker = copy.deepcopy(tracker, {id(tracker.model): tracker.model})
            self.pipeline.object_ids = list(object_ids)
        else:
            self.pipeline.tracker.reset()
            self.pipeline.object_ids = []

    # exports --------------------------------------------------------------------------------------

    def export(self, name: str) -> Path:
        """One of EXPORTS for the session as it is now, made once per state: the PNGs (zipped), COCO
        annotations and overlay `maskml track` writes (an image's overlay is a PNG)."""
        from maskml.io.results import ResultWriter

        wanted = "overlay.png" if self.kind == "image" else "overlay.mp4"
        if name not in EXPORTS or name.startswith("overlay") and name != wanted:
            raise RequestError(f"there is no export {name!r} for an {self.kind}: choose one of masks.zip, "
                               f"annotations.json, {wanted}", 404)
        if not self.objects:
            raise RequestError("nothing to export yet: click on an object first", 409)
        if self.kind == "video" and self.stale_from is not None:
            raise RequestError(f"the masks from frame {self.stale_from} on are older than the last change: track "
                               f"the video before exporting", 409)
        with self.working():
            folder = self.folder / f"export-{self.version}"
            if not folder.exists():
                for old in self.folder.glob("export-*"):
                    shutil.rmtree(old, ignore_errors=True)
                work = self.folder / f".building-{self.version}"
                shutil.rmtree(work, ignore_errors=True)
                overlay = work / "overlay.mp4" if self.kind == "video" else None
                with ResultWriter(work / "masks", overlay=overlay, coco=work / "annotations.json",
                                  object_ids=self.objects, object_names=self.objects, size=self.size,
                                  fps=self.source.fps, source=self.source) as results:
                    for index, frame_name, frame in self.source:
                        ids = torch.from_numpy(self.labels(index).astype(np.int64))
                        results.write(index, frame_name, frame, TrackerOutput(torch.zeros(0, *self.size), [], ids))
                if self.kind == "image":
                    write_image(work / "overlay.png", draw_masks(self.source.image, self.labels(0)))
                with zipfile.ZipFile(work / "masks.zip", "w", zipfile.ZIP_DEFLATED) as archive:
                    for png in sorted((work / "masks").glob("*.png")):
                        archive.write(png, f"masks/{png.name}")
                work.rename(folder)
            return folder / name

    def remove(self) -> None:
        """Close the session and delete its folder, once the work under way has stopped (tracking stops
        at its next frame)."""
        self.cancel.set()
        held = self.busy.acquire(timeout=REMOVE_WAIT_SECONDS)
        try:
            for video in {id(self.source): self.source, id(self.display): self.display}.values():
                if hasattr(video, "close"):
                    video.close()
            shutil.rmtree(self.folder, ignore_errors=True)
        finally:
            if held:
                self.busy.release()
