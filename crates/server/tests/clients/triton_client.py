"""Drives catsdogs' Open Inference Protocol endpoints with tritonclient (a client written
elsewhere). Usage: triton_client.py HOST:PORT TOKEN CAT_PHOTO DOG_PHOTO. Exits non-zero
on the first failed check."""
import sys

import numpy as np
import tritonclient.http as http

url, token, cat, dog = sys.argv[1:5]
headers = {"Authorization": f"Bearer {token}"}
client = http.InferenceServerClient(url=url)

assert client.is_server_live(headers=headers), "server not live"
assert client.is_server_ready(headers=headers), "server not ready"
assert client.is_model_ready("catsdogs", headers=headers), "model not ready"
meta = client.get_model_metadata("catsdogs", headers=headers)
assert meta["name"] == "catsdogs", meta
# p_dog and label, and the explanation outputs the shipped graph can give (explain: true).
assert {o["name"] for o in meta["outputs"]} == {"p_dog", "label", "evidence", "crop"}, meta
server = client.get_server_metadata(headers=headers)
assert server["name"] == "catsdogs", server


def infer(inp):
    outputs = [http.InferRequestedOutput("label", binary_data=False), http.InferRequestedOutput("p_dog", binary_data=False)]
    # A fresh dict per call: tritonclient adds Inference-Header-Content-Length to it.
    result = client.infer("catsdogs", [inp], outputs=outputs, headers=dict(headers))
    labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label").reshape(-1)]
    return labels, result.as_numpy("p_dog").reshape(-1)


# Encoded files as BYTES with the binary-data extension, one request for both photos.
files = np.array([open(cat, "rb").read(), open(dog, "rb").read()], dtype=np.object_)
inp = http.InferInput("image", [2], "BYTES")
inp.set_data_from_numpy(files, binary_data=True)
labels, p_dog = infer(inp)
assert labels == ["cat", "dog"], labels
assert p_dog[0] < 0.5 < p_dog[1], p_dog

# Pixels as a UINT8 tensor, binary and JSON.
pixels = np.random.default_rng(0).integers(0, 256, size=(1, 64, 48, 3), dtype=np.uint8)
for binary in (True, False):
    inp = http.InferInput("pixels", list(pixels.shape), "UINT8")
    inp.set_data_from_numpy(pixels, binary_data=binary)
    labels, p_dog = infer(inp)
    assert len(labels) == 1 and labels[0] in ("cat", "dog") and 0.0 <= p_dog[0] <= 1.0, (labels, p_dog)

# Without the token the server refuses.
try:
    client.get_model_metadata("catsdogs")
except Exception as e:  # tritonclient raises InferenceServerException
    assert "401" in str(e) or "token" in str(e).lower() or "Authorization" in str(e), e
else:
    raise AssertionError("metadata answered without a token")
print("tritonclient checks passed")
