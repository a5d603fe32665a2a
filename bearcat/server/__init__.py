"""The HTTP server (FastAPI app in `app.py`, the upload page in `page.html`) and the
request decoding it shares with the MLflow pyfunc (`codec.py`, no web framework)."""
