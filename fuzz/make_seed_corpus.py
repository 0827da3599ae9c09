"""Writes the committed seed corpus of the fuzz targets (needs Pillow; run from fuzz/).

Small images of every accepted format and colour type, and feedback bodies of both shapes:
starting points from which libFuzzer mutates."""
import io
import os

from PIL import Image

c = "corpus/preprocess"


def save(img, name, fmt, **kw):
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    open(os.path.join(c, name), "wb").write(b.getvalue())


rgb = Image.new("RGB", (8, 6), (200, 30, 60))
for x in range(8):
    rgb.putpixel((x, x % 6), (x * 30, 255 - x * 30, 90))
save(rgb, "tiny.png", "PNG")
save(rgb, "tiny.jpg", "JPEG", quality=80)
save(rgb, "tiny-progressive.jpg", "JPEG", quality=70, progressive=True)
save(rgb.convert("CMYK"), "cmyk.jpg", "JPEG")
save(rgb.convert("L"), "grey.png", "PNG")
save(rgb.convert("RGBA"), "rgba.png", "PNG")
save(rgb.convert("P"), "palette.gif", "GIF")
save(rgb, "tiny.bmp", "BMP")
save(rgb, "tiny.webp", "WEBP", lossless=True)
save(rgb, "lossy.webp", "WEBP", quality=50)
frames = [rgb, Image.new("RGB", (8, 6), (0, 0, 0))]
b = io.BytesIO()
frames[0].save(b, "GIF", save_all=True, append_images=frames[1:])
open(c + "/animated.gif", "wb").write(b.getvalue())
exif = Image.Exif()
exif[0x0112] = 6  # orientation: rotate 90
save(rgb, "exif-rotated.jpg", "JPEG", exif=exif.tobytes())
open(c + "/text.txt", "wb").write(b"not an image at all")

samples = {
    "prediction.json": b'{"prediction_id":"3f1c2a4e-9b7d-4c1e-8a2f-0d6b5e4c3a21","correct":true}',
    "label.json": b'{"prediction_id":"3f1c2a4e-9b7d-4c1e-8a2f-0d6b5e4c3a21","label":"cat","comment":"fluffy"}',
    "seed.json": b'{"feedback":"positive","resultat_prediction":0.93,"input_user":"mon_image.jpg"}',
    "seed-negative.json": b'{"feedback":"negative","resultat_prediction":0.12,"input_user":"wrong"}',
    "bool.json": b'{"feedback":true}',
    "array.json": b"[1,2,3]",
    "nested.json": b'{"prediction_id":{"a":[1,{"b":null}]},"correct":"yes"}',
}
for name, body in samples.items():
    open(os.path.join("corpus/feedback_json", name), "wb").write(body)
