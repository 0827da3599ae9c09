"""The original Python seed's predict route (FastAPI + uvicorn + Keras 3), with our weights.

    python seed_service.py --port 8123 --model-dir models/seed-cnn

The end-to-end baseline our Rust service is compared against. It keeps the seed's per-request
work as it was, because that is what is being measured:
- `POST /api/predict`: multipart field `file`, Bearer token (env CATSDOGS_REF_TOKEN, default
  "bench-token"); 400 unless the part's content type is image/*; PIL open -> RGB ->
  `resize((128, 128))` with PIL's default filter (bicubic for RGB) -> uint8 array ->
  `model.predict` called inside the async handler (it blocks the event loop, as in the seed)
  -> the seed's response JSON. The model divides by 255 itself (a Rescaling layer), as the
  seed's did.
- Each prediction's time is appended as a CSV line (timestamp, inference_time_ms, success) to
  a monitoring file, opened and closed per request as the seed did with
  data/processed/monitoring_inference.csv; here the file lives in a temporary directory
  removed at shutdown.
- uvicorn runs with its defaults (access log on, on stdout), as the seed's run_api.py did:
  the caller must drain or redirect the output.
- `GET /health` (the seed's route) and `GET /api/health`: {"status": "healthy", "model_loaded": true}.
The seed's PostgreSQL writes, HTML pages and feedback/metrics routes are left out.
"""

import argparse
import csv
import io
import os
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from datetime import datetime
from functools import wraps
from pathlib import Path

import numpy as np
import uvicorn
from fastapi import Depends, FastAPI, File, HTTPException, UploadFile, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image, UnidentifiedImageError

import keras_seed

TOKEN = os.environ.get("CATSDOGS_REF_TOKEN", "bench-token")
IMAGE_SIZE = (keras_seed.INPUT_SIZE, keras_seed.INPUT_SIZE)

model = None  # set in main(), before the server starts
monitoring_file = None  # set while the server runs


@asynccontextmanager
async def lifespan(_app):
    """Keeps the monitoring CSV in a temporary directory removed at shutdown (uvicorn ends
    the process by re-raising SIGTERM/SIGINT after shutting down, so atexit would not run)."""
    global monitoring_file
    with tempfile.TemporaryDirectory(prefix="catsdogs-seed-") as d:
        monitoring_file = Path(d) / "monitoring_inference.csv"
        print(f"seed reference service: monitoring CSV {monitoring_file}", file=sys.stderr, flush=True)
        yield


app = FastAPI(title="catsdogs seed reference", lifespan=lifespan)
bearer = HTTPBearer()


def verify_token(credentials: HTTPAuthorizationCredentials = Depends(bearer)):
    if credentials.credentials != TOKEN:
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="Token invalide",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return credentials.credentials


def log_inference_time(inference_time_ms, success):
    """The seed's monitoring: one CSV line per prediction, header written on first use."""
    if not monitoring_file.exists():
        with open(monitoring_file, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow(["timestamp", "inference_time_ms", "success"])
    with open(monitoring_file, "a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerow([datetime.now().isoformat(), round(inference_time_ms, 2), success])


def time_inference(func):
    """Times the route and logs it, failed requests included (the seed's decorator)."""

    @wraps(func)
    async def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            result = await func(*args, **kwargs)
        except Exception:
            log_inference_time((time.perf_counter() - start) * 1000, success=False)
            raise
        log_inference_time((time.perf_counter() - start) * 1000, success=True)
        return result

    return wrapper


def preprocess(image_data):
    image = Image.open(io.BytesIO(image_data))
    if image.mode != "RGB":
        image = image.convert("RGB")
    image = image.resize(IMAGE_SIZE)
    return np.expand_dims(np.array(image), axis=0)


@app.post("/api/predict")
@time_inference
async def predict(file: UploadFile = File(...), token: str = Depends(verify_token)):
    # The seed called file.content_type.startswith() and so answered 500 to a part without
    # a content type; here that is a 400 like any non-image part.
    if not (file.content_type or "").startswith("image/"):
        raise HTTPException(status_code=400, detail="Format d'image invalide")
    image_data = await file.read()
    try:
        batch = preprocess(image_data)
    except (UnidentifiedImageError, OSError) as e:
        raise HTTPException(status_code=400, detail="Image invalide") from e
    score = float(model.predict(batch, verbose=0)[0][0])
    prediction, confidence = ("Dog", score) if score > 0.5 else ("Cat", 1 - score)
    return {
        "filename": file.filename,
        "prediction": prediction,
        "confidence": f"{confidence:.2%}",
        "probabilities": {"cat": f"{1 - score:.2%}", "dog": f"{score:.2%}"},
    }


@app.get("/health")
@app.get("/api/health")
async def health():
    return {"status": "healthy", "model_loaded": model is not None}


def main():
    global model
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model-dir", type=Path, required=True, help="our seed CNN dir (model.safetensors)")
    args = p.parse_args()
    model = keras_seed.load_ours(keras_seed.build(), args.model_dir / "model.safetensors")
    uvicorn.run(app, host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
