"""What applying the enrollment floor at start-up costs (``SpeakerStore.apply_floor``).

Every start checks that each stored speaker's searchability agrees with the floor in force
(``storage/profile_floor.py``). This fills a SQLite file with ``--speakers`` speakers of one
utterance each (4 s of net speech; every 10th has 0.5 s), leaves every 7th without a profile
(as an earlier release with a 10 s floor would have), then times three starts: the first makes
those speakers searchable, the second finds nothing to do (the cost every later start pays),
and a start with the floor at 0 makes the 0.5 s speakers searchable too.

    .venv/bin/python -m bench.bench_profile_floor --speakers 100000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import insert
from sqlalchemy.orm import Session

from storage.db import make_engine, make_session_factory
from storage.migrate import upgrade_to_head
from storage.models import Embedding, Profile, Speaker, Utterance, utcnow
from storage.speakers import SpeakerStore
from storage.vectors import encode_vector

SPACE, IDENTITY, DIM = "voxceleb", "bench-model@0000", 192


def fill(store: SpeakerStore, n: int) -> None:
    vector = encode_vector(np.full(DIM, DIM**-0.5, np.float32))
    now = utcnow()

    def tx(session: Session) -> None:
        conn = session.connection()
        ids = range(1, n + 1)
        conn.execute(
            insert(Speaker),
            [{"id": i, "external_id": f"s{i}", "created_at": now, "updated_at": now} for i in ids],
        )
        conn.execute(
            insert(Utterance),
            [
                {
                    "id": i,
                    "speaker_id": i,
                    "duration_s": 5.0,
                    "speech_s": 0.5 if i % 10 == 0 else 4.0,
                    "sha256": f"{i:064x}",
                    "created_at": now,
                }
                for i in ids
            ],
        )
        conn.execute(
            insert(Embedding),
            [
                {
                    "utterance_id": i,
                    "space": SPACE,
                    "vector": vector,
                    "dim": DIM,
                    "model_identity": IDENTITY,
                }
                for i in ids
            ],
        )
        conn.execute(
            insert(Profile),
            [
                {
                    "speaker_id": i,
                    "space": SPACE,
                    "vector": vector,
                    "model_identity": IDENTITY,
                    "n_utterances": 1,
                    "updated_at": now,
                }
                for i in ids
                if i % 10 and i % 7
            ],
        )

    store.write_transaction(tx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speakers", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'floor.db'}"
        upgrade_to_head(url)
        engine = make_engine(url)
        factory = make_session_factory(engine)
        fill(SpeakerStore(factory, {SPACE: IDENTITY}), args.speakers)
        print(f"{args.speakers} speakers, load {os.getloadavg()[0]:.1f}")
        for label, floor in (("upgrade", 1.0), ("next start", 1.0), ("floor 0", 0.0)):
            store = SpeakerStore(factory, {SPACE: IDENTITY}, min_profile_speech_s=floor)
            start = time.perf_counter()
            changes = store.apply_floor()
            print(
                f"{label:>10} (floor {floor:g} s): {time.perf_counter() - start:6.2f} s, "
                f"made searchable {changes.made_searchable}, "
                f"unsearchable {changes.made_unsearchable}"
            )
        engine.dispose()


if __name__ == "__main__":
    main()
