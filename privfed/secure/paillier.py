"""Packed Paillier: encrypt a whole update as ~1/120 as many ciphertexts, add them on the server, decrypt the sum.

Encryption of a plaintext m under modulus n is ``(1 + n m) * r^n mod n^2`` (phe's ``raw_encrypt`` with g = n + 1
followed by its ``obfuscate``). Almost all the cost is the obfuscator r^n mod n^2, which does not depend on m, so
:class:`PaillierWorkers` computes obfuscators ahead of time in a pool of processes (while the client trains) and
encryption proper is one modular multiplication per ciphertext. Decryption is phe's ``raw_decrypt``, spread over
the same pool.

Speed-up from the trust model: the clients hold the factors p, q (they decrypt), so an obfuscator is computed by
the Chinese remainder theorem instead of one exponentiation modulo n^2. For y = r^q mod p, (r^q)^p = y^p mod p^2
(the binomial terms of (y + kp)^p vanish mod p^2), so r^n mod p^2 = (r^q mod p)^p mod p^2, likewise mod q^2, and the
two are joined by CRT: ~3x less work, the *same value* as phe's ``powmod(r, n, n^2)`` for the same r (a test checks
it), and r is phe's ``get_random_lt_n()`` (the OS CSPRNG).
"""
from __future__ import annotations

import math
import multiprocessing
import os
import time
import weakref
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import gmpy2
import numpy as np
from phe.util import mulmod
from tqdm.auto import tqdm

from privfed.secure.messages import SERVER, Message, MessageType, ProtocolError, decode, encode
from privfed.secure.packing import SlotLayout
from privfed.secure.paillier_keys import KeyMismatchError, PaillierKey

OBFUSCATORS_PER_TASK = 16
WORKER_NICENESS = 19  # the lowest priority: the pool runs on what training leaves idle
PROGRESS_MIN_ITEMS = 500  # a progress bar only for waits of a few seconds or more
_ENVELOPE_BYTES = 1024  # msgpack framing and the small fields, on top of the ciphertexts


class ObfuscatorMaker:
    """r^n mod n^2 for random r, computed with the factors of n (see the module docstring)."""

    def __init__(self, key: PaillierKey):
        if not key.has_private:
            raise KeyMismatchError(f"Paillier key {key.fingerprint} is public only: clients need the key pair")
        self.public = key.public_key()
        self.p, self.q = gmpy2.mpz(key.p), gmpy2.mpz(key.q)
        self.p2, self.q2 = self.p * self.p, self.q * self.q
        self.p2_inverse = gmpy2.invert(self.p2, self.q2)

    def of(self, r: int) -> gmpy2.mpz:
        """r^n mod n^2, equal to phe's ``powmod(r, n, n^2)``."""
        mod_p2 = gmpy2.powmod(gmpy2.powmod(r, self.q, self.p), self.p, self.p2)
        mod_q2 = gmpy2.powmod(gmpy2.powmod(r, self.p, self.q), self.q, self.q2)
        return mod_p2 + self.p2 * gmpy2.f_mod((mod_q2 - mod_p2) * self.p2_inverse, self.q2)

    def fresh(self) -> gmpy2.mpz:
        return self.of(self.public.get_random_lt_n())


# ---------------------------------------------------------------- the worker processes

_WORKER: dict = {}


def _start_worker(key_bytes: bytes, niceness: int) -> None:
    os.nice(niceness)  # background work: yield the cores to training whenever it wants them
    key = PaillierKey.from_bytes(key_bytes)
    _WORKER["maker"] = ObfuscatorMaker(key)
    _WORKER["private"] = key.private_key()


def _make_obfuscators(count: int) -> tuple[list[gmpy2.mpz], float]:
    start = time.process_time()
    maker = _WORKER["maker"]
    return [maker.fresh() for _ in range(count)], time.process_time() - start


def _decrypt(ciphertexts: list[int]) -> tuple[list[int], float]:
    start = time.process_time()
    private = _WORKER["private"]
    return [private.raw_decrypt(c) for c in ciphertexts], time.process_time() - start


class PaillierWorkers:
    """A pool of processes that hold the clients' key pair: obfuscators ahead of time, decryption in parallel.

    ``prefetch`` queues obfuscators and returns at once; ``take`` hands out ready ones (each exactly once: a reused
    obfuscator would let anyone who saw both ciphertexts learn the difference of their plaintexts) and makes any
    shortfall. The pool starts on first use, with the "spawn" method so it is safe beside torch's threads and in
    notebooks; like any spawn pool it re-imports the main script, so a script must call privfed under
    ``if __name__ == "__main__":`` (a worker that dies says so). Workers run at the lowest priority, on the CPU
    that training leaves idle. ``cpu_seconds`` adds up the workers' CPU time.
    """

    def __init__(self, key: PaillierKey, processes: int):
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        self.key, self.processes = key, processes
        self._pool: ProcessPoolExecutor | None = None
        self._finalizer: weakref.finalize | None = None
        self._pending: deque[Future] = deque()
        self._ready: list[gmpy2.mpz] = []
        self.cpu_seconds = 0.0

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_start_worker, initargs=(self.key.to_bytes(), WORKER_NICENESS))
            # a pool nobody closed must not make the interpreter finish its queue before exiting
            self._finalizer = weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)
        return self._pool

    @staticmethod
    def _result(future: Future) -> tuple[list, float]:
        try:
            return future.result()
        except BrokenProcessPool:
            raise RuntimeError(
                "a Paillier worker process died while starting or working. Worker processes are started with "
                "'spawn', which re-imports your main script: run privfed from a script only under "
                "`if __name__ == \"__main__\":` (the CLI and notebooks need nothing)") from None

    @property
    def queued(self) -> int:
        """Obfuscators ready or being made."""
        return len(self._ready) + OBFUSCATORS_PER_TASK * len(self._pending)

    def prefetch(self, count: int) -> None:
        """Start making ``count`` more obfuscators in the background."""
        pool = self._executor()
        for _ in range(math.ceil(count / OBFUSCATORS_PER_TASK)):
            self._pending.append(pool.submit(_make_obfuscators, OBFUSCATORS_PER_TASK))

    def take(self, count: int, progress: bool = False) -> list[gmpy2.mpz]:
        """``count`` fresh obfuscators, waiting for (or starting) as many as are not ready yet."""
        if count > self.queued:
            self.prefetch(count - self.queued)
        waiting = count - min(count, len(self._ready))
        with tqdm(total=count, initial=count - waiting, disable=not progress or waiting < PROGRESS_MIN_ITEMS,
                  leave=False, desc="paillier obfuscators", unit="ct", dynamic_ncols=True) as bar:
            while len(self._ready) < count:
                values, seconds = self._result(self._pending.popleft())
                self.cpu_seconds += seconds
                self._ready.extend(values)
                bar.update(min(len(values), count - bar.n))
        taken, self._ready = self._ready[:count], self._ready[count:]
        return taken

    def decrypt(self, ciphertexts: list[int], progress: bool = False) -> list[int]:
        """phe's ``raw_decrypt`` of each ciphertext, in parallel, in order."""
        pool = self._executor()
        chunk = max(1, math.ceil(len(ciphertexts) / (self.processes * 8)))
        futures = [pool.submit(_decrypt, ciphertexts[i:i + chunk]) for i in range(0, len(ciphertexts), chunk)]
        plaintexts: list[int] = []
        with tqdm(total=len(ciphertexts), disable=not progress or len(ciphertexts) < PROGRESS_MIN_ITEMS,
                  leave=False, desc="paillier decryption", unit="ct", dynamic_ncols=True) as bar:
            for future in futures:
                values, seconds = self._result(future)
                self.cpu_seconds += seconds
                plaintexts.extend(values)
                bar.update(len(values))
        return plaintexts

    def cancel_prefetch(self) -> None:
        """Drop queued obfuscator tasks that have not started (so decryption does not wait behind them)."""
        self._pending = deque(f for f in self._pending if not f.cancel())

    def close(self) -> None:
        if self._pool is not None:
            if self._finalizer is not None:
                self._finalizer.detach()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()
        self._ready.clear()


# ---------------------------------------------------------------- encryption and the wire format


def encrypt_packed(plaintexts: list[int], key: PaillierKey, obfuscators: list[gmpy2.mpz]) -> list[int]:
    """Paillier ciphertexts of packed plaintexts: phe's ``raw_encrypt(m, r_value=1)`` times a fresh obfuscator."""
    if len(obfuscators) != len(plaintexts):
        raise ValueError(f"{len(plaintexts)} plaintexts need as many obfuscators, got {len(obfuscators)}")
    public = key.public_key()
    if not all(isinstance(m, int) and 0 <= m < public.n for m in plaintexts):
        raise ValueError("a packed plaintext must be an int in [0, n): phe would silently reduce it mod n")
    return [mulmod(public.raw_encrypt(m, r_value=1), o, public.nsquare) for m, o in zip(plaintexts, obfuscators)]


def ciphertext_bytes(key: PaillierKey) -> int:
    """Each ciphertext travels as a fixed-width big-endian integer below n^2."""
    return (2 * key.bits + 7) // 8


def message_limit(key: PaillierKey, layout: SlotLayout, length: int) -> int:
    return layout.plaintexts_for(length) * ciphertext_bytes(key) + _ENVELOPE_BYTES + 16 * layout.max_clients


def _to_bytes(ciphertexts: list[int], width: int) -> bytes:
    return b"".join(int(c).to_bytes(width, "big") for c in ciphertexts)


def _from_bytes(raw: bytes, width: int, count: int, nsquare: int, kind: str) -> list[int]:
    if len(raw) != width * count:
        raise ProtocolError(f"{kind}: {len(raw)} bytes of ciphertexts, expected {count} x {width}")
    values = [int.from_bytes(raw[i:i + width], "big") for i in range(0, len(raw), width)]
    if not all(0 < c < nsquare for c in values):
        raise ProtocolError(f"{kind}: a ciphertext is outside (0, n^2)")
    return values


def input_message(key: PaillierKey, layout: SlotLayout, length: int, ciphertexts: list[int], session: bytes,
                  round_idx: int, sender: int) -> bytes:
    return encode(Message(MessageType.PAILLIER_INPUT, session, round_idx, sender, {
        **_header(key, layout, length), "ciphertexts": _to_bytes(ciphertexts, ciphertext_bytes(key))}))


def _header(key: PaillierKey, layout: SlotLayout, length: int) -> dict:
    """What both sides must agree on to read a packed vector: the key, the length and the slot layout."""
    return {"key": key.fingerprint_bytes, "length": length, "value_bits": layout.value_bits,
            "slot_bits": layout.slot_bits, "slots": layout.slots}


def _check_header(message: Message, key: PaillierKey, layout: SlotLayout, length: int) -> None:
    body = message.body
    if body["key"] != key.fingerprint_bytes:
        raise KeyMismatchError(f"{message.type.name} from {message.sender} was encrypted under Paillier key "
                               f"{body['key'].hex()[:16]}, but this party holds key {key.fingerprint} "
                               "(a key file from another federation?)")
    expected = _header(key, layout, length)
    if any(body[name] != expected[name] for name in ("length", "value_bits", "slot_bits", "slots")):
        raise ProtocolError(f"{message.type.name} from {message.sender}: layout {body['length']} {body['value_bits']}-"
                            f"bit values in {body['slots']} x {body['slot_bits']}-bit slots, expected {length} "
                            f"{layout.value_bits}-bit values in {layout.slots} x {layout.slot_bits}")


class PaillierServer:
    """Adds encrypted inputs (multiplies ciphertexts mod n^2) knowing only the public key; never decrypts."""

    def __init__(self, public: PaillierKey, layout: SlotLayout, length: int, session: bytes, round_idx: int):
        self.public, self.layout, self.length = public.public(), layout, length
        self.session, self.round_idx = session, round_idx
        self.nsquare = gmpy2.mpz(self.public.n) ** 2
        self.total: list[gmpy2.mpz] | None = None
        self.contributors: list[int] = []
        self.seconds = 0.0

    def receive(self, sender: int, raw: bytes) -> None:
        start = time.perf_counter()
        message = decode(raw, max_bytes=message_limit(self.public, self.layout, self.length), session=self.session,
                         round_idx=self.round_idx, sender=sender, allowed=(MessageType.PAILLIER_INPUT,))
        _check_header(message, self.public, self.layout, self.length)
        if sender in self.contributors:
            raise ProtocolError(f"client {sender} sent a second input this round")
        if len(self.contributors) >= self.layout.max_clients:
            raise ProtocolError(f"the layout sums at most {self.layout.max_clients} inputs without overflow")
        values = _from_bytes(message.body["ciphertexts"], ciphertext_bytes(self.public),
                             self.layout.plaintexts_for(self.length), int(self.nsquare), "PAILLIER_INPUT")
        if self.total is None:
            self.total = [gmpy2.mpz(c) for c in values]
        else:
            self.total = [gmpy2.f_mod(t * c, self.nsquare) for t, c in zip(self.total, values)]
        self.contributors.append(sender)
        self.seconds += time.perf_counter() - start

    def result(self) -> bytes:
        """The encrypted sum, for the clients to decrypt."""
        if self.total is None:
            raise ProtocolError("no input has arrived: nothing to sum")
        return encode(Message(MessageType.PAILLIER_SUM, self.session, self.round_idx, SERVER, {
            **_header(self.public, self.layout, self.length),
            "ciphertexts": _to_bytes(self.total, ciphertext_bytes(self.public)), "contributors": sorted(self.contributors)}))


def decrypt_sum(raw: bytes, key: PaillierKey, layout: SlotLayout, length: int, session: bytes, round_idx: int,
                workers: PaillierWorkers, progress: bool = False) -> tuple[np.ndarray, tuple[int, ...]]:
    """A client's view: check and decrypt the server's encrypted sum -> (int64 sum of the values, contributors)."""
    message = decode(raw, max_bytes=message_limit(key, layout, length), session=session, round_idx=round_idx,
                     sender=SERVER, allowed=(MessageType.PAILLIER_SUM,))
    _check_header(message, key, layout, length)
    contributors = tuple(message.body["contributors"])
    values = _from_bytes(message.body["ciphertexts"], ciphertext_bytes(key), layout.plaintexts_for(length),
                         key.n ** 2, "PAILLIER_SUM")
    plaintexts = workers.decrypt(values, progress)
    try:
        return layout.unpack_sum(plaintexts, length, len(contributors)), contributors
    except ValueError as err:
        raise ProtocolError(f"the decrypted sum is not a sum of {len(contributors)} inputs: {err}") from None

