"""Issue 12: per-pair-type tails for telephone-band profiles, fitted with the SHIPPED cohort on
CAL, and the TEST comparison of the shipped rule today against telephone-band profiles.

Not runnable from the repository alone: like ``bench/cohort_export.py`` it runs inside the
issue-12 research folder (protocol, embedding cache of the calibration corpus, including the
telephone-band enrollment embeddings ``run.py --what enroll_tel``), which is not part of the
product:

    cd <research folder> && python <repo>/bench/telband_tails.py <repo>
    # -> decide/pairtype_tails.json, decide/test_telband.md

Pair types (probe, profile), as in ``service.decisions.bandwidth``:

* A: wideband probe (source > 8 kHz) against a normal profile;
* B: narrowband probe (source <= 8 kHz) against the telephone-band profile of a speaker enrolled
  from wideband audio (each enrollment clip through ``service.pipeline.telephone``'s chain);
* C: narrowband probe against the normal profile of a speaker enrolled only from <= 8 kHz audio.

Scores are AS-norm (K = 100) with the shipped cohort (``service/decisions/cohorts/
ecapa-voxceleb.npy``; its rows' speakers from the research's ``decide/cohort_ecapa_voxceleb_
clean.csv``, masked when CAL itself is scored). Per type an exponential tail (u = 95th
percentile of CAL impostor scores, beta = mean excess) gives z = (s - u_type) / beta_type;
candidates are ranked on z and matched when z >= ln(0.05 / p(N)), p(N) = 1 - (1 - FPIR*)^(1/N):
exactly t(N) of ``service.decisions.openset`` on each type's own tail. Nothing is fitted on TEST.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))  # the research folder's modules

import common as C
import norm as N
import numpy as np
import protocol as P
import q5_openset as Q5

REPO = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
OUT = P.HERE / "decide"
TARGET = 0.03
MASS = 0.05
K = 100
TYPES = "ABC"


def shipped_cohort() -> tuple[np.ndarray, np.ndarray, dict]:
    meta = json.loads((REPO / "service/decisions/cohorts/ecapa-voxceleb.json").read_text())
    M = np.load(REPO / "service/decisions/cohorts" / meta["file"]).astype(np.float32)
    M /= np.linalg.norm(M, axis=1, keepdims=True)
    rows = [ln.split(",") for ln in (OUT / "cohort_ecapa_voxceleb_clean.csv").read_text().split()]
    labels = np.array([r[1] for r in rows[1:]])
    assert len(labels) == M.shape[0], (len(labels), M.shape)
    return M, labels, meta


def build(st: C.Store, split: str, nz: N.Normaliser):
    """Per condition: (normal-profile trials, pair-type-profile trials, type matrix, net speech,
    raw cosines against the normal profiles)."""
    names, G, _ = st.gallery(split, "bare")
    names_nb, Gn, _ = st.gallery(split, "bare", cond="tel8k")
    assert names_nb == names
    native_nb = np.array(
        [
            all(
                st.info[(f"enr|{s}|{i}", "clean")]["src"] <= 8000
                for i in range(len(st.p["enroll"][s]))
            )
            for s in names
        ]
    )
    probes = st.probes(split)
    out = {}
    for c in P.CONDITIONS:
        X = N.probe_matrix(st, probes, c, "bare")
        t = C.trials(st, split, c, "bare", gallery=(names, G, None))
        tw = nz(t, G, names, probes, X)
        tn = nz(C.trials(st, split, c, "bare", gallery=(names, Gn, None)), Gn, names, probes, X)
        narrow = np.array([st.info[(pr["id"], c)]["src"] <= 8000 for pr in probes])
        typ = np.where(~narrow[:, None], 0, np.where(native_nb[None, :], 2, 1))
        S = np.where(typ == 1, tn.scores, tw.scores)
        dur = Q5.probe_durations(st, probes, c)
        out[c] = (tw, C.Trials(S, t.enrolled, t.target_col, t.refused), typ, dur, t.scores)
    return names, out, native_nb


def fit_tails(cal) -> dict[str, dict]:
    tails = {}
    for k, name in enumerate(TYPES):
        xs = []
        for _, t, typ, _, _ in cal.values():
            ok = ~t.refused[:, None] & np.ones_like(t.scores, bool)
            r = np.where(t.target_col >= 0)[0]
            ok[r, t.target_col[r]] = False
            xs.append(t.scores[ok & (typ == k)])
        x = np.concatenate(xs)
        u = float(np.percentile(x, 100 * (1 - MASS)))
        beta = float((x[x > u] - u).mean())
        tails[name] = {
            "u": round(u, 6),
            "beta": round(beta, 6),
            "mass": MASS,
            "n_impostor": int(x.size),
        }
    return tails


def per_type_pairs(scored, k: int, normal: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor AS-norm scores of pair type ``k``, all conditions pooled
    (``normal``: the same pairs scored against the normal profiles instead)."""
    gen, imp = [], []
    for tw, tt, typ, _, _ in scored.values():
        t = C.Trials(tw.scores, tt.enrolled, tt.target_col, tt.refused) if normal else tt
        ok = ~t.refused[:, None] & (typ == k)
        target = np.zeros_like(ok)
        r = np.where(t.target_col >= 0)[0]
        target[r, t.target_col[r]] = True
        gen.append(t.scores[ok & target])
        imp.append(t.scores[ok & ~target])
    return np.concatenate(gen), np.concatenate(imp)


def sanity(scored, split: str) -> list[str]:
    """Is AS-norm of each pair type still a score (genuine far above impostor)? EER, medians."""
    out = []
    for k, name in enumerate(TYPES):
        g, i = per_type_pairs(scored, k)
        if g.size and i.size:
            eer = C._eer(g, i)[0]
            out.append(
                f"* {split} {name}: {g.size} genuine / {i.size} impostor pairs, EER "
                f"{100 * eer:.1f} %, median genuine {np.median(g):.2f} vs impostor "
                f"{np.median(i):.2f}"
            )
    g, i = per_type_pairs(scored, TYPES.index("B"), normal=True)
    out.append(
        f"* {split} B pairs scored against the normal profiles instead (today): EER "
        f"{100 * C._eer(g, i)[0]:.1f} %, median genuine {np.median(g):.2f} vs impostor "
        f"{np.median(i):.2f}"
    )
    return out


def ranked_rates(
    key: np.ndarray, score: np.ndarray, t: C.Trials, thr: np.ndarray
) -> tuple[float, float, float]:
    """FPIR, FNIR and top-1 when candidates are ranked on ``key`` and the first is decided on
    its ``score`` (>= the probe's ``thr``)."""
    key = np.where(np.isnan(key), -np.inf, key)
    first = key.argmax(axis=1)
    best = score[np.arange(len(score)), first]
    accepted = (best >= thr) & ~t.refused
    right = first == t.target_col
    e = t.enrolled
    fpir = float(accepted[~e].mean()) if (~e).any() else float("nan")
    fnir = float(1 - (accepted[e] & right[e]).mean())
    return fpir, fnir, float((right[e] & ~t.refused[e]).mean())


def main() -> None:
    st = C.Store()
    M, L, meta = shipped_cohort()
    _, cal, cal_nb = build(st, "CAL", N.Normaliser(M, L, K, exclude_own=True))
    tails = fit_tails(cal)
    cal_speakers = {
        name: int(v)
        for name, v in zip(
            ("wideband", "narrowband"), np.bincount(cal_nb, minlength=2), strict=True
        )
    }
    names, test, test_nb = build(st, "TEST", N.Normaliser(M, L, K, exclude_own=False))
    n = len(names)
    p = 1 - (1 - TARGET) ** (1 / n)
    tz = np.log(MASS / p)
    shipped = meta["tails"]["asnorm"]
    t_shipped = shipped["u"] + shipped["beta"] * tz
    u = np.array([tails[k]["u"] for k in TYPES])
    b = np.array([tails[k]["beta"] for k in TYPES])
    lines = [
        "Per-pair-type tails, AS-norm K=100 with the shipped cohort, fitted on CAL "
        f"({cal_speakers['wideband']} wideband- / {cal_speakers['narrowband']} "
        "narrowband-enrolled speakers):",
        *(
            f"* {k}: u = {v['u']:.3f}, beta = {v['beta']:.3f} ({v['n_impostor']} impostor pairs)"
            for k, v in tails.items()
        ),
        f"\nTEST N = {n} ({int(test_nb.sum())} enrolled from <= 8 kHz audio), "
        f"FPIR* = {TARGET:.0%}. "
        f"Cells: FPIR % / FNIR % (top-1 %). shipped = today's rule (normal profiles, one tail "
        f"u = {shipped['u']:.3f}, beta = {shipped['beta']:.3f}, t(N) = {t_shipped:.3f}); "
        f"telband = telephone-band profiles for narrowband probes, per-type tails, z >= {tz:.3f}; "
        "cosrank = telband, but a wideband probe's candidates ranked on the raw cosine (this "
        "release). "
        "A probe with no detected speech is undecided (not matched) in both.\n",
        "AS-norm per pair type (K=100, shipped cohort), all conditions pooled:",
        *sanity(cal, "CAL"),
        *sanity(test, "TEST"),
        "",
        "| probes | rule | " + " | ".join(P.CONDITIONS) + " |",
        "|---|---|" + "---|" * len(P.CONDITIONS),
    ]
    result = {"tails": tails, "test": {}}
    for stratum, srcs in [("all", None), *Q5.STRATA.items()]:
        m = np.array([srcs is None or pr["source"] in srcs for pr in st.probes("TEST")])
        for rule in ("shipped", "telband", "cosrank"):
            cells = []
            for c in P.CONDITIONS:
                tw, tt, typ, dur, raw = test[c]
                if rule == "shipped":
                    scores, thr = tw.scores, t_shipped
                else:
                    scores, thr = (tt.scores - u[typ]) / b[typ], tz
                t = C.Trials(scores[m], tt.enrolled[m], tt.target_col[m], tt.refused[m])
                thresholds = np.where(dur[m] <= 0, np.inf, thr)
                if rule == "cosrank":
                    # This release: a wideband probe ranked on the raw cosine (the bare model's
                    # order), a narrowband one on its mapped score; the first decided on it.
                    wide = (typ[m] == 0).all(axis=1)
                    key = np.where(wide[:, None], raw[m], t.scores)
                    fpir, fnir, top1 = ranked_rates(key, t.scores, t, thresholds)
                else:
                    fpir, fnir = C.open_set(t, thresholds)
                    top1 = C.top1(t)
                cells.append(f"{C.pct(fpir)} / {C.pct(fnir)} ({C.pct(top1)})")
                result["test"][f"{stratum}|{rule}|{c}"] = [fpir, fnir, top1]
            lines.append(f"| {stratum} | {rule} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    (OUT / "test_telband.md").write_text(text + "\n")
    (OUT / "pairtype_tails.json").write_text(json.dumps(result, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
