"""Packed Paillier: packing arithmetic, encryption really applied, keys, the wire format and the worker pool."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import gmpy2
import msgpack
import numpy as np
import phe
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privfed.errors import ConfigError
from privfed.secure import packing
from privfed.secure.messages import ProtocolError
from privfed.secure.packing import SlotLayout
from privfed.secure.paillier import (
    ObfuscatorMaker,
    PaillierServer,
    PaillierWorkers,
    decrypt_sum,
    encrypt_packed,
    input_message,
)
from privfed.secure.paillier_keys import KeyMismatchError, PaillierKey, distribute_key
from privfed.secure.primitives import DecryptionError

SESSION = b"s" * 16


@pytest.fixture(scope="module")
def key() -> PaillierKey:
    return PaillierKey.generate(1024)  # small for speed: the arithmetic does not depend on the size


@pytest.fixture(scope="module")
def workers(key):
    pool = PaillierWorkers(key, 2)
    yield pool
    pool.close()


def _random_values(rng: np.random.Generator, layout: SlotLayout, length: int) -> np.ndarray:
    """Uniform values, with the extremes -L and +L over-represented (the cases that overflow first)."""
    values = rng.integers(-layout.offset, layout.offset + 1, size=length)
    extremes = rng.random(length) < 0.3
    values[extremes] = rng.choice([-layout.offset, layout.offset], size=int(extremes.sum()))
    return values


# ---------------------------------------------------------------- packing


@settings(max_examples=150, deadline=None)
@given(clients=st.integers(1, 70), length=st.integers(0, 400), value_bits=st.integers(2, 40),
       plaintext_bits=st.sampled_from([128, 1023, 3071]), seed=st.integers(0, 2 ** 32 - 1))
def test_packed_sum_equals_plain_sum(clients, length, value_bits, plaintext_bits, seed):
    """Adding packed plaintexts as integers (what Paillier's homomorphism does) and unpacking gives the plain sum."""
    layout = SlotLayout.for_clients(value_bits, clients, plaintext_bits)
    rng = np.random.default_rng(seed)
    vectors = [_random_values(rng, layout, length) for _ in range(clients)]
    packed = [layout.pack(v) for v in vectors]
    sums = [sum(column) for column in zip(*packed)]
    assert all(s < 2 ** plaintext_bits for s in sums)  # below n: Paillier's mod-n addition never wraps
    np.testing.assert_array_equal(layout.unpack_sum(sums, length, clients), np.sum(vectors, axis=0, dtype=np.int64))


def test_every_client_at_an_extreme_still_fits():
    layout = SlotLayout.for_clients(20, 10, 3071)
    for extreme in (layout.offset, -layout.offset):
        packed = [layout.pack(np.full(300, extreme)) for _ in range(10)]
        total = layout.unpack_sum([sum(c) for c in zip(*packed)], 300, 10)
        assert (total == 10 * extreme).all()


def test_layout_follows_the_guard_bit_rule():
    layout = SlotLayout.for_clients(20, 10, 3071)
    assert layout.slot_bits == 20 + 4 + 1 and layout.slots == 3071 // 25
    assert SlotLayout.for_clients(16, 2, 2047).slot_bits == 18
    assert SlotLayout.for_clients(16, 1, 2047).slot_bits == 17


def test_trailing_zeros_survive_because_the_length_travels():
    layout = SlotLayout.for_clients(8, 2, 256)
    values = np.array([5, -3, 0, 0, 0, 0, 0])
    total = layout.unpack_sum([2 * m for m in layout.pack(values)], values.size, 2)
    np.testing.assert_array_equal(total, 2 * values)
    with pytest.raises(ValueError, match="plaintexts"):
        layout.unpack_sum(layout.pack(values), values.size + layout.slots, 1)


@pytest.mark.parametrize("value_bits, clients, plaintext_bits, key", [
    (53, 2 ** 12, 3071, "aggregation.value_bits"),  # 53 + 12 + 1 = 66-bit slots: too wide to read back
    (40, 30, 40, "aggregation.key_bits"),  # a plaintext smaller than one slot
])
def test_overflowing_layouts_are_refused_up_front(value_bits, clients, plaintext_bits, key):
    with pytest.raises(ConfigError, match=key):
        SlotLayout.for_clients(value_bits, clients, plaintext_bits)


def test_chunked_packing_is_seamless(monkeypatch):
    monkeypatch.setattr(packing, "CHUNK_VALUES", 50)  # many chunks, boundaries inside and between plaintexts
    layout = SlotLayout.for_clients(13, 4, 300)
    rng = np.random.default_rng(3)
    vectors = [_random_values(rng, layout, 1001) for _ in range(4)]
    sums = [sum(column) for column in zip(*(layout.pack(v) for v in vectors))]
    np.testing.assert_array_equal(layout.unpack_sum(sums, 1001, 4), np.sum(vectors, axis=0))


def test_out_of_range_values_and_impossible_sums_are_refused():
    layout = SlotLayout.for_clients(8, 2, 256)
    with pytest.raises(ValueError, match="must lie in"):
        layout.pack(np.array([layout.offset + 1]))
    with pytest.raises(TypeError, match="integers"):
        layout.pack(np.array([0.9, -0.9]))
    too_big = [(1 << layout.plaintext_bits) - 1]  # every slot full: more than two clients can add up to
    with pytest.raises(ValueError, match="wrong key or corrupted"):
        layout.unpack_sum(too_big, 3, 2)


# ---------------------------------------------------------------- encryption


def test_obfuscator_by_crt_equals_phes_formula(key):
    maker = ObfuscatorMaker(key)
    public = key.public_key()
    for _ in range(20):
        r = public.get_random_lt_n()
        assert maker.of(r) == phe.util.powmod(r, public.n, public.nsquare)


def test_ciphertexts_decrypt_with_phe_and_are_obfuscated(key, workers):
    layout = SlotLayout.for_clients(20, 3, key.bits - 1)
    plaintexts = layout.pack(np.arange(-100, 100))
    ciphertexts = encrypt_packed(plaintexts, key, workers.take(len(plaintexts)))
    private = key.private_key()
    assert [private.raw_decrypt(int(c)) for c in ciphertexts] == plaintexts
    # an unobfuscated ("nude") ciphertext (1 + n m) mod n^2 is 1 mod n and gives m away: none may be
    assert all(int(c) % key.n != 1 for c in ciphertexts)
    again = encrypt_packed(plaintexts, key, workers.take(len(plaintexts)))
    assert not set(map(int, ciphertexts)) & set(map(int, again))  # randomised: equal inputs, unrelated outputs


def test_obfuscators_are_handed_out_once(workers):
    workers.prefetch(40)
    first, second = workers.take(20), workers.take(30)
    assert len(set(map(int, first + second))) == 50


def test_queued_obfuscators_can_be_cancelled_and_a_closed_pool_restarts(key):
    pool = PaillierWorkers(key, 1)
    try:
        pool.prefetch(64 * 16)
        pool.cancel_prefetch()
        assert pool.queued < 64 * 16  # tasks not yet started are gone
        pool.close()
        assert pool.queued == 0 and len(pool.take(3)) == 3  # starts a new pool
    finally:
        pool.close()


def test_plaintexts_outside_the_message_space_are_refused(key, workers):
    with pytest.raises(ValueError, match=r"\[0, n\)"):
        encrypt_packed([key.n], key, workers.take(1))


def test_a_script_without_a_main_guard_gets_told_why_its_workers_died(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text("from privfed.secure.paillier import PaillierWorkers\n"
                      "from privfed.secure.paillier_keys import PaillierKey\n"
                      "PaillierWorkers(PaillierKey.generate(512), 1).take(1)\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0 and 'if __name__ == "__main__"' in proc.stderr


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(clients=st.integers(2, 6), length=st.integers(1, 300), value_bits=st.integers(2, 30),
       seed=st.integers(0, 2 ** 32 - 1))
def test_encrypted_packed_sum_equals_plain_sum(key, workers, clients, length, value_bits, seed):
    layout = SlotLayout.for_clients(value_bits, clients, key.bits - 1)
    rng = np.random.default_rng(seed)
    vectors = [_random_values(rng, layout, length) for _ in range(clients)]
    server = PaillierServer(key.public(), layout, length, SESSION, 1)
    for cid, v in enumerate(vectors):
        ciphertexts = encrypt_packed(layout.pack(v), key, workers.take(layout.plaintexts_for(length)))
        server.receive(cid, input_message(key, layout, length, ciphertexts, SESSION, 1, cid))
    total, contributors = decrypt_sum(server.result(), key, layout, length, SESSION, 1, workers)
    assert contributors == tuple(range(clients))
    np.testing.assert_array_equal(total, np.sum(vectors, axis=0, dtype=np.int64))


# ---------------------------------------------------------------- the server and the wire


def _one_input(key, workers, layout, length, sender=0, session=SESSION):
    values = np.zeros(length, dtype=np.int64)
    ciphertexts = encrypt_packed(layout.pack(values), key, workers.take(layout.plaintexts_for(length)))
    return input_message(key, layout, length, ciphertexts, session, 1, sender)


def test_the_server_holds_no_private_key_and_never_sees_a_plaintext(key, workers):
    layout = SlotLayout.for_clients(20, 2, key.bits - 1)
    values = np.arange(1, 301)
    plaintexts = layout.pack(values)
    raw = input_message(key, layout, 300, encrypt_packed(plaintexts, key, workers.take(len(plaintexts))),
                        SESSION, 1, 0)
    server = PaillierServer(key, layout, 300, SESSION, 1)  # handed the key pair, it keeps the public part
    assert not server.public.has_private
    for m in plaintexts:
        window = m.to_bytes((m.bit_length() + 7) // 8, "big")[:32]
        assert window not in raw


def test_the_server_refuses_bad_inputs(key, workers):
    layout = SlotLayout.for_clients(20, 2, key.bits - 1)
    server = PaillierServer(key.public(), layout, 50, SESSION, 1)
    good = _one_input(key, workers, layout, 50)
    with pytest.raises(ProtocolError, match="another session"):
        server.receive(0, _one_input(key, workers, layout, 50, session=b"x" * 16))
    with pytest.raises(ProtocolError, match="claims sender"):
        server.receive(1, good)
    with pytest.raises(ProtocolError, match="malformed"):
        server.receive(0, good[:-7])
    wrong_length = _one_input(key, workers, layout, 60)
    with pytest.raises(ProtocolError, match="layout"):
        server.receive(0, wrong_length)
    server.receive(0, good)
    with pytest.raises(ProtocolError, match="second input"):
        server.receive(0, good)
    server.receive(1, _one_input(key, workers, layout, 50, sender=1))
    with pytest.raises(ProtocolError, match="at most 2"):  # a third input could overflow the slots
        server.receive(2, _one_input(key, workers, layout, 50, sender=2))


def test_inputs_with_another_value_width_are_refused(key, workers):
    """(b=20, n=5) and (b=21, n=4) share 24-bit slots but not the offset: summing them would be silently wrong."""
    ours, theirs = SlotLayout.for_clients(20, 5, key.bits - 1), SlotLayout.for_clients(21, 4, key.bits - 1)
    assert (ours.slot_bits, ours.slots) == (theirs.slot_bits, theirs.slots)
    with pytest.raises(ProtocolError, match="layout"):
        PaillierServer(key.public(), ours, 40, SESSION, 1).receive(0, _one_input(key, workers, theirs, 40))


def test_a_sum_no_honest_inputs_could_make_is_refused(key, workers):
    layout = SlotLayout.for_clients(20, 2, key.bits - 1)
    server = PaillierServer(key.public(), layout, 40, SESSION, 1)
    for cid in (0, 1):
        values = np.full(40, layout.offset)
        ciphertexts = encrypt_packed(layout.pack(values), key, workers.take(1))
        server.receive(cid, input_message(key, layout, 40, ciphertexts, SESSION, 1, cid))
    envelope = msgpack.unpackb(server.result(), raw=False)
    envelope[5]["contributors"] = [0]  # the server claims one input but sums two
    with pytest.raises(ProtocolError, match="not a sum of 1"):
        decrypt_sum(msgpack.packb(envelope, use_bin_type=True), key, layout, 40, SESSION, 1, workers)


def test_a_ciphertext_outside_the_group_is_refused(key, workers):
    layout = SlotLayout.for_clients(20, 2, key.bits - 1)
    zero = input_message(key, layout, 10, [0], SESSION, 1, 0)
    with pytest.raises(ProtocolError, match="outside"):
        PaillierServer(key.public(), layout, 10, SESSION, 1).receive(0, zero)


# ---------------------------------------------------------------- keys


def test_a_sum_under_another_key_is_a_clear_error(key, workers):
    other = PaillierKey.generate(1024)
    layout = SlotLayout.for_clients(20, 2, 1023)
    with pytest.raises(KeyMismatchError, match=f"holds key {other.fingerprint}"):
        PaillierServer(other.public(), layout, 30, SESSION, 1).receive(0, _one_input(key, workers, layout, 30))
    server = PaillierServer(key.public(), layout, 30, SESSION, 1)
    server.receive(0, _one_input(key, workers, layout, 30))
    with pytest.raises(KeyMismatchError, match=key.fingerprint):
        decrypt_sum(server.result(), other, layout, 30, SESSION, 1, workers)


def test_a_public_key_cannot_decrypt_or_make_obfuscators(key):
    with pytest.raises(KeyMismatchError, match="public only"):
        key.public().private_key()
    with pytest.raises(KeyMismatchError, match="public only"):
        ObfuscatorMaker(key.public())


def test_key_files_round_trip_and_are_private(key, tmp_path):
    path = key.save(tmp_path / "clients.key")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    (tmp_path / "existing.key").write_text("")
    os.chmod(tmp_path / "existing.key", 0o644)
    assert stat.S_IMODE(os.stat(key.save(tmp_path / "existing.key")).st_mode) == 0o600  # overwritten: private too
    assert PaillierKey.load(path) == key
    public = key.public().save(tmp_path / "server.pub")
    assert PaillierKey.load(public) == key.public()
    assert str(key.p) not in repr(key) and hex(key.p) not in repr(key)


@pytest.mark.parametrize("content, problem", [
    (None, "no Paillier key file"),
    ("not json", "not a privfed Paillier key file"),
    ('{"format": "other"}', "not a privfed Paillier key file"),
    ('{"format": "privfed-paillier-key/1", "n": "0x23", "p": "0x5"}', "one factor"),
])
def test_unusable_key_files_are_clear_errors(tmp_path, content, problem):
    path = tmp_path / "k.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=problem):
        PaillierKey.load(path)


def test_a_key_file_with_wrong_factors_is_refused(key, tmp_path):
    broken = PaillierKey(key.n, key.p, key.q + 2)
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"format": "privfed-paillier-key/1", "n": hex(broken.n), "p": hex(broken.p),
                                "q": hex(broken.q)}))
    with pytest.raises(ConfigError, match="distinct primes"):
        PaillierKey.load(path)


def test_distribution_hands_every_client_the_key_and_the_server_nothing(key):
    handed = distribute_key(key, holder=0, recipients=[0, 1, 2, 3], session=SESSION)
    assert set(handed.keys) == {0, 1, 2, 3} and all(k == key for k in handed.keys.values())
    secrets = [f.to_bytes((f.bit_length() + 7) // 8, "big") for f in (key.p, key.q)]
    windows = [s[i:i + 16] for s in secrets for i in range(0, len(s) - 15, 8)]
    for routed in handed.routed:
        assert not any(w in routed for w in windows)
    assert handed.bytes_down_per_client > 2 * 1024 // 8  # the sealed p and q really travel


def test_a_tampered_sealed_key_is_refused(key, monkeypatch):
    from privfed.secure import paillier_keys

    original = paillier_keys.seal

    def seal_then_flip_a_bit(k, plaintext, associated):  # the server alters what it routes
        sealed = bytearray(original(k, plaintext, associated))
        sealed[-1] ^= 1
        return bytes(sealed)

    monkeypatch.setattr(paillier_keys, "seal", seal_then_flip_a_bit)
    with pytest.raises(DecryptionError):
        distribute_key(key, holder=0, recipients=[0, 1], session=SESSION)


def test_gmpy2_is_what_phe_uses():
    """phe falls back to pure Python (10x slower) when gmpy2 is missing: privfed requires it."""
    assert phe.util.HAVE_GMP and isinstance(gmpy2.mpz(3), gmpy2.mpz)
