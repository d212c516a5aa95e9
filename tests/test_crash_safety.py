"""SIGKILL a real two-worker server again and again while clients enroll and delete speakers.

After every crash the server is restarted; at the end:
- ``voicesearch index verify`` passes (snapshots + change log agree with SQLite),
- every acknowledged (2xx) enrollment is present, with all of its utterances,
- every acknowledged deletion is absent,
- nothing is half-applied: a speaker whose request was cut off either exists with all of its
  uploaded utterances or does not exist at all; the audit log has one row per applied change.
No request is ever answered with a 5xx.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.audio_factory import synth_voice, wav_bytes
from tests.paths import REPO_ROOT
from tests.server import ServerProcess, server_env

# Its own budget: ten rounds of starting a 2-worker server take ~1 min on an idle 2-core box and
# several times that on a busy one; the default 300 s per test is for ordinary tests.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROUNDS = 10
FILES_PER_SPEAKER = 2
WRITERS = 3


def clip(seed: int) -> bytes:
    return wav_bytes(synth_voice(1.0, seed=seed, f0=80.0 + (seed % 60) * 4), 16_000)


@dataclass
class Ledger:
    lock: threading.Lock = field(default_factory=threading.Lock)
    enrolled: set[str] = field(default_factory=set)  # 201 received
    enroll_unknown: set[str] = field(default_factory=set)  # sent, no answer (crash)
    deleted: set[str] = field(default_factory=set)  # 200 received
    delete_unknown: set[str] = field(default_factory=set)  # sent, no answer (crash)
    bad: list[str] = field(default_factory=list)  # any 5xx or unexpected status
    acks_this_round: int = 0


def writer(base_url: str, prefix: str, ledger: Ledger, stop: threading.Event) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for i in range(10_000):
            if stop.is_set():
                return
            external_id = f"{prefix}{i}"
            seed = hash(external_id) % 100_000
            files = [
                ("audio", (f"{n}.wav", clip(seed + n), "audio/wav"))
                for n in range(FILES_PER_SPEAKER)
            ]
            with ledger.lock:
                ledger.enroll_unknown.add(external_id)
            try:
                response = client.post(
                    "/speakers", files=files, data={"external_id": external_id, "language": "en"}
                )
            except httpx.HTTPError:
                return  # the server died under us: unknown outcome
            with ledger.lock:
                ledger.enroll_unknown.discard(external_id)
                if response.status_code == 201:
                    ledger.enrolled.add(external_id)
                    ledger.acks_this_round += 1
                else:
                    ledger.bad.append(f"enroll {external_id}: {response.status_code}")


def deleter(base_url: str, ledger: Ledger, stop: threading.Event, rng: random.Random) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        while not stop.is_set():
            with ledger.lock:
                candidates = sorted(ledger.enrolled - ledger.deleted - ledger.delete_unknown)
                if len(candidates) < 2:
                    external_id = None
                else:
                    external_id = rng.choice(candidates)
                    ledger.delete_unknown.add(external_id)
            if external_id is None:
                time.sleep(0.05)
                continue
            try:
                response = client.delete(f"/speakers/{external_id}")
            except httpx.HTTPError:
                return
            with ledger.lock:
                ledger.delete_unknown.discard(external_id)
                if response.status_code == 200:
                    ledger.deleted.add(external_id)
                    ledger.acks_this_round += 1
                else:
                    ledger.bad.append(f"delete {external_id}: {response.status_code}")


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_repeated_sigkill_during_enrollments_and_deletions(
    tmp_path: Path, tiny_model_dirs: dict[str, Path]
) -> None:
    env = server_env(tmp_path / "data", tiny_model_dirs)
    ledger = Ledger()
    rng = random.Random(1234)
    started = time.monotonic()
    for round_number in range(ROUNDS):
        server = ServerProcess(env, workers=2, log_path=tmp_path / f"server{round_number}.log")
        server.wait_ready()
        stop = threading.Event()
        ledger.acks_this_round = 0
        threads = [
            threading.Thread(
                target=writer, args=(server.base_url, f"r{round_number}w{t}-", ledger, stop)
            )
            for t in range(WRITERS)
        ]
        threads.append(
            threading.Thread(
                target=deleter,
                args=(server.base_url, ledger, stop, random.Random(round_number)),
            )
        )
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        want = rng.randint(3, 8)
        while ledger.acks_this_round < want and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.25))  # land the kill at a random point of a request
        server.kill()
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    crash_seconds = time.monotonic() - started

    verify = run_cli(env, "index", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr

    server = ServerProcess(env, workers=2, log_path=tmp_path / "final.log")
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            speakers = client.get("/speakers", params={"limit": 1000}).json()
            stored = {s["id"]: s["utterance_count"] for s in speakers["speakers"]}
            assert speakers["total"] == len(stored)
            audit = client.get("/audit", params={"limit": 1000}).json()
    finally:
        server.stop()

    assert not ledger.bad, ledger.bad
    assert ledger.enrolled and ledger.deleted, "no traffic was acknowledged"
    # Acknowledged deletions are gone; acknowledged enrollments (not deleted since) are there.
    assert not (ledger.deleted & stored.keys())
    for external_id in ledger.enrolled - ledger.deleted - ledger.delete_unknown:
        assert external_id in stored, f"acknowledged enrollment {external_id} lost"
    # Nothing half-applied: every stored speaker has every file it was enrolled with.
    assert set(stored.values()) == {FILES_PER_SPEAKER}, stored
    # Everything stored was at least sent.
    sent = ledger.enrolled | ledger.enroll_unknown
    assert stored.keys() <= sent
    # One audit row per applied change, in the same transaction as the change.
    actions = [(e["action"], e["speaker_id"]) for e in audit["entries"]]
    enrolled_rows = {sid for action, sid in actions if action == "speaker.enroll"}
    deleted_rows = {sid for action, sid in actions if action == "speaker.delete"}
    assert stored.keys() <= enrolled_rows
    assert ledger.enrolled <= enrolled_rows and ledger.deleted <= deleted_rows
    assert enrolled_rows - deleted_rows == stored.keys()
    print(
        f"\n{ROUNDS} SIGKILL rounds in {crash_seconds:.0f}s: {len(ledger.enrolled)} enrollments "
        f"and {len(ledger.deleted)} deletions acknowledged, "
        f"{len(ledger.enroll_unknown) + len(ledger.delete_unknown)} cut off, "
        f"{len(stored)} speakers stored"
    )
