"""Reading X-rays: PNG 8/16-bit, JPEG, RGB, DICOM (windowing, MONOCHROME1), bad files."""

import numpy as np
import pytest
from data_fakes import write_dicom_pixels
from PIL import Image

from qatacov_jax.data.imageio import ImageReadError, is_dicom, read_xray, read_xray_with_info
from qatacov_jax.data.resize import to_uint8


def test_png_8_and_16_bit(tmp_path):
    a8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(a8).save(tmp_path / "a8.png")
    np.testing.assert_allclose(read_xray(tmp_path / "a8.png"), a8 / 255.0, atol=1e-7)
    a16 = (np.arange(256, dtype=np.uint32) * 257).astype(np.uint16).reshape(16, 16)
    Image.fromarray(a16).save(tmp_path / "a16.png")
    got = read_xray(tmp_path / "a16.png")
    assert got.dtype == np.float32 and got.shape == (16, 16)
    np.testing.assert_allclose(got, a16 / 65535.0, atol=1e-6)


def test_rgb_and_jpeg_become_luminance(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 1] = 200
    Image.fromarray(rgb).save(tmp_path / "g.png")
    np.testing.assert_allclose(read_xray(tmp_path / "g.png"), round(0.587 * 200) / 255, atol=2e-3)
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(tmp_path / "j.jpg", quality=95)
    np.testing.assert_allclose(read_xray(tmp_path / "j.jpg"), 128 / 255, atol=3 / 255)


def test_dicom_window_and_monochrome1(tmp_path):
    ramp = np.tile(np.linspace(0, 4000, 20), (4, 1))
    write_dicom_pixels(tmp_path / "m2.dcm", ramp, "MONOCHROME2")
    m2 = read_xray(tmp_path / "m2.dcm")
    # Divided by the 12-bit range, not stretched to the image's own maximum (4000).
    assert m2[0, 0] == 0.0 and np.all(np.diff(m2[0]) >= 0)
    np.testing.assert_allclose(m2[0, -1], 4000 / 4095, rtol=1e-6)
    write_dicom_pixels(tmp_path / "m1", ramp, "MONOCHROME1")  # suffix-less, found by DICM magic
    assert is_dicom(tmp_path / "m1")
    np.testing.assert_allclose(read_xray(tmp_path / "m1"), 1.0 - m2, atol=1e-6)
    # A narrow window saturates values outside it: the VOI LUT is applied.
    write_dicom_pixels(tmp_path / "w.dcm", ramp, "MONOCHROME2", window=(2000, 400))
    w = read_xray(tmp_path / "w.dcm")[0]
    assert (w == 0).sum() > 5 and (w == 1).sum() > 5


def test_dicom_maps_as_its_8_bit_png(tmp_path):
    """An 8-bit X-ray and the same pixels x 16 as a 12-bit DICOM without a window read
    within one grey level (values / 255 and / 4095), as the training data were mapped."""
    rng = np.random.default_rng(0)
    x8 = rng.integers(20, 236, (16, 12)).astype(np.uint8)
    Image.fromarray(x8).save(tmp_path / "x.png")
    write_dicom_pixels(tmp_path / "x.dcm", x8.astype(np.uint16) * 16, "MONOCHROME2")
    png, (dcm, note) = read_xray(tmp_path / "x.png"), read_xray_with_info(tmp_path / "x.dcm")
    assert np.abs(dcm - png).max() * 255 <= 1.0
    assert note == "DICOM MONOCHROME2, 12 bits stored, no VOI window: values / 4095"


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "empty"),
        (b"hello, not an image", "not a readable image"),
        (b"\x89PNG\r\n\x1a\ntruncated", "not a readable image"),
    ],
)
def test_bad_files_name_the_file(tmp_path, content, match):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(ImageReadError, match=match) as e:
        read_xray(p)
    assert str(p) in str(e.value)


def test_missing_and_bad_dicom(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_xray(tmp_path / "nope.png")
    (tmp_path / "x.dcm").write_bytes(b"\0" * 200)
    with pytest.raises(ImageReadError, match="x.dcm"):
        read_xray(tmp_path / "x.dcm")


def test_to_uint8_rounds_and_clips():
    np.testing.assert_array_equal(to_uint8(np.array([-1, 0, 0.5, 1, 2])), [0, 0, 128, 255, 255])
