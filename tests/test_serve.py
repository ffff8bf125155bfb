"""`maskml serve`'s HTTP API and sessions: clicks, undo, tracking, exports, limits, tokens, expiry, bad input."""
from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import urllib.request
import zipfile

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import maskml
from maskml.io.rle import decode_rle
from maskml.predict.pipeline import Prompt, prompt_masks
from maskml.serve import Limits, SessionManager, create_app

LOCAL = "http://127.0.0.1"


@pytest.fixture()
def frame_png(small_judo) -> bytes:
    return (small_judo / "00000.png").read_bytes()


def client_for(serve_models, **kwargs) -> tuple[TestClient, SessionManager]:
    token = kwargs.pop("token", None)
    manager = SessionManager(*serve_models, **kwargs)
    return TestClient(create_app(manager, token), base_url=LOCAL), manager


def upload(client, data: bytes, name: str, **kwargs):
    return client.post("/api/sessions", params={"filename": name}, content=data, **kwargs)


def frame_ids(masks: dict) -> np.ndarray:
    """The API's RLE masks of a frame as one H x W id map."""
    ids = np.zeros(masks["size"], np.uint8)
    for obj in masks["objects"]:
        ids[decode_rle({"size": masks["size"], "counts": obj["counts"]}).numpy()] = obj["id"]
    return ids


def test_clicks_give_the_prompters_masks_undo_and_exports(serve_models, frame_png, small_judo):
    client, manager = client_for(serve_models)
    with client:
        session = upload(client, frame_png, "frame.png").json()
        assert (session["kind"], session["width"], session["height"], session["frames"]) == ("image", 160, 96, 1)
        base = f"/api/sessions/{session['id']}"
        assert client.post(f"{base}/frames/0/embed").json() == {"frame": 0, "embedded": True}
        first = client.post(f"{base}/prompts", json={"object": 1, "point": [80, 48]}).json()
        second = client.post(f"{base}/prompts", json={"object": 1, "point": [10, 10], "label": 0}).json()

        predictor = maskml.ImagePredictor(serve_models[0])
        predictor.set_image(np.array(Image.open(small_judo / "00000.png")))
        for masks, points, labels in ((first, [(80, 48)], [1]), (second, [(80, 48), (10, 10)], [1, 0])):
            expected = prompt_masks(predictor, [Prompt(1, points=points, labels=labels)]).numpy()
            assert np.array_equal(frame_ids(masks), expected)
        png = client.get(f"{base}/frames/0/masks", params={"format": "png"})
        assert png.headers["content-type"] == "image/png"
        assert np.array_equal(np.array(Image.open(io.BytesIO(png.content))), frame_ids(second))

        state = client.get(base).json()
        assert state["prompts"] == [{"frame": 0, "object": 1, "points": [[80.0, 48.0], [10.0, 10.0]], "labels": [1, 0],
                                     "box": None}]
        outside = client.post(f"{base}/prompts", json={"object": 1, "point": [400, 10]})
        assert outside.status_code == 400 and "outside the 160x96 frame" in outside.json()["detail"]

        assert np.array_equal(frame_ids(client.post(f"{base}/undo").json()), frame_ids(first))
        client.patch(f"{base}/objects/1", json={"name": "judoka"})
        with zipfile.ZipFile(io.BytesIO(client.get(f"{base}/export/masks.zip").content)) as archive:
            assert archive.namelist() == ["masks/00000.png"]
            assert np.array_equal(np.array(Image.open(archive.open("masks/00000.png"))), frame_ids(first))
        coco = client.get(f"{base}/export/annotations.json").json()
        assert coco["categories"] == [{"id": 1, "name": "judoka"}]
        assert np.array_equal(decode_rle(coco["annotations"][0]["segmentation"]).numpy(), frame_ids(first) == 1)
        assert client.get(f"{base}/export/overlay.png").headers["content-type"] == "image/png"
        assert client.get(f"{base}/export/overlay.mp4").status_code == 404

        assert client.post(f"{base}/undo").status_code == 200
        assert client.get(base).json()["objects"] == [] and client.post(f"{base}/undo").status_code == 409
        folder = manager.sessions[session["id"]].folder
        assert client.delete(base).status_code == 204 and not folder.exists()
        assert client.get(base).status_code == 404
    assert not manager.root.exists()  # the server's work folder goes when it stops


def test_two_sessions_do_not_see_or_disturb_each_others_objects(serve_models, frame_png):
    client, manager = client_for(serve_models)
    with client:
        a, b = (f"/api/sessions/{upload(client, frame_png, 'same.png').json()['id']}" for _ in range(2))
        client.post(f"{a}/prompts", json={"object": 1, "point": [80, 48]})
        assert client.get(b).json()["objects"] == [] and client.get(f"{b}/frames/0/masks").json()["objects"] == []
        assert client.post(f"{b}/undo").status_code == 409  # nothing of its own to undo, and not a's click
        assert client.delete(f"{b}/objects/1").status_code == 404
        assert client.delete(b).status_code == 204
        assert [o["id"] for o in client.get(a).json()["objects"]] == [1]
        assert [o["id"] for o in client.get(f"{a}/frames/0/masks").json()["objects"]] == [1]
        assert len(list(manager.root.iterdir())) == 1


def test_tracking_streams_progress_cancels_and_resumes_from_the_changed_frame(serve_models, small_clip):
    manager = SessionManager(*serve_models)
    try:
        upload_ = manager.start_upload("clip.mp4")
        upload_.write(small_clip.read_bytes())
        session = manager.open(upload_)
        assert session.frames == 10
        session.add_prompt(0, 1, point=(80, 48))
        steps = session.track()
        assert next(steps) == {"start": 0, "total": 10}
        assert next(steps) == {"frame": 0, "done": 1, "total": 10}
        session.cancel.set()
        assert next(steps) == {"cancelled": True, "frame": 1}
        assert session.stale_from == 1 and not session.busy.locked()
        steps = list(session.track())  # on from the last saved tracker state, not from frame 0
        assert steps[0]["start"] == 1 and steps[-1] == {"finished": True} and session.stale_from is None
        session.add_prompt(8, 1, point=(40, 30), label=1)
        assert session.stale_from == 8
        steps = session.track()
        assert next(steps)["start"] == 8
        with pytest.raises(maskml.MaskmlError, match="this session is tracking"):
            session.add_prompt(0, 2, point=(20, 20))
        with pytest.raises(maskml.MaskmlError, match="this session is tracking"):
            session.track()
        assert list(steps)[-1] == {"finished": True}
    finally:
        manager.shutdown()


def test_limits_and_bad_uploads_are_clear_and_leave_nothing(serve_models, frame_png, small_clip):
    client, manager = client_for(serve_models, limits=Limits(max_upload_bytes=len(frame_png) + 10, max_frames=5,
                                                             max_sessions=2))
    with client:
        too_big = upload(client, frame_png + bytes(100), "big.png")
        assert too_big.status_code == 413 and "upload limit" in too_big.json()["detail"]
        with client_for(serve_models, limits=Limits(max_frames=5))[0] as client_limits:
            long = upload(client_limits, small_clip.read_bytes(), "long.mp4")
        assert long.status_code == 413 and "more than 5 frames" in long.json()["detail"]
        kind = upload(client, b"MZ", "tool.exe")
        assert kind.status_code == 415 and "image" in kind.json()["detail"] and "video" in kind.json()["detail"]
        corrupt = upload(client, b"\x89PNG not really", "broken.png")
        assert corrupt.status_code == 415 and "broken.png cannot be read as an image" in corrupt.json()["detail"]
        assert upload(client, b"\x00" * 100, "broken.mp4").status_code == 415
        # the client's name is only a suffix to the server: no path is made from it
        sneaky = upload(client, frame_png, "../../escape.png")
        assert sneaky.status_code == 201
        folder = manager.sessions[sneaky.json()["id"]].folder
        assert folder.parent == manager.root and sorted(p.name for p in folder.iterdir()) == ["labels", "upload.png"]
        assert sneaky.json()["name"] == "../../escape.png"  # shown to its owner as given, nothing more
        assert upload(client, frame_png, "second.png").status_code == 201
        third = upload(client, frame_png, "third.png")
        assert third.status_code == 429 and "2 sessions" in third.json()["detail"]
        assert len(list(manager.root.iterdir())) == 2  # the refused uploads left no folder
        sid = next(iter(manager.sessions))
        wrong_frame = client.post(f"/api/sessions/{sid}/prompts", json={"object": 1, "frame": 3, "point": [1, 1]})
        assert wrong_frame.status_code == 400 and "no frame 3" in wrong_frame.json()["detail"]
        assert client.post(f"/api/sessions/{sid}/prompts", json={"object": 0, "point": [1, 1]}).status_code == 422
        assert client.post(f"/api/sessions/{sid}/track").json()["detail"].startswith("an image has nothing to track")


def test_idle_sessions_expire_with_their_files(serve_models, frame_png):
    now = [0.0]
    client, manager = client_for(serve_models, limits=Limits(idle_seconds=60), clock=lambda: now[0])
    with client:
        sid = upload(client, frame_png, "a.png").json()["id"]
        folder = manager.sessions[sid].folder
        now[0] = 59
        assert client.get(f"/api/sessions/{sid}").status_code == 200  # a use restarts the idle time
        now[0] = 59 + 61
        gone = client.get(f"/api/sessions/{sid}")
        assert gone.status_code == 410 and "expired after 1 minutes" in gone.json()["detail"]
        assert not folder.exists()


def test_a_token_is_required_on_every_request(serve_models):
    client, _ = client_for(serve_models, token="s3cret")
    with client:
        missing = client.get("/api/info")
        assert missing.status_code == 401 and "no access token" in missing.json()["detail"]
        assert client.get("/api/info", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.get("/api/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        client.cookies.clear()  # which that answer set
        assert client.get("/static/app.js").status_code == 401
        page = client.get("/", params={"token": "s3cret"}, follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/"
        assert client.get("/").status_code == 200  # the cookie carries it from there on
        assert client.get("/openapi.json").json()["info"]["title"] == "maskml serve"


def test_without_a_token_only_loopback_names_are_served(serve_models):
    client, _ = client_for(serve_models)
    with client:
        assert client.get("/api/info").status_code == 200
        assert client.get("/api/info", headers={"Host": "localhost:8000"}).status_code == 200
        rebound = client.get("/api/info", headers={"Host": "attacker.example:8000"})
        assert rebound.status_code == 403 and "127.0.0.1 or localhost only" in rebound.json()["detail"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_command(sam_checkpoints, cutie_small_checkpoint, *extra) -> list[str]:
    return [sys.executable, "-m", "maskml", "serve", "--checkpoint", str(sam_checkpoints["mobile_sam"]),
            "--tracker-checkpoint", str(cutie_small_checkpoint), *extra]


def test_serve_prints_a_token_for_other_hosts_and_serves_the_page(sam_checkpoints, cutie_small_checkpoint):
    server = subprocess.Popen(serve_command(sam_checkpoints, cutie_small_checkpoint, "--host", "0.0.0.0",
                                            "--port", "0"), stdout=subprocess.PIPE, text=True)
    try:
        url = re.search(r"open (http://127\.0\.0\.1:\d+/\?token=(\S+))", server.stdout.readline())
        base, token = url.group(1).split("?")[0], url.group(2)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + "api/info")
        assert refused.value.code == 401
        request = urllib.request.Request(base + "api/info", headers={"Authorization": f"Bearer {token}"})
        assert json.load(urllib.request.urlopen(request))["models"] == "mobile_sam + cutie_small"
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())  # keeps the cookie, as a browser
        with browser.open(url.group(1)) as page:
            assert page.url == base and b"<title>maskml</title>" in page.read()
        with browser.open(base + "static/app.js") as script:
            assert script.status == 200
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_model_that_fails_to_load_is_one_line_and_frees_the_port(tmp_path, cutie_small_checkpoint):
    port = free_port()
    done = subprocess.run([sys.executable, "-m", "maskml", "serve", "--port", str(port), "--checkpoint",
                           str(tmp_path / "missing.pt"), "--tracker-checkpoint", str(cutie_small_checkpoint)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "missing.pt" in done.stderr
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # released
        sock.listen()
        busy = subprocess.run([sys.executable, "-m", "maskml", "serve", "--port", str(port)], capture_output=True,
                              text=True, timeout=120)
    assert busy.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in busy.stderr


def opened(manager: SessionManager, path, name: str):
    upload_ = manager.start_upload(name)
    upload_.write(path.read_bytes())
    return manager.open(upload_)


def test_a_tracker_that_is_not_cutie_is_one_clear_line(capsys):
    from maskml.cli import main

    assert main(["serve", "--tracker", "mobile_sam", "--port", "0"]) == 2
    assert "--tracker mobile_sam is an image model, not a tracker: give it as --model" in capsys.readouterr().err
    assert main(["serve", "--tracker", "sam2.1_hiera_t", "--port", "0"]) == 2
    assert "SAM 2 video sessions are not served yet" in capsys.readouterr().err


def test_serve_on_onnxruntime_gives_pytorchs_masks(mobile_sam_export, cutie_onnx_export, serve_models, small_clip):
    server = subprocess.Popen([sys.executable, "-m", "maskml", "serve", "--backend", "onnxruntime", "--port", "0",
                               "--checkpoint", str(mobile_sam_export), "--tracker-checkpoint", str(cutie_onnx_export)],
                              stdout=subprocess.PIPE, text=True)
    try:
        base = re.search(r"open (http://127\.0\.0\.1:\d+/)", server.stdout.readline()).group(1)

        def call(path: str, body=None, data=None, method="POST"):
            data = json.dumps(body).encode() if body is not None else data
            request = urllib.request.Request(base + path, data=data, method=method,
                                             headers={"Content-Type": "application/json"})
            return urllib.request.urlopen(request, timeout=300)

        session = json.load(call("api/sessions?filename=clip.mp4", data=small_clip.read_bytes()))
        path = f"api/sessions/{session['id']}"
        call(f"{path}/prompts", {"object": 1, "frame": 0, "point": [80, 48]})
        with call(f"{path}/track") as stream:
            assert json.loads(stream.read().decode().splitlines()[-1]) == {"finished": True}
        served = [frame_ids(json.load(call(f"{path}/frames/{i}/masks", method="GET"))) for i in range(10)]
    finally:
        server.terminate()
        server.wait(timeout=30)
    manager = SessionManager(*serve_models)
    try:
        session = opened(manager, small_clip, "clip.mp4")
        session.add_prompt(0, 1, point=(80, 48))
        list(session.track())
        for i, ids in enumerate(served):
            want = session.labels(i) == 1
            iou = ((ids == 1) & want).sum() / max(((ids == 1) | want).sum(), 1)
            assert want.any() and iou >= 0.9, f"frame {i}: IoU {iou:.3f} with PyTorch's masks"
    finally:
        manager.shutdown()
