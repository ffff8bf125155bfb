"""`maskml serve` end to end in a real browser: Debian's Chromium, headless, driven by Playwright.

`make test` installs both (make browser-test-deps: apt's chromium, pip's playwright; Playwright's own
browser download is never used)."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskml.cli import main
from maskml.io.draw import palette_color
from maskml.serve import Limits, SessionManager, create_app, running_server
from conftest import FIXTURES
from test_serve import frame_ids

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make browser-test-deps` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(serve_models):
    with running_server(create_app(SessionManager(*serve_models), models="mobile_sam + cutie_small")) as url:
        yield url


@pytest.fixture()
def page(browser, server):
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(120_000)
    page.goto(server)
    yield page
    context.close()


def settle(page) -> None:
    """Wait until the page has no request under way and is not tracking."""
    page.wait_for_function("window.maskml.busy === 0 && !window.maskml.tracking")


def open_file(page, path: Path) -> None:
    page.set_input_files("#file", str(path))
    page.wait_for_function("window.maskml.masks !== null")
    settle(page)


def canvas_pixels(page) -> np.ndarray:
    width, height, data = page.evaluate("""() => {
        const view = document.querySelector('#view');
        return [view.width, view.height, Array.from(view.getContext('2d').getImageData(0, 0, view.width, view.height).data)];
    }""")
    return np.array(data, np.uint8).reshape(height, width, 4)[..., :3]


def on_frame(page, x: float, y: float) -> tuple[float, float]:
    """Page coordinates of pixel (x, y) of the frame shown."""
    box = page.locator("#marks").bounding_box()
    width, height = page.evaluate("[window.maskml.session.width, window.maskml.session.height]")
    return box["x"] + (x + 0.5) * box["width"] / width, box["y"] + (y + 0.5) * box["height"] / height


def click(page, x: float, y: float, button: str = "left") -> None:
    before = page.evaluate("window.maskml.session.prompts.map(p => p.points.length + (p.box ? 1 : 0))")
    page.mouse.click(*on_frame(page, x, y), button=button)
    page.wait_for_function(f"JSON.stringify(window.maskml.session.prompts.map(p => p.points.length + (p.box ? 1 : 0)))"
                           f" !== {json.dumps(json.dumps(before, separators=(',', ':')))}"
                           f" || document.querySelector('#message').className === 'error'")
    settle(page)
    assert page.locator("#message").get_attribute("class") != "error", page.locator("#message").inner_text()


def retracked(page) -> None:
    """Wait for the re-track a change schedules to run and finish."""
    page.wait_for_function("window.maskml.session.stale_from === null && !window.maskml.tracking"
                           " && window.maskml.retrack === null")
    settle(page)
    assert page.locator("#message").inner_text().startswith("Tracked"), page.locator("#message").inner_text()


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """The judo frames at 160x96 back and forth, 55 frames: tracking it lasts long enough to cancel."""
    import cv2

    from maskml.io.video import VideoWriter

    frames = sorted((FIXTURES / "cutie" / "inputs" / "images" / "judo").glob("*.jpg"))
    order = (list(range(10)) + list(range(8, 0, -1))) * 3 + [0]
    clip = tmp_path_factory.mktemp("long_clip") / "judo_long.mp4"
    with VideoWriter(clip, fps=10, size=(160, 96), codecs=("mp4v",)) as video:
        for index in order:
            image = np.array(Image.open(frames[index]).convert("RGB"))
            video.write(cv2.resize(image, (160, 96), interpolation=cv2.INTER_AREA))
    return clip


def test_a_click_draws_the_mask_on_the_canvas(page, small_judo):
    open_file(page, small_judo / "00000.png")
    plain = canvas_pixels(page)
    click(page, 80, 48)
    click(page, 10, 10, button="right")  # a background click
    assert page.evaluate("window.maskml.session.prompts") == [
        {"frame": 0, "object": 1, "points": [[80, 48], [10, 10]], "labels": [1, 0], "box": None}]
    ids = frame_ids(page.evaluate("window.maskml.masks"))
    assert (ids == 1).any() and (ids == 0).any()
    tinted = plain * 0.5 + np.array(palette_color(1)) * 0.5
    expected = np.where((ids == 1)[..., None], tinted, plain)
    assert np.abs(canvas_pixels(page).astype(float) - expected).max() <= 1
    assert page.locator("#objects li.selected input").input_value() == "object 1"
    page.keyboard.press("z")  # undo the background click
    page.wait_for_function("window.maskml.session.prompts[0].points.length === 1")
    assert "error" not in (page.locator("#message").get_attribute("class") or "")


def test_track_correct_and_export_as_maskml_track(page, small_clip, tmp_path, sam_checkpoints,
                                                  cutie_small_checkpoint):
    open_file(page, small_clip)
    assert page.evaluate("[window.maskml.session.kind, window.maskml.session.frames]") == ["video", 10]
    click(page, 80, 48)
    page.click("#new-object")
    start, end = on_frame(page, 100, 20), on_frame(page, 150, 90)  # object 2 from a box
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=4)
    page.mouse.up()
    page.wait_for_function("window.maskml.session.objects.length === 2")
    settle(page)
    page.click("#track")
    page.wait_for_function("window.maskml.session.stale_from === null && !window.maskml.tracking")
    settle(page)

    page.locator("#frame").fill("5")  # scrub to frame 5, select object 1 and correct it there
    page.wait_for_function("window.maskml.frame === 5")
    page.click("#objects li[data-id='1']")
    click(page, 40, 60)
    assert page.evaluate("window.maskml.session.stale_from") == 5
    retracked(page)  # by itself, from frame 5
    assert page.evaluate("window.maskml.session.prompts.length") == 3

    exported = tmp_path / "app"
    for name in ("masks.zip", "annotations.json", "overlay"):
        with page.expect_download() as download:
            page.click(f".export[data-name='{name}']")
        download.value.save_as(exported / download.value.suggested_filename)

    args = ["track", str(small_clip), "--checkpoint", str(cutie_small_checkpoint), "--prompter", "mobile_sam",
            "--prompter-checkpoint", str(sam_checkpoints["mobile_sam"]), "--out", str(tmp_path / "cli"),
            "--coco", str(tmp_path / "cli.json"), "--overlay", str(tmp_path / "cli.mp4")]
    prompts = page.evaluate("window.maskml.session.prompts")
    assert [(p["frame"], p["object"]) for p in prompts] == [(0, 1), (0, 2), (5, 1)]
    for p in prompts:
        args += [f"--point={p['object']}:{p['frame']}:{x:g},{y:g},{label}"
                 for (x, y), label in zip(p["points"], p["labels"])]
        if p["box"]:
            args.append(f"--box={p['object']}:{p['frame']}:{','.join(f'{v:g}' for v in p['box'])}")
    assert main(args) == 0

    with zipfile.ZipFile(exported / "masks.zip") as archive:
        names = archive.namelist()
        assert names == [f"masks/{i:05d}.png" for i in range(10)]
        for name in names:
            assert archive.read(name) == (tmp_path / "cli" / Path(name).name).read_bytes(), name
    assert (exported / "annotations.json").read_bytes() == (tmp_path / "cli.json").read_bytes()
    assert (exported / "overlay.mp4").read_bytes() == (tmp_path / "cli.mp4").read_bytes()
    coco = json.loads((exported / "annotations.json").read_text())
    assert {a["category_id"] for a in coco["annotations"]} == {1, 2} and len(coco["images"]) == 10


def test_refusals_are_shown_in_the_page(browser, serve_models, tmp_path):
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(tiny)
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(big)
    (tmp_path / "notes.txt").write_text("not an image")
    limits = Limits(max_upload_bytes=4096, max_sessions=1)
    with running_server(create_app(SessionManager(*serve_models, limits=limits))) as url:
        pages = []
        for _ in range(2):
            context = browser.new_context()
            pages.append(context.new_page())
            pages[-1].goto(url)
        first, second = pages
        for path, words in ((big, "Too large: big.png is larger than this server's upload limit"),
                            (tmp_path / "notes.txt", "Unsupported file: notes.txt is not a file type")):
            first.set_input_files("#file", str(path))
            first.wait_for_function("document.querySelector('#message').className === 'error'")
            assert first.locator("#message").inner_text().startswith(words)
        open_file(first, tiny)
        second.set_input_files("#file", str(tiny))
        second.wait_for_function("document.querySelector('#message').className === 'error'")
        assert second.locator("#message").inner_text().startswith("Too many sessions: this server holds 1 sessions")
        for page in pages:
            page.context.close()


def test_cancel_keeps_the_frames_done_and_a_click_while_tracking_corrects_and_re_tracks(page, long_clip):
    open_file(page, long_clip)
    frames = page.evaluate("window.maskml.session.frames")
    assert frames == 55
    click(page, 80, 48)
    page.click("#track")
    page.wait_for_function("document.querySelector('#progress').value >= 2")
    page.click("#cancel")
    settle(page)
    assert page.locator("#message").inner_text().startswith("Tracking cancelled at frame")
    cancelled_at = page.evaluate("window.maskml.session.stale_from")
    assert 2 <= cancelled_at < frames
    page.locator("#frame").fill("1")  # a frame tracked before the cancel keeps its masks
    page.wait_for_function("window.maskml.frame === 1")
    settle(page)
    masks = page.evaluate("window.maskml.masks")
    assert not masks["stale"] and [o["id"] for o in masks["objects"]] == [1]

    page.click("#track")  # goes on from the cancelled frame; a click on frame 1 stops it, corrects, re-tracks
    page.wait_for_function("window.maskml.tracking && document.querySelector('#progress').value >= 1")
    click(page, 60, 40)
    assert page.evaluate("window.maskml.session.prompts.map(p => [p.frame, p.points.length])") == [[0, 1], [1, 1]]
    retracked(page)
    done, total = page.evaluate("[document.querySelector('#progress').value, document.querySelector('#progress').max]")
    assert done == total >= frames - 1  # re-tracked from frame 1 (or the tracker state saved before it) to the end
