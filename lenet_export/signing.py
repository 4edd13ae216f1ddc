"""Sign what was proven, and refuse bytes that differ from it.

``lenet-export sign --exported DIR --key KEY.pem`` signs the whole export folder (every artefact, metadata.json,
the report and its sidecar, the checkpoint, the card) with OpenSSF model-signing and an elliptic-curve key:
``DIR/model.sig``, a Sigstore bundle whose DSSE envelope holds an in-toto Statement listing every file's sha256
(verifiable with ``model_signing verify key DIR --signature DIR/model.sig --public_key PUB.pem``). Beside it,
``DIR/verify.intoto.json``: an in-toto Statement whose subjects are the files' sha256 and whose predicate is the
verify verdict (the in-toto test-result predicate), as a DSSE envelope signed with the same key.

Checking (``verify --public-key``, ``runtime.Classifier(public_key=...)``, ``predict --public-key``) reads the
signed digests with ``cryptography`` alone (``signed_digests``): the ECDSA signature over the DSSE
pre-authentication encoding, then the statement. Why not model-signing's own verifier: model-signing cannot be
installed beside the litert extra (litert-converter pins xdsl 0.28, which needs typing-extensions < 4.13;
model-signing's sigstore-models needs >= 4.14.1), and apps should not need sigstore to check a hash. The tests
check that model-signing's verifier accepts what ``sign`` writes, and that this reader accepts model-signing's
signatures. Torch-free.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ArtefactError, ConfigError, first_line
from .fsutil import sha256_file

SIGNATURE = "model.sig"
ATTESTATION = "verify.intoto.json"
UNSIGNED = (SIGNATURE, ATTESTATION)  # the two files the signature cannot cover
MODEL_PREDICATE = "https://model_signing/signature/v1.0"
TEST_RESULT_PREDICATE = "https://in-toto.io/attestation/test-result/v0.1"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
INSTALL = ("model-signing is not installed here: pip install 'lenet-export[sign]' in an environment without the "
           "litert extra (bash scripts/install.sh makes .venv-sign; see the README, 'Signing')")


@dataclass
class SignResult:
    signature: Path
    attestation: Path
    files: int
    verdict: str


def _envelope_payload(envelope: dict, public_key: Path, where: str) -> dict:
    """The statement inside a DSSE envelope, once its ECDSA signature is checked against ``public_key``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_public_key(Path(public_key).read_bytes())
    except (OSError, ValueError) as e:
        raise ConfigError(f"--public-key {public_key}: not a readable PEM public key ({first_line(e)})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigError(f"--public-key {public_key}: not an elliptic-curve key")
    try:
        payload, ptype = base64.b64decode(envelope["payload"]), envelope["payloadType"]
        sigs = [base64.b64decode(s["sig"]) for s in envelope["signatures"]]
    except (KeyError, TypeError, ValueError) as e:
        raise ArtefactError(f"{where} is not a DSSE envelope ({first_line(e)})") from None
    pae = b"DSSEv1 %d %b %d %b" % (len(ptype), ptype.encode(), len(payload), payload)  # DSSE's signed bytes
    digest = {256: hashes.SHA256, 384: hashes.SHA384, 521: hashes.SHA512}.get(key.curve.key_size, hashes.SHA256)()
    for sig in sigs:
        try:
            key.verify(sig, pae, ec.ECDSA(digest))
            break
        except InvalidSignature:
            continue
    else:
        raise ArtefactError(f"{where} is not signed by {public_key} (or was changed after signing)")
    try:
        statement = json.loads(payload)
    except ValueError:
        statement = None
    if ptype != PAYLOAD_TYPE or not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise ArtefactError(f"{where} does not hold an in-toto statement")
    return statement


def signed_digests(folder: Path, public_key: Path) -> dict[str, str]:
    """{path relative to ``folder``: sha256} as ``folder/model.sig`` lists them, its signature checked."""
    sig = Path(folder) / SIGNATURE
    try:
        bundle = json.loads(sig.read_text())
    except (OSError, ValueError) as e:
        raise ArtefactError(f"{sig}: no readable signature ({first_line(e)}); sign the export first "
                            "(lenet-export sign)") from None
    if not isinstance(bundle, dict):
        raise ArtefactError(f"{sig} is not a signature bundle")
    statement = _envelope_payload(bundle.get("dsseEnvelope") or {}, public_key, str(sig))
    if statement.get("predicateType") != MODEL_PREDICATE:
        raise ArtefactError(f"{sig} is not a model-signing signature")
    res = statement["predicate"].get("resources", [])
    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in res)).hexdigest()
    if root != statement["subject"][0]["digest"]["sha256"]:
        raise ArtefactError(f"{sig}: its file list does not add up to its signed digest")
    return {r["name"]: r["digest"] for r in res if r.get("algorithm") == "sha256"}


def check_files(folder: Path, public_key: Path, names: list[str] | None = None) -> dict[str, str]:
    """Refuse, in one line naming the file, any file of ``folder`` (or of ``names``) whose bytes differ from what
    was signed, that was not signed, or that is missing. Returns the signed digests."""
    folder = Path(folder)
    signed = signed_digests(folder, public_key)
    present = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                     if p.is_file() and p.relative_to(folder).as_posix() not in UNSIGNED)
    for name in names if names is not None else sorted(set(present) | set(signed)):
        if name not in signed:
            raise ArtefactError(f"{folder / name} was not signed (added after signing?)")
        if not (folder / name).is_file():
            raise ArtefactError(f"{folder / name} is missing: it was signed")
        if sha256_file(folder / name) != signed[name]:
            raise ArtefactError(f"{folder / name}: its bytes differ from what was signed")
    return signed


def signed_bytes(path: Path, public_key: Path) -> bytes:
    """The bytes of ``path``, read once and checked against the signature in its folder (so what is checked is
    what gets loaded)."""
    path = Path(path)
    digests = signed_digests(path.parent, public_key)
    if path.name not in digests:
        raise ArtefactError(f"{path} was not signed")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ArtefactError(f"cannot read {path}: {e.strerror or e}") from None
    if hashlib.sha256(data).hexdigest() != digests[path.name]:
        raise ArtefactError(f"{path}: its bytes differ from what was signed")
    return data


def verdict_statement(folder: Path, digests: dict[str, str]) -> dict:
    """The in-toto Statement of the verify verdict: subjects = every signed file, predicate = test-result."""
    report = json.loads((Path(folder) / "verify.json").read_text())
    backends = report.get("backends", {})
    passed = [n for n, b in backends.items() if b.get("status") == "passed"]
    failed = [n for n, b in backends.items() if b.get("status") == "failed"]
    skipped = [n for n, b in backends.items() if b.get("status") == "skipped"]
    return {"_type": STATEMENT_TYPE, "subject": [{"name": n, "digest": {"sha256": d}} for n, d in sorted(digests.items())],
            "predicateType": TEST_RESULT_PREDICATE,
            "predicate": {"result": "PASSED" if report.get("passed") else "FAILED",
                          "configuration": [{"name": "verify.json", "digest": {"sha256": digests["verify.json"]}}],
                          "passedTests": passed, "warnedTests": skipped, "failedTests": failed}}


def sign(folder: Path, key: Path) -> SignResult:
    """Sign ``folder`` (model-signing) and its verify verdict (DSSE, same key)."""
    folder = Path(folder)
    if not (folder / "metadata.json").is_file() or not (folder / "verify.json").is_file():
        raise ConfigError(f"{folder} is not a verified export folder (needs metadata.json and verify.json: "
                          "lenet-export verify --report <folder>/verify.json)")
    try:
        from model_signing import hashing, signing
        from securesystemslib.dsse import Envelope
        from securesystemslib.signer import CryptoSigner
    except ImportError:
        raise ConfigError(INSTALL) from None
    from cryptography.hazmat.primitives import serialization

    try:
        private = serialization.load_pem_private_key(Path(key).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"--key {key}: not a readable unencrypted PEM private key ({first_line(e)})") from None
    try:  # before anything is signed: a verdict that cannot be read must not leave a new model.sig behind
        report = json.loads((folder / "verify.json").read_text())
        if not isinstance(report, dict) or not isinstance(report.get("backends"), dict):
            raise ValueError("not a lenet-export report")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{folder / 'verify.json'} is not a readable verify report ({first_line(e)})") from None
    ignored = hashing.Config().set_ignored_paths(paths=list(UNSIGNED), ignore_git_paths=True)
    try:
        signing.Config().use_elliptic_key_signer(private_key=Path(key)).set_hashing_config(ignored).sign(
            folder, folder / SIGNATURE)
    except ValueError as e:  # model-signing's own checks (curve, symlinks)
        raise ConfigError(f"cannot sign {folder}: {first_line(e)}") from None
    public = private.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".pem") as pub:
        pub.write(public)
        pub.flush()
        digests = signed_digests(folder, Path(pub.name))
    statement = verdict_statement(folder, digests)
    env = Envelope(payload=json.dumps(statement).encode(), payload_type=PAYLOAD_TYPE, signatures={})
    env.sign(CryptoSigner(private))
    from .fsutil import atomic_write_json

    atomic_write_json(folder / ATTESTATION, env.to_dict())
    return SignResult(folder / SIGNATURE, folder / ATTESTATION, len(digests), statement["predicate"]["result"])


def verdict(folder: Path, public_key: Path) -> dict:
    """The signed verify verdict (``verify.intoto.json``), its signature checked."""
    path = Path(folder) / ATTESTATION
    try:
        envelope = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ArtefactError(f"{path}: no readable attestation ({first_line(e)})") from None
    statement = _envelope_payload(envelope, public_key, str(path))
    if statement.get("predicateType") != TEST_RESULT_PREDICATE:
        raise ArtefactError(f"{path} is not a test-result attestation")
    return statement
