"""Drives catsdogs' Open Inference Protocol gRPC service with tritonclient.grpc (a client
written elsewhere). Usage: triton_grpc_client.py HOST:PORT TOKEN EXPECTED_LABELS PHOTO...
where EXPECTED_LABELS is the comma-separated labels the REST API gave for the photos.
Exits non-zero on the first failed check."""
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

url, token, expected = sys.argv[1:4]
photos = sys.argv[4:]
expected = expected.split(",")
headers = {"authorization": f"Bearer {token}"}
client = grpcclient.InferenceServerClient(url=url)

assert client.is_server_live(), "server not live"
assert client.is_server_ready(), "server not ready"
assert client.is_model_ready("catsdogs", headers=headers), "model not ready"
meta = client.get_model_metadata("catsdogs", headers=headers, as_json=True)
assert meta["name"] == "catsdogs", meta
# p_dog and label, and the explanation outputs the shipped graph can give (explain: true).
assert [o["name"] for o in meta["outputs"]] == ["p_dog", "label", "evidence", "crop"], meta
server = client.get_server_metadata(headers=headers, as_json=True)
assert server["name"] == "catsdogs", server

# Without the token the server refuses.
try:
    client.get_model_metadata("catsdogs")
except InferenceServerException as e:
    assert "UNAUTHENTICATED" in str(e.status()) or "unauthorized" in str(e), e
else:
    raise AssertionError("metadata answered without a token")

# All photos in one request, as encoded files (raw BYTES contents).
files = np.array([open(p, "rb").read() for p in photos], dtype=np.object_)
inp = grpcclient.InferInput("image", [len(photos)], "BYTES")
inp.set_data_from_numpy(files)
outputs = [grpcclient.InferRequestedOutput("label"), grpcclient.InferRequestedOutput("p_dog")]
result = client.infer("catsdogs", [inp], outputs=outputs, headers=headers, request_id="triton-grpc")
labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label").reshape(-1)]
p_dog = result.as_numpy("p_dog").reshape(-1)
assert labels == expected, (labels, expected)
assert all((p > 0.5) == (label == "dog") for p, label in zip(p_dog, labels)), (labels, p_dog)
assert result.get_response().id == "triton-grpc"

# Pixels as a UINT8 tensor.
pixels = np.random.default_rng(0).integers(0, 256, size=(1, 64, 48, 3), dtype=np.uint8)
inp = grpcclient.InferInput("pixels", list(pixels.shape), "UINT8")
inp.set_data_from_numpy(pixels)
result = client.infer("catsdogs", [inp], headers=headers)
assert result.as_numpy("p_dog").shape == (1,), result.as_numpy("p_dog")
print("tritonclient grpc checks passed")
