"""Signing: what was proven is signed with OpenSSF model-signing, and a changed byte anywhere is refused, naming
the file. model-signing lives in .venv-sign (it cannot share an environment with litert-torch); the checks run
here with `cryptography`, and interoperate both ways with model-signing's own verifier."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from conftest import REPO, assert_clean_error, run_cli
from lenet_export.errors import ArtefactError
from lenet_export.runtime import Classifier
from lenet_export.signing import ATTESTATION, SIGNATURE, check_files, signed_digests, verdict

SHIPPED = {"fashion-mnist": REPO / "exported" / "fashion-mnist-lenet-modern",
           "cifar10": REPO / "exported" / "cifar10-lenet-modern-cifar"}
SHIPPED_KEY = REPO / "exported" / "signing-key.pub.pem"
SIGN_ENV = REPO / ".venv-sign" / "bin"


def _sign_env():
    if not (SIGN_ENV / "model_signing").is_file():
        pytest.skip("the signing environment .venv-sign is not installed (bash scripts/install.sh export,cpu,test)")
    return SIGN_ENV


@pytest.fixture
def key(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    k = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "key.pem").write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    (tmp_path / "key.pub.pem").write_bytes(k.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return tmp_path / "key.pem", tmp_path / "key.pub.pem"


@pytest.fixture
def signed(tmp_path):
    """A copy of the shipped, signed Fashion-MNIST folder."""
    dst = tmp_path / "export"
    shutil.copytree(SHIPPED["fashion-mnist"], dst)
    return dst


@pytest.mark.parametrize("dataset", list(SHIPPED))
def test_shipped_folders_are_signed_and_their_verdict_too(dataset):
    folder = SHIPPED[dataset]
    digests = check_files(folder, SHIPPED_KEY)
    for name in ("model.onnx", "model.raw.onnx", "metadata.json", "verify.json", "verify.npz", "best.pth"):
        assert name in digests, name
    statement = verdict(folder, SHIPPED_KEY)
    assert statement["predicate"]["result"] == "PASSED"
    assert {s["name"]: s["digest"]["sha256"] for s in statement["subject"]} == digests
    rep = json.loads((folder / "verify.json").read_text())
    assert sorted(statement["predicate"]["passedTests"]) == sorted(n for n, b in rep["backends"].items()
                                                                   if b["status"] == "passed")


@pytest.mark.parametrize("dataset", list(SHIPPED))
def test_shipped_signatures_verify_with_model_signings_own_api(dataset):
    env = _sign_env()
    code = ("import sys; from model_signing import verifying, hashing\n"
            "verifying.Config().use_elliptic_key_verifier(public_key=sys.argv[1]).set_hashing_config("
            f"hashing.Config().set_ignored_paths(paths={[SIGNATURE, ATTESTATION]!r})).verify(sys.argv[2], sys.argv[3])\n"
            "print('verified')")
    folder = SHIPPED[dataset]
    r = subprocess.run([str(env / "python"), "-c", code, str(SHIPPED_KEY), str(folder), str(folder / SIGNATURE)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "verified", r.stderr


@pytest.mark.parametrize("name", ["model.onnx", "metadata.json", "verify.json", "verify.npz", "model.ncnn.bin"])
def test_one_changed_byte_in_any_signed_file_is_refused(name, signed, fmnist_dir):
    path = signed / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    r = run_cli("verify", "--exported", signed, "--data-dir", fmnist_dir, "--public-key", SHIPPED_KEY)
    assert_clean_error(r, f"{path}: its bytes differ from what was signed")


def test_added_removed_and_wrongly_keyed(signed, key):
    (signed / "extra.onnx").write_bytes(b"x")
    with pytest.raises(ArtefactError, match="extra.onnx was not signed"):
        check_files(signed, SHIPPED_KEY)
    (signed / "extra.onnx").unlink()
    (signed / "model.tflite").unlink()
    with pytest.raises(ArtefactError, match="model.tflite is missing: it was signed"):
        check_files(signed, SHIPPED_KEY)
    with pytest.raises(ArtefactError, match="is not signed by"):
        signed_digests(signed, key[1])


def test_classifier_with_a_public_key_refuses_a_swapped_model(signed):
    shutil.copyfile(SHIPPED["cifar10"] / "model.raw.onnx", signed / "model.raw.onnx")
    Classifier(signed / "model.raw.onnx")  # without a key, nothing stops it
    with pytest.raises(ArtefactError, match="model.raw.onnx: its bytes differ from what was signed"):
        Classifier(signed / "model.raw.onnx", public_key=SHIPPED_KEY)
    assert Classifier(signed / "model.onnx", public_key=SHIPPED_KEY).classes[0] == "T-shirt/top"
    png = next((REPO / "examples").rglob("*.png"), None)
    if png is not None:
        assert_clean_error(run_cli("predict", str(png), "--model", signed / "model.raw.onnx", "--public-key",
                                   SHIPPED_KEY), "its bytes differ from what was signed")


def test_predict_with_a_public_key_checks_another_artefact_and_its_companion(signed):
    """model.xml is run with model.bin: a changed byte in the companion is refused, naming it."""
    png = next((REPO / "examples").rglob("*.png"))
    r = run_cli("predict", str(png), "--model", signed / "model.xml", "--public-key", SHIPPED_KEY)
    assert r.exit_code == 0, r.output
    data = bytearray((signed / "model.bin").read_bytes())
    data[-1] ^= 1
    (signed / "model.bin").write_bytes(bytes(data))
    assert_clean_error(run_cli("predict", str(png), "--model", signed / "model.xml", "--public-key", SHIPPED_KEY),
                       "model.bin")


def test_sign_then_verify_both_ways(signed, key, fmnist_dir):
    """`lenet-export sign` (in the signing environment) writes a signature model-signing's CLI accepts and this
    package's check accepts; the verdict is signed with the same key."""
    env = _sign_env()
    for f in (SIGNATURE, ATTESTATION):
        (signed / f).unlink()
    r = subprocess.run([str(env / "lenet-export"), "sign", "--exported", str(signed), "--key", str(key[0])],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "verdict PASSED" in r.stdout, r.stderr
    r = subprocess.run([str(env / "model_signing"), "verify", "key", str(signed), "--signature",
                        str(signed / SIGNATURE), "--public_key", str(key[1])], capture_output=True, text=True)
    assert r.returncode == 0 and "Verification succeeded" in r.stdout, r.stdout + r.stderr
    assert len(check_files(signed, key[1])) == len([p for p in signed.rglob("*") if p.is_file()]) - 2
    assert verdict(signed, key[1])["predicate"]["result"] == "PASSED"
    with pytest.raises(ArtefactError, match="is not signed by"):
        check_files(signed, SHIPPED_KEY)  # another key's signature is refused


def test_sign_refuses_bad_input(tmp_path, key):
    assert_clean_error(run_cli("sign", "--exported", tmp_path, "--key", key[0]), "is not a verified export folder")


def test_the_signing_environment_is_torch_free_and_runs_the_model(tmp_path):
    """.venv-sign holds the torch-free core: the runtime and predict work, a toolchain verb says what is missing."""
    env = _sign_env()
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "x.png")
    r = subprocess.run([str(env / "python"), "-c", "import torch"], capture_output=True, text=True)
    assert r.returncode != 0  # torch cannot be imported there
    r = subprocess.run([str(env / "lenet-export"), "predict", str(tmp_path / "x.png"), "--model",
                        str(SHIPPED["fashion-mnist"] / "model.raw.onnx"), "--public-key", str(SHIPPED_KEY)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "x.png" in r.stdout, r.stderr
    r = subprocess.run([str(env / "lenet-export"), "train", "--epochs", "1", "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == ("error: torch is not installed here (this command needs the "
                                                      "toolchain: pip install 'lenet-export[export]')"), r.stderr


def test_malformed_signature_and_report_are_one_line(signed, key, tmp_path):
    (signed / SIGNATURE).write_text("[1, 2]")
    with pytest.raises(ArtefactError, match="is not a signature bundle"):
        check_files(signed, SHIPPED_KEY)
    env = _sign_env() if (SIGN_ENV / "model_signing").is_file() else None
    if env is None:
        return
    (signed / SIGNATURE).unlink()
    (signed / "verify.json").write_text("{")
    r = subprocess.run([str(env / "lenet-export"), "sign", "--exported", str(signed), "--key", str(key[0])],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "is not a readable verify report" in r.stderr, r.stderr
    assert not (signed / SIGNATURE).exists()  # nothing was signed
