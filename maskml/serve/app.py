"""The web layer of `maskml serve`: the page and its HTTP API over a SessionManager (FastAPI; the
interactive API reference is at /docs, the OpenAPI schema at /openapi.json).

    app = create_app(SessionManager(prompter, tracker), token="s3cret")

With a token every request must carry it: as ?token= (the page's address, which then sets a
cookie), an `Authorization: Bearer` header, an `X-Maskml-Token` header or the cookie. Without one
(the loopback default) only requests addressed to a loopback name are served, so a web page that
resolves its own domain to 127.0.0.1 cannot reach the server (DNS rebinding).
"""
from __future__ import annotations

import asyncio
import hmac
import io
import json
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field

from maskml.errors import MaskmlError
from maskml.io.masks import DAVIS_PALETTE
from maskml.serve.sessions import RequestError, SessionManager

STATIC = Path(__file__).parent / "static"
COOKIE = "maskml_token"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


class PromptIn(BaseModel):
    """A click (point, with label 1 = object, 0 = background) or a box, for an object on a frame."""
    object: int = Field(ge=1, le=255, description="object id, 1 to 255: a new one or one to correct")
    frame: int = Field(0, ge=0, description="zero-based frame index (0 for an image)")
    point: tuple[float, float] | None = Field(None, description="x, y in pixels of the frame")
    label: Literal[0, 1] = 1
    box: tuple[float, float, float, float] | None = Field(None, description="x0, y0, x1, y1 in pixels")


class NameIn(BaseModel):
    name: str


def masks_response(masks: dict) -> Response:
    """A frame's masks as JSON, written directly: FastAPI's own encoder walks every run of every RLE in
    Python, several times slower than json.dumps for a mask with many runs."""
    return Response(json.dumps(masks), media_type="application/json")


def request_token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-maskml-token") or request.cookies.get(COOKIE) or request.query_params.get("token")


def host_name(host_header: str) -> str:
    """"127.0.0.1:8000" -> "127.0.0.1", "[::1]:8000" -> "[::1]"."""
    if host_header.startswith("["):
        return host_header[:host_header.find("]") + 1]
    return host_header.rsplit(":", 1)[0]


def create_app(manager: SessionManager, token: str | None = None, models: str = "") -> FastAPI:
    """models: what the page shows as the models served ("mobile_sam + cutie_small")."""

    @asynccontextmanager
    async def lifespan(app):
        async def sweep():  # idle sessions go even when no request comes
            while True:
                await asyncio.sleep(min(60.0, manager.limits.idle_seconds / 4))
                manager.expire_idle()

        sweeper = asyncio.create_task(sweep())
        try:
            yield
        finally:
            sweeper.cancel()
            manager.shutdown()

    app = FastAPI(title="maskml serve", version="1", lifespan=lifespan,
                  description="Click to segment an image, click to track objects through a video, correct, "
                              "export. Every path under /api/sessions/{id} belongs to one upload.")

    @app.middleware("http")
    async def check_access(request: Request, call_next):
        if token is None:
            host = host_name(request.headers.get("host", ""))
            if host not in LOOPBACK_NAMES:
                return JSONResponse({"detail": f"this server answers requests for 127.0.0.1 or localhost only, not "
                                               f"{host or 'an unnamed host'}: open http://127.0.0.1:PORT/ (or start "
                                               f"it with --host and a token)"}, 403)
            return await call_next(request)
        given = request_token(request)
        if given is None or not hmac.compare_digest(given.encode(), token.encode()):
            what = "a wrong" if given else "no"
            return JSONResponse({"detail": f"{what} access token: open the address with ?token=... that maskml serve "
                                           f"printed when it started (scripts: send the header "
                                           f"'Authorization: Bearer TOKEN')"}, 401)
        if request.query_params.get("token") and request.method == "GET" and request.url.path == "/":
            response = RedirectResponse("/", 303)  # the token leaves the address bar and the history
        else:
            response = await call_next(request)
        if request.cookies.get(COOKIE) != token:
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    @app.exception_handler(MaskmlError)
    async def maskml_error(request: Request, exc: MaskmlError):
        return JSONResponse({"detail": str(exc)}, exc.status if isinstance(exc, RequestError) else 400)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/info", summary="The models served and the limits")
    def info():
        limits = manager.limits
        return {"models": models, "tracks_videos": manager.tracker is not None,
                "limits": {"max_upload_bytes": limits.max_upload_bytes, "max_frames": limits.max_frames,
                           "max_sessions": limits.max_sessions, "idle_seconds": limits.idle_seconds}}

    @app.post("/api/sessions", status_code=201, summary="Open an uploaded image or video as a new session",
              description="The request body is the file itself (curl --data-binary @clip.mp4); `filename` gives "
                          "its type by its suffix. 413 over the upload or frame limit, 415 not a readable "
                          "image or video, 429 too many sessions.")
    async def create_session(request: Request, filename: str = Query(..., description="e.g. clip.mp4")):
        length = request.headers.get("content-length")
        upload = manager.start_upload(filename, int(length) if length and length.isdigit() else None)
        try:
            async for chunk in request.stream():
                upload.write(chunk)
        except BaseException:
            manager.discard(upload)
            raise
        from starlette.concurrency import run_in_threadpool

        session = await run_in_threadpool(manager.open, upload)
        return session.describe()

    @app.get("/api/sessions/{session_id}", summary="A session: its media, objects, clicks, what is stale")
    def describe(session_id: str):
        return manager.get(session_id).describe()

    @app.delete("/api/sessions/{session_id}", status_code=204, summary="Close a session and delete its files")
    def close(session_id: str):
        manager.get(session_id)
        manager.close(session_id)

    @app.get("/api/sessions/{session_id}/frames/{frame}/image", summary="A frame as JPEG",
             response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    def frame_image(session_id: str, frame: int):
        buffer = io.BytesIO()
        Image.fromarray(manager.get(session_id).frame_image(frame)).save(buffer, "JPEG", quality=90)
        return Response(buffer.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/api/sessions/{session_id}/frames/{frame}/embed", summary="Compute a frame's image embedding now",
              description="The first click on a frame waits for its embedding; the page asks for it when a "
                          "frame has been shown a moment, so clicks only run the mask decoder. Skipped "
                          "(embedded: false) while the session is busy: a click embeds its frame anyway.")
    def embed(session_id: str, frame: int):
        return {"frame": frame, "embedded": manager.get(session_id).embed(frame)}

    @app.get("/api/sessions/{session_id}/frames/{frame}/masks", summary="A frame's masks",
             description="rle: one COCO RLE (uncompressed counts, column-major) per object; png: the indexed "
                         "PNG maskml track writes (palette index = object id).",
             responses={200: {"content": {"image/png": {}}}})
    def masks(session_id: str, frame: int, format: Literal["rle", "png"] = "rle"):
        session = manager.get(session_id)
        if format == "rle":
            return masks_response(session.masks(frame))
        image = Image.fromarray(session.labels(frame))
        image.putpalette(DAVIS_PALETTE)
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        return Response(buffer.getvalue(), media_type="image/png")

    @app.post("/api/sessions/{session_id}/prompts", summary="Add a click or a box; returns the frame's masks",
              description="A click on a tracked object corrects it on that frame: track again to carry the "
                          "correction on. 400 with the reason for a click outside the frame or one that "
                          "gives no mask (not kept).")
    def add_prompt(session_id: str, prompt: PromptIn):
        if (prompt.point is None) == (prompt.box is None):
            raise MaskmlError("give either a point or a box")
        return masks_response(manager.get(session_id).add_prompt(prompt.frame, prompt.object, prompt.point,
                                                                 prompt.label, prompt.box))

    @app.post("/api/sessions/{session_id}/undo", summary="Take back the last click or box")
    def undo(session_id: str):
        return masks_response(manager.get(session_id).undo())

    @app.patch("/api/sessions/{session_id}/objects/{object_id}", summary="Rename an object")
    def rename(session_id: str, object_id: int, body: NameIn):
        session = manager.get(session_id)
        session.rename(object_id, body.name)
        return session.describe()

    @app.delete("/api/sessions/{session_id}/objects/{object_id}", summary="Delete an object on every frame")
    def delete_object(session_id: str, object_id: int):
        session = manager.get(session_id)
        session.delete_object(object_id)
        return session.describe()

    @app.post("/api/sessions/{session_id}/track", summary="Track the objects; streams progress as NDJSON",
              description="One JSON object a line: {start, total}, then {frame, done, total} per frame, and "
                          "last {finished: true}, {cancelled: true, frame} or {error}. Starts from the "
                          "earliest frame changed since the last run.",
              responses={200: {"content": {"application/x-ndjson": {}}}})
    def track(session_id: str):
        session = manager.get(session_id)
        steps = session.track()

        def lines():
            started = False
            try:
                for step in steps:
                    started = True
                    yield json.dumps(step) + "\n"
            except MaskmlError as exc:
                yield json.dumps({"error": str(exc)}) + "\n"
            finally:
                if started:  # a client gone mid-stream stops the work at the next frame
                    session.cancel.set()
                steps.close()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @app.post("/api/sessions/{session_id}/cancel", summary="Stop the tracking under way (the frames done stay)")
    def cancel(session_id: str):
        manager.get(session_id).cancel.set()
        return {"cancelled": True}

    @app.get("/api/sessions/{session_id}/export/{name}", summary="Download masks.zip, annotations.json or the "
             "overlay (overlay.mp4 for a video, overlay.png for an image)",
             description="The files maskml track writes for the same clicks: indexed PNGs named after the "
                         "frames, COCO annotations (compressed RLE), the overlay video. 409 while the video's "
                         "masks are older than the last change.", response_class=FileResponse)
    def export(session_id: str, name: str):
        return FileResponse(manager.get(session_id).export(name), filename=name)

    return app
