#!/usr/bin/env python
"""Post every image of a folder to a running Bearcat server and print the answers and
the accuracy (labels from file names: LABEL_anything.png; or, with --labels-file, from a
CSV list with the columns file,label, as `dataset.labels_file` reads it).

    python -m bearcat.serve model=outputs/exports/<run id> &
    python scripts/client_example.py data/mysite --url http://127.0.0.1:8000 [--lowercase]
    python scripts/client_example.py data/maths --labels-file data/maths/labels.csv

Only the standard library is used for HTTP, so this is easy to copy into a crawler.
"""
from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from bearcat.data.labels import LabelsFile, is_image_file, label_from_name


def solve(url: str, image: bytes, api_key: str | None = None, timeout: float = 10.0) -> dict:
    """POST /v1/predict with a JSON base64 body -> {"result", "confidence", "time_ms"}."""
    body = json.dumps({"image": base64.b64encode(image).decode("ascii")}).encode()
    headers = {"Content-Type": "application/json", **({"X-API-Key": api_key} if api_key else {})}
    request = urllib.request.Request(url.rstrip("/") + "/v1/predict", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as err:  # the server says what was wrong
        detail = json.loads(err.read() or b"{}").get("detail", err.reason)
        raise RuntimeError(f"HTTP {err.code}: {detail}") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="folder of labelled images")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server address")
    parser.add_argument("--api-key", default=None, help="the server's API key, if it needs one")
    parser.add_argument("--limit", type=int, default=0, help="post at most this many images (0 = all)")
    parser.add_argument("--lowercase", action="store_true", help="compare case-insensitively")
    parser.add_argument("--labels-file", type=Path, default=None,
                        help="CSV list (file,label) of the folder's labels; only the images it names are posted")
    args = parser.parse_args(argv)

    listed = LabelsFile(args.labels_file, key="--labels-file") if args.labels_file else None
    files = sorted(p for p in args.folder.iterdir() if is_image_file(p))
    if listed:
        files = [p for p in files if listed.label(p, args.folder)]
    if args.limit:
        files = files[:args.limit]
    if not files:
        print(f"{args.folder}: no images", file=sys.stderr)
        return 2
    right = 0
    for path in files:
        truth = listed.label(path, args.folder, args.lowercase) if listed else label_from_name(path, args.lowercase)
        answer = solve(args.url, path.read_bytes(), args.api_key)
        read = answer["result"].lower() if args.lowercase else answer["result"]
        right += read == truth
        mark = "ok " if read == truth else "BAD"
        print(f"{mark} {path.name}: {answer['result']!r} (truth {truth!r}, confidence "
              f"{answer['confidence']:.3f}, {answer['time_ms']:.1f} ms)")
    print(f"accuracy: {right}/{len(files)} = {right / len(files):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
