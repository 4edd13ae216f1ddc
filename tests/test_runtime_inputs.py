"""Runtime and `predict` on awkward inputs: 16-bit PNGs, decompression bombs, float64 beyond float32's
range, and models whose metadata has the right keys but wrong values. Uses the shipped model (no training)."""

import json
import struct
import zlib

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from conftest import REPO, assert_clean_error, run_cli
from lenet_export.errors import RuntimeInputError
from lenet_export.runtime import Classifier, ModelMetadataError, load_image

SHIPPED = REPO / "exported" / "fashion-mnist-lenet-modern"
MODEL = SHIPPED / "model.onnx"


def golden() -> np.ndarray:
    return numpy_helper.to_array(onnx.load_tensor(SHIPPED / "raw_test_data_set_0" / "input_0.pb"))  # uint8 N x 28 x 28


def predict_json(*args):
    r = run_cli("predict", "--json", "--model", MODEL, *args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)["predictions"]


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    img8 = golden()[6]  # a shirt: many mid-grey pixels, which clipping would turn white
    Image.fromarray(img8).save(tmp_path / "8.png")
    Image.fromarray(img8.astype(np.uint16) * 257).save(tmp_path / "16.png")  # the same picture in 16 bit
    assert Image.open(tmp_path / "16.png").mode == "I;16"
    assert np.array_equal(load_image(tmp_path / "16.png", 1, (28, 28)), img8)
    p8, p16 = predict_json(tmp_path / "8.png"), predict_json(tmp_path / "16.png")
    assert p16[0]["label"] == p8[0]["label"] and p16[0]["probability"] == pytest.approx(p8[0]["probability"], abs=1e-6)
    # colour models get the grey picture in all three channels
    assert np.array_equal(load_image(tmp_path / "16.png", 3, (28, 28)), np.repeat(img8[..., None], 3, axis=2))


def test_32_bit_float_image_is_refused(tmp_path):
    Image.fromarray(np.zeros((28, 28), np.float32)).save(tmp_path / "f.tiff")
    assert_clean_error(run_cli("predict", "--model", MODEL, tmp_path / "f.tiff"), "32-bit float")


def png_header_only(path, width, height):
    """A PNG that declares width x height (8-bit grey) but holds no pixels: what Image.open reads first."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [14000, 10000])  # over twice Pillow's limit (an error), over it (a warning)
def test_decompression_bomb_is_refused(tmp_path, side):
    png_header_only(tmp_path / "bomb.png", side, side)
    r = run_cli("predict", "--model", MODEL, "--resize", tmp_path / "bomb.png")
    assert_clean_error(r, "refusing", "bomb.png", "decompression bomb")


def test_float64_beyond_float32_range_is_refused():
    c = Classifier(MODEL)
    x = np.zeros((1, 1, 28, 28), np.float64)
    x[0, 0, 3, 3] = 1e300  # finite as float64, inf as float32
    with pytest.raises(RuntimeInputError, match="NaN or infinite"):
        c.classify(x)
    assert c.classify(np.full((1, 1, 28, 28), 1e30)).probabilities.shape == (1, 10)  # large but finite: fine


def with_metadata(tmp_path, **changes):
    m = onnx.load(MODEL)
    props = {p.key: p.value for p in m.metadata_props}
    props.update({k: json.dumps(v) for k, v in changes.items()})
    del m.metadata_props[:]
    onnx.helper.set_model_props(m, props)
    onnx.save(m, tmp_path / "bad.onnx")
    return tmp_path / "bad.onnx"


@pytest.mark.parametrize("changes, fragment", [
    ({"classes": ["a", "b", "c"]}, "names 3 classes but the model outputs 10 logits"),
    ({"input_shape": [28, 28]}, "'input_shape' must be 4 entries"),
    ({"input_shape": ["N", 1, 28, 0]}, "'input_shape' must be 4 entries"),
    ({"mean": [0.1, 0.2, 0.3]}, "'mean' must be 1 number(s)"),
    ({"std": [0]}, "'std' must be positive"),
    ({"input_dtype": "float16"}, "'input_dtype'"),
    ({"input_name": "pixels"}, "'input_name' 'pixels' is not an input"),
    ({"classes": "T-shirt"}, "'classes'"),
])
def test_wrong_metadata_values_are_one_line_errors(tmp_path, changes, fragment):
    bad = with_metadata(tmp_path, **changes)
    with pytest.raises(ModelMetadataError, match="malformed metadata"):
        Classifier(bad)
    Image.fromarray(golden()[0]).save(tmp_path / "x.png")
    assert_clean_error(run_cli("predict", "--model", bad, tmp_path / "x.png"), "malformed metadata", fragment)


def test_colour_image_to_a_grey_model_names_the_channels():
    clf = Classifier(SHIPPED / "model.raw.onnx")
    with pytest.raises(RuntimeInputError, match=r"images have 3 channel\(s\); the model expects 1"):
        clf.classify(np.zeros((28, 28, 3), np.uint8))
    assert clf.classify(np.zeros((3, 28, 28), np.uint8)).logits.shape == (3, 10)  # three grey images
    assert clf.classify(np.zeros((28, 28, 1), np.uint8)).logits.shape == (1, 10)  # one grey image
