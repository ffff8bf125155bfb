"""Click-to-mask latency of `maskml serve`: the HTTP round trip of a click once the frame's embedding exists.

    python benchmarks/bench_serve.py                         # MobileSAM, examples/truck.jpg, 30 clicks
    python benchmarks/bench_serve.py --model sam_vit_b --runs 50 --checkpoint sam_vit_b_01ec64.pth

The server runs as `maskml serve` does (uvicorn, on a loopback port, in this process's thread); the
client keeps one HTTP connection open, as a browser does. Each run posts a click (POST .../prompts:
the mask decoder, the mask's upscaling to the image, the frame's masks written and sent back as RLE),
then undoes it, so every click is the first on its object. Each run also times the same click on
ImagePredictor.predict alone (the decoder and the upscaling, in this process), right before the HTTP
one: on a busy machine both see the same load, and their difference is what the server adds.
--checkpoint defaults to the official file in the cache, else to the tests' stand-in weights: the decoder's time does not depend on the weights'
values, but the server's does a little, through the runs of the mask it encodes (a real object has a
few per column, the stand-in weights' speckled mask tens of thousands).
"""
from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, machine_line, median_ms

TARGET_MS = 150


def stand_in_checkpoint(name: str, folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import FIXTURES, write_parity_checkpoint

    manifests = {"mobile_sam": "manifest_vit_t.json", "sam_vit_b": "manifest_vit_b.json"}
    if name not in manifests:
        raise SystemExit(f"--model {name}: give --checkpoint (stand-in weights exist for {', '.join(manifests)})")
    return write_parity_checkpoint(FIXTURES / "sam" / manifests[name], folder / f"{name}.pt")


def page_click_ms(url: str, image: Path, x: float, y: float, runs: int) -> list[float]:
    """ms from a mouse click on the page's canvas until the page has drawn the new mask (the click's request
    answered and the canvas repainted: window.maskml.busy back to 0 with one more click recorded), each click
    undone after, in headless Chromium (/usr/bin/chromium, driven by Playwright)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                             args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.set_default_timeout(120_000)
        page.goto(url)
        page.set_input_files("#file", str(image))
        page.wait_for_function("window.maskml.masks !== null && window.maskml.busy === 0")
        page.evaluate("fetch(`/api/sessions/${window.maskml.session.id}/frames/0/embed`, {method: 'POST'})")
        page.wait_for_function("window.maskml.busy === 0")
        time.sleep(2)  # the page's own embed request, if it came after ours
        box = page.locator("#marks").bounding_box()
        width, height = page.evaluate("[window.maskml.session.width, window.maskml.session.height]")
        at = (box["x"] + (x + 0.5) * box["width"] / width, box["y"] + (y + 0.5) * box["height"] / height)
        times = []
        for run in range(runs + 1):
            start = time.perf_counter()
            page.mouse.click(*at)
            page.wait_for_function("window.maskml.busy === 0 && window.maskml.session.prompts.length === 1",
                                   polling=1)
            if run:
                times.append(1000 * (time.perf_counter() - start))
            page.keyboard.press("z")
            page.wait_for_function("window.maskml.busy === 0 && window.maskml.session.prompts.length === 0")
        browser.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobile_sam")
    parser.add_argument("--checkpoint", help="default: the official file in the cache, else stand-in weights")
    parser.add_argument("--image", default=str(ROOT / "examples" / "truck.jpg"))
    parser.add_argument("--point", default="500,375", help="X,Y of the click (default 500,375: the truck)")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--browser", action="store_true",
                        help="also time click -> mask drawn in the page, in Debian's Chromium (headless, Playwright)")
    args = parser.parse_args()

    import numpy as np
    import torch

    import maskml
    from maskml.hub import cache_dir
    from maskml.io.images import read_image
    from maskml.serve import SessionManager, create_app, running_server
    from maskml.zoo import get_entry

    if args.threads:
        torch.set_num_threads(args.threads)
    x, y = (float(v) for v in args.point.split(","))
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = args.checkpoint
        weights = "given"
        if checkpoint is None:
            official = cache_dir() / get_entry(args.model).filename
            checkpoint, weights = (official, "official") if official.is_file() else (
                stand_in_checkpoint(args.model, Path(scratch)), "stand-in")
        model = maskml.load_model(args.model, checkpoint=checkpoint)
        image = read_image(args.image)

        predictor = maskml.ImagePredictor(model)
        embed_ms = median_ms(lambda: predictor.set_image(image), 3)

        with running_server(create_app(SessionManager(model))) as url:
            host, port = url.split("//")[1].rstrip("/").split(":")
            connection = http.client.HTTPConnection(host, int(port))

            def call(method: str, path: str, body: bytes | None = None, content_type: str = "application/json"):
                connection.request(method, path, body=body, headers={"Content-Type": content_type})
                response = connection.getresponse()
                data = response.read()
                if response.status >= 300:
                    raise SystemExit(f"{method} {path}: {response.status} {data.decode()}")
                return json.loads(data) if data else None

            session = call("POST", f"/api/sessions?filename={Path(args.image).name}", Path(args.image).read_bytes(),
                           "application/octet-stream")
            base = f"/api/sessions/{session['id']}"
            start = time.perf_counter()
            call("POST", f"{base}/frames/0/embed")
            upload_embed_ms = 1000 * (time.perf_counter() - start)
            click = json.dumps({"object": 1, "frame": 0, "point": [x, y]}).encode()
            times, decoder_times = [], []
            for run in range(args.runs + 1):
                start = time.perf_counter()
                predictor.predict(points=[(x, y)], labels=[1])
                middle = time.perf_counter()
                masks = call("POST", f"{base}/prompts", click)
                end = time.perf_counter()
                if run:  # the first is a warm-up
                    decoder_times.append(1000 * (middle - start))
                    times.append(1000 * (end - middle))
                call("POST", f"{base}/undo")
            counts = masks["objects"][0]["counts"] if masks["objects"] else [0]
            pixels, runs = sum(counts[1::2]), len(counts)
            connection.close()
            drawn = page_click_ms(url, Path(args.image), x, y, args.runs) if args.browser else None

    h, w = image.shape[:2]
    median, p90 = statistics.median(times), float(np.percentile(times, 90))
    overhead = statistics.median(t - d for t, d in zip(times, decoder_times))
    print(f"maskml serve click latency, {args.model} ({weights} weights), {Path(args.image).name} {w}x{h}, "
          f"{args.runs} clicks, mask of {pixels} pixels in {runs} runs")
    print(machine_line(torch.get_num_threads()))
    print("| what | ms |\n|---|---|")
    print(f"| click -> mask, HTTP round trip (median) | {median:.1f} |")
    print(f"| click -> mask, HTTP round trip (90th percentile) | {p90:.1f} |")
    print(f"| decoder alone (ImagePredictor.predict, median) | {statistics.median(decoder_times):.1f} |")
    print(f"| what the server adds (median of round trip - decoder) | {overhead:.1f} |")
    if drawn:
        print(f"| click -> mask drawn in the page, Chromium (median) | {statistics.median(drawn):.1f} |")
        p90_drawn = float(np.percentile(drawn, 90))
        print(f"| click -> mask drawn in the page, Chromium (90th percentile) | {p90_drawn:.1f} |")
    print(f"| embedding (set_image, median of 3) | {embed_ms:.0f} |")
    print(f"| embedding through the API (POST .../embed, once) | {upload_embed_ms:.0f} |")
    seen = statistics.median(drawn) if drawn else median
    print(f"target: click -> mask <= {TARGET_MS} ms ({'in the page' if drawn else 'HTTP round trip'}): "
          f"{'met' if seen <= TARGET_MS else 'NOT met'}")


if __name__ == "__main__":
    main()
