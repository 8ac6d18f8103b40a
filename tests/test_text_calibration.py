"""Calibration from text (``--calib-text``): samples framed like real inputs, and int8-static
on token text (one sample per line)."""

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxq.calib_text import TextCalibration
from onnxq.cli import main
from tests.int4.test_int4_recipe import VOCAB, WORDS, _lm

RNG = np.random.default_rng(3)


@pytest.fixture()
def bert_tokenizer(tmp_path):
    """A BERT-style tokenizer.json as saved for inference: [CLS] ... [SEP] around every
    sequence, truncation to 16 tokens and padding to 16 turned on."""
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "[PAD]": 3, **{w: i + 4 for i, w in enumerate(WORDS[: VOCAB - 4])}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    tok.enable_truncation(max_length=16)
    tok.enable_padding(length=16, pad_id=3, pad_token="[PAD]")
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


def _lines(tmp_path, lengths):
    path = tmp_path / "text.txt"
    path.write_text("\n\n".join(" ".join(RNG.choice(WORDS[: VOCAB - 4], size=n)) for n in lengths) + "\n")
    return path


def test_windows_are_framed_by_the_special_tokens_and_not_truncated(tmp_path, bert_tokenizer):
    text = _lines(tmp_path, [300])
    rows = TextCalibration(text, bert_tokenizer, seq_len=64, n_samples=3).windows()
    assert rows.shape == (3, 64)  # the tokenizer's own truncation to 16 is off
    assert (rows[:, 0] == 1).all() and (rows[:, -1] == 2).all() and (rows[:, 1:-1] >= 4).all()
    assert np.array_equal(rows[1, 1:-1], TextCalibration(text, bert_tokenizer, seq_len=64, n_samples=3).windows()[1, 1:-1])


def test_lines_are_samples_of_their_own_length(tmp_path, bert_tokenizer):
    text = _lines(tmp_path, [5, 40, 9])
    rows = TextCalibration(text, bert_tokenizer, seq_len=32, n_samples=8, lines=True).windows()
    assert [len(r) for r in rows] == [7, 32, 11]  # no padding; a long line cut, its [SEP] kept
    assert all(r[0] == 1 and r[-1] == 2 for r in rows)


def test_int8_static_calibrates_on_text_lines(tmp_path, bert_tokenizer):
    model = tmp_path / "lm.onnx"
    from tests.helpers import to_bytes

    onnx.save(onnx.load_from_string(to_bytes(_lm())), model)
    text = _lines(tmp_path, [int(n) for n in RNG.integers(3, 30, 20)])
    out = tmp_path / "lm_s8.onnx"
    r = CliRunner().invoke(main, ["quantize", str(model), "-o", str(out), "--recipe", "int8-static",
                                  "--calib-text", str(text), "--tokenizer", str(bert_tokenizer)])
    assert r.exit_code == 0, r.output
    assert "on 20 samples" in r.output
    assert "--recipe int8-dynamic" in r.output  # the note for text models
    assert "check: " in r.output and "calibration samples: SQNR" in r.output  # small text models are checked
    assert "--text HELD_OUT.txt" in " ".join(r.output.split())
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops.count("QuantizeLinear") >= 2
    held = _lines(tmp_path, [int(n) for n in RNG.integers(3, 30, 6)])  # compare on other lines of text
    r = CliRunner().invoke(main, ["compare", str(model), str(out), "--text", str(held), "--tokenizer",
                                  str(bert_tokenizer), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["samples"] == 6
    r = CliRunner().invoke(main, ["quantize", str(model), "-o", str(tmp_path / "x.onnx"), "--recipe", "int8-dynamic",
                                  "--calib-text", str(text)])
    assert r.exit_code != 0 and "int8-static and int4-weight-only" in r.output


@pytest.mark.parametrize("batch, length", [(1, 32), (2, 16)])
def test_fixed_length_text_models_get_windows_of_their_length(tmp_path, bert_tokenizer, batch, length):
    """input_ids [1, 32] (or [2, 16]): lines of other lengths would be refused, so the
    samples are windows of exactly that length, grouped by the fixed batch."""
    from tests.helpers import model_from_text, to_bytes
    from tests.int4.test_int4_recipe import LM

    fixed = LM.replace("int64[B, S] input_ids, int64[B, S] attention_mask",
                       f"int64[{batch}, {length}] input_ids, int64[{batch}, {length}] attention_mask")
    assert fixed != LM
    init = {v.name: v.const_value.numpy() for v in _lm().graph.initializers.values()}
    model = tmp_path / "fixed.onnx"
    onnx.save(onnx.load_from_string(to_bytes(model_from_text(fixed, init))), model)
    text = _lines(tmp_path, [int(n) for n in RNG.integers(3, 30, 60)])
    out = tmp_path / "fixed_s8.onnx"
    r = CliRunner().invoke(main, ["quantize", str(model), "-o", str(out), "--recipe", "int8-static", "--calib-text",
                                  str(text), "--tokenizer", str(bert_tokenizer), "--max-samples", "6"])
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert ("on 6 samples (" if batch == 1 else f"on 6 runs of {6 * batch} rows in all") in said, said


def test_calib_seq_len_caps_the_lines(tmp_path, bert_tokenizer):
    text = _lines(tmp_path, [50, 60])
    rows = TextCalibration(text, bert_tokenizer, seq_len=20, n_samples=8, lines=True).windows()
    assert [len(r) for r in rows] == [20, 20]
    model = tmp_path / "lm.onnx"
    from tests.helpers import to_bytes

    onnx.save(onnx.load_from_string(to_bytes(_lm())), model)
    r = CliRunner().invoke(main, ["quantize", str(model), "-o", str(tmp_path / "o.onnx"), "--recipe", "int8-static",
                                  "--calib-text", str(text), "--tokenizer", str(bert_tokenizer), "--calib-seq-len", "20"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["quantize", str(model), "-o", str(tmp_path / "o.onnx"), "--calib-seq-len", "20"])
    assert r.exit_code != 0 and "--calib-text" in r.output


def test_the_int8_dynamic_note_is_only_for_targets_that_run_it(tmp_path, bert_tokenizer):
    from tests.helpers import to_bytes

    model = tmp_path / "lm.onnx"
    onnx.save(onnx.load_from_string(to_bytes(_lm())), model)
    text = _lines(tmp_path, [12, 20, 9])
    r = CliRunner().invoke(main, ["quantize", str(model), "-o", str(tmp_path / "o.onnx"), "--recipe", "int8-static",
                                  "--calib-text", str(text), "--tokenizer", str(bert_tokenizer), "--target", "tensorrt"])
    assert r.exit_code == 0, r.output
    assert "--recipe int8-dynamic" not in r.output


def test_int4_gptq_windows_follow_a_fixed_input_length(tmp_path, bert_tokenizer):
    from tests.helpers import model_from_text, to_bytes
    from tests.int4.test_int4_recipe import LM

    fixed = LM.replace("int64[B, S] input_ids, int64[B, S] attention_mask", "int64[1, 24] input_ids, int64[1, 24] attention_mask")
    init = {v.name: v.const_value.numpy() for v in _lm().graph.initializers.values()}
    model = tmp_path / "fixed.onnx"
    onnx.save(onnx.load_from_string(to_bytes(model_from_text(fixed, init))), model)
    text = _lines(tmp_path, [400])
    r = CliRunner().invoke(main, ["quantize", str(model), "-o", str(tmp_path / "q.onnx"), "--algo", "gptq",
                                  "--block-size", "32", "--calib-text", str(text), "--tokenizer", str(bert_tokenizer)])
    assert r.exit_code == 0, r.output
    assert "on 384 activation rows" in r.output  # 16 windows of 24 (512 would be refused by the model)


def test_a_tokenizer_with_token_ids_is_refused(tmp_path, bert_tokenizer):
    """--tokenizer next to a .npy of token ids would be ignored: say so instead."""
    model = tmp_path / "lm.onnx"
    from tests.helpers import to_bytes

    onnx.save(onnx.load_from_string(to_bytes(_lm())), model)
    ids = tmp_path / "ids.npy"
    np.save(ids, RNG.integers(4, VOCAB, 200))
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(main, ["quantize", str(model), "-o", str(out), "--recipe", "int8-static",
                                  "--calib-text", str(ids), "--tokenizer", str(bert_tokenizer)])
    assert r.exit_code != 0 and "drop --tokenizer" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not out.exists()
