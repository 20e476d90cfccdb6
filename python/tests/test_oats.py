"""The `oats` module on the pretrained model in assets/ (package-only: every configuration
is derived on the device). The reference bundle the exporter wrote carries the trainer's
logits for every listed configuration and for λ 0.15 / 0.5 / 0.7: the module must reproduce
them, and give each kind of bad input its own exception."""

import json
import pathlib
import shutil
import struct
import threading

import numpy as np
import pytest

import oats

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = ROOT / "assets" / "pretrained" / "oats-small-fmnist"
# Derived against the trainer's logits (the bound for unseen λ).
TOLERANCE = 1e-4


def reference():
    """The bundle's tensors as numpy arrays (safetensors: u64 header size, JSON, data)."""
    raw = (MODEL / "reference.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", name
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype="<f4").reshape(t["shape"])
    return out


@pytest.fixture(scope="module")
def model():
    return oats.Model(str(MODEL))


def test_every_listed_configuration_reproduces_the_trainer(model):
    ref = reference()
    x = ref["input"]
    assert x.shape[1:] == model.input_shape
    assert len(model.configs) > 0
    for c in model.configs:
        chosen = model.select(id=c.id)
        assert chosen.id == c.id
        logits, served = model.infer(x)
        assert served.id == c.id and served.derived
        assert logits.shape == (x.shape[0], len(model.class_names))
        want = ref.get(f"logits.{c.id}")
        if want is not None:
            assert np.abs(logits - want).max() <= TOLERANCE, c.id


@pytest.mark.parametrize("lam", [0.15, 0.5, 0.7])
def test_an_unseen_lambda_is_derived_and_matches_the_trainer(model, lam):
    ref = reference()
    c = model.select(lambda_=lam, width=1.0)
    assert c.derived and c.lambda_ == lam and c.width == 1.0
    logits, served = model.infer(ref["input"])
    assert served.id == c.id
    key = f"logits.l{lam:g}-w1"
    assert np.abs(logits - ref[key]).max() <= TOLERANCE


def test_a_policy_chooses_by_calibrated_metrics(model):
    c = model.select_policy(min_ra=0.5, objective="max-sa")
    assert c.ra is not None and c.ra >= 0.5 and c.lambda_ > 0
    with pytest.raises(oats.NoneQualifiesError, match="SA"):
        model.select_policy(min_sa=1.01)
    with pytest.raises(oats.InvalidArgumentError, match="objective"):
        model.select_policy(objective="fastest")


def test_bad_inputs_raise_their_own_exception(model, tmp_path):
    x = reference()["input"]
    with pytest.raises(oats.ShapeError):
        model.infer(x[:, :, :-1, :])
    bad = x.copy()
    bad[0, 0, 3, 3] = np.nan
    with pytest.raises(oats.NonFiniteError):
        model.infer(bad)
    with pytest.raises(TypeError):
        model.infer(x.astype(np.float64))
    with pytest.raises(oats.InvalidArgumentError, match="1.5"):
        model.select(lambda_=1.5)
    with pytest.raises(oats.InvalidArgumentError, match="0.6"):
        model.select(lambda_=0.2, width=0.6)
    with pytest.raises(oats.InvalidArgumentError):
        model.select(lambda_=0.2, id="l0.2-w1")
    with pytest.raises(oats.NoSuchConfigError, match="no-such"):
        model.select(id="no-such")
    with pytest.raises(oats.ReadError):
        oats.Model(str(tmp_path / "missing"))
    with pytest.raises(oats.InvalidArgumentError, match="cuda"):
        oats.Model(str(MODEL), backend="cuda")
    # A tampered package: opening derives the first configuration, which reads it.
    copy = tmp_path / "tampered"
    shutil.copytree(MODEL, copy)
    pkg = copy / "package.safetensors"
    raw = bytearray(pkg.read_bytes())
    raw[-1] ^= 0x40
    pkg.write_bytes(bytes(raw))
    with pytest.raises(oats.IntegrityError, match="sha256"):
        oats.Model(str(copy))
    # Every exception is an OatsError.
    assert issubclass(oats.IntegrityError, oats.OatsError)


def test_a_model_opens_from_files_in_memory():
    files = {p.name: p.read_bytes() for p in MODEL.iterdir() if p.is_file()}
    m = oats.Model.from_files(files)
    ref = reference()
    c = m.select(lambda_=0.15)
    logits, _ = m.infer(ref["input"])
    assert np.abs(logits - ref[f"logits.{c.id}"]).max() <= TOLERANCE


def test_threads_infer_while_another_switches(model):
    x = reference()["input"][:4]
    lambdas = [0.0, 0.15, 1.0]
    expected = {}
    for lam in lambdas:
        c = model.select(lambda_=lam, width=1.0)
        expected[c.id] = model.infer(x)[0]
    errors = []

    def infer():
        try:
            for _ in range(20):
                logits, served = model.infer(x)
                assert np.array_equal(logits, expected[served.id]), served.id
        except Exception as e:  # reported by the main thread
            errors.append(e)

    def switch():
        try:
            for i in range(300):
                model.select(lambda_=lambdas[i % 3], width=1.0)
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=infer) for _ in range(4)]
    threads.append(threading.Thread(target=switch))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


# Side exits (issue #16): the committed tiny exit export (scripts/make-exits-fixture.sh).
EXITS = ROOT / "assets" / "fixtures" / "exits-tiny"


def entropy(logits):
    """Softmax entropy per row in nats, as oats_graph::routing computes it."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)


def test_routed_inference_says_which_exit_answered():
    m = oats.Model(str(EXITS))
    x = reference()["input"]
    c = m.select(id="l1-w0.5")
    assert c.side_exits == 2
    macs = m.exit_macs
    assert len(macs) == 3 and macs[0] < macs[1] < macs[2]
    assert len(m.thresholds) == 2  # calibrated, from the manifest

    # Never leaving early: the whole network, answered by the final classifier.
    m.set_thresholds([0.0, 0.0])
    assert m.thresholds == [0.0, 0.0]
    whole, exits, served = m.infer_routed(x)
    assert served.id == "l1-w0.5" and exits.dtype == np.int64
    assert exits.tolist() == [2] * len(x)
    plain, _ = m.infer(x)
    assert np.array_equal(whole, plain)

    # Every image confident enough at exit 0 (an entropy is at most ln 10 < 10).
    m.set_thresholds([10.0, 10.0])
    first, exits, _ = m.infer_routed(x)
    assert exits.tolist() == [0] * len(x)
    assert not np.allclose(first, whole)

    # Half of them leave at exit 0 (entropy below its median), the rest at the end; each
    # image's logits are those of the exit that answered it.
    e = entropy(first)
    t0 = float(np.median(e))
    m.set_thresholds([t0, 0.0])
    logits, exits, _ = m.infer_routed(x)
    want = np.where(e < t0, 0, 2)
    assert exits.tolist() == want.tolist() and 0 < (want == 0).sum() < len(x)
    for i, k in enumerate(exits):
        assert np.allclose(logits[i], first[i] if k == 0 else whole[i], atol=1e-5), i

    with pytest.raises(oats.InvalidArgumentError, match="thresholds"):
        m.set_thresholds([0.5])
    with pytest.raises(oats.InvalidArgumentError, match="thresholds"):
        m.set_thresholds([float("nan"), 0.5])
    m.set_thresholds(None)
    assert len(m.thresholds) == 2 and m.thresholds != [t0, 0.0]


def test_a_model_without_exits_has_none(model):
    x = reference()["input"][:2]
    assert model.thresholds is None and model.exit_macs is None
    _, exits, served = model.infer_routed(x)
    assert served.side_exits == 0 and exits.tolist() == [0, 0]
    with pytest.raises(oats.InvalidArgumentError, match="exits"):
        model.set_thresholds([1.0])
