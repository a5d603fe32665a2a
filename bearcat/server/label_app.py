"""The labelling page (`python -m bearcat.label`): `GET /` the page, `GET /api/state`
the current image and counts, `GET /api/image/{id}` an image's bytes, `POST /api/answer`
{"id", "answer"}, `POST /api/skip` {"id"}, `POST /api/undo`. The queue itself is bearcat/labelling.py."""
from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse

from bearcat.labelling import LabelQueue

PAGE = Path(__file__).with_name("label.html")


def create_label_app(queue: LabelQueue, model_name: str | None = None) -> FastAPI:
    app = FastAPI(title="Bearcat labelling", version="1")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/api/state")
    def state():
        return {**queue.state(), "model": model_name}

    @app.get("/api/image/{item_id}")
    def image(item_id: str):
        with queue.lock:
            known = {it.id: it.path for it in queue.pending} | {it.id: it.path for it, _ in queue.history}
        if item_id not in known:
            raise HTTPException(404, f"no image {item_id} in the queue")
        path = known[item_id]
        return FileResponse(path, media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream",
                            headers={"Cache-Control": "no-store"})

    @app.post("/api/answer")
    async def answer(request: Request):
        try:
            body = await request.json()
            item_id, text = str(body["id"]), body["answer"]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise HTTPException(422, 'send JSON {"id": ..., "answer": ...}') from None
        if not isinstance(text, str):
            raise HTTPException(422, f'"answer" must be a string, not {type(text).__name__}')
        try:
            saved = queue.answer(item_id, text)
        except KeyError:
            raise HTTPException(409, f"image {item_id} is not waiting for an answer (answered already?)") from None
        except (ValueError, FileExistsError) as err:
            raise HTTPException(400, str(err)) from None
        return {**queue.state(), "saved_as": saved.name, "model": model_name}

    @app.post("/api/skip")
    async def skip(request: Request):
        try:
            item_id = str((await request.json())["id"])
        except (ValueError, KeyError, TypeError, RecursionError):
            raise HTTPException(422, 'send JSON {"id": ...}') from None
        try:
            skipped = queue.skip(item_id)
        except KeyError:
            raise HTTPException(409, f"image {item_id} is not waiting for an answer (answered already?)") from None
        return {**queue.state(), "skipped_name": skipped.path.name, "model": model_name}

    @app.post("/api/undo")
    def undo():
        undone = queue.undo()
        if undone is None:
            raise HTTPException(409, "nothing to undo in this session")
        return {**queue.state(), "undone": undone, "model": model_name}

    return app
