"""The peer a competent Python engineer writes in an afternoon: LitServe + ONNX Runtime
serving *our own* model.onnx, with the same preprocessing geometry as catsdogs.

    python litserve_peer.py --port 8124 --model-dir models/effnet-lite0

- `POST /predict`, multipart field `file`: PIL opens the upload, `Image.draft` asks
  libjpeg-turbo for the smallest DCT scale that keeps the geometry (as catsdogs does),
  EXIF orientation, RGB, short side to `center_crop_from` then the centre `size` crop (or the
  whole image squashed to `size` for the seed CNN), bilinear -> uint8 NHWC.
- Dynamic batching by LitServe: up to 8 images within 2 ms; 2 worker processes with one ONNX
  Runtime thread each (the 2 cores of our machines).
- Response: {"label": "cat"|"dog", "p_dog": float}. No authentication, no storage, no
  logs: the peer does strictly less work per request than catsdogs.
"""

import argparse
import io
import json
import os

import litserve as ls
import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps


class CatsDogsPeer(ls.LitAPI):
    def __init__(self, model_dir, **kwargs):
        super().__init__(**kwargs)
        self.model_dir = model_dir

    def setup(self, device):
        with open(os.path.join(self.model_dir, "model.json")) as f:
            pre = json.load(f)["preprocessing"]
        self.size = pre["size"]
        self.crop_from = pre.get("center_crop_from", 0)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            os.path.join(self.model_dir, "model.onnx"), opts, providers=["CPUExecutionProvider"]
        )

    def decode_request(self, request):
        upload = request["file"]
        data = upload.file.read() if hasattr(upload, "file") else upload
        img = Image.open(io.BytesIO(data))
        need = self.crop_from or self.size
        # The smallest JPEG DCT scale whose short side stays >= need (a no-op for PNG).
        w, h = img.size
        scale = need / min(w, h)
        img.draft("RGB", (max(1, int(w * scale)), max(1, int(h * scale))))
        img = ImageOps.exif_transpose(img).convert("RGB")
        w, h = img.size
        if self.crop_from:
            side = min(w, h) * self.size / self.crop_from
            box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
            img = img.resize((self.size, self.size), Image.BILINEAR, box=box)
        else:
            img = img.resize((self.size, self.size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, x):
        return self.session.run(["p_dog"], {"image": x})[0]

    def unbatch(self, output):
        return list(np.asarray(output).reshape(-1))

    def encode_response(self, p_dog):
        p = float(p_dog)
        return {"label": "dog" if p >= 0.5 else "cat", "p_dog": p}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    api = CatsDogsPeer(args.model_dir, max_batch_size=8, batch_timeout=0.002)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers)
    server.run(port=args.port, host="127.0.0.1", generate_client_file=False)


if __name__ == "__main__":
    main()
