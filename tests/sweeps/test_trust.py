"""The pickles a resume loads: signed with this user's key (keyed HMAC-SHA-256), and a forged or missing signature
means they are not loaded, without Ray: ``resume``'s restore and the searcher's own state file."""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle

import pytest

from l2d.storage import Location
from sweeps.folder.trust import SIGNATURES, Signatures, digest
from tests.sweeps.conftest import TINY_SPEC, plant_payload


@pytest.fixture
def key(tmp_path, monkeypatch):
    path = tmp_path / "keys" / "signing.key"
    monkeypatch.setenv("L2D_SWEEP_KEY_FILE", str(path))
    return path


def test_a_signature_is_a_keyed_hmac_and_forgeries_fail(tmp_path, key):
    folder = Location.parse(tmp_path / "sweep")
    folder.makedirs()
    data = b"the searcher's state"
    signatures = Signatures(folder)
    signatures.sign("searcher.pkl", data)
    secret = key.read_bytes()
    assert len(secret) >= 32 and (key.stat().st_mode & 0o777) == 0o600
    stored = json.loads((folder / SIGNATURES).read_text())["searcher.pkl"]
    assert stored == hmac.new(secret, data, hashlib.sha256).hexdigest() == digest(data)
    assert Signatures(folder).check("searcher.pkl", data)
    assert not Signatures(folder).check("searcher.pkl", data + b"!")  # another content
    for forged in (
        hashlib.sha256(data).hexdigest(),  # a plain digest: no key
        hmac.new(b"another user's key" * 2, data, hashlib.sha256).hexdigest(),  # another key
        "",
    ):
        (folder / SIGNATURES).write_text(json.dumps({"searcher.pkl": forged}))
        assert not Signatures(folder).check("searcher.pkl", data), forged


def _folder_with_planted_experiment(tmp_path):
    from sweeps.specs import parse_spec

    spec = parse_spec({**TINY_SPEC, "storage": str(tmp_path / "storage")})
    tune = spec.sweep_dir / "tune"
    tune.makedirs()
    (tune / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    ran = tmp_path / "ran"
    plant_payload(tune / "tuner.pkl", ran)  # what Tuner.restore would unpickle first
    return spec, ran


def test_resume_does_not_load_an_unsigned_or_forged_experiment(tmp_path, key):
    from sweeps.tune.runner import _restore

    spec, ran = _folder_with_planted_experiment(tmp_path)
    tuner, why = _restore(spec, True, None, 0, "abc", trust=False)
    assert tuner is None and "not signed by this user's key" in why and not ran.exists()
    # A signature made without the key (a plain SHA-256 of the file) is no signature.
    data = (spec.sweep_dir / "tune" / "tuner.pkl").read_bytes()
    entries = {f"tune/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest() for p in (spec.sweep_dir / "tune").list()}
    (spec.sweep_dir / SIGNATURES).write_text(json.dumps(entries))
    tuner, why = _restore(spec, True, None, 0, "abc", trust=False)
    assert tuner is None and "not signed" in why and not ran.exists()
    # With the key (as the driver signs what it wrote), the check passes and Tune's restore is what loads it: the
    # planted pickle then runs, which is what --trust means for a folder someone else wrote.
    signatures = Signatures(spec.sweep_dir)
    signatures.entries = {}
    signatures.sign_folder("tune")
    assert signatures.check("tune/tuner.pkl", data)
    _restore(spec, True, None, 0, "abc", trust=False)
    assert ran.exists()


def test_resume_with_trust_loads_what_it_was_told_to(tmp_path, key):
    from sweeps.tune.runner import _restore

    spec, ran = _folder_with_planted_experiment(tmp_path)
    _restore(spec, True, None, 0, "abc", trust=True)  # the user vouches for the folder: loaded (and it runs)
    assert ran.exists()


def test_the_searcher_loads_its_state_only_when_signed_with_the_key(tmp_path, key):
    from sweeps.search.study import StudyStore
    from sweeps.specs import parse_spec
    from sweeps.tune.searcher import StudySearcher

    spec = parse_spec({**TINY_SPEC, "storage": str(tmp_path / "storage")})
    spec.sweep_dir.makedirs()
    searcher = StudySearcher(spec, "abc", StudyStore(spec.sweep_dir))
    searcher.numbers = {"t1": 0}
    checkpoint = tmp_path / "tune-copy.pkl"
    searcher.save(str(checkpoint))
    newer = pickle.dumps({"numbers": {"t1": 0, "t2": 1}, "best": {}, "reported": {}, "sampler": searcher.sampler})
    (spec.sweep_dir / "searcher.pkl").write_bytes(newer)
    for forged in (hashlib.sha256(newer).hexdigest(), hmac.new(b"k" * 32, newer, hashlib.sha256).hexdigest()):
        (spec.sweep_dir / SIGNATURES).write_text(json.dumps({"searcher.pkl": forged}))
        searcher.restore(str(checkpoint))
        assert searcher.numbers == {"t1": 0}, forged  # Tune's copy: the forged file was not loaded
    Signatures(spec.sweep_dir).sign("searcher.pkl", newer)
    searcher.restore(str(checkpoint))
    assert searcher.numbers == {"t1": 0, "t2": 1}  # signed with the key: the newer state is loaded


def test_the_key_lives_outside_every_sweep_private_to_its_user(tmp_path, monkeypatch):
    from sweeps.folder import trust

    monkeypatch.delenv("L2D_SWEEP_KEY_FILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert trust.key_file() == tmp_path / "xdg" / "l2d-sweep" / "signing.key"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert trust.key_file() == tmp_path / "home" / ".config" / "l2d-sweep" / "signing.key"
    # Made on first use: 32 random bytes, the file 0600 in a folder 0700 (its parents created too).
    monkeypatch.setenv("L2D_SWEEP_KEY_FILE", str(tmp_path / "deep" / "er" / "signing.key"))
    digest(b"x")
    key = tmp_path / "deep" / "er" / "signing.key"
    assert len(key.read_bytes()) == 32 and (key.stat().st_mode & 0o777) == 0o600
    assert (key.parent.stat().st_mode & 0o777) == 0o700
    assert digest(b"x") == hmac.new(key.read_bytes(), b"x", hashlib.sha256).hexdigest()  # the same key next time
    # A key file that is not a key is named, never silently replaced (what it signed would all turn unsigned).
    key.write_bytes(b"short")
    with pytest.raises(trust.KeyFileError, match="not a signing key"):
        digest(b"x")
    assert key.read_bytes() == b"short"
    monkeypatch.setenv("L2D_SWEEP_KEY_FILE", str(tmp_path / "deep"))  # a folder where the key should be
    with pytest.raises(trust.KeyFileError, match="not a signing key"):
        digest(b"x")


def test_signing_a_folder_counts_what_changed_and_names_what_is_unsigned(tmp_path, key):
    folder = Location.parse(tmp_path / "sweep")
    (folder / "tune").makedirs()
    (folder / "tune" / "a.pkl").write_bytes(b"a")
    (folder / "tune" / "b.pkl").write_bytes(b"b")
    signatures = Signatures(folder)
    assert signatures.sign_folder("tune") == 2
    assert Signatures(folder).sign_folder("tune") == 0  # a fresh reader: nothing changed, nothing re-signed
    assert Signatures(folder).sign_folder("missing") == 0 and Signatures(folder).unsigned("missing") == []
    (folder / "tune" / "b.pkl").write_bytes(b"B")  # changed after it was signed
    (folder / "tune" / "c.pkl").write_bytes(b"c")  # never signed
    assert Signatures(folder).unsigned("tune") == ["tune/b.pkl", "tune/c.pkl"]
    again = Signatures(folder)
    assert again.sign_folder("tune") == 2 and Signatures(folder).unsigned("tune") == []
