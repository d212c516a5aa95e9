"""Issue 12: build the shipped AS-norm cohort (licence-clean) and refit the decision tails.

Not runnable from the repository alone: it runs inside the issue-12 research folder (protocol,
embedding cache of the calibration corpus, q5_openset.py), which is not part of the product:

    cd <research folder> && python cohort_export.py
    # -> decide/cohort_ecapa_voxceleb_clean.npy (+ .csv), decide/tails.json, decide/test_openset.md

The .npy became service/decisions/cohorts/ecapa-voxceleb.npy; tails.json gave the "tails" block
of ecapa-voxceleb.json; test_openset.md is the TEST FPIR/FNIR table of the README ("Decisions").

Only CC BY / Apache sources go into the cohort: LibriSpeech (CC BY 4.0), Speech Commands
(CC BY 4.0), VCTK (CC BY 4.0), AISHELL-1 (Apache 2.0). Excluded: KLettres, KTuberling (GPL-2+),
Asterisk (GPL / CC BY-SA), VCC2016 (licence not confirmed in the corpus' SOURCES.md).
Everything is fitted on the CAL split; the numbers reported are from the disjoint TEST split.
"""

import collections
import json

import common as C
import norm as N
import numpy as np
import protocol as P
import q5_openset as Q5

ALLOWED = {"librispeech_resemblyzer", "speech_commands_v002_test", "vctk_autovc", "aishell1"}
OUT = P.HERE / "decide"
OUT.mkdir(exist_ok=True)
TARGET = 0.03

st = C.Store()
src = {s: v["source"] for s, v in st.p["speakers"].items()}
M, L = N.build_cohort(st, "mix", None, "bare")
keep = np.array([src.get(s, "") in ALLOWED for s in L])
M, L = M[keep], L[keep]
sel = np.random.default_rng(0).choice(len(M), min(2000, len(M)), replace=False)
M, L = M[np.sort(sel)], L[np.sort(sel)]
M = (M / np.linalg.norm(M, axis=1, keepdims=True)).astype(np.float16)
np.save(OUT / "cohort_ecapa_voxceleb_clean.npy", M)
with open(OUT / "cohort_ecapa_voxceleb_clean.csv", "w") as fh:
    fh.write("row,speaker,source\n")
    for i, s in enumerate(L):
        fh.write(f"{i},{s},{src.get(s, '')}\n")
counts = dict(collections.Counter(src.get(s, "") for s in L))
M32 = M.astype(np.float32)


def tail_t(u, beta, n, target=TARGET, mass=0.05):
    return u + beta * np.log(mass / (1 - (1 - target) ** (1.0 / n)))


res = {
    "rows": int(M.shape[0]),
    "dim": int(M.shape[1]),
    "speakers": len(set(L)),
    "by_source": counts,
}
lines = []
for label, norm in (("asnorm", True), ("cosine", False)):
    nz = {
        s: (N.Normaliser(M32, L, 100, exclude_own=(s == "CAL")) if norm else None)
        for s in ("CAL", "TEST")
    }
    _, cal = Q5.load(st, "CAL", "bare", nz["CAL"])
    r = Q5.Rules(cal, raw=not norm)
    u, beta = float(r.u), float(r.beta)
    res[label] = {"u": u, "beta": beta, "tail_mass": 0.05, "n_impostor_pairs": int(r.imp.size)}
    names, test = Q5.load(st, "TEST", "bare", nz["TEST"])
    namesd, testd = Q5.load(st, "TEST", "bare", nz["TEST"], with_distractors=True)
    m_read = np.array(
        [pr["source"] in Q5.STRATA["read speech (sentences)"] for pr in st.probes("TEST")]
    )
    lines += [
        f"\n### {label}: u = {u:.4f}, beta = {beta:.4f} (CAL, {r.imp.size} impostor pairs)\n",
        "| TEST | N | t(N) | " + " | ".join(P.CONDITIONS) + " |",
        "|---|---|---|" + "---|" * len(P.CONDITIONS),
    ]
    for tag, data, n, mask in (
        ("all probes", test, len(names), None),
        ("read speech", test, len(names), m_read),
        ("all probes + 65 distractors", testd, len(namesd), None),
    ):
        t = tail_t(u, beta, n)
        cells = []
        for c in P.CONDITIONS:
            sc = data[c]
            thr = np.where(sc.dur <= 0.0, np.inf, t)  # undecided only when no speech detected
            tr = sc.t
            if mask is not None:
                tr = C.Trials(
                    tr.scores[mask], tr.enrolled[mask], tr.target_col[mask], tr.refused[mask]
                )
                thr = thr[mask]
            a, b = C.open_set(tr, thr)
            cells.append(f"{C.pct(a)} / {C.pct(b)}")
            res[label].setdefault("test", {}).setdefault(tag, {})[c] = [a, b]
        lines.append(f"| {tag} | {n} | {t:.3f} | " + " | ".join(cells) + " |")
(OUT / "tails.json").write_text(json.dumps(res, indent=1))
text = (
    f"Cohort {res['rows']} x {res['dim']}, {res['speakers']} CAL speakers, {counts}\n"
    + "\n".join(lines)
)
(OUT / "test_openset.md").write_text(text)
print(text)
