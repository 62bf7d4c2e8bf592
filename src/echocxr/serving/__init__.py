"""HTTP serving: FastAPI app (app.py), dynamic batcher (batcher.py), SSE streaming, metrics and the web page."""
