"""Calibration data loading: sources, rank rules, batching and the errors users see."""

import numpy as np
import pytest

from onnxq.data import InputSpec, as_calibration_data, batched, open_calibration_source
from onnxq.errors import CalibrationDataError

SPECS = [InputSpec("x", np.dtype(np.float32), (None, 3, 4)), InputSpec("sr", np.dtype(np.int64), ())]
RNG = np.random.default_rng(0)


def _feeds(source, specs=SPECS, limit=0):
    data = as_calibration_data(source)
    data.precheck(specs)
    return list(data.feeds(specs, limit=limit))


def test_npz_rank_rules(tmp_path):
    p = tmp_path / "c.npz"
    # x has the input's rank: batched along axis 0; sr has rank 0 + 1: one per index
    np.savez(p, x=RNG.standard_normal((5, 3, 4)).astype(np.float32), sr=np.arange(5, dtype=np.int64))
    feeds = _feeds(p)
    assert len(feeds) == 5
    assert feeds[2]["x"].shape == (1, 3, 4) and feeds[2]["sr"].shape == () and int(feeds[2]["sr"]) == 2
    per_index = tmp_path / "d.npz"
    np.savez(per_index, x=RNG.standard_normal((4, 2, 3, 4)).astype(np.float32), sr=np.arange(4, dtype=np.int64))
    feeds = _feeds(per_index)
    assert len(feeds) == 4 and feeds[0]["x"].shape == (2, 3, 4)


def test_folder_of_npy_and_npz_single_input(tmp_path):
    specs = [InputSpec("x", np.dtype(np.float32), (None, 3, 4))]
    (tmp_path / "sub").mkdir()
    np.save(tmp_path / "a.npy", RNG.standard_normal((3, 4)).astype(np.float32))  # rank - 1: batch axis added
    np.savez(tmp_path / "sub" / "b.npz", x=RNG.standard_normal((2, 3, 4)).astype(np.float32))
    feeds = _feeds(tmp_path, specs)
    assert [f["x"].shape for f in feeds] == [(1, 3, 4), (2, 3, 4)]


def test_iterables_factories_and_varying_shapes():
    specs = [InputSpec("x", np.dtype(np.float32), (None, None))]
    samples = [{"x": np.ones((1, n), np.float32)} for n in (3, 5, 7)]
    assert [f["x"].shape[1] for f in _feeds(samples, specs)] == [3, 5, 7]
    data = as_calibration_data(lambda: iter(samples))
    assert len(list(data.feeds(specs))) == 3 and len(list(data.feeds(specs))) == 3  # re-iterable
    gen = as_calibration_data(iter(samples))
    list(gen.feeds(specs))
    with pytest.raises(CalibrationDataError, match="already consumed"):
        list(gen.feeds(specs))


def test_batching_concatenates_same_shapes_only():
    specs = [InputSpec("x", np.dtype(np.float32), (None, None))]
    feeds = [{"x": np.ones((1, n), np.float32)} for n in (3, 3, 3, 5)]
    out = list(batched(feeds, specs, 2))
    assert [f["x"].shape for f in out] == [(2, 3), (1, 3), (1, 5)]


@pytest.mark.parametrize(
    "feed, message",
    [
        ({"y": np.zeros((1, 3, 4), np.float32), "sr": np.int64(1)}, "unknown input name"),
        ({"x": np.zeros((1, 3, 4), np.float32)}, "missing input"),
        ({"x": np.zeros((1, 3, 4), np.float64), "sr": np.int64(1)}, "float64 but the model expects float32"),
        ({"x": np.zeros((1, 1, 3, 4), np.float32), "sr": np.int64(1)}, "rank 4"),
        ({"x": np.zeros((1, 2, 4), np.float32), "sr": np.int64(1)}, "dimension 1 must be 3"),
        ({"x": np.full((1, 3, 4), np.nan, np.float32), "sr": np.int64(1)}, "NaN or Inf"),
    ],
)
def test_mismatches_are_clear_errors(feed, message):
    with pytest.raises(CalibrationDataError, match=message):
        _feeds([feed])


def test_npz_errors_before_anything_runs(tmp_path):
    p = tmp_path / "c.npz"
    np.savez(p, x=RNG.standard_normal((5, 3, 4)).astype(np.float32), sr=np.arange(4, dtype=np.int64))
    with pytest.raises(CalibrationDataError, match="disagree on the number of samples"):
        as_calibration_data(p).precheck(SPECS)
    bad = RNG.standard_normal((5, 3, 4)).astype(np.float32)
    bad[3, 0, 0] = np.inf
    np.savez(p, x=bad, sr=np.arange(5, dtype=np.int64))
    with pytest.raises(CalibrationDataError, match=r"NaN or Inf \(sample 3\)"):
        as_calibration_data(p).precheck(SPECS)
    with pytest.raises(CalibrationDataError, match="does not exist"):
        as_calibration_data(tmp_path / "nope.npz")
    with pytest.raises(CalibrationDataError, match="no .npy or .npz"):
        as_calibration_data(_empty(tmp_path))
    with pytest.raises(CalibrationDataError, match="needs calibration data"):
        as_calibration_data(None)


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_images_with_preprocess(tmp_path):
    from PIL import Image

    from onnxq.preprocess import load_image, parse_preprocess

    (tmp_path / "a").mkdir()
    img = (RNG.uniform(0, 255, (40, 60, 3))).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "a" / "p.png")
    Image.fromarray(img[:, :, 0]).save(tmp_path / "g.png")  # grayscale is converted to RGB
    pp = parse_preprocess("resize=32 crop=24 mean=0,0,0 std=1,1,1 scale=1 layout=NHWC order=BGR")
    x = load_image(tmp_path / "a" / "p.png", pp)
    assert x.shape == (1, 24, 24, 3) and x.dtype == np.float32
    ref = np.asarray(Image.fromarray(img).resize((48, 32), Image.BILINEAR), np.float32)[4:28, 12:36, ::-1]
    np.testing.assert_allclose(x[0], ref)
    spec = [InputSpec("input", np.dtype(np.float32), (None, 24, 24, 3))]
    feeds = list(_feeds_of(open_calibration_source(None, str(tmp_path), ["resize=32", "crop=24", "layout=NHWC"]), spec))
    assert len(feeds) == 2
    with pytest.raises(CalibrationDataError, match="crop"):
        open_calibration_source(None, str(tmp_path), ["crop=20", "resize=32", "layout=NHWC"]).precheck(spec)
    with pytest.raises(CalibrationDataError, match="unknown key"):
        parse_preprocess("size=3")
    # a float16 input gets float16 pixels (the type left at its default follows the model);
    # a uint8 input is not something the float pipeline can fill: a clear error
    half = [InputSpec("input", np.dtype(np.float16), (None, 24, 24, 3))]
    feeds = list(_feeds_of(open_calibration_source(None, str(tmp_path), ["resize=32", "crop=24", "layout=NHWC"]), half))
    assert feeds[0]["input"].dtype == np.float16
    raw = [InputSpec("input", np.dtype(np.uint8), (None, 24, 24, 3))]  # raw pixels (test_a_uint8_image_input...)
    feeds = list(_feeds_of(open_calibration_source(None, str(tmp_path), ["resize=32", "crop=24", "layout=NHWC"]), raw))
    assert feeds[0]["input"].dtype == np.uint8
    wide = [InputSpec("input", np.dtype(np.int32), (None, 24, 24, 3))]
    with pytest.raises(CalibrationDataError, match="add dtype=int32 scale=1 mean=0 std=1"):
        open_calibration_source(None, str(tmp_path), ["resize=32", "crop=24", "layout=NHWC"]).precheck(wide)


def _feeds_of(data, specs):
    data.precheck(specs)
    return data.feeds(specs)


def test_resize_to_an_exact_size_and_minus_one_dims(tmp_path):
    """``resize=HxW crop=0`` stretches (text-line recognizers); exporters that write a
    dynamic dimension as -1 (paddle2onnx) get it treated as dynamic."""
    import onnx
    import onnx_ir as ir
    from onnx import TensorProto, helper
    from PIL import Image

    from onnxq.data import input_specs
    from onnxq.preprocess import load_image, parse_preprocess

    img = (RNG.uniform(0, 255, (40, 60, 3))).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "p.png")
    pp = parse_preprocess("resize=16x96 crop=0 mean=0 std=1 scale=1")
    x = load_image(tmp_path / "p.png", pp)
    ref = np.asarray(Image.fromarray(img).resize((96, 16), Image.BILINEAR), np.float32).transpose(2, 0, 1)
    np.testing.assert_allclose(x[0], ref)
    with pytest.raises(CalibrationDataError, match="resize=48x96 crop=0"):
        load_image(tmp_path / "p.png", parse_preprocess("resize=32 crop=48x96"))
    with pytest.raises(CalibrationDataError, match="two positive sizes"):
        parse_preprocess("resize=0x96")
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, -1, -1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = ir.serde.deserialize_model(helper.make_model(graph))
    assert input_specs(model)[0].shape == (None, 3, None, None)
    feeds = list(_feeds_of(open_calibration_source(None, str(tmp_path), ["resize=16x96", "crop=0"]), input_specs(model)))
    assert feeds[0]["x"].shape == (1, 3, 16, 96)


def test_sixteen_bit_png_is_scaled_not_saturated(tmp_path):
    from PIL import Image

    from onnxq.preprocess import ImagePreprocess, load_image

    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    pp = ImagePreprocess(resize=0, crop=0, mean=(0.0,), std=(1.0,))
    x = load_image(tmp_path / "deep.png", pp)
    assert x.shape == (1, 3, 64, 64)
    assert 0.45 < float(x.mean()) < 0.55 and (x >= 0.99).mean() < 0.02  # a ramp, not 98 % white


def test_exact_resize_without_crop_fits_a_fixed_input(tmp_path):
    from onnxq.data import InputSpec
    from onnxq.preprocess import ImagePreprocess, _fit_to_input

    spec = InputSpec("input", np.dtype(np.float32), (1, 3, 224, 224))
    pp = ImagePreprocess(resize=(224, 224), crop=0)
    assert _fit_to_input(pp, spec).output_hw == (224, 224)
    with pytest.raises(CalibrationDataError, match="224x224"):
        _fit_to_input(ImagePreprocess(resize=(200, 200), crop=0), spec)


def test_a_uint8_image_input_gets_raw_pixels(tmp_path):
    from PIL import Image

    from onnxq.data import InputSpec
    from onnxq.preprocess import IMAGENET, _fit_to_input, load_image

    Image.fromarray(np.full((300, 300, 3), 200, np.uint8)).save(tmp_path / "grey.png")
    pp = _fit_to_input(IMAGENET, InputSpec("x", np.dtype(np.uint8), (1, 3, 224, 224)))
    x = load_image(tmp_path / "grey.png", pp)
    assert x.dtype == np.uint8 and (x == 200).all()


def test_ort_failure_names_an_index_past_a_table():
    from onnxq.data import ort_failure

    e = ort_failure(3, RuntimeError(
        "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Non-zero status code returned while running Gather node. "
        "Status Message: indices element out of data bounds, idx=3616 must be within the inclusive range [-2000,1999]"))
    text = str(e)
    assert "sample 3" in text and "an index 3616 past a table of 2000 rows" in text and "--tokenizer" in text
    assert "\n" not in text
    other = str(ort_failure(0, RuntimeError("Got invalid dimensions for input: x")))
    assert "--calib-seq-len" in other


def test_calib_images_given_a_file_says_so(tmp_path):
    from onnxq.errors import CalibrationDataError
    from onnxq.preprocess import image_files

    f = tmp_path / "one.png"
    f.write_bytes(b"x")
    with pytest.raises(CalibrationDataError, match="is a file; give the folder"):
        image_files(f)


def test_a_corrupt_npy_is_a_calibration_data_error(tmp_path):
    from onnxq.data import as_calibration_data, input_specs
    from onnxq.errors import CalibrationDataError
    from tests.helpers import model_from_text

    p = tmp_path / "bad.npy"
    p.write_bytes(b"garbage")
    model = model_from_text('<ir_version: 8, opset_import: ["" : 17]>\nm (float[N, 4] x) => (float[N, 4] y) {\n y = Relu(x)\n}\n', {})
    with pytest.raises(CalibrationDataError, match="cannot read .*bad.npy"):
        source = as_calibration_data(str(p))
        source.precheck(input_specs(model))
        list(source.feeds(input_specs(model)))


def test_an_unreadable_image_is_skipped_with_a_warning(tmp_path, caplog):
    import logging

    from PIL import Image

    from onnxq.preprocess import from_images, parse_preprocess

    img = RNG.uniform(0, 255, (30, 30, 3)).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "good.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # e.g. a truncated download
    spec = [InputSpec("input", np.dtype(np.float32), (None, 3, 24, 24))]
    data = from_images(tmp_path, parse_preprocess("resize=24 crop=24"))
    with caplog.at_level(logging.WARNING, logger="onnxq.preprocess"):
        first = list(_feeds_of(data, spec))
        second = list(_feeds_of(data, spec))  # a second calibration pass: the same feeds, no second warning
    assert len(first) == len(second) == 1 and first[0]["input"].shape == (1, 3, 24, 24)
    warned = [r.getMessage() for r in caplog.records if "broken.jpg" in r.getMessage()]
    assert len(warned) == 1 and "cannot read image" in warned[0]
    # a folder where nothing can be read is an error, not an empty calibration
    (tmp_path / "good.png").unlink()
    with pytest.raises(CalibrationDataError, match="none of the 1 images .* can be read"):
        list(_feeds_of(from_images(tmp_path, parse_preprocess("resize=24 crop=24")), spec))


def test_the_crop_error_gives_height_by_width(tmp_path):
    from PIL import Image

    from onnxq.preprocess import load_image, parse_preprocess

    Image.fromarray(np.zeros((20, 50, 3), np.uint8)).save(tmp_path / "wide.png")  # 20 high, 50 wide
    with pytest.raises(CalibrationDataError, match=r"image 20x50 \(HxW\) is smaller than the crop 24x24"):
        load_image(tmp_path / "wide.png", parse_preprocess("resize=0 crop=24"))


def test_a_one_channel_input_gets_grey_images(tmp_path):
    from PIL import Image

    from onnxq.preprocess import load_image, parse_preprocess

    img = RNG.uniform(0, 255, (20, 30, 3)).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "c.png")
    grey = [InputSpec("x", np.dtype(np.float32), (1, 1, 16, None))]  # an OCR text line: height 16, any width
    feeds = list(_feeds_of(open_calibration_source(None, str(tmp_path), ["resize=16x40 crop=0 mean=0.5 std=0.5"]), grey))
    x = feeds[0]["x"]
    assert x.shape == (1, 1, 16, 40)
    ref = np.asarray(Image.fromarray(img).convert("L").resize((40, 16), Image.BILINEAR), np.float32) / 255
    np.testing.assert_allclose(x[0, 0], (ref - 0.5) / 0.5, atol=1e-6)
    np.testing.assert_allclose(load_image(tmp_path / "c.png", parse_preprocess("resize=16x40 crop=0 order=GRAY mean=0.5 "
                                                                              "std=0.5")), x)
    # per-channel (RGB) statistics cannot be right for one channel: say what to give
    with pytest.raises(CalibrationDataError, match="1-channel .*give one mean= and std= value"):
        open_calibration_source(None, str(tmp_path), ["resize=16x40 crop=0"]).precheck(grey)
    with pytest.raises(CalibrationDataError, match="order=GRAY makes 1-channel images"):
        open_calibration_source(None, str(tmp_path), ["resize=16x40 crop=0 order=GRAY mean=0 std=1"]).precheck(
            [InputSpec("x", np.dtype(np.float32), (1, 3, 16, 40))])
